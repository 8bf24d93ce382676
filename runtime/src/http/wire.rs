//! Wire-level helpers shared by the server and the client: reading a message
//! head, header parsing, `Content-Length`, percent-decoding, reason phrases.

use super::{HttpError, HTTP_HEADERS_MAX};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes read per call while looking for the end of the head. Anything read
/// past the head is kept as the start of the body, so overshoot is harmless.
const HEAD_READ_CHUNK: usize = 4096;

/// A message head (without the terminating blank line) plus any body bytes
/// that arrived in the same reads.
pub(crate) struct Head {
    pub text: String,
    pub rest: Vec<u8>,
}

/// Read until CRLF CRLF, refusing heads longer than `max` bytes.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> Result<Head, HttpError> {
    let mut buf = Vec::with_capacity(HEAD_READ_CHUNK);
    let mut chunk = [0u8; HEAD_READ_CHUNK];
    loop {
        // The terminator may straddle two reads, so rescan the last 3 bytes.
        let scan_from = buf.len().saturating_sub(3);
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(if buf.is_empty() {
                HttpError::Closed
            } else {
                HttpError::Malformed("connection closed in the middle of the message head".into())
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = find_crlfcrlf(&buf[scan_from..]) {
            let end = scan_from + pos;
            if end + 4 > max {
                return Err(HttpError::HeadTooLarge { max });
            }
            let rest = buf.split_off(end + 4);
            buf.truncate(end);
            let text = String::from_utf8(buf)
                .map_err(|_| HttpError::Malformed("message head is not valid UTF-8".into()))?;
            return Ok(Head { text, rest });
        }
        if buf.len() >= max {
            return Err(HttpError::HeadTooLarge { max });
        }
    }
}

fn find_crlfcrlf(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Parse `Name: value` lines. Folded (obsolete multi-line) headers are
/// rejected rather than guessed at.
pub(crate) fn parse_headers<'a>(
    lines: impl Iterator<Item = &'a str>,
) -> Result<Vec<(String, String)>, HttpError> {
    let mut headers = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            return Err(HttpError::Malformed(
                "folded header lines are not supported".into(),
            ));
        }
        let (name, value) = line.split_once(':').ok_or_else(|| {
            HttpError::Malformed(format!("header line without ':': {:?}", clip(line)))
        })?;
        if name.is_empty()
            || name
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(HttpError::Malformed(format!(
                "invalid header name {:?}",
                clip(name)
            )));
        }
        if headers.len() == HTTP_HEADERS_MAX {
            return Err(HttpError::TooManyHeaders {
                max: HTTP_HEADERS_MAX,
            });
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok(headers)
}

/// Case-insensitive header lookup (first occurrence).
pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The declared body length. Conflicting duplicates are rejected because
/// they are the classic request-smuggling vector.
pub(crate) fn content_length(headers: &[(String, String)]) -> Result<Option<u64>, HttpError> {
    let mut found: Option<u64> = None;
    for (_, value) in headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        let bad = || HttpError::Malformed(format!("invalid Content-Length {:?}", clip(value)));
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let len: u64 = value.parse().map_err(|_| bad())?;
        if found.is_some_and(|prev| prev != len) {
            return Err(HttpError::Malformed(
                "conflicting Content-Length headers".into(),
            ));
        }
        found = Some(len);
    }
    Ok(found)
}

/// Decode `%XX` escapes (and `+` as space when `plus_is_space`, as in query
/// strings). Invalid escapes or non-UTF-8 results are errors, not guesses.
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, HttpError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        HttpError::Malformed(format!("invalid percent escape in {:?}", clip(s)))
                    })?;
                out.push(byte);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| HttpError::Malformed(format!("percent-decoded {:?} is not UTF-8", clip(s))))
}

/// Shorten attacker-controlled text before echoing it in an error message.
pub(crate) fn clip(s: &str) -> &str {
    const CLIP_CHARS: usize = 64;
    match s.char_indices().nth(CLIP_CHARS) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

pub(crate) fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}
