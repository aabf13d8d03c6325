//! The archive's header and table of contents: a bounded cursor over the bytes read so far.

use super::*;

#[derive(Debug)]
pub(super) struct NeedMore;

/// A cursor over buffered bytes; every read fails with `NeedMore` at the end.
pub(super) struct Cursor<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
    pub(super) int_size: usize,
}

impl Cursor<'_> {
    pub(super) fn byte(&mut self) -> Result<u8, NeedMore> {
        let b = *self.buf.get(self.pos).ok_or(NeedMore)?;
        self.pos += 1;
        Ok(b)
    }
    pub(super) fn bytes(&mut self, n: usize) -> Result<&[u8], NeedMore> {
        let end = self.pos.checked_add(n).ok_or(NeedMore)?;
        let s = self.buf.get(self.pos..end).ok_or(NeedMore)?;
        self.pos = end;
        Ok(s)
    }
    pub(super) fn int(&mut self) -> Result<i64, NeedMore> {
        let negative = self.byte()? != 0;
        let mut v: i64 = 0;
        for i in 0..self.int_size {
            let b = i64::from(self.byte()?);
            if i < 8 {
                v |= b << (8 * i);
            }
        }
        Ok(if negative { -v } else { v })
    }
    pub(super) fn string(&mut self) -> Result<Option<String>, NeedMore> {
        let len = self.int()?;
        if len < 0 {
            return Ok(None);
        }
        let b = self.bytes(len as usize)?;
        Ok(Some(String::from_utf8_lossy(b).into_owned()))
    }
}

pub(super) enum Parsed<T> {
    Done(T),
    NeedMore,
    Bad(String),
}

impl<T> From<NeedMore> for Parsed<T> {
    fn from(_: NeedMore) -> Self {
        Parsed::NeedMore
    }
}

macro_rules! need {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(NeedMore) => return Parsed::NeedMore,
        }
    };
}

pub(super) struct Toc {
    pub(super) version: u32,
    pub(super) version_text: String,
    pub(super) int_size: usize,
    /// `None`: uncompressed; `Some(true)`: zlib; `Some(false)`: a compression not read here.
    pub(super) zlib: Option<bool>,
    /// Dump id → `schema.table` of each TABLE DATA entry.
    pub(super) tables: HashMap<i64, String>,
    pub(super) len: usize,
}

pub(super) fn parse_toc(buf: &[u8]) -> Parsed<Toc> {
    if buf.len() < 11 {
        return Parsed::NeedMore;
    }
    if &buf[..5] != b"PGDMP" {
        return Parsed::Bad("does not start with PGDMP: not a pg_dump archive".into());
    }
    let (vmaj, vmin, vrev) = (buf[5], buf[6], buf[7]);
    let v = version(vmaj, vmin);
    let version_text = format!("{vmaj}.{vmin}.{vrev}");
    if !(version(1, 12)..=version(1, 15)).contains(&v) {
        return Parsed::Bad(format!(
            "archive version {version_text} is not one this receiver reads (1.12 to 1.15)"
        ));
    }
    let int_size = buf[8] as usize;
    let off_size = buf[9] as usize;
    if !(1..=8).contains(&int_size) || !(1..=8).contains(&off_size) {
        return Parsed::Bad(format!(
            "int size {int_size} / offset size {off_size} out of range"
        ));
    }
    if buf[10] != FORMAT_CUSTOM {
        return Parsed::Bad(format!(
            "archive format {} is not the custom format (pg_dump -Fc)",
            buf[10]
        ));
    }
    let mut c = Cursor {
        buf,
        pos: 11,
        int_size,
    };
    let zlib = if v >= version(1, 15) {
        match need!(c.byte()) {
            0 => None,
            1 => Some(true),
            _ => Some(false),
        }
    } else {
        match need!(c.int()) {
            0 => None,
            -1..=9 => Some(true),
            n => return Parsed::Bad(format!("compression level {n} out of range")),
        }
    };
    for _ in 0..7 {
        need!(c.int()); // creation time
    }
    need!(c.string()); // database name
    need!(c.string()); // server version
    need!(c.string()); // pg_dump version
    let count = need!(c.int());
    if count < 0 || count as usize > buf.len() {
        return Parsed::Bad(format!("TOC entry count {count} is impossible"));
    }
    let mut tables = HashMap::new();
    for _ in 0..count {
        let dump_id = need!(c.int());
        need!(c.int()); // had dumper
        need!(c.string()); // table oid
        need!(c.string()); // oid
        let tag = need!(c.string()).unwrap_or_default();
        let desc = need!(c.string()).unwrap_or_default();
        need!(c.int()); // section
        need!(c.string()); // definition
        need!(c.string()); // drop statement
        need!(c.string()); // copy statement
        let namespace = need!(c.string()).unwrap_or_default();
        need!(c.string()); // tablespace
        if v >= version(1, 14) {
            need!(c.string()); // table access method
        }
        need!(c.string()); // owner
        need!(c.string()); // "with oids"
        while need!(c.string()).is_some() {} // dependencies
                                             // Custom format's extra TOC data: the data offset (flag byte and offset bytes).
        need!(c.byte());
        need!(c.bytes(off_size));
        if desc == "TABLE DATA" {
            let name = format!("{namespace}.{tag}");
            // Names go into the manifest and into messages: bounded like the sender's.
            if name.len() > backup_common::wire::MAX_NAME_BYTES
                || tables.len() >= backup_common::wire::MAX_TABLES
            {
                return Parsed::Bad(format!(
                    "a table name longer than {} bytes, or more than {} tables",
                    backup_common::wire::MAX_NAME_BYTES,
                    backup_common::wire::MAX_TABLES
                ));
            }
            tables.insert(dump_id, name);
        }
    }
    Parsed::Done(Toc {
        version: v,
        version_text,
        int_size,
        zlib,
        tables,
        len: c.pos,
    })
}
