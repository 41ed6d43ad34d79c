//! Idempotency records, rate-limit counters and settings in PostgreSQL.

use super::*;
use crate::claims;
use tokio_postgres::Transaction;

#[async_trait]
impl IdempotencyStore for PostgresStore {
    async fn idempotency_begin(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &[u8; 32],
        now: i64,
        ttl_secs: i64,
        stale_after_secs: i64,
    ) -> Result<IdempotencyBegin, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        let fp = fingerprint.as_slice();
        let inserted = tx
            .execute(
                "INSERT INTO idempotency (scope, key, fingerprint, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (scope, key) DO NOTHING",
                &[&scope, &key, &fp, &now],
            )
            .await
            .map_err(map_err)?;
        let outcome = match inserted {
            1 => IdempotencyBegin::Started,
            _ => {
                let existing = read_claim(&tx, scope, key).await?;
                let decision = claims::decide(existing, fp, now, ttl_secs, stale_after_secs);
                apply_claim(&tx, scope, key, fp, now, decision).await?
            }
        };
        tx.commit().await.map_err(map_err)?;
        Ok(outcome)
    }

    async fn idempotency_complete(&self, scope: &str, key: &str, response: &StoredResponse) -> Result<(), StoreError> {
        self.execute(
            "UPDATE idempotency SET status = $3, content_type = $4, body = $5
             WHERE scope = $1 AND key = $2 AND status IS NULL",
            &[&scope, &key, &i32::from(response.status), &response.content_type, &response.body],
        )
        .await
        .map(drop)
    }

    async fn idempotency_abandon(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM idempotency WHERE scope = $1 AND key = $2 AND status IS NULL", &[&scope, &key])
            .await
            .map(drop)
    }

    async fn idempotency_prune(&self, before: i64) -> Result<u64, StoreError> {
        self.execute("DELETE FROM idempotency WHERE created_at < $1", &[&before]).await
    }
}

#[async_trait]
impl RateLimitStore for PostgresStore {
    async fn rate_limit_add(&self, bucket: &str, window_start: i64, n: u64) -> Result<u64, StoreError> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let rows = self
            .query(
                "INSERT INTO rate_limits (bucket, window_start, count) VALUES ($1, $2, $3)
                 ON CONFLICT (bucket, window_start) DO UPDATE SET count = rate_limits.count + $3
                 RETURNING count",
                &[&bucket, &window_start, &n],
            )
            .await?;
        let count: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
        Ok(count.max(0) as u64)
    }

    async fn rate_limit_prune(&self, before: i64) -> Result<u64, StoreError> {
        self.execute("DELETE FROM rate_limits WHERE window_start < $1", &[&before]).await
    }
}

#[async_trait]
impl SettingsStore for PostgresStore {
    async fn setting_get_or_insert(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.execute(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &value],
        )
        .await?;
        let rows = self.query("SELECT value FROM settings WHERE name = $1", &[&name]).await?;
        rows.first().map(|r| r.get(0)).ok_or_else(|| StoreError::Corrupt(format!("setting {name} vanished").into()))
    }

    async fn settings_with_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rows = self.query("SELECT name, value FROM settings ORDER BY name", &[]).await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
            .filter(|(name, _)| name.starts_with(prefix))
            .collect())
    }

    async fn rewrap(&self, changes: &[Rewrap]) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEYS]).await.map_err(map_err)?;
        for change in changes {
            let updated = match &change.target {
                RewrapTarget::IssuerKey(id) => {
                    tx.execute(
                        "UPDATE issuer_keys SET private_pkcs8 = $3 WHERE id = $1 AND private_pkcs8 = $2",
                        &[id, &change.old, &change.new],
                    )
                    .await
                }
                RewrapTarget::Setting(name) => {
                    tx.execute(
                        "UPDATE settings SET value = $3 WHERE name = $1 AND value = $2",
                        &[name, &change.old, &change.new],
                    )
                    .await
                }
            }
            .map_err(map_err)?;
            if updated != 1 {
                return Err(StoreError::Conflict(format!("{:?} changed during the rewrap", change.target).into()));
            }
        }
        tx.commit().await.map_err(map_err)
    }
}

/// The record `(scope, key)` has, locked for this transaction.
async fn read_claim(tx: &Transaction<'_>, scope: &str, key: &str) -> Result<claims::Existing, StoreError> {
    let row = tx
        .query_one(
            "SELECT fingerprint, created_at, status, content_type, body FROM idempotency
             WHERE scope = $1 AND key = $2 FOR UPDATE",
            &[&scope, &key],
        )
        .await
        .map_err(map_err)?;
    let response = match row.get::<_, Option<i32>>(2) {
        None => None,
        Some(status) => Some(StoredResponse {
            status: u16::try_from(status).map_err(|_| StoreError::Corrupt("status".into()))?,
            content_type: row.get::<_, Option<String>>(3).unwrap_or_default(),
            body: row.get::<_, Option<Vec<u8>>>(4).unwrap_or_default(),
        }),
    };
    Ok(claims::Existing { fingerprint: row.get(0), created_at: row.get(1), response })
}

async fn apply_claim(
    tx: &Transaction<'_>,
    scope: &str,
    key: &str,
    fingerprint: &[u8],
    now: i64,
    decision: claims::Decision,
) -> Result<IdempotencyBegin, StoreError> {
    let restart = "UPDATE idempotency SET fingerprint = $3, created_at = $4, status = NULL, content_type = NULL,
                   body = NULL WHERE scope = $1 AND key = $2";
    let take_over = "UPDATE idempotency SET created_at = $3 WHERE scope = $1 AND key = $2";
    let done = match decision {
        claims::Decision::Answer(answer) => return Ok(answer),
        claims::Decision::Restart => tx.execute(restart, &[&scope, &key, &fingerprint, &now]).await,
        claims::Decision::TakeOver => tx.execute(take_over, &[&scope, &key, &now]).await,
    };
    done.map_err(map_err)?;
    Ok(IdempotencyBegin::Started)
}

#[async_trait]
impl DurabilityStore for PostgresStore {
    async fn replication(&self) -> Result<Option<Replication>, StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT current_setting('synchronous_standby_names'), current_setting('synchronous_commit'),
                        (SELECT count(*) FROM pg_stat_replication),
                        (SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum'))",
                &[],
            )
            .await
            .map_err(map_err)?;
        let count = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        Ok(Some(Replication {
            synchronous_standby_names: row.get(0),
            synchronous_commit: row.get(1),
            standbys: count(2),
            synchronous_standbys: count(3),
        }))
    }
}
