//! Optional inner check behind Tailscale's ACL: ask the local tailscaled who the peer is
//! (`GET /localapi/v0/whois?addr=IP:PORT` on its LocalAPI unix socket) and require one of
//! the configured node tags. Answers are cached briefly per peer address and port (one TCP
//! connection). Fails closed: no answer from tailscaled means no admission.
//!
//! The HTTP/1.1 client is hand-written and small on purpose: one request per connection,
//! `Connection: close`, a body read to its Content-Length, chunked end or EOF (at most
//! 1 MiB), all within a deadline.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::TailscaleCheck;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest whois answer read.
const MAX_RESPONSE: usize = 1024 * 1024;
/// How long one whois may take.
const DEADLINE: Duration = Duration::from_secs(5);
/// Cached peers before the cache is cleared.
const MAX_CACHED: usize = 4096;

/// Who tailscaled says the peer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The node's MagicDNS name, e.g. `prod-vps.tail1234.ts.net.`.
    pub name: String,
    pub tags: Vec<String>,
    /// The owning user's login (`tagged-devices` for tagged nodes).
    pub login: String,
}

/// The parts of tailscaled's `apitype.WhoIsResponse` this check reads.
#[derive(Debug, Deserialize)]
struct WhoIsResponse {
    #[serde(rename = "Node")]
    node: Option<WhoIsNode>,
    #[serde(rename = "UserProfile")]
    user_profile: Option<WhoIsUser>,
}

