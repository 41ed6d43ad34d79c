//! Relays and spent tokens in SQLite; a spend commits with its claim and idempotent response,
//! in a group commit with the spends waiting beside it.

use super::*;
use crate::ClaimFormat;
use crate::IdempotencyCompletion;
use rusqlite::Transaction;

type RelayRow = (
    String,
    Vec<u8>,
    String,
    String,
    Option<Vec<u8>>,
    i64,
    Option<bool>,
    Option<String>,
    Option<i64>,
    i64,
    String,
    Option<String>,
);

fn relay_from_row(row: RelayRow) -> Result<Relay, StoreError> {
    let (
        token,
        hash,
        environment,
        claim_type,
        key,
        created_at,
        passed,
        methodology,
        result_at,
        expires_at,
        format,
        kid,
    ) = row;
    let result = match (passed, result_at) {
        (Some(passed), Some(recorded_at)) => {
            Some(ClaimResult { passed, methodology_json: methodology.unwrap_or_else(|| "[]".into()), recorded_at })
        }
        _ => None,
    };
    Ok(Relay {
        token,
        secret_hash: hash.try_into().map_err(|_| StoreError::Corrupt("relay secret hash length".into()))?,
        environment: environment.parse().map_err(corrupt("environment"))?,
        claim_type,
        encryption_key_der: key,
        claim_format: ClaimFormat::from_stored(&format, kid)?,
        created_at,
        expires_at,
        result,
    })
}

#[async_trait]
impl RelayStore for SqliteStore {
    async fn insert_relay(&self, relay: &Relay) -> Result<(), StoreError> {
        let relay = relay.clone();
        self.with(move |c| {
            let (passed, methodology, at) = match &relay.result {
                Some(r) => (Some(r.passed), Some(r.methodology_json.clone()), Some(r.recorded_at)),
                None => (None, None, None),
            };
            c.execute(
                "INSERT INTO relays (token, secret_hash, environment, claim_type, encryption_key_der, created_at,
                                     result_passed, methodology, result_at, expires_at, claim_format, jwe_kid)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    relay.token,
                    relay.secret_hash.to_vec(),
                    relay.environment.as_str(),
                    relay.claim_type,
                    relay.encryption_key_der,
                    relay.created_at,
                    passed,
                    methodology,
                    at,
                    relay.expires_at,
                    relay.claim_format.as_str(),
                    relay.claim_format.kid()
                ],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn relay_by_token(&self, token: &str) -> Result<Option<Relay>, StoreError> {
        let token = token.to_owned();
        self.with(move |c| {
            let row = c
                .prepare_cached(
                    "SELECT token, secret_hash, environment, claim_type, encryption_key_der, created_at,
                            result_passed, methodology, result_at, expires_at, claim_format, jwe_kid
                     FROM relays WHERE token = ?1",
                )
                .map_err(map_err)?
                .query_row(params![token], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                        r.get(9)?,
                        r.get(10)?,
                        r.get(11)?,
                    ))
                })
                .optional()
                .map_err(map_err)?;
            row.map(relay_from_row).transpose()
        })
        .await
    }

    async fn record_relay_result(&self, token: &str, result: &ClaimResult) -> Result<RecordOutcome, StoreError> {
        let (token, result) = (token.to_owned(), result.clone());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            let existing: Option<Option<bool>> = tx
                .query_row("SELECT result_passed FROM relays WHERE token = ?1", params![token], |r| r.get(0))
                .optional()
                .map_err(map_err)?;
            let outcome = match existing {
                None => RecordOutcome::NotFound,
                Some(Some(_)) => RecordOutcome::AlreadyRecorded,
                Some(None) => {
                    tx.execute(
                        "UPDATE relays SET result_passed = ?2, methodology = ?3, result_at = ?4 WHERE token = ?1",
                        params![token, result.passed, result.methodology_json, result.recorded_at],
                    )
                    .map_err(map_err)?;
                    RecordOutcome::Recorded
                }
            };
            tx.commit().map_err(map_err)?;
            Ok(outcome)
        })
        .await
    }

    async fn prune_relays(&self, now: i64) -> Result<u64, StoreError> {
        self.with(move |c| {
            let n = c.execute("DELETE FROM relays WHERE expires_at <= ?1", params![now]).map_err(map_err)?;
            Ok(n as u64)
        })
        .await
    }
}

