//! How many PutChunks streams may be open at once, per connection and per certificate
//! identity (`limits.max_put_streams_per_connection`, `limits.max_put_streams_per_identity`).
//! Each open stream holds up to a handful of chunk messages in memory (the chunks being
//! verified and stored, plus the one being decoded), so these bound what one peer can make
//! the receiver hold. A stream beyond the limit is refused with RESOURCE_EXHAUSTED before
//! it reads a message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use tonic::Status;

use crate::service::status::ServiceError;

#[derive(Default)]
struct Open {
    per_connection: HashMap<SocketAddr, usize>,
    per_identity: HashMap<String, usize>,
}

pub struct StreamLimits {
    per_connection: usize,
    per_identity: usize,
    open: Mutex<Open>,
}

/// One open stream; dropping it gives its place back.
pub struct StreamPermit<'a> {
    limits: &'a StreamLimits,
    connection: Option<SocketAddr>,
    identity: String,
}

impl StreamLimits {
    pub fn new(per_connection: usize, per_identity: usize) -> Self {
        StreamLimits {
            per_connection,
            per_identity,
            open: Mutex::new(Open::default()),
        }
    }

    /// A place for one more stream of `identity` on `connection`, or RESOURCE_EXHAUSTED
    /// naming the limit.
    pub fn acquire(
        &self,
        connection: Option<SocketAddr>,
        identity: &str,
    ) -> Result<StreamPermit<'_>, Status> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let on_connection =
            connection.map_or(0, |c| open.per_connection.get(&c).copied().unwrap_or(0));
        if on_connection >= self.per_connection {
            return Err(ServiceError::Limit(format!(
                "{on_connection} PutChunks streams are open on this connection \
                 (limits.max_put_streams_per_connection is {})",
                self.per_connection
            ))
            .into());
        }
        let of_identity = open.per_identity.get(identity).copied().unwrap_or(0);
        if of_identity >= self.per_identity {
            return Err(ServiceError::Limit(format!(
                "{of_identity} PutChunks streams of this identity are open \
                 (limits.max_put_streams_per_identity is {})",
                self.per_identity
            ))
            .into());
        }
        if let Some(c) = connection {
            *open.per_connection.entry(c).or_default() += 1;
        }
        *open.per_identity.entry(identity.to_string()).or_default() += 1;
        Ok(StreamPermit {
            limits: self,
            connection,
            identity: identity.to_string(),
        })
    }

    /// Streams open now (all connections together).
    pub fn open_streams(&self) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.per_identity.values().sum()
    }
}

impl Drop for StreamPermit<'_> {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        fn give_back<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
        if let Some(c) = self.connection {
            give_back(&mut open.per_connection, &c);
        }
        give_back(&mut open.per_identity, &self.identity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_bounded_per_connection_and_per_identity() {
        let limits = StreamLimits::new(2, 3);
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let p1 = limits.acquire(Some(a), "prod-vps").unwrap();
        let _p2 = limits.acquire(Some(a), "prod-vps").unwrap();
        let e = limits.acquire(Some(a), "prod-vps").err().unwrap();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message().contains("max_put_streams_per_connection"),
            "{e:?}"
        );
        let _p3 = limits.acquire(Some(b), "prod-vps").unwrap();
        let e = limits.acquire(Some(b), "prod-vps").err().unwrap();
        assert!(
            e.message().contains("max_put_streams_per_identity"),
            "{e:?}"
        );
        // Another identity has its own count; a finished stream gives its place back.
        let _other = limits.acquire(Some(b), "other").unwrap();
        drop(p1);
        let _p4 = limits.acquire(Some(a), "prod-vps").unwrap();
        assert_eq!(limits.open_streams(), 4);
    }
}
