//! Issuer keys in SQLite: the lifecycle changes, each in one `BEGIN IMMEDIATE` transaction.

use super::*;

type IssuerKeyRow = (String, String, String, Vec<u8>, i64, Option<i64>, Option<i64>, i64, i64);

const ISSUER_KEY_COLUMNS: &str =
    "id, environment, state, private_pkcs8, not_before, rotated_at, retired_at, created_at, token_type";

/// [`ISSUER_KEY_COLUMNS`] with an empty private key.
const ISSUER_KEY_METADATA_COLUMNS: &str =
    "id, environment, state, X'', not_before, rotated_at, retired_at, created_at, token_type";

/// Keys of `environment` (or all), oldest first, selecting `columns`.
fn select_issuer_keys(
    c: &Connection,
    environment: Option<Environment>,
    columns: &str,
) -> Result<Vec<IssuerKey>, StoreError> {
    let env = environment.map(Environment::as_str);
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {columns} FROM issuer_keys WHERE ?1 IS NULL OR environment = ?1 ORDER BY created_at, id"
        ))
        .map_err(map_err)?;
    let rows = stmt
        .query_map(params![env], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?))
        })
        .map_err(map_err)?;
    rows.map(|r| r.map_err(map_err).and_then(issuer_key_from_row)).collect()
}

fn issuer_key_from_row(row: IssuerKeyRow) -> Result<IssuerKey, StoreError> {
    let (id, environment, state, pkcs8, not_before, rotated_at, retired_at, created_at, token_type) = row;
    Ok(IssuerKey {
        id,
        environment: environment.parse().map_err(corrupt("environment"))?,
        token_type: u16::try_from(token_type).map_err(|_| StoreError::Corrupt("token type".into()))?,
        state: state.parse().map_err(corrupt("key state"))?,
        private_pkcs8: Zeroizing::new(pkcs8),
        not_before,
        rotated_at,
        retired_at,
        created_at,
    })
}

