//! Content-defined chunking (FastCDC), chunk ids (blake3 of the uncompressed bytes) and the
//! on-disk chunk encoding. A chunk's id is checked on every decode: bytes that do not hash
//! to their name are never handed out.

mod stream;

pub use stream::chunk_stream;

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// FastCDC bounds: ~1 MiB average keeps the chunk count of a 13 GB archive near 13,000
/// while a small change still costs only about one chunk.
pub const MIN_CHUNK: u32 = 256 * 1024;
pub const AVG_CHUNK: u32 = 1024 * 1024;
pub const MAX_CHUNK: u32 = 4 * 1024 * 1024;

/// Compressed data is kept only when it saves at least this share (1/16) of the raw size.
const MIN_SAVING_DIVISOR: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk id must be 32 bytes, got {0}")]
    BadIdLength(usize),
    #[error("chunk id {0:?} is not 64 hex digits")]
    BadIdHex(String),
    #[error("chunk {expected} hashes to {actual}: data corrupt")]
    HashMismatch { expected: ChunkId, actual: ChunkId },
    #[error("chunk {id}: declared length {declared} bytes, actual {actual}")]
    LengthMismatch {
        id: ChunkId,
        declared: usize,
        actual: usize,
    },
    #[error("chunk {id}: length {len} exceeds the maximum {max}")]
    TooLarge { id: ChunkId, len: usize, max: usize },
    #[error("chunk {id}: unknown encoding tag {tag}")]
    BadEncoding { id: ChunkId, tag: u8 },
    #[error("chunk {id}: empty stored file")]
    Empty { id: ChunkId },
    #[error("chunk {id}: zstd: {source}")]
    Zstd {
        id: ChunkId,
        #[source]
        source: std::io::Error,
    },
    #[error("chunk {id}: not in canonical form: {reason}")]
    NotCanonical { id: ChunkId, reason: &'static str },
    #[error("reading input: {0}")]
    Read(#[from] std::io::Error),
}

/// blake3 of a chunk's uncompressed bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self, ChunkError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| ChunkError::BadIdLength(bytes.len()))?;
        Ok(ChunkId(arr))
    }

    pub fn from_hex(s: &str) -> Result<Self, ChunkError> {
        let mut arr = [0u8; 32];
        hex::decode_to_slice(s, &mut arr).map_err(|_| ChunkError::BadIdHex(s.to_string()))?;
        Ok(ChunkId(arr))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl Serialize for ChunkId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ChunkId::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// One content-defined piece of a stream.
pub struct Chunk {
    pub id: ChunkId,
    /// Shared, so a batch kept for a retry and the request being sent hold one copy.
    pub data: Bytes,
}

/// Size and blake3 of a whole stream, computed while it was chunked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSummary {
    pub size: u64,
    pub hash: ChunkId,
}

/// Bytes of each probe [`compress_if_worth`] takes before compressing a whole chunk.
const PROBE: usize = 32 * 1024;

/// zstd-compresses `raw` when that pays; `None` means "send and store it raw".
///
/// Most of the archive is already-compressed scans. Two probes from the chunk (at a third
/// and two thirds, zstd level 1) reject those at a few percent of the cost of compressing
/// the whole chunk; only if either probe compresses is the whole chunk compressed. A chunk
/// that compresses only outside both probes is kept raw: a little space for a lot of CPU.
pub fn compress_if_worth(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() >= 8 * PROBE {
        let probe_pays = |at: usize| {
            let sample = &raw[at..at + PROBE];
            zstd::bulk::compress(sample, 1)
                .is_ok_and(|p| p.len() + PROBE / MIN_SAVING_DIVISOR < PROBE)
        };
        if !probe_pays(raw.len() / 3) && !probe_pays(2 * raw.len() / 3 - PROBE) {
            return None;
        }
    }
    let packed = zstd::bulk::compress(raw, 3).ok()?;
    (packed.len() + raw.len() / MIN_SAVING_DIVISOR < raw.len()).then_some(packed)
}

/// Checks a chunk in wire or disk form against `id` and its declared length, without
/// copying a raw chunk. `declared_len` bounds decompression so a hostile "zstd bomb"
/// cannot exhaust memory.
pub fn check_chunk(
    id: ChunkId,
    zstd_framed: bool,
    data: &[u8],
    declared_len: usize,
) -> Result<(), ChunkError> {
    opened(id, zstd_framed, data, declared_len).map(drop)
}

