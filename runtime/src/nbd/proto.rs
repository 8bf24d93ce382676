//! NBD wire constants, limits, and encode/decode of the fixed-size messages.
//! All integers are big-endian on the wire.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

// ---- Limits -------------------------------------------------------------------------------

/// Largest READ/WRITE/TRIM payload we accept; also advertised as the maximum block size.
/// Matches the 32 MiB every mainstream client and server uses.
pub const NBD_PAYLOAD_BYTES_MAX: u32 = 32 * 1024 * 1024;
/// Requests in flight per connection before the reader stops reading (backpressure).
pub const NBD_INFLIGHT_MAX: usize = 64;
/// Payload bytes (READ results + WRITE data) in flight per connection. Without this, 64
/// maximum-size writes would pin 2 GiB per connection.
pub const NBD_INFLIGHT_BYTES_MAX: u32 = 128 * 1024 * 1024;
/// Largest option payload during the handshake. Legitimate options are names (<= 4 KiB by
/// spec) plus a few info requests, so 64 KiB is generous.
pub const NBD_OPTION_BYTES_MAX: u32 = 64 * 1024;
/// Spec limit on string length (export names, descriptions).
pub const NBD_STRING_BYTES_MAX: usize = 4096;
/// Preferred block size advertised in `NBD_INFO_BLOCK_SIZE` (page size: avoids RMW in backends).
pub const NBD_BLOCK_SIZE_PREFERRED: u32 = 4096;
/// Minimum block size advertised: byte granularity, since the server accepts any alignment.
pub const NBD_BLOCK_SIZE_MIN: u32 = 1;
/// Buffer size of the per-connection BufReader/BufWriter; holds many 4 KiB requests per syscall.
pub const SOCKET_BUFFER_BYTES: usize = 64 * 1024;
/// Pause after a failed accept() so resource exhaustion does not become a busy loop.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Zero padding after the EXPORT_NAME reply unless NO_ZEROES was negotiated.
pub const EXPORT_NAME_ZERO_PAD: usize = 124;

// ---- Handshake ----------------------------------------------------------------------------

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

pub const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const NBD_FLAG_NO_ZEROES: u16 = 1 << 1;
pub const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const NBD_FLAG_C_NO_ZEROES: u32 = 1 << 1;

pub const NBD_OPT_EXPORT_NAME: u32 = 1;
pub const NBD_OPT_ABORT: u32 = 2;
pub const NBD_OPT_LIST: u32 = 3;
pub const NBD_OPT_STARTTLS: u32 = 5;
pub const NBD_OPT_INFO: u32 = 6;
pub const NBD_OPT_GO: u32 = 7;
pub const NBD_OPT_STRUCTURED_REPLY: u32 = 8;
pub const NBD_OPT_LIST_META_CONTEXT: u32 = 9;
pub const NBD_OPT_SET_META_CONTEXT: u32 = 10;
pub const NBD_OPT_EXTENDED_HEADERS: u32 = 11;

pub const NBD_REP_ACK: u32 = 1;
pub const NBD_REP_SERVER: u32 = 2;
pub const NBD_REP_INFO: u32 = 3;
const NBD_REP_FLAG_ERROR: u32 = 1 << 31;
pub const NBD_REP_ERR_UNSUP: u32 = NBD_REP_FLAG_ERROR | 1;
pub const NBD_REP_ERR_INVALID: u32 = NBD_REP_FLAG_ERROR | 3;
pub const NBD_REP_ERR_UNKNOWN: u32 = NBD_REP_FLAG_ERROR | 6;
pub const NBD_REP_ERR_TOO_BIG: u32 = NBD_REP_FLAG_ERROR | 9;

pub const NBD_INFO_EXPORT: u16 = 0;
pub const NBD_INFO_NAME: u16 = 1;
pub const NBD_INFO_DESCRIPTION: u16 = 2;
pub const NBD_INFO_BLOCK_SIZE: u16 = 3;

// ---- Transmission -------------------------------------------------------------------------

pub const NBD_FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const NBD_FLAG_READ_ONLY: u16 = 1 << 1;
pub const NBD_FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const NBD_FLAG_SEND_FUA: u16 = 1 << 3;
pub const NBD_FLAG_SEND_TRIM: u16 = 1 << 5;
pub const NBD_FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const NBD_FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

pub const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
pub const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// magic(4) + flags(2) + type(2) + cookie(8) + offset(8) + length(4).
pub const NBD_REQUEST_HEADER_BYTES: usize = 28;
/// magic(4) + error(4) + cookie(8).
pub const NBD_SIMPLE_REPLY_HEADER_BYTES: usize = 16;

pub const NBD_CMD_FLAG_FUA: u16 = 1 << 0;
pub const NBD_CMD_FLAG_NO_HOLE: u16 = 1 << 1;

pub const NBD_CMD_READ: u16 = 0;
pub const NBD_CMD_WRITE: u16 = 1;
pub const NBD_CMD_DISC: u16 = 2;
pub const NBD_CMD_FLUSH: u16 = 3;
pub const NBD_CMD_TRIM: u16 = 4;
pub const NBD_CMD_WRITE_ZEROES: u16 = 6;

pub const NBD_OK: u32 = 0;
pub const NBD_EPERM: u32 = 1;
pub const NBD_EIO: u32 = 5;
pub const NBD_EINVAL: u32 = 22;
pub const NBD_ENOSPC: u32 = 28;
pub const NBD_ESHUTDOWN: u32 = 108;

