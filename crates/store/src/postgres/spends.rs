//! Group commit for spends on PostgreSQL: the spends that arrive while
//! earlier groups are committing wait together, then go to the database as
//! one transaction of batched statements (one `INSERT … SELECT FROM unnest`
//! for all of them, one `UPDATE … FROM unnest` for their idempotent
//! answers), one WAL flush for the lot. Each caller is answered only after
//! its group's `COMMIT` returned.
//!
//! The decision is still PostgreSQL's: the `INSERT … ON CONFLICT DO NOTHING`
//! against the primary key, across every node. A token that appears twice in
//! one group goes into the `INSERT` once; its later copies are decided after
//! it, in the same transaction, as any loser is (who spent it: here or
//! elsewhere). A group whose transaction fails is retried one spend at a time
//! (a spend that committed before the failure was seen finds its own row:
//! same relay, same payload), so one bad spend cannot fail its neighbours.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use deadpool_postgres::Pool;
use deadpool_postgres::Transaction;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{map_err, pool_err};
use crate::{IdempotencyCompletion, Spend, SpendOutcome, StoreError};

/// Most spends in one group.
pub const MAX_SPEND_GROUP: usize = 256;
/// Groups committing at once (each on its own pooled connection). Fewer
/// groups in flight make bigger groups: on the 2-core bench machine 1, 2 and
/// 4 gave 7,643, 7,303 and 6,542 redemptions/s. Two, so that one slow or
/// stuck group does not stop every spend of the node.
pub const GROUPS_IN_FLIGHT: usize = 2;
/// Longest a group's transaction may take; past it the group is given up
/// (its connection dropped) and its spends retried one by one.
const GROUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Spends that may wait for a group; past it a spend is refused at once
/// (`Unavailable`, a 503 at the edge).
const QUEUE_CAPACITY: usize = 4_096;

/// Counts of the spend group commits, since the batcher started.
#[derive(Debug, Default)]
pub struct SpendCommits {
    /// Group transactions attempted.
    pub groups: AtomicU64,
    /// Spends in them.
    pub spends: AtomicU64,
}

/// A spend waiting for its group, and where its outcome goes.
struct Pending {
    spend: Spend,
    reply: oneshot::Sender<Result<SpendOutcome, StoreError>>,
}

/// The queue in front of the group committer (a task on the runtime that
/// made the first spend).
pub(super) struct SpendBatcher {
    queue: mpsc::Sender<Pending>,
    commits: Arc<SpendCommits>,
}

impl SpendBatcher {
    /// Starts the committer on the current runtime.
    pub(super) fn start(pool: Pool) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let commits = Arc::new(SpendCommits::default());
        tokio::spawn(commit_groups(pool, receiver, Arc::clone(&commits)));
        Self { queue, commits }
    }

    /// The counts so far.
    pub(super) fn commits(&self) -> &SpendCommits {
        &self.commits
    }

    /// Queues `spend` and waits for its group's commit. Once queued, the
    /// spend is decided whether or not this caller still waits.
    pub(super) async fn spend(&self, spend: &Spend) -> Result<SpendOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue.try_send(Pending { spend: spend.clone(), reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                StoreError::Unavailable(format!("more than {QUEUE_CAPACITY} spends waiting").into())
            }
            mpsc::error::TrySendError::Closed(_) => StoreError::Other("the spend committer stopped".into()),
        })?;
        answer.await.map_err(|_| StoreError::Other("a spend's group commit failed".into()))?
    }
}

/// Takes what is waiting (up to [`MAX_SPEND_GROUP`]) whenever fewer than
/// [`GROUPS_IN_FLIGHT`] groups are committing, and commits it as a group in
/// a task of its own. Ends when every handle to the queue is gone.
async fn commit_groups(pool: Pool, mut receiver: mpsc::Receiver<Pending>, commits: Arc<SpendCommits>) {
    let slots = Arc::new(Semaphore::new(GROUPS_IN_FLIGHT));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        let mut group = Vec::with_capacity(MAX_SPEND_GROUP);
        if receiver.recv_many(&mut group, MAX_SPEND_GROUP).await == 0 {
            return;
        }
        commits.groups.fetch_add(1, Ordering::Relaxed);
        commits.spends.fetch_add(group.len() as u64, Ordering::Relaxed);
        let pool = pool.clone();
        tokio::spawn(async move {
            commit_group(&pool, group).await;
            drop(slot);
        });
    }
}

/// One group: all together, or (if that transaction fails or times out)
/// each spend alone, all at once.
async fn commit_group(pool: &Pool, group: Vec<Pending>) {
    let spends: Vec<&Spend> = group.iter().map(|p| &p.spend).collect();
    let together = bounded(spend_together(pool, &spends)).await;
    drop(spends);
    match together {
        Ok(outcomes) => {
            for (pending, outcome) in group.into_iter().zip(outcomes) {
                let _ = pending.reply.send(Ok(outcome));
            }
        }
        Err(_) if group.len() > 1 => {
            let mut alone = tokio::task::JoinSet::new();
            for pending in group {
                let pool = pool.clone();
                alone.spawn(async move {
                    let outcome = bounded(spend_together(&pool, &[&pending.spend])).await;
                    let _ = pending.reply.send(outcome.and_then(|mut o| o.pop().ok_or_else(no_outcome)));
                });
            }
            while alone.join_next().await.is_some() {}
        }
        Err(e) => {
            for pending in group {
                let _ = pending.reply.send(Err(e.clone()));
            }
        }
    }
}