fn insert_issuer_key_tx(c: &rusqlite::Transaction<'_>, key: &IssuerKey) -> Result<(), StoreError> {
    c.execute(
        &format!("INSERT INTO issuer_keys ({ISSUER_KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
        params![
            key.id,
            key.environment.as_str(),
            key.state.as_str(),
            key.private_pkcs8.as_slice(),
            key.not_before,
            key.rotated_at,
            key.retired_at,
            key.created_at,
            key.token_type
        ],
    )
    .map_err(map_err)?;
    Ok(())
}

#[async_trait]
impl IssuerKeyStore for SqliteStore {
    async fn insert_issuer_key(&self, key: &IssuerKey) -> Result<(), StoreError> {
        let key = key.clone();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            insert_issuer_key_tx(&tx, &key)?;
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn insert_first_issuer_key(&self, key: &IssuerKey) -> Result<bool, StoreError> {
        let key = key.clone();
        self.with(move |c| {
            // IMMEDIATE takes the write lock first, so the check and the
            // insert are one atomic step across processes.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            let existing: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM issuer_keys WHERE environment = ?1 AND token_type = ?2",
                    params![key.environment.as_str(), key.token_type],
                    |r| r.get(0),
                )
                .map_err(map_err)?;
            if existing > 0 {
                return Ok(false);
            }
            insert_issuer_key_tx(&tx, &key)?;
            tx.commit().map_err(map_err)?;
            Ok(true)
        })
        .await
    }

    async fn issuer_keys(&self, environment: Option<Environment>) -> Result<Vec<IssuerKey>, StoreError> {
        self.with(move |c| select_issuer_keys(c, environment, ISSUER_KEY_COLUMNS)).await
    }

    async fn issuer_key_metadata(&self, environment: Option<Environment>) -> Result<Vec<IssuerKey>, StoreError> {
        self.with(move |c| select_issuer_keys(c, environment, ISSUER_KEY_METADATA_COLUMNS)).await
    }

    async fn issuer_key_private(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let id = id.to_owned();
        self.with(move |c| {
            c.query_row("SELECT private_pkcs8 FROM issuer_keys WHERE id = ?1", params![id], |r| r.get(0))
                .optional()
                .map_err(map_err)
        })
        .await
    }

    async fn rotate_issuer_key(&self, new_key: &IssuerKey, at: i64) -> Result<(), StoreError> {
        let key = new_key.clone();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            if key.state == KeyState::Active {
                tx.execute(
                    "UPDATE issuer_keys SET state = 'verify-only', rotated_at = ?2
                     WHERE environment = ?1 AND token_type = ?3 AND state = 'active'",
                    params![key.environment.as_str(), at, key.token_type],
                )
                .map_err(map_err)?;
            }
            insert_issuer_key_tx(&tx, &key)?;
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn announce_issuer_key(&self, successor: &IssuerKey, replaces: &str) -> Result<bool, StoreError> {
        let key = successor.clone();
        let replaces = replaces.to_owned();
        self.with(move |c| {
            // BEGIN IMMEDIATE: the check and the insert hold the write lock.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            let open: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM issuer_keys WHERE id = ?1 AND state = 'active'
                                      AND environment = ?2 AND token_type = ?3)
                        AND NOT EXISTS (SELECT 1 FROM issuer_keys WHERE state = 'pending'
                                          AND environment = ?2 AND token_type = ?3)",
                    params![replaces, key.environment.as_str(), key.token_type],
                    |r| r.get(0),
                )
                .map_err(map_err)?;
            if !open {
                return Ok(false);
            }
            insert_issuer_key_tx(&tx, &key)?;
            tx.commit().map_err(map_err)?;
            Ok(true)
        })
        .await
    }

    async fn promote_due_keys(&self, now: i64) -> Result<u64, StoreError> {
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            let due: Vec<(String, i64, String)> = {
                let mut stmt = tx
                    .prepare(
                        "SELECT environment, token_type, id FROM issuer_keys k
                         WHERE state = 'pending' AND not_before <= ?1
                           AND NOT EXISTS (SELECT 1 FROM issuer_keys n WHERE n.environment = k.environment
                                           AND n.token_type = k.token_type
                                           AND n.state = 'pending' AND n.not_before <= ?1
                                           AND (n.not_before > k.not_before
                                                OR (n.not_before = k.not_before AND n.id > k.id)))",
                    )
                    .map_err(map_err)?;
                let rows = stmt.query_map(params![now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(map_err)?;
                rows.collect::<Result<_, _>>().map_err(map_err)?
            };
            let mut promoted = 0;
            for (environment, token_type, id) in &due {
                // Only a key still pending moves, never a retired one; older
                // due pending keys and the current active key step down first.
                tx.execute(
                    "UPDATE issuer_keys SET state = 'verify-only', rotated_at = ?3
                     WHERE environment = ?1 AND token_type = ?4 AND id != ?2
                       AND (state = 'active' OR (state = 'pending' AND not_before <= ?3))
                       AND EXISTS (SELECT 1 FROM issuer_keys p WHERE p.id = ?2 AND p.state = 'pending')",
                    params![environment, id, now, token_type],
                )
                .map_err(map_err)?;
                promoted += tx
                    .execute("UPDATE issuer_keys SET state = 'active' WHERE id = ?1 AND state = 'pending'", params![id])
                    .map_err(map_err)? as u64;
            }
            tx.commit().map_err(map_err)?;
            Ok(promoted)
        })
        .await
    }

    async fn retire_issuer_key(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.with(move |c| {
            let changed = c
                .execute(
                    "UPDATE issuer_keys SET state = 'retired', retired_at = COALESCE(retired_at, ?2) \
                 WHERE id = ?1 AND state <> 'retired'",
                    params![id, at],
                )
                .map_err(map_err)?;
            Ok(changed > 0)
        })
        .await
    }
}
