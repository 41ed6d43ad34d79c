//! Issuer keys in PostgreSQL: lifecycle changes under the keys advisory lock.

use super::*;

const ISSUER_KEY_COLUMNS: &str =
    "id, environment, state, private_pkcs8, not_before, rotated_at, retired_at, created_at, token_type";

fn issuer_key_from_row(r: &tokio_postgres::Row) -> Result<IssuerKey, StoreError> {
    Ok(IssuerKey {
        id: r.get(0),
        environment: r.get::<_, String>(1).parse().map_err(corrupt("environment"))?,
        state: r.get::<_, String>(2).parse().map_err(corrupt("key state"))?,
        private_pkcs8: Zeroizing::new(r.get(3)),
        not_before: r.get(4),
        rotated_at: r.get(5),
        retired_at: r.get(6),
        created_at: r.get(7),
        token_type: u16::try_from(r.get::<_, i32>(8)).map_err(|_| StoreError::Corrupt("token type".into()))?,
    })
}

async fn insert_issuer_key_tx(tx: &tokio_postgres::Transaction<'_>, key: &IssuerKey) -> Result<(), StoreError> {
    tx.execute(
        &format!("INSERT INTO issuer_keys ({ISSUER_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"),
        &[
            &key.id,
            &key.environment.as_str(),
            &key.state.as_str(),
            &key.private_pkcs8.as_slice(),
            &key.not_before,
            &key.rotated_at,
            &key.retired_at,
            &key.created_at,
            &i32::from(key.token_type),
        ],
    )
    .await
    .map_err(map_err)
    .map(drop)
}

#[async_trait]
impl IssuerKeyStore for PostgresStore {
    async fn insert_issuer_key(&self, key: &IssuerKey) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEYS]).await.map_err(map_err)?;
        insert_issuer_key_tx(&tx, key).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn insert_first_issuer_key(&self, key: &IssuerKey) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        // Serialises key lifecycle changes across nodes.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEYS]).await.map_err(map_err)?;
        let existing: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM issuer_keys WHERE environment = $1 AND token_type = $2",
                &[&key.environment.as_str(), &i32::from(key.token_type)],
            )
            .await
            .map_err(map_err)?
            .get(0);
        if existing > 0 {
            return Ok(false);
        }
        insert_issuer_key_tx(&tx, key).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn issuer_keys(&self, environment: Option<Environment>) -> Result<Vec<IssuerKey>, StoreError> {
        let env = environment.map(Environment::as_str);
        let rows = self
            .query(
                &format!(
                    "SELECT {ISSUER_KEY_COLUMNS} FROM issuer_keys
                     WHERE $1::TEXT IS NULL OR environment = $1 ORDER BY created_at, id"
                ),
                &[&env],
            )
            .await?;
        rows.iter().map(issuer_key_from_row).collect()
    }

    async fn issuer_key_metadata(&self, environment: Option<Environment>) -> Result<Vec<IssuerKey>, StoreError> {
        let env = environment.map(Environment::as_str);
        let rows = self
            .query(
                "SELECT id, environment, state, ''::BYTEA, not_before, rotated_at, retired_at, created_at, token_type
                 FROM issuer_keys WHERE $1::TEXT IS NULL OR environment = $1 ORDER BY created_at, id",
                &[&env],
            )
            .await?;
        rows.iter().map(issuer_key_from_row).collect()
    }

    async fn issuer_key_private(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self.query("SELECT private_pkcs8 FROM issuer_keys WHERE id = $1", &[&id]).await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    async fn rotate_issuer_key(&self, new_key: &IssuerKey, at: i64) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEYS]).await.map_err(map_err)?;
        if new_key.state == KeyState::Active {
            tx.execute(
                "UPDATE issuer_keys SET state = 'verify-only', rotated_at = $2
                 WHERE environment = $1 AND token_type = $3 AND state = 'active'",
                &[&new_key.environment.as_str(), &at, &i32::from(new_key.token_type)],
            )
            .await
            .map_err(map_err)?;
        }
        insert_issuer_key_tx(&tx, new_key).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn announce_issuer_key(&self, successor: &IssuerKey, replaces: &str) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        // The lifecycle lock: announcements, rotations, promotions and
        // retirements of every node take it, so the check below still holds
        // when the insert commits.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEYS]).await.map_err(map_err)?;
        let env = successor.environment.as_str();
        let token_type = i32::from(successor.token_type);
        let row = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM issuer_keys WHERE id = $1 AND state = 'active'
                                  AND environment = $2 AND token_type = $3)
                    AND NOT EXISTS (SELECT 1 FROM issuer_keys WHERE state = 'pending'
                                      AND environment = $2 AND token_type = $3)",
                &[&replaces, &env, &token_type],
            )
            .await
            .map_err(map_err)?;
        if !row.get::<_, bool>(0) {
            return Ok(false);
        }
        insert_issuer_key_tx(&tx, successor).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn retire_issuer_key(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        // The same lock as rotation and promotion: a promotion in flight
        // cannot turn a key retired meanwhile back into the active one.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEYS]).await.map_err(map_err)?;
        let n = tx
            .execute(
                "UPDATE issuer_keys SET state = 'retired', retired_at = COALESCE(retired_at, $2) \
                 WHERE id = $1 AND state <> 'retired'",
                &[&id, &at],
            )
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(n > 0)
    }

    async fn promote_due_keys(&self, now: i64) -> Result<u64, StoreError> {
        // Cheap check first: almost always there is nothing to promote.
        let due = self
            .query("SELECT 1 FROM issuer_keys WHERE state = 'pending' AND not_before <= $1 LIMIT 1", &[&now])
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEYS]).await.map_err(map_err)?;
        let rows = tx
            .query(
                "SELECT DISTINCT ON (environment, token_type) environment, id, token_type FROM issuer_keys
                 WHERE state = 'pending' AND not_before <= $1
                 ORDER BY environment, token_type, not_before DESC, id DESC",
                &[&now],
            )
            .await
            .map_err(map_err)?;
        let mut promoted = 0;
        for row in &rows {
            let (environment, id, token_type): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
            // Only a key still pending moves, never a retired one; the
            // current active key steps down first (one active per environment).
            tx.execute(
                "UPDATE issuer_keys SET state = 'verify-only', rotated_at = $3
                 WHERE environment = $1 AND token_type = $4 AND id <> $2
                   AND (state = 'active' OR (state = 'pending' AND not_before <= $3))
                   AND EXISTS (SELECT 1 FROM issuer_keys p WHERE p.id = $2 AND p.state = 'pending')",
                &[&environment, &id, &now, &token_type],
            )
            .await
            .map_err(map_err)?;
            promoted += tx
                .execute("UPDATE issuer_keys SET state = 'active' WHERE id = $1 AND state = 'pending'", &[&id])
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(promoted)
    }
}
