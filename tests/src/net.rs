//! Loopback networking helpers: picking free TCP ports (for servers that cannot bind port 0
//! and report it, like PostgreSQL), waiting for a listener to come up, and waiting on a
//! condition. Owns nothing long-lived.

use std::fmt::Debug;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::net::ToSocketAddrs;

/// Interval between connection attempts in [`wait_for_tcp`].
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port is found by binding port 0 and dropping the listener, so another
/// process could grab it in between; callers that can should bind the
/// listener themselves (see [`bind_loopback`]).
pub fn free_port() -> u16 {
    bind_loopback()
        .and_then(|l| Ok(l.local_addr()?.port()))
        .expect("binding 127.0.0.1:0 to find a free port")
}

/// Binds a std listener on 127.0.0.1 with a kernel-chosen port.
pub fn bind_loopback() -> Result<TcpListener> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")
}

/// `127.0.0.1:port` as a [`SocketAddr`].
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Polls `addr` every 20 ms until a TCP connection succeeds or `timeout`
/// elapses.
pub async fn wait_for_tcp<A>(addr: A, timeout: Duration) -> Result<()>
where
    A: ToSocketAddrs + Copy + Debug,
{
    let deadline = Instant::now() + timeout;
    loop {
        let attempt =
            tokio::time::timeout(POLL_INTERVAL * 5, tokio::net::TcpStream::connect(addr)).await;
        let err = match attempt {
            Ok(Ok(_stream)) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect attempt timed out".to_owned(),
        };
        if Instant::now() >= deadline {
            bail!("{addr:?} did not accept TCP connections within {timeout:?} (last error: {err})");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls `probe` every 20 ms until it returns `Some` (returned) or `timeout` elapses
/// (`None`): waiting on a condition, not for a fixed time.
pub async fn wait_until_some<T>(
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The receiver's `/metrics` page (status line, headers and body) from the endpoint on
/// loopback `port`; the answer must be `200`.
pub async fn scrape_metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}