#[derive(Debug, Deserialize)]
struct WhoIsNode {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Tags", default)]
    tags: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct WhoIsUser {
    #[serde(rename = "LoginName", default)]
    login_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WhoisError {
    #[error("tailscaled LocalAPI at {socket}: {message}")]
    Unreachable { socket: PathBuf, message: String },
    #[error("tailscaled answered whois with HTTP {status}: {body}")]
    Http { status: u16, body: String },
    #[error("tailscaled's whois answer is not understood: {0}")]
    Parse(String),
}

/// The outcome of the tag check for one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed(NodeIdentity),
    /// The peer is a tailnet node without a required tag.
    MissingTag(NodeIdentity),
    /// tailscaled does not know the peer (not a tailnet address).
    UnknownPeer,
    /// tailscaled could not be asked; the peer is refused.
    Failed(WhoisError),
}

pub struct TailscaleAdmission {
    config: TailscaleCheck,
    cache: Mutex<HashMap<SocketAddr, (Instant, Verdict)>>,
}

impl TailscaleAdmission {
    pub fn new(config: TailscaleCheck) -> Self {
        TailscaleAdmission {
            config,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Asks tailscaled about `peer` (or reuses a recent answer) and checks its tags.
    pub async fn check(&self, peer: SocketAddr) -> Verdict {
        let ttl = self.config.cache_ttl;
        if let Some((at, v)) = self.cache.lock().unwrap().get(&peer) {
            if at.elapsed() < ttl {
                return v.clone();
            }
        }
        let verdict = match whois(&self.config.socket, peer).await {
            Ok(Some(node)) => {
                if node
                    .tags
                    .iter()
                    .any(|t| self.config.required_tags.iter().any(|r| r.as_str() == t))
                {
                    Verdict::Allowed(node)
                } else {
                    Verdict::MissingTag(node)
                }
            }
            Ok(None) => Verdict::UnknownPeer,
            Err(e) => Verdict::Failed(e),
        };
        // A failure to ask is not cached: the next request asks again.
        if !matches!(verdict, Verdict::Failed(_)) {
            let mut cache = self.cache.lock().unwrap();
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(peer, (Instant::now(), verdict.clone()));
        }
        verdict
    }

    pub fn required_tags(&self) -> &[crate::config::NodeTag] {
        &self.config.required_tags
    }
}

/// `GET /localapi/v0/whois?addr=IP:PORT` on tailscaled's socket. `Ok(None)`: tailscaled
/// does not know that address (HTTP 404).
pub async fn whois(socket: &Path, peer: SocketAddr) -> Result<Option<NodeIdentity>, WhoisError> {
    let unreachable = |message: String| WhoisError::Unreachable {
        socket: socket.to_path_buf(),
        message,
    };
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await?;
        let request = format!(
            "GET /localapi/v0/whois?addr={peer} HTTP/1.1\r\nHost: local-tailscaled.sock\r\n\
             User-Agent: backup-receiver\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut response)
            .await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(DEADLINE, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {DEADLINE:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
    if response.len() > MAX_RESPONSE {
        return Err(WhoisError::Parse(format!(
            "answer longer than {MAX_RESPONSE} bytes"
        )));
    }
    let (status, body) = parse_http_response(&response)?;
    match status {
        200 => parse_whois(&body).map(Some),
        404 => Ok(None),
        _ => Err(WhoisError::Http {
            status,
            body: String::from_utf8_lossy(&body).chars().take(200).collect(),
        }),
    }
}

fn parse_whois(body: &[u8]) -> Result<NodeIdentity, WhoisError> {
    let r: WhoIsResponse =
        serde_json::from_slice(body).map_err(|e| WhoisError::Parse(e.to_string()))?;
    let node = r
        .node
        .ok_or_else(|| WhoisError::Parse("the answer has no Node".into()))?;
    Ok(NodeIdentity {
        name: node.name,
        tags: node.tags.unwrap_or_default(),
        login: r.user_profile.map(|u| u.login_name).unwrap_or_default(),
    })
}

/// Splits an HTTP/1.x response into status and decoded body.
fn parse_http_response(raw: &[u8]) -> Result<(u16, Vec<u8>), WhoisError> {
    let bad = |m: &str| WhoisError::Parse(format!("HTTP response: {m}"));
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers are not UTF-8"))?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(bad("not an HTTP/1.x status line"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| bad("bad Content-Length"))?,
            );
        }
    }
    if chunked {
        return Ok((
            status,
            decode_chunked(body).ok_or_else(|| bad("bad chunked body"))?,
        ));
    }
    match length {
        Some(n) if n <= body.len() => Ok((status, body[..n].to_vec())),
        Some(_) => Err(bad("body shorter than Content-Length")),
        None => Ok((status, body.to_vec())),
    }
}

fn decode_chunked(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if body.len() < size + 2 || &body[size..size + 2] != b"\r\n" {
            return None;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHOIS: &str = r#"{"Node":{"ID":1,"StableID":"n1","Name":"prod-vps.tail1234.ts.net.","User":5,"Tags":["tag:prod-vps"],"Addresses":["100.101.102.103/32"]},"UserProfile":{"ID":5,"LoginName":"tagged-devices","DisplayName":"tagged-devices"},"CapMap":{}}"#;

    #[test]
    fn whois_answers_are_read_plain_and_chunked() {
        let plain = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{WHOIS}",
            WHOIS.len()
        );
        let (status, body) = parse_http_response(plain.as_bytes()).unwrap();
        assert_eq!(status, 200);
        let node = parse_whois(&body).unwrap();
        assert_eq!(node.name, "prod-vps.tail1234.ts.net.");
        assert_eq!(node.tags, vec!["tag:prod-vps".to_string()]);
        assert_eq!(node.login, "tagged-devices");

        let (a, b) = WHOIS.split_at(40);
        let chunked = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        );
        let (_, body) = parse_http_response(chunked.as_bytes()).unwrap();
        assert_eq!(body, WHOIS.as_bytes());

        let untagged =
            r#"{"Node":{"Name":"laptop.ts.net.","Tags":null},"UserProfile":{"LoginName":"a@b.c"}}"#;
        assert!(parse_whois(untagged.as_bytes()).unwrap().tags.is_empty());
        let (status, _) =
            parse_http_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nno match\n")
                .unwrap();
        assert_eq!(status, 404);
        assert!(parse_http_response(b"garbage").is_err());
    }

    #[tokio::test]
    async fn an_absent_tailscaled_refuses() {
        let d = tempfile::tempdir().unwrap();
        let check = TailscaleAdmission::new(TailscaleCheck {
            socket: d.path().join("none.sock"),
            required_tags: vec![crate::config::NodeTag::parse("tag:prod-vps").unwrap()],
            cache_ttl: Duration::from_secs(60),
        });
        let v = check.check("100.64.0.1:4000".parse().unwrap()).await;
        assert!(
            matches!(v, Verdict::Failed(WhoisError::Unreachable { .. })),
            "{v:?}"
        );
    }
}
