//! Framing: every message on every Haven connection is one frame.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "HVN1"
//! 4       4     body_len   u32 LE: bytes after this 16-byte header
//! 8       4     ctl_len    u32 LE: bytes of the control part (postcard), <= body_len
//! 12      4     crc32      u32 LE over the whole body (control then data)
//! 16      ..    control    postcard-encoded `Message`
//! ..      ..    data       raw bytes (block data of a batch), body_len - ctl_len bytes
//! ```
//!
//! The decoder checks every field before it trusts it: a bad magic, a length over the limits,
//! a checksum mismatch or a control part that does not decode is a `FrameError`, never a panic.
//! A connection that produces one is closed: after a framing error the stream cannot be resynced.

use super::message::Message;

pub const FRAME_MAGIC: [u8; 4] = *b"HVN1";
pub const FRAME_HEADER_BYTES: usize = 16;
/// Largest control part: batch headers of a few thousand ops fit with room to spare.
pub const FRAME_CONTROL_BYTES_MAX: u32 = 4 << 20;
/// Largest frame body. A batch's data is bounded by the agent's `batch_bytes_max` setting, which
/// is validated to stay below this.
pub const FRAME_BODY_BYTES_MAX: u32 = 72 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error(
        "bad frame magic {0:02x?}: the peer does not speak the Haven protocol (check the port)"
    )]
    BadMagic([u8; 4]),
    #[error("frame body of {0} bytes exceeds the limit of {FRAME_BODY_BYTES_MAX} bytes")]
    BodyTooLarge(u32),
    #[error("frame control part of {ctl} bytes is invalid for a body of {body} bytes")]
    BadControlLength { ctl: u32, body: u32 },
    #[error("frame checksum mismatch (expected {expected:08x}, computed {actual:08x}): data was corrupted in transit")]
    BadChecksum { expected: u32, actual: u32 },
    #[error("frame control part does not decode: {0}")]
    BadControl(String),
    #[error("message of {0} bytes is too large to frame")]
    TooLargeToEncode(usize),
}

/// A parsed and length-checked frame header. The body is not yet read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub body_len: u32,
    pub ctl_len: u32,
    pub crc: u32,
}

impl FrameHeader {
    pub fn data_len(&self) -> u32 {
        self.body_len - self.ctl_len
    }
}

/// Parses and bounds-checks a frame header.
pub fn parse_header(h: &[u8; FRAME_HEADER_BYTES]) -> Result<FrameHeader, FrameError> {
    let magic: [u8; 4] = h[0..4].try_into().expect("4 bytes");
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let word = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    let (body_len, ctl_len, crc) = (word(4), word(8), word(12));
    if body_len > FRAME_BODY_BYTES_MAX {
        return Err(FrameError::BodyTooLarge(body_len));
    }
    if ctl_len == 0 || ctl_len > body_len || ctl_len > FRAME_CONTROL_BYTES_MAX {
        return Err(FrameError::BadControlLength {
            ctl: ctl_len,
            body: body_len,
        });
    }
    Ok(FrameHeader {
        body_len,
        ctl_len,
        crc,
    })
}

/// Verifies a frame body against its header and decodes the control part. Returns the message
/// and the data part.
pub fn decode_body(
    header: &FrameHeader,
    mut body: Vec<u8>,
) -> Result<(Message, Vec<u8>), FrameError> {
    if body.len() != header.body_len as usize {
        return Err(FrameError::BadControlLength {
            ctl: header.ctl_len,
            body: body.len() as u32,
        });
    }
    let actual = crc32fast::hash(&body);
    if actual != header.crc {
        return Err(FrameError::BadChecksum {
            expected: header.crc,
            actual,
        });
    }
    let ctl_len = header.ctl_len as usize;
    let msg: Message = postcard::from_bytes(&body[..ctl_len])
        .map_err(|e| FrameError::BadControl(e.to_string()))?;
    // The data part is the tail of the body; move it down instead of copying into a new vector.
    body.drain(..ctl_len);
    Ok((msg, body))
}

/// Encodes the header and control part of a frame carrying `data`. The caller writes the
/// returned bytes and then `data`, so that large block payloads are never copied.
pub fn encode_head(msg: &Message, data: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut data_crc = crc32fast::Hasher::new();
    data_crc.update(data);
    encode_head_with_crc(msg, data.len(), &data_crc)
}

/// [`encode_head`] for data whose checksum state is already known (`data_crc` has seen exactly
/// the `data_len` bytes of data), so that a caller who needs the data's checksum for something
/// else too reads the data once.
pub fn encode_head_with_crc(
    msg: &Message,
    data_len: usize,
    data_crc: &crc32fast::Hasher,
) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; FRAME_HEADER_BYTES];
    let out_len_before = out.len();
    out = postcard::to_extend(msg, out).map_err(|e| FrameError::BadControl(e.to_string()))?;
    let ctl_len = out.len() - out_len_before;
    let body_len = ctl_len + data_len;
    if ctl_len > FRAME_CONTROL_BYTES_MAX as usize || body_len > FRAME_BODY_BYTES_MAX as usize {
        return Err(FrameError::TooLargeToEncode(body_len));
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&out[FRAME_HEADER_BYTES..]);
    hasher.combine(data_crc);
    out[0..4].copy_from_slice(&FRAME_MAGIC);
    out[4..8].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[8..12].copy_from_slice(&(ctl_len as u32).to_le_bytes());
    out[12..16].copy_from_slice(&hasher.finalize().to_le_bytes());
    Ok(out)
}

/// Encodes a whole frame into one buffer (tests, small control messages).
pub fn encode(msg: &Message, data: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = encode_head(msg, data)?;
    out.extend_from_slice(data);
    Ok(out)
}

/// Decodes one whole frame from a buffer; returns the message, its data and the bytes used.
/// `Ok(None)` when the buffer does not yet hold a whole frame.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, Vec<u8>, usize)>, FrameError> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let header = parse_header(buf[..FRAME_HEADER_BYTES].try_into().expect("header size"))?;
    let total = FRAME_HEADER_BYTES + header.body_len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let (msg, data) = decode_body(&header, buf[FRAME_HEADER_BYTES..total].to_vec())?;
    Ok(Some((msg, data, total)))
}
