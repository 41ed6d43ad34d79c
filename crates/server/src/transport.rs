//! The server's own defences below the router: how connections are
//! accepted, read and closed.
//!
//! `axum::serve` runs hyper without a timer, which silently disables hyper's
//! header-read timeout (a client trickling one header line every few seconds
//! holds a connection for as long as it likes), and it has no connection cap
//! and no shutdown deadline. This module runs hyper itself:
//!
//! - a **header-read timeout** (with a timer), which also bounds how long an
//!   idle keep-alive connection waits for its next request;
//! - **header limits**: total header bytes (431), header count (431);
//! - a **connection cap**: past it a new connection is answered 503 with
//!   `Retry-After` at once and closed, instead of queueing;
//! - a **graceful-shutdown deadline**: after the signal, no new connection is
//!   accepted, in-flight requests may finish, and whatever is left when the
//!   deadline passes is dropped.
//!
//! The in-flight request cap and the URI length limit live in the router's
//! outermost middleware (`lib.rs`), where they can answer in Persona's error
//! shape.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::ServiceExt;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time a client has to send a request's whole head; also the longest an
    /// idle keep-alive connection is kept open.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Most open connections; past it new ones get 503 and are closed.
    pub max_connections: usize,
    /// After the shutdown signal, how long in-flight requests may take before
    /// their connections are dropped.
    pub shutdown_deadline: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_connections: 4096,
            shutdown_deadline: Duration::from_secs(10),
        }
    }
}

/// What a connection over the cap is told before it is closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 112\r\n\r\n{\"errors\":[{\"title\":\"Service unavailable\",\"details\":\"The server has too many open connections. Please retry.\"}]}";

/// Serves `app` on `listener` until `shutdown` resolves, then drains
/// connections for at most `limits.shutdown_deadline`.
pub async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_connections_with(listener, app, limits, None, shutdown).await
}

/// [`serve_connections`], over TLS when `tls` is given: the handshake runs
/// in the connection's own task under the header-read timeout, so a client
/// that stalls it holds only its own connection slot.
pub async fn serve_connections_with(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    tls: Option<Arc<crate::tls::ReloadingTls>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let builder = builder(&limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(max_connections = limits.max_connections, "connection cap reached: shedding");
            // Over TLS the plain-text 503 would be noise: just close.
            if tls.is_none() {
                connections.spawn(refuse(stream));
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Some(tls) = &tls else {
            let service = TowerToHyperService::new(app.clone().map_request(tag(peer, None)));
            let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
            connections.spawn(async move {
                let _slot = slot;
                if let Err(e) = connection.await {
                    tracing::debug!(peer = %peer, error = %e, "connection closed with an error");
                }
            });
            continue;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
        let (builder, watcher, handshake_timeout) = (builder.clone(), graceful.watcher(), limits.header_read_timeout);
        let (tls, app) = (Arc::clone(tls), app.clone());
        connections.spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(peer = %peer, "TLS handshake timed out"),
            };
            // Who the client certificate names, once per connection.
            let attester = tls.attester(stream.get_ref().1.peer_certificates()).map(Arc::new);
            let service = TowerToHyperService::new(app.map_request(tag(peer, attester)));
            let connection = watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
            if let Err(e) = connection.await {
                tracing::debug!(peer = %peer, error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    drain(connections, graceful, limits.shutdown_deadline).await;
    Ok(())
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

/// HTTP/1 and HTTP/2 with a timer (so the header-read timeout works) and the
/// head limits.
fn builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers.max(1));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(128)
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout);
    builder
}

/// The next connection. Out of file descriptors and the like: back off
/// instead of spinning; the listener recovers by itself.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Lets open connections finish their requests until `deadline`, then drops
/// the rest.
async fn drain(mut connections: JoinSet<()>, graceful: GracefulShutdown, deadline: Duration) {
    let open = connections.len();
    tracing::info!(open, deadline_secs = deadline.as_secs(), "draining connections");
    if tokio::time::timeout(deadline, graceful.shutdown()).await.is_err() {
        tracing::warn!(remaining = connections.len(), "shutdown deadline passed: dropping the remaining connections");
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// Answers a connection over the cap with a 503 and closes it, spending at
/// most a second on it.
async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(OVER_CAPACITY).await?;
        stream.shutdown().await
    })
    .await;
}

/// The peer address of a request served by [`serve_connections`].
pub fn peer(request: &axum::http::Request<axum::body::Body>) -> Option<SocketAddr> {
    request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_over_capacity_answer_is_well_formed() {
        let text = std::str::from_utf8(OVER_CAPACITY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let declared: usize =
            head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).and_then(|v| v.parse().ok()).unwrap();
        assert_eq!(declared, body.len());
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["errors"][0]["title"], "Service unavailable");
    }
}