/// A chunk's raw bytes recovered from wire or disk form, checked against `id`.
fn opened(
    id: ChunkId,
    zstd_framed: bool,
    data: &[u8],
    declared_len: usize,
) -> Result<Cow<'_, [u8]>, ChunkError> {
    let max = MAX_CHUNK as usize;
    if declared_len > max {
        return Err(ChunkError::TooLarge {
            id,
            len: declared_len,
            max,
        });
    }
    let raw = if zstd_framed {
        check_canonical_zstd(id, data, declared_len)?;
        Cow::Owned(
            zstd::bulk::decompress(data, declared_len)
                .map_err(|source| ChunkError::Zstd { id, source })?,
        )
    } else {
        Cow::Borrowed(data)
    };
    if raw.len() != declared_len {
        return Err(ChunkError::LengthMismatch {
            id,
            declared: declared_len,
            actual: raw.len(),
        });
    }
    verify(id, &raw)?;
    Ok(raw)
}

/// zstd's frame magic number (little-endian), as opposed to a skippable frame's.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A compressed chunk is stored as it arrives, so only one encoding of each chunk is
/// accepted: exactly one zstd frame (no skippable frames, nothing after it) that records
/// the raw length in its header and is smaller than the raw bytes. Anything else could
/// make a small chunk occupy a large file, or two stored copies of one chunk differ.
fn check_canonical_zstd(id: ChunkId, data: &[u8], declared_len: usize) -> Result<(), ChunkError> {
    let not = |reason| Err(ChunkError::NotCanonical { id, reason });
    if data.len() >= declared_len {
        return not("compressed payload is not smaller than the raw bytes");
    }
    if !data.starts_with(&ZSTD_MAGIC) {
        return not("payload does not start with a zstd frame");
    }
    match zstd::zstd_safe::find_frame_compressed_size(data) {
        Ok(n) if n == data.len() => {}
        Ok(_) => return not("bytes follow the zstd frame"),
        Err(_) => return not("zstd frame is malformed"),
    }
    match zstd::zstd_safe::get_frame_content_size(data) {
        Ok(Some(n)) if n == declared_len as u64 => Ok(()),
        Ok(Some(_)) => not("zstd frame header gives another raw length"),
        _ => not("zstd frame header does not record the raw length"),
    }
}

/// Checks that `raw` hashes to `id`.
pub fn verify(id: ChunkId, raw: &[u8]) -> Result<(), ChunkError> {
    let actual = ChunkId::of(raw);
    if actual != id {
        return Err(ChunkError::HashMismatch {
            expected: id,
            actual,
        });
    }
    Ok(())
}

/// On-disk form: one tag byte (0 raw, 1 zstd frame) and the payload. The raw length is
/// not stored: for zstd it is in the frame header, for raw it is the payload length.
pub fn encode_stored(zstd_framed: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 1);
    out.push(u8::from(zstd_framed));
    out.extend_from_slice(payload);
    out
}

