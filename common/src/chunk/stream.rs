//! Streaming FastCDC over a reader with one reusable buffer.
//!
//! fastcdc's own `StreamCDC` drains every chunk from the front of its buffer, which moves
//! the rest of the buffer (up to 3 MiB) and zero-fills it again for every ~1 MiB chunk:
//! about five bytes of memory traffic per byte chunked, the largest cost in the sender's
//! profile. Here a chunk is copied out once; the buffer is compacted only when its tail is
//! full, and buffers are pooled across streams. The cut points are fastcdc's `cut` on the
//! same bytes, so chunk boundaries (and so deduplication against earlier snapshots) are
//! unchanged; a test below checks that against `StreamCDC`.

use std::io::{ErrorKind, Read};
use std::sync::Mutex;

use bytes::Bytes;

use super::{Chunk, ChunkError, ChunkId, StreamSummary, AVG_CHUNK, MAX_CHUNK, MIN_CHUNK};

const MAX: usize = MAX_CHUNK as usize;
/// Twice the largest chunk: compaction then moves at most one partial chunk per ~4 MiB.
const BUFFER: usize = 2 * MAX;
/// Buffers kept for reuse (one per concurrent stream; more are freed when returned).
const POOLED: usize = 16;

static POOL: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

/// A pooled buffer, returned to the pool on drop.
struct Buffer(Option<Box<[u8]>>);

impl Buffer {
    fn take() -> Buffer {
        let pooled = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
        Buffer(Some(
            pooled.unwrap_or_else(|| vec![0u8; BUFFER].into_boxed_slice()),
        ))
    }

    fn bytes(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().expect("present until drop")
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOLED {
            pool.extend(self.0.take());
        }
    }
}

/// Length of the next chunk at the start of `window`, if `window` decides it: a cut found
/// strictly inside the window is where a longer window would cut too (FastCDC scans from
/// the front and its masks depend only on the position), and at the end of the input or
/// with a full `MAX` bytes the window is all the chunker may look at anyway.
fn next_cut(window: &[u8], at_eof: bool) -> Option<usize> {
    let cut = fastcdc::v2020::FastCDC::new(window, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
        .next()
        .map_or(window.len(), |c| c.length);
    (at_eof || window.len() >= MAX || cut < window.len()).then_some(cut)
}

/// Splits `reader` into chunks, handing each to `sink` in order. Memory stays at one
/// buffer of twice the largest chunk, however long the stream is. Returns the whole
/// stream's size and hash.
pub fn chunk_stream<R, E>(
    mut reader: R,
    mut sink: impl FnMut(Chunk) -> Result<(), E>,
) -> Result<StreamSummary, E>
where
    R: Read,
    E: From<ChunkError>,
{
    let mut buffer = Buffer::take();
    let buf = buffer.bytes();
    let (mut start, mut end, mut eof) = (0, 0, false);
    let mut whole = blake3::Hasher::new();
    loop {
        if start == end {
            (start, end) = (0, 0);
        }
        // Fill up to a full chunk's worth (or the end of the buffer, or of the input).
        while !eof && end - start < MAX && end < buf.len() {
            match reader.read(&mut buf[end..]) {
                Ok(0) => eof = true,
                Ok(n) => end += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(ChunkError::Read(e).into()),
            }
        }
        if start == end {
            break;
        }
        match next_cut(&buf[start..end], eof) {
            Some(len) => {
                let data = &buf[start..start + len];
                whole.update(data);
                sink(Chunk {
                    id: ChunkId::of(data),
                    data: Bytes::copy_from_slice(data),
                })?;
                start += len;
            }
            // The tail is full and the window undecided: move the partial chunk to the front.
            None => {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            }
        }
    }
    let size = whole.count();
    Ok(StreamSummary {
        size,
        hash: ChunkId(*whole.finalize().as_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::tests::pseudo_random;

    /// Hands out its input in reads of `step` bytes, like a network body does.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn lengths(data: &[u8], step: usize) -> Vec<usize> {
        let mut out = Vec::new();
        chunk_stream::<_, ChunkError>(Trickle { data, step }, |c| {
            out.push(c.data.len());
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn cuts_exactly_where_fastcdc_stream_cdc_cuts() {
        // Random data, a long run of zeros (forces MAX-sized cuts), and a short tail.
        let mut data = pseudo_random(19 * 1024 * 1024, 11);
        data.splice(6_000_000..6_000_000, vec![0u8; 9 * 1024 * 1024]);
        let reference: Vec<usize> =
            fastcdc::v2020::StreamCDC::new(&data[..], MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
                .map(|c| c.unwrap().length)
                .collect();
        assert!(reference.contains(&MAX), "{reference:?}");
        for step in [data.len(), 1 << 20, 65_536, 16_384, 4099] {
            assert_eq!(lengths(&data, step), reference, "reads of {step} bytes");
        }
        for len in [0, 1, 1000, MIN_CHUNK as usize, MAX + 1] {
            let d = &data[..len];
            let reference: Vec<usize> =
                fastcdc::v2020::StreamCDC::new(d, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
                    .map(|c| c.unwrap().length)
                    .collect();
            assert_eq!(lengths(d, 7000), reference, "input of {len} bytes");
        }
    }

    #[test]
    fn a_read_error_is_reported_not_swallowed() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        let err = chunk_stream::<_, ChunkError>(Failing, |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
    }
}
