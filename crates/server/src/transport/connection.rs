//! One connection's life: its place in its client's share, whether it has
//! a request in flight, and how it ends (graceful shutdown when the server
//! stops or the connection is idle, dropped if it does not close).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::server::graceful::GracefulConnection;
use tower::ServiceExt;

/// Open connections per client bucket; a client without one is forgotten,
/// so the map is never larger than the connection cap.
#[derive(Debug, Default)]
pub(super) struct Shares(Mutex<HashMap<String, usize>>);

/// One connection's place in its client's share.
pub(super) struct Share {
    shares: Arc<Shares>,
    client: String,
}

impl Shares {
    pub(super) fn take(self: &Arc<Self>, client: String, max: usize) -> Option<Share> {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(client.clone()).or_insert(0);
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(Share { shares: Arc::clone(self), client })
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut map = self.shares.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.client);
            }
        }
    }
}

/// Whether a connection has a request in flight, and since when it has had
/// none.
pub(super) struct Activity {
    active: AtomicUsize,
    born: Instant,
    /// Milliseconds after `born` of the last request's end (or the start).
    last: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self { active: AtomicUsize::new(0), born: Instant::now(), last: AtomicU64::new(0) })
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last.load(Ordering::Acquire));
        Some(self.born.elapsed().saturating_sub(last))
    }
}

/// Marks a request in flight on its connection until dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.active.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(activity))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let at = u64::try_from(self.0.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last.store(at, Ordering::Release);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The app as a hyper service for one connection: each request tagged with
/// the connection's peer (and attester), and counted in its activity.
pub(super) fn tracked(
    app: Router,
    activity: Arc<Activity>,
    peer: SocketAddr,
    attester: Option<Arc<crate::tls::Attester>>,
) -> impl hyper::service::Service<
    axum::http::Request<Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send + 'static,
> + Clone {
    let tag = tag(peer, attester);
    hyper::service::service_fn(move |request: axum::http::Request<Incoming>| {
        let busy = Busy::new(&activity);
        let request = tag.clone()(request);
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await;
            drop(busy);
            response
        }
    })
}

/// What the idle watchdog does at a tick.
enum Watchdog {
    Wait,
    /// Idle for the timeout: shut down gracefully.
    Close,
    /// Told to close a timeout ago and still open (a stalled reader): drop.
    Drop,
}

fn watchdog(closing: Option<Instant>, stopping: bool, activity: &Activity, idle: Duration) -> Watchdog {
    match closing {
        // On server shutdown, `drain` enforces the deadline.
        Some(since) if !stopping && since.elapsed() >= idle => Watchdog::Drop,
        Some(_) => Watchdog::Wait,
        None if activity.idle_for().is_some_and(|d| d >= idle) => Watchdog::Close,
        None => Watchdog::Wait,
    }
}

/// Resolves when a connection must be dropped at once (its client
/// certificate is no longer trusted).
pub(super) type Revoked = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Runs one connection until it ends: shut down gracefully when the server
/// stops or when it has been idle for `idle`, and dropped if it has not
/// closed `idle` after that (or, on server shutdown, by `drain`); dropped at
/// once when `revoked` resolves.
pub(super) async fn drive<C>(
    connection: C,
    activity: Arc<Activity>,
    idle: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    revoked: Option<Revoked>,
    peer: SocketAddr,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut connection = std::pin::pin!(connection);
    let mut revoked = revoked.unwrap_or_else(|| Box::pin(std::future::pending()));
    let mut tick = tokio::time::interval(idle.clamp(Duration::from_millis(50), Duration::from_millis(500)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing: Option<Instant> = None;
    let mut stopping = *stop.borrow();
    loop {
        if stopping && closing.is_none() {
            connection.as_mut().graceful_shutdown();
            closing = Some(Instant::now());
        }
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %peer, error = %e, "connection closed with an error");
                }
                return;
            }
            () = &mut revoked => {
                return tracing::info!(peer = %peer, "the client CA no longer trusts this connection's certificate: closed");
            }
            changed = stop.changed(), if !stopping => {
                stopping = changed.is_err() || *stop.borrow();
            }
            _ = tick.tick() => match watchdog(closing, stopping, &activity, idle) {
                Watchdog::Wait => {}
                Watchdog::Close => {
                    tracing::debug!(peer = %peer, "idle connection: closing");
                    connection.as_mut().graceful_shutdown();
                    closing = Some(Instant::now());
                }
                Watchdog::Drop => return tracing::debug!(peer = %peer, "idle connection did not close: dropped"),
            },
        }
    }
}

/// What every request of a connection carries: its peer address and, over
/// mTLS, the attester its client certificate names.
fn tag(
    peer: SocketAddr,
    attester: Option<Arc<crate::tls::Attester>>,
) -> impl FnMut(axum::http::Request<Incoming>) -> axum::http::Request<Incoming> + Clone {
    move |mut request| {
        request.extensions_mut().insert(ConnectInfo(peer));
        if let Some(attester) = &attester {
            request.extensions_mut().insert(Arc::clone(attester));
        }
        request
    }
}
