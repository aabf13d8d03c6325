//! Reads a `pg_dump -Fc` (custom format) archive as it streams past at commit: the header
//! must say "custom-format archive", the table of contents must parse, and every table's
//! rows are counted from its own data blocks (COPY text, one line a row). The counts are
//! the receiver's measurement; the sender's row counts stay its claim.
//!
//! Layout (PostgreSQL's pg_backup_archiver.c, archive versions 1.12 to 1.15): "PGDMP",
//! version (3 bytes), int size, offset size, format; compression; creation time; database
//! name and server versions; the TOC entries; then data blocks (type, dump id, and
//! length-prefixed pieces of one zlib stream, or raw without compression).
//! Ints are a sign byte and `int size` little-endian bytes; strings an int length (-1 for
//! none) and the bytes. Anything the reader does not know is reported, never guessed.

use std::collections::{BTreeMap, HashMap};

use backup_common::manifest::MeasuredDump;

mod toc;

use toc::*;

/// Custom format (`archCustom`) in the header's format byte.
const FORMAT_CUSTOM: u8 = 1;
/// Data block types.
const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;
/// The table of contents is buffered whole; real ones are far smaller.
const MAX_TOC_BYTES: usize = 64 * 1024 * 1024;
/// Decompressed table data counted per compressed byte before the counting gives up (a
/// "zlib bomb" costs no more than this); COPY text compresses far less.
const MAX_EXPANSION: u64 = 50;
/// And never more than this in all, however large the dump.
const MAX_INFLATED: u64 = 16 << 30;
/// Inflated bytes handled per call into zlib.
const OUT_BUF: usize = 256 * 1024;
/// What pg_dump writes after a table's COPY rows: the end marker and two empty lines.
const COPY_END: &[u8] = b"\\.\n\n\n";

const fn version(major: u8, minor: u8) -> u32 {
    (major as u32) << 16 | (minor as u32) << 8
}

/// Keeps the last `COPY_END.len()` bytes seen in `tail`.
fn keep_tail(tail: &mut Vec<u8>, bytes: &[u8]) {
    tail.extend_from_slice(&bytes[bytes.len().saturating_sub(COPY_END.len())..]);
    let excess = tail.len().saturating_sub(COPY_END.len());
    tail.drain(..excess);
}

enum State {
    Toc,
    BlockStart,
    /// Next: a piece length (or 0 ending the block / blob).
    PieceLen {
        table: Option<String>,
    },
    Piece {
        table: Option<String>,
        left: usize,
    },
    /// Next: a blob oid (0 ends the blobs block).
    BlobOid,
    Failed(String),
}

/// Feeds on a dump's bytes in order; [`DumpReader::finish`] says what it found.
pub struct DumpReader {
    state: State,
    buf: Vec<u8>,
    toc: Option<Toc>,
    inflate: Option<flate2::Decompress>,
    rows: BTreeMap<String, u64>,
    /// The last bytes of the current table's COPY data, to find its end marker.
    tail: Vec<u8>,
    /// Output buffer for zlib, kept across pieces.
    out: Vec<u8>,
    /// Buffered length at which an incomplete TOC is parsed again.
    toc_retry_at: usize,
    compressed: u64,
    expanded: u64,
    /// Why rows cannot be counted (the archive itself may still be fine).
    uncounted: Option<String>,
}

impl Default for DumpReader {
    fn default() -> Self {
        Self::new()
    }
}

