//! Automatic key rotation. Every node runs [`Service::rotate_due_keys`] on a
//! timer; the store makes each step happen once however many nodes take it:
//!
//! ```text
//!   active key A, policy lifetime L, announcement lead T (≥ the directory max-age)
//!   at A.not_before + L − T   announce B: pending, not_before = A.not_before + L
//!                             (store::announce_issuer_key: one winner across nodes)
//!   at A.not_before + L       B active, A verify-only (store::promote_due_keys, once)
//!   at A.rotated_at + overlap A retired (overlap ≥ the longest token lifetime)
//! ```
//!
//! Clients see B in the directory at least one max-age before it signs, so a
//! cached directory always holds the key a token was signed with; tokens
//! signed by A just before the switch stay redeemable for the overlap.

use blindpass_domain::KeyState;

use crate::key_admin::KeyAdmin;
use crate::metrics::Metrics;
use crate::{Environment, KeyError, Service};

/// Rotate the active key of (`environment`, `token_type`) every
/// `lifetime_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// The environment.
    pub environment: Environment,
    /// The token type.
    pub token_type: u16,
    /// How long a key signs before its successor takes over.
    pub lifetime_secs: i64,
}

/// What one tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RotationTick {
    /// Successors this node announced (won the store's one insert).
    pub announced: u64,
    /// Pending keys promoted by this tick.
    pub promoted: u64,
    /// Verify-only keys retired at the end of their overlap.
    pub retired: u64,
    /// Policies whose step failed (logged, counted, retried next tick).
    pub failures: u64,
}

impl Service {
    /// One scheduler tick over every configured policy: promote due keys,
    /// announce a successor where one is due, retire verify-only keys past
    /// their overlap, and bring the time-to-rotation gauges up to date. A
    /// failing policy is logged and counted; the others still run.
    pub async fn rotate_due_keys(&self) -> RotationTick {
        self.rotation().tick().await
    }

    fn rotation(&self) -> Rotation<'_> {
        Rotation {
            admin: self.key_admin(),
            policies: &self.config().key_rotation,
            announce_secs: self.config().key_announce_secs,
            overlap_secs: self.config().key_overlap_secs,
            metrics: self.metrics(),
        }
    }
}

/// Automatic rotation over what it needs: key administration, the
/// policies, the announcement lead, the overlap and the metrics it counts.
struct Rotation<'a> {
    admin: KeyAdmin<'a>,
    policies: &'a [RotationPolicy],
    announce_secs: i64,
    overlap_secs: i64,
    metrics: &'a Metrics,
}

impl Rotation<'_> {
    async fn tick(&self) -> RotationTick {
        let mut tick = RotationTick::default();
        let policies = self.policies;
        if policies.is_empty() {
            return tick;
        }
        let now = self.admin.clock.now();
        match self.admin.store.promote_due_keys(now).await {
            Ok(n) => tick.promoted = n,
            Err(e) => {
                tracing::warn!(error = %e, "key rotation: promoting due keys failed");
                tick.failures += 1;
                self.metrics.rotation_failed();
            }
        }
        let mut next = Vec::new();
        for policy in policies {
            match self.rotate_one(policy, now, &mut tick).await {
                Ok(due) => next.extend(due.map(|at| (policy.environment, policy.token_type, at - now))),
                Err(e) => {
                    tracing::warn!(environment = %policy.environment, token_type = policy.token_type, error = %e,
                                   "key rotation failed; retried next tick");
                    tick.failures += 1;
                    self.metrics.rotation_failed();
                }
            }
        }
        self.metrics.set_next_rotations(next.into_iter());
        let changed = tick.announced + tick.promoted + tick.retired > 0;
        if changed && let Err(e) = self.admin.keys.reload().await {
            tracing::warn!(error = %e, "key rotation: reloading keys failed");
        }
        tick
    }

    /// One policy's step; returns when its active key's successor is (or
    /// was) due to be announced.
    async fn rotate_one(
        &self,
        policy: &RotationPolicy,
        now: i64,
        tick: &mut RotationTick,
    ) -> Result<Option<i64>, KeyError> {
        let keys = self.admin.store.issuer_key_metadata(Some(policy.environment)).await?;
        let of_type = || keys.iter().filter(|k| k.token_type == policy.token_type);
        let overlap = self.overlap_secs;
        for old in of_type().filter(|k| k.state == KeyState::VerifyOnly) {
            if old.rotated_at.is_some_and(|at| now >= at.saturating_add(overlap))
                && self.admin.store.retire_issuer_key(&old.id, now).await?
            {
                tracing::info!(key_id = %old.id, "key rotation: retired a key past its overlap");
                tick.retired += 1;
            }
        }
        let Some(active) = of_type().filter(|k| k.state == KeyState::Active).max_by_key(|k| k.not_before) else {
            return Ok(None);
        };
        let takes_over = active.not_before.saturating_add(policy.lifetime_secs);
        let due = takes_over.saturating_sub(self.announce_secs);
        if now < due || of_type().any(|k| k.state == KeyState::Pending) {
            return Ok(Some(due));
        }
        let mut successor = self.admin.generate_key_record(policy.environment, policy.token_type).await?;
        successor.state = KeyState::Pending;
        // Overdue (a node was down): still announce a full lead ahead.
        successor.not_before = takes_over.max(now.saturating_add(self.announce_secs));
        if self.admin.store.announce_issuer_key(&successor, &active.id).await? {
            tracing::info!(environment = %policy.environment, token_type = policy.token_type, key_id = %successor.id,
                           not_before = successor.not_before, "key rotation: successor announced");
            tick.announced += 1;
            self.metrics.rotated();
        } else {
            // Another node announced first: a key made in a token is not
            // left behind there.
            self.admin.discard_generated(&successor).await;
        }
        Ok(Some(due))
    }
}