#[async_trait]
impl SpentTokenStore for SqliteStore {
    async fn spend_token(&self, spend: &Spend) -> Result<SpendOutcome, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.enqueue(Work::Spend(Box::new(spend.clone()), reply))?;
        answer.await.map_err(|_| StoreError::Other("a spend's group commit panicked".into()))?
    }

    async fn prune_spent_tokens(&self, expired_before: i64) -> Result<u64, StoreError> {
        self.with(move |c| {
            let n = c
                .execute("DELETE FROM spent_tokens WHERE expires_at < ?1", params![expired_before])
                .map_err(map_err)?;
            Ok(n as u64)
        })
        .await
    }
}

/// Commits `group` in one transaction (one fsync) and then answers each
/// spend. Each spend runs inside its own savepoint, so one that fails is
/// undone alone and answered its error; if the commit fails, every spend of
/// the group is answered that error (none of them is durable). A panic
/// drops the replies (their callers see a failed call, nothing durable).
pub(super) fn commit_spends(conn: &mut Connection, group: Vec<(Box<Spend>, SpendReply)>) {
    let (spends, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
    let committed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| spend_all(conn, &spends)));
    match committed {
        Ok(Ok(outcomes)) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
        Ok(Err(e)) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
        // Dropped replies: each caller sees its call fail.
        Err(_) => {}
    }
}

/// The group's transaction: each spend's outcome, once all are committed.
fn spend_all(
    conn: &mut Connection,
    spends: &[Box<Spend>],
) -> Result<Vec<Result<SpendOutcome, StoreError>>, StoreError> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
    let outcomes = spends.iter().map(|spend| spend_in_savepoint(&mut tx, spend)).collect();
    #[cfg(feature = "fault-injection")]
    crate::fault::before_commit("spend");
    tx.commit().map_err(map_err)?;
    #[cfg(feature = "fault-injection")]
    crate::fault::after_commit("spend");
    Ok(outcomes)
}

/// One spend, undone alone (its savepoint rolled back) if it fails.
fn spend_in_savepoint(tx: &mut Transaction<'_>, spend: &Spend) -> Result<SpendOutcome, StoreError> {
    let savepoint = tx.savepoint().map_err(map_err)?;
    let outcome = spend_one(&savepoint, spend)?;
    savepoint.commit().map_err(map_err)?;
    Ok(outcome)
}

/// The decision: one `INSERT` against the primary key; the winner completes
/// its idempotent answer, a loser reads who spent it.
fn spend_one(c: &Connection, spend: &Spend) -> Result<SpendOutcome, StoreError> {
    let inserted = c
        .prepare_cached(
            "INSERT INTO spent_tokens (key_id, nonce, relay_token, spent_at, expires_at, claim_payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (key_id, nonce, expires_at) DO NOTHING",
        )
        .map_err(map_err)?
        .execute(params![
            spend.key_id,
            spend.nonce,
            spend.relay_token,
            spend.spent_at,
            spend.expires_at,
            spend.claim_payload
        ])
        .map_err(map_err)?;
    match inserted {
        1 => complete_with_spend(c, spend.idempotency.as_ref()),
        _ => earlier_spend(c, spend),
    }
}

/// The spend won: the idempotent answer built with it completes its claim in
/// the same transaction.
fn complete_with_spend(tx: &Connection, done: Option<&IdempotencyCompletion>) -> Result<SpendOutcome, StoreError> {
    if let Some(done) = done {
        complete_idempotency(tx, &done.scope, &done.key, &done.response)?;
    }
    Ok(SpendOutcome::Spent)
}

/// The token was spent before: here (its claim again) or elsewhere.
fn earlier_spend(tx: &Connection, spend: &Spend) -> Result<SpendOutcome, StoreError> {
    let (relay, payload): (String, Option<String>) = tx
        .query_row(
            "SELECT relay_token, claim_payload FROM spent_tokens
             WHERE key_id = ?1 AND nonce = ?2 AND expires_at = ?3",
            params![spend.key_id, spend.nonce, spend.expires_at],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(map_err)?;
    Ok(SpendOutcome::earlier(&relay, payload, spend))
}
