//! Admission: whether a request may take any of the node's capacity,
//! decided from its head alone, before its body is read or the store is
//! touched.
//!
//! ```text
//! probe (/health, /health/ready)   → always admitted, never counted or shed
//! client (peer, or the proxy's forwarded address)
//!   → the client's in-flight share (429 past it: that client's own doing)
//!   → its class's share of the node: anonymous requests may hold at most
//!     `max_anonymous_in_flight` of `max_in_flight`, so they can never take
//!     what authenticated requests need (503 past it)
//!   → the body gets a read deadline (408 and the connection closed)
//! ```
//!
//! A request is *authenticated* for this purpose when it carries an
//! `Authorization` header or arrived over an attester's client certificate,
//! to a route that checks the credential before it reads the body
//! (`api_key.rs`); failed checks are answered at once and counted per
//! client address (`--auth-failure-limit`), so a made-up header buys an
//! attacker at most its own client share, and on an anonymous route
//! nothing. Anonymous routes
//! count the client's rate limit in their first layer, before the body
//! (`relays.rs`, `redeem.rs`, `rfc.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use blindpass_protocol::api::PRIVACY_PASSES_PATH;

use crate::client_addr::{ClientAddr, TrustedProxies, client_address};
use crate::error::ApiError;
use crate::json::BodyTimedOut;
use crate::{READY_PATH, tls::Attester};

/// How requests share the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Most requests being answered at once, all classes together.
    pub max_in_flight: usize,
    /// Most anonymous requests (no credential) being answered at once; the
    /// rest of `max_in_flight` is kept for authenticated ones.
    pub max_anonymous_in_flight: usize,
    /// Most requests one client (address; IPv6 by /64) has in flight.
    pub max_in_flight_per_client: usize,
    /// Time a request body has to arrive, counted from admission, on top of
    /// what its declared length needs at `body_min_bytes_per_sec`.
    pub body_read_timeout: Duration,
    /// The slowest upload rate a body may use (bytes per second).
    pub body_min_bytes_per_sec: u64,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        Self {
            max_in_flight: 1024,
            max_anonymous_in_flight: 512,
            max_in_flight_per_client: 128,
            body_read_timeout: Duration::from_secs(5),
            body_min_bytes_per_sec: 16 * 1024,
        }
    }
}

impl AdmissionLimits {
    /// How long a body of `declared` bytes (if declared) may take. A
    /// declared length is the client's word: the transfer time it buys is
    /// capped at an hour (a body that large is refused 413 anyway).
    pub fn body_deadline(&self, declared: Option<u64>) -> Duration {
        let rate = self.body_min_bytes_per_sec.max(1);
        let transfer = declared.map_or(0, |len| len.div_ceil(rate)).min(3600);
        self.body_read_timeout.saturating_add(Duration::from_secs(transfer))
    }
}

/// A request's class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `/health` and `/health/ready`: never shed.
    Probe,
    /// Carries a credential (API key or attester certificate).
    Authenticated,
    /// Everything else.
    Anonymous,
}

impl Class {
    /// The class of a request, from its head: authenticated when it carries
    /// a credential (`Authorization`, or an attester's client certificate)
    /// to a route that checks one before reading the body (issuance, the
    /// verifier's result); anonymous otherwise, whatever it carries, so a
    /// made-up header on an anonymous route buys nothing.
    pub fn of(request: &Request) -> Self {
        let path = request.uri().path();
        if path == "/health" || path == READY_PATH {
            return Class::Probe;
        }
        let credential = request.headers().contains_key(header::AUTHORIZATION)
            || request.extensions().get::<Arc<Attester>>().is_some();
        let checks_credentials = matches!(
            crate::metrics::route_template(path),
            PRIVACY_PASSES_PATH | crate::rfc::TOKEN_REQUEST_PATH | RESULT_ROUTE
        );
        if credential && checks_credentials { Class::Authenticated } else { Class::Anonymous }
    }
}

/// The verifier's result route, as `metrics::route_template` names it.
const RESULT_ROUTE: &str = "/api/privacy/v1/relays/{relay_token}/result";

/// The node's capacity and each client's share of it.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    total: Arc<Semaphore>,
    anonymous: Arc<Semaphore>,
    per_client: Arc<Mutex<HashMap<String, usize>>>,
}

