//! The wire protocol: framing, messages and the handshake. See docs/protocol.md.

pub mod frame;
pub mod message;

pub use frame::{
    decode, decode_body, encode, encode_head, encode_head_with_crc, parse_header, FrameError,
    FrameHeader, FRAME_HEADER_BYTES,
};
pub use message::{
    check_hello, Assignment, DiskInfo, HandshakeError, Hello, Message, Registration, Retired, Role,
    Route, PROTOCOL_VERSION,
};

#[cfg(test)]
mod tests;
