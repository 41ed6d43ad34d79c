//! The issuer-key lifecycle, as pure functions of a key's record and `now`.
//!
//! ```text
//!   pending ──(not_before comes)──▶ active ──(rotate)──▶ verify-only ──(overlap ends / retire)──▶ retired
//!      │                                                                                         ▲
//!      └────────────────────────────────(retire)─────────────────────────────────────────────────┘
//! ```
//!
//! - a key **issues** while it is `active` and its `not_before` has come; so
//!   does a `pending` key whose `not_before` has come, before any node has
//!   promoted it: every node reads the same record and the same clock, so
//!   the announced key takes over on every node at once, not at each node's
//!   next key refresh;
//! - a key **verifies** while it issues, and after a rotation for
//!   `overlap_secs` more (tokens signed just before the rotation stay
//!   redeemable); `retired` keys never verify, `pending` ones only once
//!   their `not_before` has come;
//! - the **directory** lists what verifies plus the `pending` key (announced
//!   ahead, with its future `not-before`), in lifecycle order;
//! - a `pending` key is **due** for promotion once its `not_before` has come
//!   (the store promotes it, under its lifecycle lock; never a retired key).
//!
//! Every rule about key states lives here; the key ring, issuance,
//! redemption and the directory ask this module.

use blindpass_domain::KeyState;
use blindpass_store::IssuerKey;

/// Why a key does not issue now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotIssuing {
    /// Pending, or active with a `not_before` still ahead.
    NotYetValid,
    /// Rotated out: verifies for the overlap, issues no more.
    RotatedOut,
    /// Retired: neither issues nor verifies.
    Retired,
}

/// The lifecycle rules with the deployment's rotation overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    /// How long a rotated-out key keeps verifying.
    pub overlap_secs: i64,
}

impl Lifecycle {
    /// Whether `key` may issue at `now`, and why not.
    pub(crate) fn can_issue(&self, key: &IssuerKey, now: i64) -> Result<(), NotIssuing> {
        match key.state {
            KeyState::Active | KeyState::Pending if key.not_before <= now => Ok(()),
            KeyState::Active | KeyState::Pending => Err(NotIssuing::NotYetValid),
            KeyState::VerifyOnly => Err(NotIssuing::RotatedOut),
            KeyState::Retired => Err(NotIssuing::Retired),
        }
    }

    /// Whether a token signed by `key` is accepted at `now`.
    pub fn can_verify(&self, key: &IssuerKey, now: i64) -> bool {
        match key.state {
            KeyState::Active | KeyState::Pending => key.not_before <= now,
            KeyState::VerifyOnly => self.within_overlap(key, now),
            KeyState::Retired => false,
        }
    }

    /// Whether the directory lists `key` at `now`.
    pub(crate) fn is_listed(&self, key: &IssuerKey, now: i64) -> bool {
        match key.state {
            KeyState::Pending | KeyState::Active => true,
            KeyState::VerifyOnly => self.within_overlap(key, now),
            KeyState::Retired => false,
        }
    }

    /// Whether `key` should be promoted to active at `now`.
    pub fn is_due(&self, key: &IssuerKey, now: i64) -> bool {
        key.state == KeyState::Pending && key.not_before <= now
    }

    fn within_overlap(&self, key: &IssuerKey, now: i64) -> bool {
        key.rotated_at.is_none_or(|rotated| now < rotated.saturating_add(self.overlap_secs))
    }
}

/// The directory's order within an environment: the key that will sign
/// next, the one signing now, then those that still verify.
pub(crate) fn directory_rank(state: KeyState) -> u8 {
    match state {
        KeyState::Pending => 0,
        KeyState::Active => 1,
        KeyState::VerifyOnly => 2,
        KeyState::Retired => 3,
    }
}

#[cfg(test)]
mod tests {
    use blindpass_domain::Environment;
    use zeroize::Zeroizing;

    use super::*;

