//! The work a node does on a timer beside requests: pruning expired
//! records, the replication guard, and the rotation scheduler (with a
//! policy). Each is a task of its own, aborted when the node stops serving.

use std::time::Duration;

use blindpass_service::Service;

use crate::idempotency;

/// How often expired records are pruned.
const PRUNE_TICK: Duration = Duration::from_secs(600);
/// How often the store's replication is read (the replication guard).
const REPLICATION_TICK: Duration = Duration::from_secs(5);
/// How often every node runs the rotation scheduler (with a policy).
const ROTATION_TICK: Duration = Duration::from_secs(5);

/// The node's timed tasks; dropping this aborts them.
pub(crate) struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Tasks {
    /// Starts the pruner and, with a rotation policy, the rotation
    /// scheduler, each at once and then every period; and the replication
    /// guard one period from now (`serve` checks once before it listens).
    pub(crate) fn spawn(service: &Service) -> Tasks {
        let mut tasks = vec![
            every(service, PRUNE_TICK, At::Once, |service| async move { prune(&service).await }),
            every(service, REPLICATION_TICK, At::NextTick, |service| async move {
                service.check_replication().await;
            }),
        ];
        if !service.config().key_rotation.is_empty() {
            tasks.push(every(service, ROTATION_TICK, At::Once, |service| async move {
                service.rotate_due_keys().await;
            }));
        }
        Tasks(tasks)
    }
}

/// When a timed task first runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum At {
    /// Now.
    Once,
    /// One period from now.
    NextTick,
}

/// Runs `work` every `period`, from `first` (a late tick waits: ticks never
/// bunch up).
fn every<F, Fut>(service: &Service, period: Duration, first: At, work: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(Service) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let service = service.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if first == At::NextTick {
            tick.tick().await;
        }
        loop {
            tick.tick().await;
            work(service.clone()).await;
        }
    })
}

async fn prune(service: &Service) {
    match service.prune(idempotency::IDEMPOTENCY_TTL_SECS).await {
        Ok(p) => tracing::debug!(
            idempotency = p.idempotency,
            windows = p.windows,
            relays = p.relays,
            spent_tokens = p.spent_tokens,
            "pruned expired records"
        ),
        Err(e) => tracing::warn!(error = %e, "pruning failed"),
    }
}
