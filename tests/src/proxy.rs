//! A loopback TCP proxy for network-fault tests: forwards to a target port, counts the
//! bytes sent upstream, can cut every open connection once after N upstream bytes (as a
//! dropped line would), and can throttle the upstream direction so a test can act while
//! an upload is in flight. Owned by the test; its task ends when the proxy is dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, Default)]
pub struct ProxyOptions {
    /// Drop all connections once, when this many bytes have gone upstream in total.
    pub cut_after: Option<u64>,
    /// Pause this long after each upstream read (at most 16 KiB).
    pub throttle: Option<Duration>,
}

pub struct Proxy {
    pub port: u16,
    upstream: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target_port: u16, opts: ProxyOptions) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let upstream = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicBool::new(false));
        // Every connection watches this; it flips once, at the cut.
        let (cut_tx, cut_rx) = watch::channel(false);
        let cut_tx = Arc::new(cut_tx);
        let (up, c) = (upstream.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                    continue; // target down: the client sees the connection close
                };
                let (up, c, tx, mut rx) = (up.clone(), c.clone(), cut_tx.clone(), cut_rx.clone());
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let upward = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = cr.read(&mut buf).await?;
                            if n == 0 {
                                return sw.shutdown().await;
                            }
                            if let Some(t) = opts.throttle {
                                tokio::time::sleep(t).await;
                            }
                            let total = up.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                            if let Some(limit) = opts.cut_after {
                                if total >= limit && !c.swap(true, Ordering::SeqCst) {
                                    let _ = tx.send(true);
                                    return Ok(());
                                }
                            }
                            sw.write_all(&buf[..n]).await?;
                        }
                    };
                    let downward = tokio::io::copy(&mut sr, &mut cw);
                    let cut_signal = async {
                        if *rx.borrow() {
                            // Connections opened after the cut live on.
                            std::future::pending::<()>().await;
                        }
                        let _ = rx.changed().await;
                    };
                    tokio::select! {
                        _ = upward => {},
                        _ = downward => {},
                        _ = cut_signal => {},
                    }
                    // Dropping both halves closes both sockets: the line is gone.
                });
            }
        });
        Ok(Proxy {
            port,
            upstream,
            cut,
            task,
        })
    }

    /// Bytes forwarded (or swallowed at the cut) towards the target so far.
    pub fn upstream_bytes(&self) -> u64 {
        self.upstream.load(Ordering::SeqCst)
    }

    pub fn has_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