/// `work` within [`GROUP_TIMEOUT`].
async fn bounded<T>(work: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    tokio::time::timeout(GROUP_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(StoreError::Unavailable("a spend group timed out".into())))
}

fn no_outcome() -> StoreError {
    StoreError::Other("a spend got no outcome".into())
}

/// The group's transaction; each spend's outcome, in order, once committed.
async fn spend_together(pool: &Pool, spends: &[&Spend]) -> Result<Vec<SpendOutcome>, StoreError> {
    let mut client = pool.get().await.map_err(pool_err)?;
    let tx = client.transaction().await.map_err(map_err)?;
    // Each token once (its first copy), in one order on every node (two
    // groups inserting the same tokens in opposite orders could deadlock).
    let mut seen = HashSet::new();
    let mut first: Vec<&Spend> = spends.iter().copied().filter(|s| seen.insert(token_of(s))).collect();
    first.sort_by(|a, b| (&a.key_id, &a.nonce, a.expires_at).cmp(&(&b.key_id, &b.nonce, b.expires_at)));
    let mut won = insert_all(&tx, &first).await?;
    // The first copy of an inserted token is its winner.
    let mut outcomes: Vec<Option<SpendOutcome>> = Vec::with_capacity(spends.len());
    let mut completions = Vec::new();
    for spend in spends {
        let winner = won.remove(&token_of(spend));
        if winner {
            completions.extend(spend.idempotency.as_ref());
        }
        outcomes.push(winner.then_some(SpendOutcome::Spent));
    }
    complete_all(&tx, &completions).await?;
    // Losers, and later copies of a token within the group.
    for (spend, outcome) in spends.iter().zip(outcomes.iter_mut()) {
        if outcome.is_none() {
            *outcome = Some(super::relays::earlier_spend(&tx, spend).await?);
        }
    }
    #[cfg(feature = "fault-injection")]
    crate::fault::before_commit("spend");
    tx.commit().await.map_err(map_err)?;
    #[cfg(feature = "fault-injection")]
    crate::fault::after_commit("spend");
    outcomes.into_iter().map(|o| o.ok_or_else(no_outcome)).collect()
}

/// A token's identity: the primary key of `spent_tokens`.
type TokenId = (String, Vec<u8>, i64);

fn token_of(spend: &Spend) -> TokenId {
    (spend.key_id.clone(), spend.nonce.clone(), spend.expires_at)
}

/// One `INSERT` for every spend (each token once); returns the tokens this
/// statement inserted, i.e. the spends that won.
async fn insert_all(tx: &Transaction<'_>, spends: &[&Spend]) -> Result<HashSet<TokenId>, StoreError> {
    let key_ids: Vec<&str> = spends.iter().map(|s| s.key_id.as_str()).collect();
    let nonces: Vec<&[u8]> = spends.iter().map(|s| s.nonce.as_slice()).collect();
    let expires: Vec<i64> = spends.iter().map(|s| s.expires_at).collect();
    let relays: Vec<&str> = spends.iter().map(|s| s.relay_token.as_str()).collect();
    let spent_at: Vec<i64> = spends.iter().map(|s| s.spent_at).collect();
    let payloads: Vec<&str> = spends.iter().map(|s| s.claim_payload.as_str()).collect();
    let insert = tx
        .prepare_cached(
            "INSERT INTO spent_tokens (key_id, nonce, expires_at, relay_token, spent_at, claim_payload)
             SELECT * FROM unnest($1::text[], $2::bytea[], $3::int8[], $4::text[], $5::int8[], $6::text[])
             ON CONFLICT (key_id, nonce, expires_at) DO NOTHING
             RETURNING key_id, nonce, expires_at",
        )
        .await
        .map_err(map_err)?;
    let rows =
        tx.query(&insert, &[&key_ids, &nonces, &expires, &relays, &spent_at, &payloads]).await.map_err(map_err)?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
}

/// The winners' idempotent answers, in one `UPDATE`.
async fn complete_all(tx: &Transaction<'_>, completions: &[&IdempotencyCompletion]) -> Result<(), StoreError> {
    if completions.is_empty() {
        return Ok(());
    }
    let scopes: Vec<&str> = completions.iter().map(|c| c.scope.as_str()).collect();
    let keys: Vec<&str> = completions.iter().map(|c| c.key.as_str()).collect();
    let statuses: Vec<i32> = completions.iter().map(|c| i32::from(c.response.status)).collect();
    let types: Vec<&str> = completions.iter().map(|c| c.response.content_type.as_str()).collect();
    let bodies: Vec<&[u8]> = completions.iter().map(|c| c.response.body.as_slice()).collect();
    tx.execute(
        "UPDATE idempotency AS i SET status = u.status, content_type = u.content_type, body = u.body
         FROM unnest($1::text[], $2::text[], $3::int4[], $4::text[], $5::bytea[])
              AS u(scope, key, status, content_type, body)
         WHERE i.scope = u.scope AND i.key = u.key AND i.status IS NULL",
        &[&scopes, &keys, &statuses, &types, &bodies],
    )
    .await
    .map_err(map_err)?;
    Ok(())
}
