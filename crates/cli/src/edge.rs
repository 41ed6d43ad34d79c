//! `blindpass serve`'s edge settings: what the server defends itself with
//! (connection and in-flight caps, per-client shares, timeouts, head
//! limits) and whom it believes about client addresses.

use std::time::Duration;

use anyhow::bail;
use blindpass_server::Limits;
use blindpass_server::admission::AdmissionLimits;
use blindpass_server::client_addr::{ForwardedHeader, TrustedProxies};
use blindpass_server::transport::ConnectionLimits;
use clap::Args;

use crate::config::at_least;

/// The edge's flags (each with its `BLINDPASS_` twin).
#[derive(Debug, Args)]
pub(crate) struct EdgeArgs {
    /// Largest request body accepted, in bytes.
    #[arg(long, value_parser = crate::units::size, env = "BLINDPASS_MAX_BODY_BYTES")]
    pub(crate) max_body_bytes: Option<usize>,
    /// Most token requests in one batched issuance (422 past it).
    #[arg(long, env = "BLINDPASS_MAX_BATCH_SIZE")]
    pub(crate) max_batch_size: Option<usize>,
    /// Reverse proxies (comma-separated addresses or CIDR blocks) whose
    /// `Forwarded` / `X-Forwarded-For` headers name the client; from any
    /// other peer these headers are ignored (default: none).
    #[arg(long, env = "BLINDPASS_TRUSTED_PROXIES")]
    pub(crate) trusted_proxies: Option<String>,
    /// The header trusted proxies write the client's address into:
    /// x-forwarded-for (default), forwarded or x-real-ip. Only that header
    /// is read; any other the client sends is ignored.
    #[arg(long, env = "BLINDPASS_FORWARDED_HEADER")]
    pub(crate) forwarded_header: Option<String>,
    /// Seconds a client has to send a request's headers; also how long an idle
    /// keep-alive connection stays open (default 10).
    #[arg(long, value_parser = crate::units::secs, env = "BLINDPASS_HEADER_READ_TIMEOUT_SECS")]
    pub(crate) header_read_timeout_secs: Option<u64>,
    /// Largest request head (request line and headers) in bytes; larger is 431
    /// (default 16384).
    #[arg(long, value_parser = crate::units::size, env = "BLINDPASS_MAX_HEADER_BYTES")]
    pub(crate) max_header_bytes: Option<usize>,
    /// Most header fields in one request; more is 431 (default 100).
    #[arg(long, env = "BLINDPASS_MAX_HEADERS")]
    pub(crate) max_headers: Option<usize>,
    /// Longest request target (path and query) in bytes; longer is 414
    /// (default 2048).
    #[arg(long, value_parser = crate::units::size, env = "BLINDPASS_MAX_URI_BYTES")]
    pub(crate) max_uri_bytes: Option<usize>,
    /// Most open connections; past it a new connection gets 503 and is closed
    /// (default 4096).
    #[arg(long, env = "BLINDPASS_MAX_CONNECTIONS")]
    pub(crate) max_connections: Option<usize>,
    /// Most requests answered at once; past it a request gets 503 with
    /// Retry-After at once (default 1024).
    #[arg(long, env = "BLINDPASS_MAX_IN_FLIGHT")]
    pub(crate) max_in_flight: Option<usize>,
    /// Most anonymous requests (no API key or client certificate) answered
    /// at once; the rest of --max-in-flight is kept for authenticated
    /// requests (default half of --max-in-flight).
    #[arg(long, env = "BLINDPASS_MAX_ANONYMOUS_IN_FLIGHT")]
    pub(crate) max_anonymous_in_flight: Option<usize>,
    /// Most requests one client address (IPv6 by /64; behind a trusted
    /// proxy, the forwarded address) has in flight; past it 429 at once
    /// (default 128).
    #[arg(long, env = "BLINDPASS_MAX_IN_FLIGHT_PER_CLIENT")]
    pub(crate) max_in_flight_per_client: Option<usize>,
    /// Most open connections from one client address (IPv6 by /64; trusted
    /// proxies are exempt); past it a new connection gets 503 and is closed
    /// (default 256).
    #[arg(long, env = "BLINDPASS_MAX_CONNECTIONS_PER_CLIENT")]
    pub(crate) max_connections_per_client: Option<usize>,
    /// Seconds a request body has to arrive once its head was admitted, on
    /// top of what its length needs at --body-min-rate; past it 408 and
    /// the connection is closed (default 5).
    #[arg(long, value_parser = crate::units::secs, env = "BLINDPASS_BODY_READ_TIMEOUT_SECS")]
    pub(crate) body_read_timeout_secs: Option<u64>,
    /// The slowest upload a body may use, in bytes per second (default
    /// 16384).
    #[arg(long, value_parser = crate::units::bytes, env = "BLINDPASS_BODY_MIN_RATE")]
    pub(crate) body_min_rate: Option<u64>,
    /// Most concurrent HTTP/2 streams on one connection (default 100).
    #[arg(long, env = "BLINDPASS_H2_MAX_CONCURRENT_STREAMS")]
    pub(crate) h2_max_concurrent_streams: Option<u32>,
    /// Seconds in-flight requests get after SIGTERM before their connections are
    /// dropped (default 10).
    #[arg(long, value_parser = crate::units::secs, env = "BLINDPASS_SHUTDOWN_DEADLINE_SECS")]
    pub(crate) shutdown_deadline_secs: Option<u64>,
}

