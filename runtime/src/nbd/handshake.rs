//! Fixed newstyle handshake: greeting, client flags, and the option haggling loop.
//!
//! Only simple replies are supported, so structured replies, extended headers and metadata
//! contexts are refused with `NBD_REP_ERR_UNSUP` (the client then falls back to simple replies).

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::proto::*;
use super::{Exports, NbdError, NbdExport};

/// The export a client selected with `NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME`.
pub struct Selected<E> {
    pub name: String,
    pub export: Arc<E>,
}

/// What the option loop should do after answering one option.
enum Next<E> {
    Continue,
    Transmit(Selected<E>),
    Close,
}

/// Run the handshake. `Ok(None)` means the client aborted politely; `Ok(Some)` means enter
/// transmission on the selected export.
pub async fn negotiate<R, W, E>(
    r: &mut R,
    w: &mut W,
    exports: &Exports<E>,
) -> Result<Option<Selected<E>>, NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    E: NbdExport,
{
    let mut greeting = [0u8; 18];
    greeting[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    greeting[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    greeting[16..18].copy_from_slice(&(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&greeting).await?;
    w.flush().await?;

    let client_flags = r.read_u32().await?;
    // The spec requires closing on client flags we did not offer: we cannot know what they mean.
    if client_flags & !(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES) != 0 {
        return Err(NbdError::Protocol(format!(
            "unknown client flags {client_flags:#x}"
        )));
    }
    let no_zeroes = client_flags & NBD_FLAG_C_NO_ZEROES != 0;

    loop {
        let header = read_option_header(r).await?;
        if header.magic != IHAVEOPT {
            return Err(NbdError::Protocol(format!(
                "bad option magic {:#x}",
                header.magic
            )));
        }
        if header.length > NBD_OPTION_BYTES_MAX {
            // Draining an arbitrarily large payload would let a client tie us up; refuse and close.
            if header.option != NBD_OPT_EXPORT_NAME {
                write_option_reply(w, header.option, NBD_REP_ERR_TOO_BIG, b"option too large")
                    .await?;
                w.flush().await?;
            }
            return Err(NbdError::Protocol(format!(
                "option {} of {} bytes too large",
                header.option, header.length
            )));
        }
        let mut data = vec![0u8; header.length as usize];
        r.read_exact(&mut data).await?;
        let next = handle_option(w, header.option, &data, exports, no_zeroes).await?;
        w.flush().await?;
        match next {
            Next::Continue => {}
            Next::Transmit(selected) => return Ok(Some(selected)),
            Next::Close => return Ok(None),
        }
    }
}

async fn handle_option<W, E>(
    w: &mut W,
    option: u32,
    data: &[u8],
    exports: &Exports<E>,
    no_zeroes: bool,
) -> Result<Next<E>, NbdError>
where
    W: AsyncWrite + Unpin,
    E: NbdExport,
{
    match option {
        NBD_OPT_EXPORT_NAME => export_name(w, data, exports, no_zeroes).await,
        NBD_OPT_ABORT => {
            // The client may already have closed; a failed ACK is not an error worth reporting.
            let _ = write_option_reply(w, option, NBD_REP_ACK, &[]).await;
            Ok(Next::Close)
        }
        NBD_OPT_LIST => {
            list(w, data, exports).await?;
            Ok(Next::Continue)
        }
        NBD_OPT_INFO | NBD_OPT_GO => info_or_go(w, option, data, exports).await,
        NBD_OPT_STARTTLS
        | NBD_OPT_STRUCTURED_REPLY
        | NBD_OPT_EXTENDED_HEADERS
        | NBD_OPT_LIST_META_CONTEXT
        | NBD_OPT_SET_META_CONTEXT => {
            write_option_reply(
                w,
                option,
                NBD_REP_ERR_UNSUP,
                b"not supported by this server",
            )
            .await?;
            Ok(Next::Continue)
        }
        _ => {
            write_option_reply(w, option, NBD_REP_ERR_UNSUP, b"unknown option").await?;
            Ok(Next::Continue)
        }
    }
}

/// `NBD_OPT_EXPORT_NAME`: the old way to pick an export. It has no error reply, so an unknown
/// name can only be answered by closing the connection.
async fn export_name<W, E>(
    w: &mut W,
    data: &[u8],
    exports: &Exports<E>,
    no_zeroes: bool,
) -> Result<Next<E>, NbdError>
where
    W: AsyncWrite + Unpin,
    E: NbdExport,
{
    let Some(entry) = std::str::from_utf8(data)
        .ok()
        .and_then(|n| exports.entry(n))
    else {
        return Err(NbdError::Protocol(format!(
            "unknown export {:?}",
            String::from_utf8_lossy(data)
        )));
    };
    let export = entry.export.clone();
    let mut reply = Vec::with_capacity(10 + EXPORT_NAME_ZERO_PAD);
    reply.extend_from_slice(&export.size_bytes().to_be_bytes());
    reply.extend_from_slice(&transmission_flags(export.read_only()).to_be_bytes());
    if !no_zeroes {
        reply.resize(reply.len() + EXPORT_NAME_ZERO_PAD, 0);
    }
    w.write_all(&reply).await?;
    Ok(Next::Transmit(Selected {
        name: entry.name.clone(),
        export,
    }))
}

/// `NBD_OPT_LIST`: one `NBD_REP_SERVER` per export, then ACK.
async fn list<W, E>(w: &mut W, data: &[u8], exports: &Exports<E>) -> Result<(), NbdError>
where
    W: AsyncWrite + Unpin,
    E: NbdExport,
{
    if !data.is_empty() {
        write_option_reply(w, NBD_OPT_LIST, NBD_REP_ERR_INVALID, b"LIST takes no data").await?;
        return Ok(());
    }
    for (name, description) in exports.names() {
        let name = truncate_str(name);
        let mut payload = Vec::with_capacity(4 + name.len() + description.len());
        payload.extend_from_slice(&(name.len() as u32).to_be_bytes());
        payload.extend_from_slice(name.as_bytes());
        payload.extend_from_slice(truncate_str(description).as_bytes());
        write_option_reply(w, NBD_OPT_LIST, NBD_REP_SERVER, &payload).await?;
    }
    write_option_reply(w, NBD_OPT_LIST, NBD_REP_ACK, &[]).await?;
    Ok(())
}

/// Parsed `NBD_OPT_INFO` / `NBD_OPT_GO` payload.
struct InfoRequest<'a> {
    name: &'a [u8],
    requests: Vec<u16>,
}

/// Layout: u32 name length, name, u16 request count, u16 requests. Any inconsistency → None.
fn parse_info_request(data: &[u8]) -> Option<InfoRequest<'_>> {
    let name_len = be_u32(data.get(0..4)?) as usize;
    let name_end = 4usize.checked_add(name_len)?;
    let name = data.get(4..name_end)?;
    let count = be_u16(data.get(name_end..name_end + 2)?) as usize;
    let list = data.get(name_end + 2..)?;
    if list.len() != count * 2 {
        return None;
    }
    let requests = list.chunks_exact(2).map(be_u16).collect();
    Some(InfoRequest { name, requests })
}

/// `NBD_OPT_INFO` / `NBD_OPT_GO`: describe the export; GO then enters transmission.
async fn info_or_go<W, E>(
    w: &mut W,
    option: u32,
    data: &[u8],
    exports: &Exports<E>,
) -> Result<Next<E>, NbdError>
where
    W: AsyncWrite + Unpin,
    E: NbdExport,
{
    let Some(req) = parse_info_request(data) else {
        write_option_reply(w, option, NBD_REP_ERR_INVALID, b"malformed INFO/GO request").await?;
        return Ok(Next::Continue);
    };
    let Some(entry) = std::str::from_utf8(req.name)
        .ok()
        .and_then(|n| exports.entry(n))
    else {
        write_option_reply(w, option, NBD_REP_ERR_UNKNOWN, b"unknown export").await?;
        return Ok(Next::Continue);
    };
    let export = &entry.export;

    let mut info = Vec::with_capacity(12);
    info.extend_from_slice(&NBD_INFO_EXPORT.to_be_bytes());
    info.extend_from_slice(&export.size_bytes().to_be_bytes());
    info.extend_from_slice(&transmission_flags(export.read_only()).to_be_bytes());
    write_option_reply(w, option, NBD_REP_INFO, &info).await?;

    // Sent unrequested too: min 1 means any alignment is fine, so a client ignoring it is safe.
    let mut block = Vec::with_capacity(14);
    block.extend_from_slice(&NBD_INFO_BLOCK_SIZE.to_be_bytes());
    block.extend_from_slice(&NBD_BLOCK_SIZE_MIN.to_be_bytes());
    block.extend_from_slice(&NBD_BLOCK_SIZE_PREFERRED.to_be_bytes());
    block.extend_from_slice(&NBD_PAYLOAD_BYTES_MAX.to_be_bytes());
    write_option_reply(w, option, NBD_REP_INFO, &block).await?;

    for info_type in [NBD_INFO_NAME, NBD_INFO_DESCRIPTION] {
        if !req.requests.contains(&info_type) {
            continue;
        }
        let text = if info_type == NBD_INFO_NAME {
            &entry.name
        } else {
            &entry.description
        };
        let mut payload = info_type.to_be_bytes().to_vec();
        payload.extend_from_slice(truncate_str(text).as_bytes());
        write_option_reply(w, option, NBD_REP_INFO, &payload).await?;
    }
    write_option_reply(w, option, NBD_REP_ACK, &[]).await?;

    if option == NBD_OPT_GO {
        let name = entry.name.clone();
        return Ok(Next::Transmit(Selected {
            name,
            export: export.clone(),
        }));
    }
    Ok(Next::Continue)
}

/// Clamp a string to the spec's maximum length on a char boundary.
fn truncate_str(s: &str) -> &str {
    if s.len() <= NBD_STRING_BYTES_MAX {
        return s;
    }
    let mut end = NBD_STRING_BYTES_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_request_parsing_rejects_inconsistent_lengths() {
        let mut ok = Vec::new();
        ok.extend_from_slice(&3u32.to_be_bytes());
        ok.extend_from_slice(b"abc");
        ok.extend_from_slice(&1u16.to_be_bytes());
        ok.extend_from_slice(&NBD_INFO_NAME.to_be_bytes());
        let parsed = parse_info_request(&ok).expect("valid");
        assert_eq!(parsed.name, b"abc");
        assert_eq!(parsed.requests, vec![NBD_INFO_NAME]);

        assert!(parse_info_request(&ok[..ok.len() - 1]).is_none());
        assert!(parse_info_request(&[0xff, 0xff, 0xff, 0xff, 0, 0]).is_none());
        assert!(parse_info_request(&[]).is_none());
        let mut extra = ok.clone();
        extra.push(0);
        assert!(parse_info_request(&extra).is_none());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        let long = "é".repeat(NBD_STRING_BYTES_MAX);
        let cut = truncate_str(&long);
        assert!(cut.len() <= NBD_STRING_BYTES_MAX);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