impl DumpReader {
    pub fn new() -> DumpReader {
        DumpReader {
            state: State::Toc,
            buf: Vec::new(),
            toc: None,
            inflate: None,
            rows: BTreeMap::new(),
            tail: Vec::new(),
            out: Vec::new(),
            toc_retry_at: 0,
            compressed: 0,
            expanded: 0,
            uncounted: None,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if matches!(self.state, State::Failed(_)) {
            return;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.extend_from_slice(bytes);
        let used = self.advance(&buf);
        buf.drain(..used);
        self.buf = buf;
    }

    /// Parses as far as `buf` allows; returns how many bytes it consumed.
    fn advance(&mut self, buf: &[u8]) -> usize {
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            let state = std::mem::replace(&mut self.state, State::BlockStart);
            let (next, used) = match state {
                State::Failed(e) => (State::Failed(e), 0),
                // An incomplete TOC is parsed again only once the buffer doubled, so a
                // long one fed in small pieces costs linear, not quadratic, time.
                State::Toc if rest.len() < self.toc_retry_at => (State::Toc, 0),
                State::Toc => match parse_toc(rest) {
                    Parsed::Done(toc) => {
                        let len = toc.len;
                        if toc.zlib == Some(false) {
                            self.uncounted = Some("its compression is not zlib".into());
                        }
                        for t in toc.tables.values() {
                            self.rows.insert(t.clone(), 0);
                        }
                        self.toc = Some(toc);
                        (State::BlockStart, len)
                    }
                    Parsed::NeedMore if rest.len() > MAX_TOC_BYTES => (
                        State::Failed(format!("TOC longer than {MAX_TOC_BYTES} bytes")),
                        0,
                    ),
                    Parsed::NeedMore => {
                        self.toc_retry_at = rest.len() * 2;
                        (State::Toc, 0)
                    }
                    Parsed::Bad(e) => (State::Failed(e), 0),
                },
                State::BlockStart => {
                    let mut c = self.cursor(rest);
                    match (c.byte(), c.int()) {
                        (Ok(BLK_DATA), Ok(id)) => {
                            let table = self.toc.as_ref().and_then(|t| t.tables.get(&id)).cloned();
                            if table.is_none() {
                                (
                                    State::Failed(format!(
                                        "data block for dump id {id}, which the TOC does not list as table data"
                                    )),
                                    0,
                                )
                            } else {
                                self.inflate = Some(flate2::Decompress::new(true));
                                self.tail.clear();
                                (State::PieceLen { table }, c.pos)
                            }
                        }
                        (Ok(BLK_BLOBS), Ok(_)) => (State::BlobOid, c.pos),
                        (Ok(t), Ok(_)) => {
                            (State::Failed(format!("unknown data block type {t}")), 0)
                        }
                        _ => (State::BlockStart, 0),
                    }
                }
                State::BlobOid => {
                    let mut c = self.cursor(rest);
                    match c.int() {
                        Ok(0) => (State::BlockStart, c.pos),
                        Ok(_) => (State::PieceLen { table: None }, c.pos),
                        Err(NeedMore) => (State::BlobOid, 0),
                    }
                }
                State::PieceLen { table } => {
                    let mut c = self.cursor(rest);
                    match c.int() {
                        Ok(0) => {
                            let used = c.pos;
                            let next = match &table {
                                Some(t) => {
                                    self.end_table(t);
                                    State::BlockStart
                                }
                                None => State::BlobOid,
                            };
                            (next, used)
                        }
                        Ok(n) if n < 0 => (State::Failed(format!("negative data length {n}")), 0),
                        Ok(n) => (
                            State::Piece {
                                table,
                                left: n as usize,
                            },
                            c.pos,
                        ),
                        Err(NeedMore) => (State::PieceLen { table }, 0),
                    }
                }
                State::Piece { table, left } => {
                    let n = left.min(rest.len());
                    if n == 0 {
                        (State::Piece { table, left }, 0)
                    } else {
                        if let Some(t) = &table {
                            self.count_rows(t, &buf[pos..pos + n]);
                        }
                        let next = if n == left {
                            State::PieceLen { table }
                        } else {
                            State::Piece {
                                table,
                                left: left - n,
                            }
                        };
                        (next, n)
                    }
                }
            };
            self.state = next;
            if used == 0 {
                return pos;
            }
            pos += used;
        }
    }

    fn cursor<'a>(&self, buf: &'a [u8]) -> Cursor<'a> {
        Cursor {
            buf,
            pos: 0,
            int_size: self.toc.as_ref().map_or(4, |t| t.int_size),
        }
    }

    /// A table's data ended: its three closing newlines (`\\.` and two empty lines) are no
    /// rows. Data that does not end so is no COPY data pg_dump wrote.
    fn end_table(&mut self, table: &str) {
        if self.uncounted.is_some() {
            return;
        }
        if self.tail.ends_with(COPY_END) {
            if let Some(n) = self.rows.get_mut(table) {
                *n = n.saturating_sub(3);
            }
        } else {
            self.uncounted = Some(format!(
                "the table data of {table} does not end as pg_dump ends COPY data"
            ));
        }
    }

    /// Counts the newlines of one piece of a table's COPY data.
    fn count_rows(&mut self, table: &str, piece: &[u8]) {
        if self.uncounted.is_some() {
            return;
        }
        self.compressed += piece.len() as u64;
        let zlib = self.toc.as_ref().and_then(|t| t.zlib) == Some(true);
        let lines = if zlib {
            let mut out = std::mem::take(&mut self.out);
            out.resize(OUT_BUF, 0);
            let counted = self.inflate_lines(table, piece, &mut out);
            self.out = out;
            match counted {
                Ok(n) => n,
                Err(why) => {
                    self.uncounted = Some(why);
                    return;
                }
            }
        } else {
            keep_tail(&mut self.tail, piece);
            piece.iter().filter(|&&b| b == b'\n').count() as u64
        };
        if let Some(n) = self.rows.get_mut(table) {
            *n += lines;
        }
    }

    /// Inflates one piece of a table's zlib stream through `out`, counting newlines.
    fn inflate_lines(&mut self, table: &str, piece: &[u8], out: &mut [u8]) -> Result<u64, String> {
        let inflate = self.inflate.as_mut().expect("set at block start");
        let mut input = piece;
        let mut lines = 0u64;
        // Until the piece is consumed and zlib has no more output pending (a full `out`
        // may leave some behind).
        loop {
            let before = (inflate.total_in(), inflate.total_out());
            let status = inflate
                .decompress(input, out, flate2::FlushDecompress::None)
                .map_err(|e| format!("table data of {table} does not inflate: {e}"))?;
            let consumed = (inflate.total_in() - before.0) as usize;
            let produced = (inflate.total_out() - before.1) as usize;
            lines += out[..produced].iter().filter(|&&b| b == b'\n').count() as u64;
            keep_tail(&mut self.tail, &out[..produced]);
            self.expanded += produced as u64;
            input = &input[consumed..];
            if self.expanded > MAX_INFLATED
                || self.expanded > MAX_EXPANSION * self.compressed.max(1 << 20)
            {
                return Err(format!(
                    "its table data expands more than {MAX_EXPANSION}-fold or past {MAX_INFLATED} bytes"
                ));
            }
            if status == flate2::Status::StreamEnd {
                if !input.is_empty() {
                    return Err(format!(
                        "bytes follow the end of the zlib stream in the table data of {table}"
                    ));
                }
                break;
            }
            if input.is_empty() && produced < out.len() {
                break;
            }
            if consumed == 0 && produced == 0 {
                return Err(format!(
                    "the table data of {table} makes no progress in zlib"
                ));
            }
        }
        Ok(lines)
    }

    /// What the dump turned out to be: an error when it is no custom-format archive or
    /// ends in the middle of a block.
    pub fn finish(mut self) -> Result<MeasuredDump, String> {
        if matches!(self.state, State::Toc) {
            // The TOC may have waited for the buffer to double; parse what there is.
            self.toc_retry_at = 0;
            self.feed(&[]);
        }
        match self.state {
            State::Failed(e) => return Err(e),
            State::Toc => return Err("ends before its table of contents does".into()),
            State::BlockStart if self.buf.is_empty() => {}
            _ => return Err("ends in the middle of a data block".into()),
        }
        let toc = self.toc.expect("past the TOC");
        let (row_counts, row_counts_unmeasured) = match self.uncounted {
            Some(why) => (None, Some(why)),
            None => (Some(self.rows), None),
        };
        let _ = toc.version;
        Ok(MeasuredDump {
            archive_version: toc.version_text,
            row_counts,
            row_counts_unmeasured,
        })
    }
}

#[cfg(test)]
mod tests;