/// `--trusted-proxies`, read through `--forwarded-header`.
pub(crate) fn trusted_proxies(args: &EdgeArgs) -> anyhow::Result<TrustedProxies> {
    let trusted = args.trusted_proxies.clone().unwrap_or_default();
    let header = match args.forwarded_header.clone() {
        Some(h) => h.parse::<ForwardedHeader>().map_err(|e| anyhow::anyhow!("--forwarded-header: {e}"))?,
        None => ForwardedHeader::default(),
    };
    Ok(TrustedProxies::parse(&trusted).map_err(|e| anyhow::anyhow!("--trusted-proxies: {e}"))?.with_header(header))
}

/// The HTTP and connection limits.
pub(crate) fn limits(args: &EdgeArgs, request_timeout: Duration) -> anyhow::Result<Limits> {
    let d = Limits::default();
    Ok(Limits {
        max_body_bytes: at_least("max-body-bytes", args.max_body_bytes, d.max_body_bytes, 1)?,
        request_timeout,
        admission: admission(args)?,
        max_uri_bytes: at_least("max-uri-bytes", args.max_uri_bytes, d.max_uri_bytes, 64)?,
        max_batch_size: at_least("max-batch-size", args.max_batch_size, d.max_batch_size, 1)?,
        connections: connection_limits(args)?,
    })
}

/// What every connection is held to (see `blindpass_server::transport`).
fn connection_limits(args: &EdgeArgs) -> anyhow::Result<ConnectionLimits> {
    let c = ConnectionLimits::default();
    let header_read_timeout_secs =
        at_least("header-read-timeout-secs", args.header_read_timeout_secs, c.header_read_timeout.as_secs(), 1)?;
    Ok(ConnectionLimits {
        header_read_timeout: Duration::from_secs(header_read_timeout_secs),
        max_header_bytes: at_least("max-header-bytes", args.max_header_bytes, c.max_header_bytes, 1024)?,
        max_headers: at_least("max-headers", args.max_headers, c.max_headers, 8)?,
        max_connections: at_least("max-connections", args.max_connections, c.max_connections, 1)?,
        max_connections_per_client: at_least(
            "max-connections-per-client",
            args.max_connections_per_client,
            c.max_connections_per_client,
            1,
        )?,
        h2_max_concurrent_streams: at_least(
            "h2-max-concurrent-streams",
            args.h2_max_concurrent_streams,
            c.h2_max_concurrent_streams,
            1,
        )?,
        shutdown_deadline: args.shutdown_deadline_secs.map_or(c.shutdown_deadline, Duration::from_secs),
    })
}

/// How requests share the node (see `blindpass_server::admission`).
fn admission(args: &EdgeArgs) -> anyhow::Result<AdmissionLimits> {
    let d = AdmissionLimits::default();
    let max_in_flight = at_least("max-in-flight", args.max_in_flight, d.max_in_flight, 1)?;
    let anonymous = at_least("max-anonymous-in-flight", args.max_anonymous_in_flight, max_in_flight.div_ceil(2), 1)?;
    if anonymous > max_in_flight {
        bail!("--max-anonymous-in-flight ({anonymous}) must be at most --max-in-flight ({max_in_flight})");
    }
    Ok(AdmissionLimits {
        max_in_flight,
        max_anonymous_in_flight: anonymous,
        max_in_flight_per_client: at_least(
            "max-in-flight-per-client",
            args.max_in_flight_per_client,
            d.max_in_flight_per_client,
            1,
        )?,
        body_read_timeout: Duration::from_secs(at_least(
            "body-read-timeout-secs",
            args.body_read_timeout_secs,
            d.body_read_timeout.as_secs(),
            1,
        )?),
        body_min_bytes_per_sec: at_least("body-min-rate", args.body_min_rate, d.body_min_bytes_per_sec, 1)?,
    })
}
