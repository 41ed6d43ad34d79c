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
//! - a **connection cap**, and a **per-client share** of it (by peer
//!   address, IPv6 by /64; trusted proxies are exempt, their clients are
//!   told apart per request): past either a new connection is answered 503
//!   with `Retry-After` at once and closed, instead of queueing;
//! - an **idle timeout** for every connection, HTTP/1 or HTTP/2: a
//!   connection with no request in flight for the header-read timeout is
//!   shut down gracefully (HTTP/2 `GOAWAY`), whether or not it answers
//!   pings, and dropped if it has not closed a timeout later;
//! - **HTTP/2 limits** set deliberately: concurrent streams per connection,
//!   pending-accept and locally-errored stream resets, header list size,
//!   keep-alive pings;
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

use crate::client_addr::TrustedProxies;
use axum::Router;
use axum::extract::ConnectInfo;
use blindpass_service::client_bucket;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

mod connection;
use connection::{Activity, Shares, drive, tracked};

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
    /// Most open connections from one client address (IPv6 by /64);
    /// trusted proxies are exempt.
    pub max_connections_per_client: usize,
    /// Most concurrent HTTP/2 streams on one connection.
    pub h2_max_concurrent_streams: u32,
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
            max_connections_per_client: 256,
            h2_max_concurrent_streams: 100,
            shutdown_deadline: Duration::from_secs(10),
        }
    }
}

/// A new connection's place: its client's share (unless it comes from a
/// trusted proxy) and a slot under the connection cap; `None` when either
/// is full.
fn admit_connection(
    peer: SocketAddr,
    trusted: &TrustedProxies,
    per_client: &Arc<Shares>,
    slots: &Arc<Semaphore>,
    limits: &ConnectionLimits,
) -> Option<(tokio::sync::OwnedSemaphorePermit, Option<connection::Share>)> {
    let share = match trusted.contains(peer.ip()) {
        true => None,
        false => {
            let share = per_client.take(client_bucket(peer.ip()), limits.max_connections_per_client);
            if share.is_none() {
                tracing::debug!(peer = %peer, "client's connection share reached: shedding");
                return None;
            }
            share
        }
    };
    let Ok(slot) = Arc::clone(slots).try_acquire_owned() else {
        tracing::warn!(max_connections = limits.max_connections, "connection cap reached: shedding");
        return None;
    };
    Some((slot, share))
}

/// One plain-HTTP connection, to its end.
async fn serve_plain(
    stream: TcpStream,
    peer: SocketAddr,
    builder: auto::Builder<TokioExecutor>,
    app: Router,
    idle: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let activity = Activity::new();
    let service = tracked(app, Arc::clone(&activity), peer, None);
    let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
    drive(connection, activity, idle, stop, None, peer).await;
}

/// One TLS connection: the handshake under the header-read timeout, the
/// attester its client certificate names (once per connection), then the
/// connection to its end, or until the client CA no longer trusts it.
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Arc<crate::tls::ReloadingTls>,
    builder: auto::Builder<TokioExecutor>,
    app: Router,
    idle: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
    let stream = match tokio::time::timeout(idle, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!(peer = %peer, "TLS handshake timed out"),
    };
    let presented = stream.get_ref().1.peer_certificates();
    let attester = tls.attester(presented).map(Arc::new);
    let revoked = presented.filter(|chain| !chain.is_empty()).map(|chain| {
        let chain = chain.iter().map(|c| c.clone().into_owned()).collect();
        Box::pin(Arc::clone(&tls).until_untrusted(chain)) as connection::Revoked
    });
    let activity = Activity::new();
    let service = tracked(app, Arc::clone(&activity), peer, attester);
    let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
    drive(connection, activity, idle, stop, revoked, peer).await;
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
    serve_connections_with(listener, app, limits, None, Arc::default(), shutdown).await
}

/// [`serve_connections`], over TLS when `tls` is given (the handshake runs
/// in the connection's own task under the header-read timeout, so a client
/// that stalls it holds only its own connection slot), with `trusted`
/// proxies exempt from the per-client connection share.
pub async fn serve_connections_with(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    tls: Option<Arc<crate::tls::ReloadingTls>>,
    trusted: Arc<TrustedProxies>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let builder = builder(&limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_client = Arc::new(Shares::default());
    let (stopping, stop) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let Some(held) = admit_connection(peer, &trusted, &per_client, &slots, &limits) else {
            // Over TLS the plain-text 503 would be noise: just close.
            if tls.is_none() {
                connections.spawn(refuse(stream));
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (builder, app, tls, stop) = (builder.clone(), app.clone(), tls.clone(), stop.clone());
        let idle = limits.header_read_timeout;
        connections.spawn(async move {
            let _held = held;
            match tls {
                None => serve_plain(stream, peer, builder, app, idle, stop).await,
                Some(tls) => serve_tls(stream, peer, tls, builder, app, idle, stop).await,
            }
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    drain(connections, limits.shutdown_deadline).await;
    Ok(())
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
        .max_concurrent_streams(limits.h2_max_concurrent_streams.max(1))
        // Streams a client opens and resets before they are accepted
        // (CVE-2023-44487, "rapid reset"), and streams the server had to
        // reset for the client's errors: past these the connection is
        // closed with GOAWAY.
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(64))
        // Pings find dead peers; they never keep an idle connection open
        // (see `drive`).
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout)
        .max_send_buf_size(64 * 1024);
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

/// Lets open connections finish their requests until `deadline` (each was
/// told to shut down gracefully), then drops the rest.
async fn drain(mut connections: JoinSet<()>, deadline: Duration) {
    let open = connections.len();
    tracing::info!(open, deadline_secs = deadline.as_secs(), "draining connections");
    let finished = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(deadline, finished).await.is_err() {
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