/// Decodes and verifies a stored chunk file.
pub fn decode_stored(id: ChunkId, stored: &[u8]) -> Result<Vec<u8>, ChunkError> {
    let (&tag, payload) = stored.split_first().ok_or(ChunkError::Empty { id })?;
    match tag {
        0 => {
            verify(id, payload)?;
            Ok(payload.to_vec())
        }
        1 => {
            let raw = zstd::bulk::decompress(payload, MAX_CHUNK as usize)
                .map_err(|source| ChunkError::Zstd { id, source })?;
            verify(id, &raw)?;
            Ok(raw)
        }
        tag => Err(ChunkError::BadEncoding { id, tag }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic incompressible bytes (xorshift); also used by `stream`'s tests.
    pub(super) fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn chunks_reassemble_to_the_input_and_respect_bounds() {
        let data = pseudo_random(9 * 1024 * 1024 + 17, 7);
        let mut out = Vec::new();
        let mut sizes = Vec::new();
        let summary = chunk_stream::<_, ChunkError>(&data[..], |c| {
            assert_eq!(c.id, ChunkId::of(&c.data));
            sizes.push(c.data.len());
            out.extend_from_slice(&c.data);
            Ok(())
        })
        .unwrap();
        assert_eq!(out, data);
        assert_eq!(summary.size, data.len() as u64);
        assert_eq!(summary.hash, ChunkId::of(&data));
        assert!(sizes.len() >= 3, "{sizes:?}");
        for s in &sizes[..sizes.len() - 1] {
            assert!(*s >= MIN_CHUNK as usize && *s <= MAX_CHUNK as usize, "{s}");
        }
    }

    #[test]
    fn an_insertion_changes_only_nearby_chunks() {
        let data = pseudo_random(12 * 1024 * 1024, 3);
        let ids = |d: &[u8]| {
            let mut v = Vec::new();
            chunk_stream::<_, ChunkError>(d, |c| {
                v.push(c.id);
                Ok(())
            })
            .unwrap();
            v
        };
        let before = ids(&data);
        let mut edited = data.clone();
        edited.splice(5_000_000..5_000_000, b"inserted text".iter().copied());
        let after = ids(&edited);
        let shared = after.iter().filter(|id| before.contains(id)).count();
        assert!(
            shared + 2 >= before.len(),
            "shared {shared} of {}",
            before.len()
        );
    }

    #[test]
    fn stored_encoding_round_trips_and_detects_corruption() {
        let text = b"Liebe Grete, ".repeat(50_000);
        let id = ChunkId::of(&text);
        let packed = compress_if_worth(&text).expect("text compresses");
        let stored = encode_stored(true, &packed);
        assert_eq!(decode_stored(id, &stored).unwrap(), text);
        let mut bad = encode_stored(false, &text);
        bad[100] ^= 1;
        assert!(matches!(
            decode_stored(id, &bad),
            Err(ChunkError::HashMismatch { .. })
        ));
        let noise = pseudo_random(1 << 20, 9);
        assert!(compress_if_worth(&noise).is_none());
    }

    #[test]
    fn checking_bounds_decompression_by_the_declared_length() {
        let zeros = vec![0u8; MAX_CHUNK as usize];
        let packed = zstd::bulk::compress(&zeros, 3).unwrap();
        let id = ChunkId::of(&zeros);
        assert!(check_chunk(id, true, &packed, 1024).is_err());
        assert!(matches!(
            check_chunk(id, true, &packed, MAX_CHUNK as usize + 1),
            Err(ChunkError::TooLarge { .. })
        ));
        assert_eq!(opened(id, true, &packed, zeros.len()).unwrap(), &zeros[..]);
        check_chunk(id, true, &packed, zeros.len()).unwrap();
        assert!(matches!(
            check_chunk(id, false, &zeros[1..], zeros.len()),
            Err(ChunkError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn only_one_canonical_zstd_encoding_is_accepted() {
        let text = b"Liebe Grete, ".repeat(200);
        let id = ChunkId::of(&text);
        let packed = zstd::bulk::compress(&text, 3).unwrap();
        check_chunk(id, true, &packed, text.len()).unwrap();
        let canonical = |data: &[u8]| match check_chunk(id, true, data, text.len()) {
            Err(ChunkError::NotCanonical { reason, .. }) => reason,
            other => panic!("expected NotCanonical, got {other:?}"),
        };
        // A skippable frame (magic 0x184D2A50) of 1 KiB after, and before, the real frame.
        let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18];
        skippable.extend_from_slice(&1024u32.to_le_bytes());
        skippable.extend_from_slice(&[0; 1024]);
        let mut after = packed.clone();
        after.extend_from_slice(&skippable[..64]);
        assert_eq!(canonical(&after), "bytes follow the zstd frame");
        let mut before = skippable[..64].to_vec();
        before[4..8].copy_from_slice(&56u32.to_le_bytes());
        before.extend_from_slice(&packed);
        assert_eq!(
            canonical(&before),
            "payload does not start with a zstd frame"
        );
        // A frame without the content size in its header.
        let mut c = zstd::bulk::Compressor::new(3).unwrap();
        c.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(false))
            .unwrap();
        let no_size = c.compress(&text).unwrap();
        assert_eq!(
            canonical(&no_size),
            "zstd frame header does not record the raw length"
        );
        // Incompressible bytes "compressed" into a larger frame.
        let noise = pseudo_random(2000, 5);
        let big = zstd::bulk::compress(&noise, 1).unwrap();
        assert!(matches!(
            check_chunk(ChunkId::of(&noise), true, &big, noise.len()),
            Err(ChunkError::NotCanonical { .. })
        ));
    }

    #[test]
    fn chunk_ids_round_trip_through_hex() {
        let id = ChunkId::of(b"x");
        assert_eq!(ChunkId::from_hex(&id.to_hex()).unwrap(), id);
        assert!(ChunkId::from_hex("zz").is_err());
        assert!(ChunkId::from_slice(&[0u8; 31]).is_err());
    }
}
