//! On-disk record format: header encoding/decoding and verified reads.
//!
//! ```text
//! offset size field
//!      0    4 magic  "HVR1"
//!      4    4 len    body length in bytes (u32)
//!      8    4 crc32  over first, last (LE) and body
//!     12    8 first  caller key
//!     20    8 last   caller key
//!     28  len body
//! ```
//! All integers little-endian.

use std::io;

use crate::vfs::VFile;

/// Record magic: the ASCII bytes "HVR1" as they appear on disk.
pub const RECORD_MAGIC: [u8; 4] = *b"HVR1";
/// Fixed header size in bytes.
pub const HEADER_BYTES: u64 = 28;
const HEADER_LEN: usize = HEADER_BYTES as usize;

/// Decoded, magic-checked record header (crc not yet verified).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub len: u32,
    pub crc: u32,
    pub first: u64,
    pub last: u64,
}

/// Why a record could not be read at some offset.
#[derive(Debug)]
pub(crate) enum Invalid {
    /// The underlying read failed (not a format problem).
    Io(io::Error),
    /// The bytes are not a valid record; the string says why.
    Bad(String),
}

impl From<io::Error> for Invalid {
    fn from(e: io::Error) -> Self {
        Invalid::Io(e)
    }
}

pub(crate) fn body_crc(first: u64, last: u64, body: &[u8]) -> u32 {
    parts_crc(first, last, &[body])
}

/// The record checksum of a body given as consecutive parts.
pub(crate) fn parts_crc(first: u64, last: u64, parts: &[&[u8]]) -> u32 {
    parts_hasher(first, last, parts).finalize()
}

/// The checksum state after the keys and `parts` (more body may follow).
fn parts_hasher(first: u64, last: u64, parts: &[&[u8]]) -> crc32fast::Hasher {
    let mut h = crc32fast::Hasher::new();
    h.update(&first.to_le_bytes());
    h.update(&last.to_le_bytes());
    for p in parts {
        h.update(p);
    }
    h
}

/// The header of a record whose body is `parts` concatenated (written right before them, so an
/// append is one vectored write). The caller has already checked the body length fits in a u32.
pub(crate) fn encode_header(first: u64, last: u64, parts: &[&[u8]]) -> [u8; HEADER_LEN] {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    header_bytes(first, last, len, parts_crc(first, last, parts))
}

/// The header for a body of `parts` followed by `tail_len` more bytes whose checksum state is
/// `tail_crc` (so the tail is not read again).
pub(crate) fn encode_header_tail_crc(
    first: u64,
    last: u64,
    parts: &[&[u8]],
    tail_len: usize,
    tail_crc: &crc32fast::Hasher,
) -> [u8; HEADER_LEN] {
    let len: usize = parts.iter().map(|p| p.len()).sum::<usize>() + tail_len;
    let mut h = parts_hasher(first, last, parts);
    h.combine(tail_crc);
    header_bytes(first, last, len, h.finalize())
}

fn header_bytes(first: u64, last: u64, len: usize, crc: u32) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0..4].copy_from_slice(&RECORD_MAGIC);
    out[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    out[12..20].copy_from_slice(&first.to_le_bytes());
    out[20..28].copy_from_slice(&last.to_le_bytes());
    out
}

fn u32_at(b: &[u8; HEADER_LEN], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8; HEADER_LEN], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads and bounds-checks the header at `offset` of a file whose valid
/// bytes end at `end`. Checks magic, `len <= max_body` and that the body
/// fits before `end`, so callers may allocate `len` bytes safely.
pub(crate) fn read_header<F: VFile>(
    file: &F,
    offset: u64,
    end: u64,
    max_body: u64,
) -> Result<Header, Invalid> {
    if end.saturating_sub(offset) < HEADER_BYTES {
        return Err(Invalid::Bad(format!(
            "only {} bytes left, less than a {HEADER_BYTES}-byte header",
            end.saturating_sub(offset)
        )));
    }
    let mut b = [0u8; HEADER_LEN];
    file.read_at(&mut b, offset)?;
    if b[0..4] != RECORD_MAGIC {
        return Err(Invalid::Bad(format!("bad magic {:02x?}", &b[0..4])));
    }
    let h = Header {
        len: u32_at(&b, 4),
        crc: u32_at(&b, 8),
        first: u64_at(&b, 12),
        last: u64_at(&b, 20),
    };
    if u64::from(h.len) > max_body {
        return Err(Invalid::Bad(format!(
            "body length {} exceeds record_bytes_max {max_body}",
            h.len
        )));
    }
    let avail = end - offset - HEADER_BYTES;
    if u64::from(h.len) > avail {
        return Err(Invalid::Bad(format!(
            "body length {} but only {avail} bytes follow the header",
            h.len
        )));
    }
    Ok(h)
}

/// Reads the record at `offset` into `body` (reused across calls to avoid an
/// allocation per record while scanning) and verifies its crc.
pub(crate) fn read_record<F: VFile>(
    file: &F,
    offset: u64,
    end: u64,
    max_body: u64,
    body: &mut Vec<u8>,
) -> Result<Header, Invalid> {
    let h = read_header(file, offset, end, max_body)?;
    body.clear();
    // Safe to allocate: read_header bounded len by max_body and the file end.
    body.resize(h.len as usize, 0);
    file.read_at(body, offset + HEADER_BYTES)?;
    let crc = body_crc(h.first, h.last, body);
    if crc != h.crc {
        return Err(Invalid::Bad(format!(
            "crc mismatch: stored {:08x}, computed {crc:08x}",
            h.crc
        )));
    }
    Ok(h)
}