/// What an admitted request holds until it is answered (or dropped).
#[derive(Debug)]
pub struct Slot {
    _total: OwnedSemaphorePermit,
    _anonymous: Option<OwnedSemaphorePermit>,
    _client: ClientSlot,
}

#[derive(Debug)]
struct ClientSlot {
    map: Arc<Mutex<HashMap<String, usize>>>,
    client: String,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.client);
            }
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client already has its share in flight (429).
    ClientShare,
    /// The node (or the anonymous share of it) is full (503).
    Capacity,
}

impl Admission {
    /// Empty, with `limits`.
    pub fn new(limits: AdmissionLimits) -> Self {
        let total = limits.max_in_flight.max(1);
        Self {
            limits,
            total: Arc::new(Semaphore::new(total)),
            anonymous: Arc::new(Semaphore::new(limits.max_anonymous_in_flight.clamp(1, total))),
            per_client: Arc::default(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> &AdmissionLimits {
        &self.limits
    }

    /// Takes a slot for a request of `class` from `client`, or says why not.
    /// The map of clients holds only those with a request in flight, so it
    /// is never larger than `max_in_flight`.
    pub fn try_admit(&self, client: &str, class: Class) -> Result<Slot, Refusal> {
        let client_slot = {
            let mut map = self.per_client.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = map.entry(client.to_owned()).or_insert(0);
            if *n >= self.limits.max_in_flight_per_client.max(1) {
                return Err(Refusal::ClientShare);
            }
            *n += 1;
            ClientSlot { map: Arc::clone(&self.per_client), client: client.to_owned() }
        };
        let anonymous = match class {
            Class::Anonymous => Some(Arc::clone(&self.anonymous).try_acquire_owned().map_err(|_| Refusal::Capacity)?),
            _ => None,
        };
        let total = Arc::clone(&self.total).try_acquire_owned().map_err(|_| Refusal::Capacity)?;
        Ok(Slot { _total: total, _anonymous: anonymous, _client: client_slot })
    }
}

/// The middleware: probes pass; every other request is admitted or refused
/// from its head, and its body gets its read deadline.
pub(crate) async fn admit(
    admission: Arc<Admission>,
    trusted: Arc<TrustedProxies>,
    metrics: Arc<crate::metrics::HttpMetrics>,
    mut request: Request,
    next: Next,
) -> Response {
    let class = Class::of(&request);
    if class == Class::Probe {
        return next.run(request).await;
    }
    let client = match request.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(peer)) => {
            ClientAddr(blindpass_service::client_bucket(client_address(peer.ip(), request.headers(), &trusted)))
        }
        None => ClientAddr("unknown".into()),
    };
    let slot = match admission.try_admit(&client.0, class) {
        Ok(slot) => slot,
        Err(Refusal::ClientShare) => {
            metrics.shed();
            tracing::debug!(client = %client.0, "client's in-flight share reached");
            return ApiError::TooManyInFlight(admission.limits.max_in_flight_per_client).into_response();
        }
        Err(Refusal::Capacity) => {
            metrics.shed();
            return ApiError::Overloaded.into_response();
        }
    };
    request.extensions_mut().insert(client);
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let deadline = admission.limits.body_deadline(declared);
    let request = request.map(|body| Body::new(DeadlineBody::new(body, deadline)));
    let response = next.run(request).await;
    drop(slot);
    close_after(response)
}

/// A request body that fails with [`BodyTimedOut`] once its deadline has
/// passed without its end (`json::read_body` answers it 408).
struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl DeadlineBody {
    fn new(inner: Body, deadline: Duration) -> Self {
        Self { inner, sleep: Box::pin(tokio::time::sleep(deadline)) }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

use std::future::Future;

/// Adds `Connection: close` to a 408 (HTTP/1 only: HTTP/2 forbids the
/// header, and hyper leaves it out there).
pub(crate) fn close_after(mut response: Response) -> Response {
    if response.status() == StatusCode::REQUEST_TIMEOUT {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_cannot_take_more_than_its_share() {
        let admission = Admission::new(AdmissionLimits {
            max_in_flight: 10,
            max_anonymous_in_flight: 6,
            max_in_flight_per_client: 4,
            ..AdmissionLimits::default()
        });
        let held: Vec<Slot> = (0..4).map(|_| admission.try_admit("a", Class::Anonymous).unwrap()).collect();
        assert_eq!(admission.try_admit("a", Class::Anonymous).unwrap_err(), Refusal::ClientShare);
        assert_eq!(admission.try_admit("a", Class::Authenticated).unwrap_err(), Refusal::ClientShare);
        let b: Vec<Slot> = (0..2).map(|_| admission.try_admit("b", Class::Anonymous).unwrap()).collect();
        // The anonymous share (6) is full; authenticated requests still get in.
        assert_eq!(admission.try_admit("c", Class::Anonymous).unwrap_err(), Refusal::Capacity);
        let auth: Vec<Slot> = (0..4).map(|_| admission.try_admit("c", Class::Authenticated).unwrap()).collect();
        assert_eq!(admission.try_admit("d", Class::Authenticated).unwrap_err(), Refusal::Capacity);
        drop((held, b, auth));
        assert!(admission.per_client.lock().unwrap().is_empty(), "clients without requests are forgotten");
        assert!(admission.try_admit("a", Class::Anonymous).is_ok());
    }

    #[test]
    fn a_credential_makes_a_request_authenticated_only_where_it_is_checked() {
        let request = |path: &str, auth: bool| {
            let mut r = Request::builder().uri(path);
            if auth {
                r = r.header("authorization", "Bearer x");
            }
            Class::of(&r.body(Body::empty()).unwrap())
        };
        assert_eq!(request("/api/v1/privacy-passes", true), Class::Authenticated);
        assert_eq!(request("/token-request", true), Class::Authenticated);
        assert_eq!(request("/api/privacy/v1/relays/r/result", true), Class::Authenticated);
        assert_eq!(request("/api/v1/privacy-passes", false), Class::Anonymous);
        for anonymous in [
            "/api/privacy/v1/relays/challenge",
            "/api/privacy/v1/relays",
            "/api/privacy/v1/relays/r/generate-claim",
            "/x",
        ] {
            assert_eq!(request(anonymous, true), Class::Anonymous, "{anonymous}");
        }
        assert_eq!(request("/health", false), Class::Probe);
        assert_eq!(request("/health/ready", true), Class::Probe);
    }

    #[test]
    fn a_refused_class_does_not_keep_the_client_slot() {
        let admission = Admission::new(AdmissionLimits {
            max_in_flight: 2,
            max_anonymous_in_flight: 1,
            max_in_flight_per_client: 5,
            ..AdmissionLimits::default()
        });
        let _held = admission.try_admit("a", Class::Anonymous).unwrap();
        for _ in 0..10 {
            assert_eq!(admission.try_admit("a", Class::Anonymous).unwrap_err(), Refusal::Capacity);
        }
        assert_eq!(admission.per_client.lock().unwrap().get("a"), Some(&1));
    }

    #[test]
    fn the_body_deadline_grows_with_the_declared_length() {
        let limits = AdmissionLimits::default();
        assert_eq!(limits.body_deadline(None), Duration::from_secs(5));
        assert_eq!(limits.body_deadline(Some(60)), Duration::from_secs(6));
        assert_eq!(limits.body_deadline(Some(64 * 1024)), Duration::from_secs(9));
        // A hostile Content-Length buys at most an hour, and never overflows.
        let slowest = AdmissionLimits { body_min_bytes_per_sec: 1, body_read_timeout: Duration::MAX, ..limits };
        assert_eq!(slowest.body_deadline(Some(u64::MAX)), Duration::MAX);
        assert_eq!(limits.body_deadline(Some(u64::MAX)), Duration::from_secs(5 + 3600));
    }

    #[tokio::test]
    async fn a_stalled_body_times_out_and_is_recognised() {
        let body = Body::new(DeadlineBody::new(Body::new(Stalled), Duration::from_millis(100)));
        let error = axum::body::to_bytes(body, 1024).await.unwrap_err();
        assert!(crate::json::is_body_timeout(&error), "{error:?}");
        let other = axum::Error::new(std::io::Error::other("x"));
        assert!(!crate::json::is_body_timeout(&other));
    }

    /// A body whose next byte never comes.
    struct Stalled;

    impl http_body::Body for Stalled {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
            Poll::Pending
        }
    }
}
