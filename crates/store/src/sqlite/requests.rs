//! Idempotency records, rate-limit counters and settings in SQLite.

use super::*;

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
            let existing: Option<(Vec<u8>, i64, Option<u16>, Option<(Option<String>, Option<Vec<u8>>)>)> = tx
                .query_row(
                    "SELECT fingerprint, created_at, status, content_type, body FROM idempotency
                     WHERE scope = ?1 AND key = ?2",
                    params![scope, key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, Some((r.get(3)?, r.get(4)?)))),
                )
                .optional()
                .map_err(map_err)?;
            let outcome = match existing {
                Some((_, created_at, _, _)) if created_at + ttl_secs <= now => {
                    tx.execute(
                        "UPDATE idempotency SET fingerprint = ?3, created_at = ?4, status = NULL,
                         content_type = NULL, body = NULL WHERE scope = ?1 AND key = ?2",
                        params![scope, key, fingerprint, now],
                    )
                    .map_err(map_err)?;
                    IdempotencyBegin::Started
                }
                Some((stored, _, _, _)) if stored != fingerprint => IdempotencyBegin::Mismatch,
                Some((_, created_at, None, _)) => {
                    if created_at + stale_after_secs <= now {
                        tx.execute(
                            "UPDATE idempotency SET created_at = ?3 WHERE scope = ?1 AND key = ?2",
                            params![scope, key, now],
                        )
                        .map_err(map_err)?;
                        IdempotencyBegin::Started
                    } else {
                        IdempotencyBegin::InFlight
                    }
                }
                Some((_, _, Some(status), stored)) => {
                    let (content_type, body) = stored.unwrap_or_default();
                    IdempotencyBegin::Completed(StoredResponse {
                        status,
                        content_type: content_type.unwrap_or_default(),
                        body: body.unwrap_or_default(),
                    })
                }
                None => {
                    tx.execute(
                        "INSERT INTO idempotency (scope, key, fingerprint, created_at) VALUES (?1, ?2, ?3, ?4)",
                        params![scope, key, fingerprint, now],
                    )
                    .map_err(map_err)?;
                    IdempotencyBegin::Started
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
    async fn rate_limit_hit(&self, bucket: &str, window_start: i64) -> Result<u64, StoreError> {
        let bucket = bucket.to_owned();
        self.with(move |c| {
            let count: i64 = c
                .prepare_cached(
                    "INSERT INTO rate_limits (bucket, window_start, count) VALUES (?1, ?2, 1)
                     ON CONFLICT (bucket, window_start) DO UPDATE SET count = count + 1
                     RETURNING count",
                )
                .map_err(map_err)?
                .query_row(params![bucket, window_start], |r| r.get(0))
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
                    return Err(StoreError::Conflict(format!("{:?} changed during the rewrap", change.target)));
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
