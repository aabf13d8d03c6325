use std::io::Write;

use super::*;

fn int(d: &mut Vec<u8>, v: i32) {
    d.push(u8::from(v < 0));
    d.extend_from_slice(&v.unsigned_abs().to_le_bytes());
}
fn string(d: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => int(d, -1),
        Some(s) => {
            int(d, s.len() as i32);
            d.extend_from_slice(s.as_bytes());
        }
    }
}

/// An archive as PostgreSQL 15's pg_dump -Fc writes it to a pipe: one table, its COPY
/// data in one zlib stream cut into `piece`-byte pieces, followed by `after`.
fn archive(rows: usize, piece: usize, after: &[u8]) -> Vec<u8> {
    let mut d = b"PGDMP".to_vec();
    d.extend_from_slice(&[1, 14, 0, 4, 8, 1]);
    int(&mut d, -1); // default zlib compression
    for v in [0, 0, 3, 1, 0, 126, 0] {
        int(&mut d, v);
    }
    for s in ["archiv", "15.8", "15.8"] {
        string(&mut d, Some(s));
    }
    int(&mut d, 1); // one TOC entry
    int(&mut d, 7); // dump id
    int(&mut d, 1); // had dumper
    string(&mut d, Some("0"));
    string(&mut d, Some("0"));
    string(&mut d, Some("dokumente"));
    string(&mut d, Some("TABLE DATA"));
    int(&mut d, 2); // section data
    string(&mut d, Some(""));
    string(&mut d, Some(""));
    string(&mut d, Some("COPY public.dokumente (id) FROM stdin;\n"));
    string(&mut d, Some("public"));
    string(&mut d, Some(""));
    string(&mut d, Some(""));
    string(&mut d, Some("archiv"));
    string(&mut d, Some("false"));
    string(&mut d, Some("3"));
    string(&mut d, None); // end of dependencies
    d.push(1); // offset not set (written to a pipe)
    d.extend_from_slice(&[0; 8]);
    let mut copy = Vec::new();
    for i in 0..rows {
        copy.extend_from_slice(format!("{i}\tBrief {i}\n").as_bytes());
    }
    copy.extend_from_slice(COPY_END);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&copy).unwrap();
    let mut packed = z.finish().unwrap();
    packed.extend_from_slice(after);
    d.push(BLK_DATA);
    int(&mut d, 7);
    for p in packed.chunks(piece) {
        int(&mut d, p.len() as i32);
        d.extend_from_slice(p);
    }
    int(&mut d, 0);
    d
}

fn read(bytes: &[u8], feed: usize) -> MeasuredDump {
    let mut r = DumpReader::new();
    for part in bytes.chunks(feed) {
        r.feed(part);
    }
    r.finish().unwrap()
}

#[test]
fn rows_are_counted_in_zlib_table_data_however_it_is_cut() {
    let a = archive(200_000, 4096, b"");
    for feed in [1 << 20, 777, 65_536] {
        let m = read(&a, feed);
        assert_eq!(m.archive_version, "1.14.0");
        assert_eq!(
            m.row_counts,
            Some(
                [("public.dokumente".to_string(), 200_000)]
                    .into_iter()
                    .collect()
            ),
            "fed {feed} bytes at a time"
        );
    }
    assert_eq!(
        read(&archive(0, 100, b""), 10).row_counts.unwrap()["public.dokumente"],
        0
    );
}

#[test]
fn data_that_is_no_pg_dump_copy_stream_is_not_counted() {
    let m = read(&archive(10, 100, b"trailing junk"), 50);
    assert_eq!(m.row_counts, None);
    assert!(m
        .row_counts_unmeasured
        .unwrap()
        .contains("bytes follow the end of the zlib stream"),);
    let mut r = DumpReader::new();
    let a = archive(10, 100, b"");
    r.feed(&a[..a.len() - 3]);
    assert_eq!(
        r.finish().unwrap_err(),
        "ends in the middle of a data block"
    );
}
