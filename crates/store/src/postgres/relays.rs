//! Relays and spent tokens in PostgreSQL; spent tokens are partitioned by day of expiry, and a spend commits with its claim and idempotent response
//! (in a group of spends: `spends.rs`).

use super::*;
use crate::ClaimFormat;
use tokio_postgres::Transaction;

fn relay_from_row(r: &tokio_postgres::Row) -> Result<Relay, StoreError> {
    let passed: Option<bool> = r.get(6);
    let result_at: Option<i64> = r.get(8);
    let result = match (passed, result_at) {
        (Some(passed), Some(recorded_at)) => Some(ClaimResult {
            passed,
            methodology_json: r.get::<_, Option<String>>(7).unwrap_or_else(|| "[]".into()),
            recorded_at,
        }),
        _ => None,
    };
    Ok(Relay {
        token: r.get(0),
        secret_hash: hash32(r.get(1), "relay secret hash")?,
        environment: r.get::<_, String>(2).parse().map_err(corrupt("environment"))?,
        claim_type: r.get(3),
        encryption_key_der: r.get(4),
        claim_format: ClaimFormat::from_stored(r.get(10), r.get(11))?,
        created_at: r.get(5),
        expires_at: r.get(9),
        result,
    })
}

#[async_trait]
impl RelayStore for PostgresStore {
    async fn insert_relay(&self, relay: &Relay) -> Result<(), StoreError> {
        let (passed, methodology, at) = match &relay.result {
            Some(r) => (Some(r.passed), Some(r.methodology_json.clone()), Some(r.recorded_at)),
            None => (None, None, None),
        };
        self.execute(
            "INSERT INTO relays (token, secret_hash, environment, claim_type, encryption_key_der, created_at,
                                 result_passed, methodology, result_at, expires_at, claim_format, jwe_kid)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                &relay.token,
                &relay.secret_hash.as_slice(),
                &relay.environment.as_str(),
                &relay.claim_type,
                &relay.encryption_key_der,
                &relay.created_at,
                &passed,
                &methodology,
                &at,
                &relay.expires_at,
                &relay.claim_format.as_str(),
                &relay.claim_format.kid(),
            ],
        )
        .await
        .map(drop)
    }

    async fn relay_by_token(&self, token: &str) -> Result<Option<Relay>, StoreError> {
        let rows = self
            .query(
                "SELECT token, secret_hash, environment, claim_type, encryption_key_der, created_at,
                        result_passed, methodology, result_at, expires_at, claim_format, jwe_kid
                 FROM relays WHERE token = $1",
                &[&token],
            )
            .await?;
        rows.first().map(relay_from_row).transpose()
    }

    async fn record_relay_result(&self, token: &str, result: &ClaimResult) -> Result<RecordOutcome, StoreError> {
        let n = self
            .execute(
                "UPDATE relays SET result_passed = $2, methodology = $3, result_at = $4
                 WHERE token = $1 AND result_passed IS NULL",
                &[&token, &result.passed, &result.methodology_json, &result.recorded_at],
            )
            .await?;
        if n == 1 {
            return Ok(RecordOutcome::Recorded);
        }
        let exists = !self.query("SELECT 1 FROM relays WHERE token = $1", &[&token]).await?.is_empty();
        Ok(if exists { RecordOutcome::AlreadyRecorded } else { RecordOutcome::NotFound })
    }

    async fn prune_relays(&self, now: i64) -> Result<u64, StoreError> {
        self.execute("DELETE FROM relays WHERE expires_at <= $1", &[&now]).await
    }
}

#[async_trait]
impl SpentTokenStore for PostgresStore {
    async fn spend_token(&self, spend: &Spend) -> Result<SpendOutcome, StoreError> {
        self.spend_batcher().spend(spend).await
    }

    async fn prune_spent_tokens(&self, expired_before: i64) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_PARTITIONS]).await.map_err(map_err)?;
        // Partitions ahead, so that new spends land in a partition that can
        // later be dropped whole.
        let first = expired_before.div_euclid(PARTITION_SECS);
        for day in first..=first + PARTITIONS_AHEAD {
            create_partition(&tx, day).await?;
        }
        let mut pruned = drop_expired_partitions(&tx, expired_before).await?;
        // Rows of days that had no partition, and the partial day.
        pruned +=
            tx.execute("DELETE FROM spent_tokens WHERE expires_at < $1", &[&expired_before]).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(pruned)
    }
}

/// The token was spent before: here (its claim again) or elsewhere.
pub(super) async fn earlier_spend(tx: &Transaction<'_>, spend: &Spend) -> Result<SpendOutcome, StoreError> {
    let row = tx
        .query_one(
            "SELECT relay_token, claim_payload FROM spent_tokens
             WHERE key_id = $1 AND nonce = $2 AND expires_at = $3",
            &[&spend.key_id, &spend.nonce, &spend.expires_at],
        )
        .await
        .map_err(map_err)?;
    Ok(SpendOutcome::earlier(&row.get::<_, String>(0), row.get(1), spend))
}

/// The partition of UTC day `day`, unless it exists. A partition cannot be
/// attached over rows the default partition already holds for its range;
/// those days stay in the default.
async fn create_partition(tx: &Transaction<'_>, day: i64) -> Result<(), StoreError> {
    let (from, to) = (day * PARTITION_SECS, (day + 1) * PARTITION_SECS);
    let name = format!("spent_tokens_d{day}");
    let exists: bool = tx.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name]).await.map_err(map_err)?.get(0);
    if exists {
        return Ok(());
    }
    let clash: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM spent_tokens_default WHERE expires_at >= $1 AND expires_at < $2)",
            &[&from, &to],
        )
        .await
        .map_err(map_err)?
        .get(0);
    if !clash {
        let create = format!("CREATE TABLE {name} PARTITION OF spent_tokens FOR VALUES FROM ({from}) TO ({to})");
        tx.batch_execute(&create).await.map_err(map_err)?;
    }
    Ok(())
}

/// Drops whole partitions whose every token expired before the horizon.
/// Returns how many records went with them.
async fn drop_expired_partitions(tx: &Transaction<'_>, expired_before: i64) -> Result<u64, StoreError> {
    let partitions = tx
        .query(
            "SELECT c.relname::TEXT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'spent_tokens'::regclass AND c.relname::TEXT LIKE 'spent_tokens_d%'",
            &[],
        )
        .await
        .map_err(map_err)?;
    let mut pruned = 0u64;
    for row in partitions {
        let name: String = row.get(0);
        let Some(day) = name.strip_prefix("spent_tokens_d").and_then(|d| d.parse::<i64>().ok()) else { continue };
        if (day + 1) * PARTITION_SECS <= expired_before {
            let count: i64 = tx.query_one(&format!("SELECT count(*) FROM {name}"), &[]).await.map_err(map_err)?.get(0);
            tx.batch_execute(&format!("DROP TABLE {name}")).await.map_err(map_err)?;
            pruned += count.max(0) as u64;
        }
    }
    Ok(pruned)
}
