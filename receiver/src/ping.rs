//! Healthcheck pings (healthchecks.io style): one small HTTP/1.1 POST to an http:// or
//! https:// URL, with a short timeout. A ping reports an outcome; it must never change
//! one, so callers log a failed ping and carry on.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whole ping (connect, TLS, request, status line) must finish within this.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// healthchecks.io keeps the first 100 kB of a body; stay well below.
const MAX_BODY: usize = 20_000;

struct Target {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

fn parse(url: &str) -> Result<Target, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("{url:?} is not an http:// or https:// URL"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let default_port = if tls { 443 } else { 80 };
    let port_of = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("{url:?}: bad port {p:?}"))
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, rest) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed ["))?;
        match rest.strip_prefix(':') {
            Some(p) => (h, port_of(p)?),
            None => (h, default_port),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, port_of(p)?),
            None => (authority, default_port),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok(Target {
        tls,
        host: host.to_string(),
        port,
        path: path.to_string(),
    })
}

/// POSTs `body` (text, truncated) to `url`; Ok when the server answers 2xx in time.
pub async fn post(url: &str, body: &str) -> Result<(), String> {
    match tokio::time::timeout(TIMEOUT, post_inner(url, body)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer from {url} within {TIMEOUT:?}")),
    }
}

async fn post_inner(url: &str, body: &str) -> Result<(), String> {
    let t = parse(url)?;
    let mut end = body.len().min(MAX_BODY);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    let body = &body[..end];
    let host = if t.host.contains(':') {
        format!("[{}]", t.host)
    } else {
        t.host.clone()
    };
    let host_header = if t.port == if t.tls { 443 } else { 80 } {
        host
    } else {
        format!("{host}:{}", t.port)
    };
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: backup-receiver/{}\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        t.path,
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    let tcp = TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(|e| format!("connecting to {}:{}: {e}", t.host, t.port))?;
    if t.tls {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err("no trusted root certificates found on this system".into());
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(t.host.clone())
            .map_err(|e| format!("{:?}: {e}", t.host))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", t.host))?;
        exchange(stream, &request).await
    } else {
        exchange(tcp, &request).await
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &str,
) -> Result<(), String> {
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the ping: {e}"))?;
    stream.flush().await.map_err(|e| e.to_string())?;
    // Only the status line matters; read until it is complete.
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or_default();
    let code = status_line.split_whitespace().nth(1).unwrap_or_default();
    if code.starts_with('2') && code.len() == 3 {
        Ok(())
    } else {
        Err(format!("answered {status_line:?}"))
    }
}

/// `<url>/<suffix>` without doubling the slash.
pub fn join(url: &str, suffix: &str) -> String {
    format!("{}/{suffix}", url.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let t = parse("https://hc-ping.com/abc-123").unwrap();
        assert!(t.tls && t.host == "hc-ping.com" && t.port == 443 && t.path == "/abc-123");
        let t = parse("http://127.0.0.1:8080").unwrap();
        assert!(!t.tls && t.port == 8080 && t.path == "/");
        let t = parse("http://[::1]:81/x").unwrap();
        assert!(t.host == "::1" && t.port == 81);
        assert!(parse("ftp://x").is_err());
        assert_eq!(join("http://h/abc/", "fail"), "http://h/abc/fail");
    }
}