/// Transmission flags advertised for an export.
pub fn transmission_flags(read_only: bool) -> u16 {
    let mut flags = NBD_FLAG_HAS_FLAGS
        | NBD_FLAG_SEND_FLUSH
        | NBD_FLAG_SEND_FUA
        | NBD_FLAG_SEND_TRIM
        | NBD_FLAG_SEND_WRITE_ZEROES
        | NBD_FLAG_CAN_MULTI_CONN;
    if read_only {
        flags |= NBD_FLAG_READ_ONLY;
    }
    flags
}

// ---- Option messages ----------------------------------------------------------------------

/// Header of a client option: `IHAVEOPT`, option code, payload length.
#[derive(Debug, Clone, Copy)]
pub struct OptionHeader {
    pub magic: u64,
    pub option: u32,
    pub length: u32,
}

pub async fn read_option_header<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<OptionHeader> {
    let mut buf = [0u8; 16];
    r.read_exact(&mut buf).await?;
    Ok(OptionHeader {
        magic: be_u64(&buf[0..8]),
        option: be_u32(&buf[8..12]),
        length: be_u32(&buf[12..16]),
    })
}

/// Write one option reply (not flushed).
pub async fn write_option_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    option: u32,
    reply_type: u32,
    data: &[u8],
) -> std::io::Result<()> {
    // Callers only pass data built from bounded names/descriptions, so this cannot truncate.
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut header = [0u8; 20];
    header[0..8].copy_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    header[8..12].copy_from_slice(&option.to_be_bytes());
    header[12..16].copy_from_slice(&reply_type.to_be_bytes());
    header[16..20].copy_from_slice(&len.to_be_bytes());
    w.write_all(&header).await?;
    w.write_all(data).await
}

// ---- Transmission messages ----------------------------------------------------------------

/// A parsed request header (payload, if any, not yet read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub magic: u32,
    pub flags: u16,
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    pub fn decode(buf: &[u8; NBD_REQUEST_HEADER_BYTES]) -> Self {
        Self {
            magic: be_u32(&buf[0..4]),
            flags: be_u16(&buf[4..6]),
            command: be_u16(&buf[6..8]),
            cookie: be_u64(&buf[8..16]),
            offset: be_u64(&buf[16..24]),
            length: be_u32(&buf[24..28]),
        }
    }

    pub fn encode(&self) -> [u8; NBD_REQUEST_HEADER_BYTES] {
        let mut buf = [0u8; NBD_REQUEST_HEADER_BYTES];
        buf[0..4].copy_from_slice(&self.magic.to_be_bytes());
        buf[4..6].copy_from_slice(&self.flags.to_be_bytes());
        buf[6..8].copy_from_slice(&self.command.to_be_bytes());
        buf[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        buf[16..24].copy_from_slice(&self.offset.to_be_bytes());
        buf[24..28].copy_from_slice(&self.length.to_be_bytes());
        buf
    }

    /// True when `offset + length` fits inside an export of `size` bytes (overflow-safe).
    pub fn in_bounds(&self, size: u64) -> bool {
        self.offset
            .checked_add(u64::from(self.length))
            .is_some_and(|end| end <= size)
    }
}

/// Read a request header; `Ok(None)` on clean EOF before the first byte.
pub async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Request>> {
    let mut buf = [0u8; NBD_REQUEST_HEADER_BYTES];
    // Distinguish "client closed between requests" (orderly) from a truncated header.
    let first = r.read(&mut buf[..1]).await?;
    if first == 0 {
        return Ok(None);
    }
    r.read_exact(&mut buf[1..]).await?;
    Ok(Some(Request::decode(&buf)))
}

pub fn encode_simple_reply(error: u32, cookie: u64) -> [u8; NBD_SIMPLE_REPLY_HEADER_BYTES] {
    let mut buf = [0u8; NBD_SIMPLE_REPLY_HEADER_BYTES];
    buf[0..4].copy_from_slice(&NBD_SIMPLE_REPLY_MAGIC.to_be_bytes());
    buf[4..8].copy_from_slice(&error.to_be_bytes());
    buf[8..16].copy_from_slice(&cookie.to_be_bytes());
    buf
}

// ---- Helpers ------------------------------------------------------------------------------
// Slices are always of the exact width (fixed offsets into fixed arrays), so the conversions
// below cannot fail; `unwrap_or_default` keeps them panic-free anyway.

pub fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes(b.try_into().unwrap_or_default())
}

pub fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().unwrap_or_default())
}

pub fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_roundtrip_and_bounds() {
        let req = Request {
            magic: NBD_REQUEST_MAGIC,
            flags: NBD_CMD_FLAG_FUA,
            command: NBD_CMD_WRITE,
            cookie: 0x0102_0304_0506_0708,
            offset: u64::MAX - 10,
            length: 4096,
        };
        assert_eq!(Request::decode(&req.encode()), req);
        assert!(!req.in_bounds(u64::MAX), "offset + length overflows");
        let ok = Request {
            offset: 4096,
            length: 4096,
            ..req
        };
        assert!(ok.in_bounds(8192));
        assert!(!ok.in_bounds(8191));
    }

    #[test]
    fn reply_encoding() {
        let reply = encode_simple_reply(NBD_EINVAL, 7);
        assert_eq!(be_u32(&reply[0..4]), NBD_SIMPLE_REPLY_MAGIC);
        assert_eq!(be_u32(&reply[4..8]), 22);
        assert_eq!(be_u64(&reply[8..16]), 7);
    }
}