    const OVERLAP: i64 = 100;
    const RULES: Lifecycle = Lifecycle { overlap_secs: OVERLAP };

    fn key(state: KeyState, not_before: i64, rotated_at: Option<i64>) -> IssuerKey {
        IssuerKey {
            id: "k".into(),
            environment: Environment::Sandbox,
            token_type: 2,
            state,
            private_pkcs8: Zeroizing::new(Vec::new()),
            not_before,
            rotated_at,
            retired_at: None,
            created_at: 0,
        }
    }

    #[test]
    fn the_rules_as_a_table() {
        use KeyState::{Active, Pending, VerifyOnly};
        use NotIssuing::{NotYetValid, RotatedOut};
        const RETIRED: KeyState = KeyState::Retired;
        // state, not_before, rotated_at, now → issues, verifies, listed, due
        type Row = (KeyState, i64, Option<i64>, i64, Result<(), NotIssuing>, bool, bool, bool);
        let table: &[Row] = &[
            (Pending, 50, None, 10, Err(NotYetValid), false, true, false),
            // Due: issues and verifies on a node that has not promoted it yet.
            (Pending, 50, None, 50, Ok(()), true, true, true),
            (Active, 0, None, 10, Ok(()), true, true, false),
            (Active, 50, None, 49, Err(NotYetValid), false, true, false),
            (Active, 50, None, 50, Ok(()), true, true, false),
            (VerifyOnly, 0, Some(1000), 1000, Err(RotatedOut), true, true, false),
            (VerifyOnly, 0, Some(1000), 1000 + OVERLAP - 1, Err(RotatedOut), true, true, false),
            (VerifyOnly, 0, Some(1000), 1000 + OVERLAP, Err(RotatedOut), false, false, false),
            (VerifyOnly, 0, None, 1_000_000, Err(RotatedOut), true, true, false),
            (RETIRED, 0, Some(1000), 1001, Err(NotIssuing::Retired), false, false, false),
            (RETIRED, 0, None, 0, Err(NotIssuing::Retired), false, false, false),
        ];
        for &(state, not_before, rotated_at, now, issues, verifies, listed, due) in table {
            let k = key(state, not_before, rotated_at);
            let row = format!("{state:?} not_before={not_before} rotated_at={rotated_at:?} now={now}");
            assert_eq!(RULES.can_issue(&k, now), issues, "issues: {row}");
            assert_eq!(RULES.can_verify(&k, now), verifies, "verifies: {row}");
            assert_eq!(RULES.is_listed(&k, now), listed, "listed: {row}");
            assert_eq!(RULES.is_due(&k, now), due, "due: {row}");
        }
    }

    #[test]
    fn a_key_that_issues_always_verifies_and_is_listed() {
        for state in [KeyState::Pending, KeyState::Active, KeyState::VerifyOnly, KeyState::Retired] {
            for now in [-1, 0, 1, 99, 100, 101, i64::MAX] {
                let k = key(state, 0, Some(0));
                if RULES.can_issue(&k, now).is_ok() {
                    assert!(RULES.can_verify(&k, now) && RULES.is_listed(&k, now), "{state:?} at {now}");
                }
                if RULES.can_verify(&k, now) {
                    assert!(RULES.is_listed(&k, now), "{state:?} at {now}");
                }
            }
        }
    }

    #[test]
    fn an_overlap_near_the_end_of_time_does_not_overflow() {
        let k = key(KeyState::VerifyOnly, 0, Some(i64::MAX - 1));
        assert!(RULES.can_verify(&k, i64::MAX - 1));
    }

    #[test]
    fn directory_order_is_next_now_then_old() {
        let ranks: Vec<u8> =
            [KeyState::Pending, KeyState::Active, KeyState::VerifyOnly, KeyState::Retired].map(directory_rank).into();
        assert!(ranks.windows(2).all(|w| w[0] < w[1]));
    }
}
