//! The idempotency-claim rule, written once for every backend: given the
//! record a key already has, what `idempotency_begin` answers and what it
//! writes. Each backend reads the record and applies the decision inside its
//! own transaction (`BEGIN IMMEDIATE` on SQLite, `SELECT … FOR UPDATE` on
//! PostgreSQL).

use crate::{IdempotencyBegin, StoredResponse};

/// An idempotency record as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Existing {
    /// The parameters it was first used with.
    pub(crate) fingerprint: Vec<u8>,
    /// When it was claimed (or taken over).
    pub(crate) created_at: i64,
    /// Its stored response, once completed.
    pub(crate) response: Option<StoredResponse>,
}

/// What to do about an existing record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Answer without writing.
    Answer(IdempotencyBegin),
    /// The record expired: claim it afresh for the new parameters.
    Restart,
    /// Its request never finished and its holder is presumed dead: take the
    /// claim over.
    TakeOver,
}

/// The rule: an expired record is as if absent; other parameters are a
/// mismatch; a completed record is replayed; an unfinished one is in flight
/// until `stale_after_secs`, then taken over.
pub(crate) fn decide(
    existing: Existing,
    fingerprint: &[u8],
    now: i64,
    ttl_secs: i64,
    stale_after_secs: i64,
) -> Decision {
    if existing.created_at.saturating_add(ttl_secs) <= now {
        return Decision::Restart;
    }
    if existing.fingerprint != fingerprint {
        return Decision::Answer(IdempotencyBegin::Mismatch);
    }
    match existing.response {
        Some(response) => Decision::Answer(IdempotencyBegin::Completed(response)),
        None if existing.created_at.saturating_add(stale_after_secs) <= now => Decision::TakeOver,
        None => Decision::Answer(IdempotencyBegin::InFlight),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(created_at: i64, response: Option<StoredResponse>) -> Existing {
        Existing { fingerprint: vec![1], created_at, response }
    }

    #[test]
    fn each_state_of_a_record_gets_its_answer() {
        let done = StoredResponse { status: 201, content_type: "application/json".into(), body: b"{}".to_vec() };
        let (ttl, stale) = (100, 10);
        let cases = [
            (record(0, None), vec![1], 100, Decision::Restart),
            (record(0, Some(done.clone())), vec![2], 100, Decision::Restart),
            (record(0, None), vec![2], 5, Decision::Answer(IdempotencyBegin::Mismatch)),
            (record(0, Some(done.clone())), vec![1], 99, Decision::Answer(IdempotencyBegin::Completed(done))),
            (record(0, None), vec![1], 9, Decision::Answer(IdempotencyBegin::InFlight)),
            (record(0, None), vec![1], 10, Decision::TakeOver),
        ];
        for (existing, fingerprint, now, expected) in cases {
            assert_eq!(decide(existing, &fingerprint, now, ttl, stale), expected, "at {now}");
        }
    }
}
