//! Idempotency records, rate-limit counters and settings in SQLite.

use super::*;
use crate::claims;

#[async_trait]
impl IdempotencyStore for SqliteStore {
    async fn idempotency_begin(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &[u8; 32],
        now: i64,
        ttl_secs: i64,
        stale_after_secs: i64,
    ) -> Result<IdempotencyBegin, StoreError> {
        let (scope, key, fingerprint) = (scope.to_owned(), key.to_owned(), fingerprint.to_vec());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            let claim = Claim { tx: &tx, scope: &scope, key: &key, fingerprint: &fingerprint, now };
            let outcome = match claim.read()? {
                None => claim.insert()?,
                Some(existing) => {
                    claim.apply(claims::decide(existing, &fingerprint, now, ttl_secs, stale_after_secs))?
                }
            };
            tx.commit().map_err(map_err)?;
            Ok(outcome)
        })
        .await
    }

    async fn idempotency_complete(&self, scope: &str, key: &str, response: &StoredResponse) -> Result<(), StoreError> {
        let (scope, key, response) = (scope.to_owned(), key.to_owned(), response.clone());
        self.with(move |c| complete_idempotency(c, &scope, &key, &response)).await
    }

    async fn idempotency_abandon(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        let (scope, key) = (scope.to_owned(), key.to_owned());
        self.with(move |c| {
            c.execute("DELETE FROM idempotency WHERE scope = ?1 AND key = ?2 AND status IS NULL", params![scope, key])
                .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn idempotency_prune(&self, before: i64) -> Result<u64, StoreError> {
        self.with(move |c| {
            let n = c.execute("DELETE FROM idempotency WHERE created_at < ?1", params![before]).map_err(map_err)?;
            Ok(n as u64)
        })
        .await
    }
}

#[async_trait]
impl RateLimitStore for SqliteStore {
    async fn rate_limit_add(&self, bucket: &str, window_start: i64, n: u64) -> Result<u64, StoreError> {
        let bucket = bucket.to_owned();
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.with(move |c| {
            let count: i64 = c
                .prepare_cached(
                    "INSERT INTO rate_limits (bucket, window_start, count) VALUES (?1, ?2, ?3)
                     ON CONFLICT (bucket, window_start) DO UPDATE SET count = count + ?3
                     RETURNING count",
                )
                .map_err(map_err)?
                .query_row(params![bucket, window_start, n], |r| r.get(0))
                .map_err(map_err)?;
            Ok(count.max(0) as u64)
        })
        .await
    }

    async fn rate_limit_prune(&self, before: i64) -> Result<u64, StoreError> {
        self.with(move |c| {
            let n = c.execute("DELETE FROM rate_limits WHERE window_start < ?1", params![before]).map_err(map_err)?;
            Ok(n as u64)
        })
        .await
    }
}

#[async_trait]
impl SettingsStore for SqliteStore {
    async fn setting_get_or_insert(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let (name, value) = (name.to_owned(), value.to_vec());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            tx.execute(
                "INSERT INTO settings (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                params![name, value],
            )
            .map_err(map_err)?;
            let stored: Vec<u8> = tx
                .query_row("SELECT value FROM settings WHERE name = ?1", params![name], |r| r.get(0))
                .map_err(map_err)?;
            tx.commit().map_err(map_err)?;
            Ok(stored)
        })
        .await
    }

    async fn settings_with_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = prefix.to_owned();
        self.with(move |c| {
            let mut stmt = c.prepare("SELECT name, value FROM settings ORDER BY name").map_err(map_err)?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))).map_err(map_err)?;
            let all: Vec<_> = rows.collect::<Result<_, _>>().map_err(map_err)?;
            Ok(all.into_iter().filter(|(name, _)| name.starts_with(&prefix)).collect())
        })
        .await
    }

    async fn rewrap(&self, changes: &[Rewrap]) -> Result<(), StoreError> {
        let changes = changes.to_vec();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            for change in &changes {
                let updated = match &change.target {
                    RewrapTarget::IssuerKey(id) => tx.execute(
                        "UPDATE issuer_keys SET private_pkcs8 = ?3 WHERE id = ?1 AND private_pkcs8 = ?2",
                        params![id, change.old, change.new],
                    ),
                    RewrapTarget::Setting(name) => tx.execute(
                        "UPDATE settings SET value = ?3 WHERE name = ?1 AND value = ?2",
                        params![name, change.old, change.new],
                    ),
                }
                .map_err(map_err)?;
                if updated != 1 {
                    return Err(StoreError::Conflict(format!("{:?} changed during the rewrap", change.target).into()));
                }
            }
            tx.commit().map_err(map_err)
        })
        .await
    }
}

pub(super) fn complete_idempotency(
    c: &Connection,
    scope: &str,
    key: &str,
    response: &StoredResponse,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE idempotency SET status = ?3, content_type = ?4, body = ?5
         WHERE scope = ?1 AND key = ?2 AND status IS NULL",
        params![scope, key, response.status, response.content_type, response.body],
    )
    .map_err(map_err)?;
    Ok(())
}

/// One `idempotency_begin` inside its `BEGIN IMMEDIATE` transaction.
struct Claim<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    scope: &'a str,
    key: &'a str,
    fingerprint: &'a [u8],
    now: i64,
}

impl Claim<'_> {
    fn read(&self) -> Result<Option<claims::Existing>, StoreError> {
        self.tx
            .query_row(
                "SELECT fingerprint, created_at, status, content_type, body FROM idempotency
                 WHERE scope = ?1 AND key = ?2",
                params![self.scope, self.key],
                |r| {
                    let response = r.get::<_, Option<u16>>(2)?.map(|status| {
                        Ok::<_, rusqlite::Error>(StoredResponse {
                            status,
                            content_type: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                            body: r.get::<_, Option<Vec<u8>>>(4)?.unwrap_or_default(),
                        })
                    });
                    Ok(claims::Existing {
                        fingerprint: r.get(0)?,
                        created_at: r.get(1)?,
                        response: response.transpose()?,
                    })
                },
            )
            .optional()
            .map_err(map_err)
    }

    fn insert(&self) -> Result<IdempotencyBegin, StoreError> {
        self.tx
            .execute(
                "INSERT INTO idempotency (scope, key, fingerprint, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![self.scope, self.key, self.fingerprint, self.now],
            )
            .map_err(map_err)?;
        Ok(IdempotencyBegin::Started)
    }

    fn apply(&self, decision: claims::Decision) -> Result<IdempotencyBegin, StoreError> {
        let (sql, args): (&str, &[&dyn rusqlite::ToSql]) = match decision {
            claims::Decision::Answer(answer) => return Ok(answer),
            claims::Decision::Restart => (
                "UPDATE idempotency SET fingerprint = ?3, created_at = ?4, status = NULL,
                 content_type = NULL, body = NULL WHERE scope = ?1 AND key = ?2",
                params![self.scope, self.key, self.fingerprint, self.now],
            ),
            claims::Decision::TakeOver => (
                "UPDATE idempotency SET created_at = ?3 WHERE scope = ?1 AND key = ?2",
                params![self.scope, self.key, self.now],
            ),
        };
        self.tx.execute(sql, args).map_err(map_err)?;
        Ok(IdempotencyBegin::Started)
    }
}

#[async_trait]
impl DurabilityStore for SqliteStore {
    /// One file on this node's disk: nothing to fail over to.
    async fn replication(&self) -> Result<Option<Replication>, StoreError> {
        Ok(None)
    }
}
