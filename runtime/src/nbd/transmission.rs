//! Transmission phase: a reader loop that validates requests and starts backend operations in
//! arrival order, concurrent completion on spawned tasks, and one writer task that serialises
//! simple replies onto the socket.

use std::future::Future;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::proto::*;
use super::{ExportError, NbdError, NbdExport};

/// Budget held by one request from before its header is read until its reply is written, so
/// both the number of requests and the payload memory per connection stay bounded.
struct InflightPermit {
    _request: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// A reply ready to be written. Dropping it (after writing) returns its budget to the reader.
struct Reply {
    cookie: u64,
    error: u32,
    data: Option<Vec<u8>>,
    _permit: InflightPermit,
}

/// Whether the reader continues after a request.
enum Flow {
    Continue,
    Disconnect,
}

/// Per-connection state shared by the reader loop's helpers.
struct Conn<E> {
    export: Arc<E>,
    size: u64,
    read_only: bool,
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    tx: mpsc::Sender<Reply>,
}

/// Serve requests until DISC, EOF, or a protocol violation. In-flight requests always finish
/// and get their replies written before this returns.
pub async fn run<R, W, E>(mut reader: R, writer: W, export: Arc<E>) -> Result<(), NbdError>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
    E: NbdExport,
{
    // Capacity equals the in-flight limit, so senders (which each hold a permit) never block.
    let (tx, rx) = mpsc::channel(NBD_INFLIGHT_MAX);
    let writer_task = tokio::spawn(write_replies(writer, rx));
    let conn = Conn {
        size: export.size_bytes(),
        read_only: export.read_only(),
        export,
        requests: Arc::new(Semaphore::new(NBD_INFLIGHT_MAX)),
        bytes: Arc::new(Semaphore::new(NBD_INFLIGHT_BYTES_MAX as usize)),
        tx,
    };
    let read_result = read_loop(&mut reader, &conn).await;
    // Dropping our sender lets the writer finish once every in-flight task has replied.
    drop(conn);
    let write_result = match writer_task.await {
        Ok(result) => result,
        Err(err) => Err(NbdError::Protocol(format!(
            "reply writer task failed: {err}"
        ))),
    };
    read_result.and(write_result)
}

async fn read_loop<R, E>(reader: &mut R, conn: &Conn<E>) -> Result<(), NbdError>
where
    R: AsyncRead + Unpin + Send,
    E: NbdExport,
{
    loop {
        // Backpressure: stop reading the socket while NBD_INFLIGHT_MAX requests are pending.
        let Ok(request_permit) = conn.requests.clone().acquire_owned().await else {
            return Ok(()); // never closed; treat as shutdown
        };
        let header = tokio::select! {
            header = read_request(reader) => header?,
            // The writer died (socket broken): no reply could be delivered, so stop reading.
            _ = conn.tx.closed() => return Err(NbdError::Protocol("reply writer stopped".into())),
        };
        let Some(req) = header else {
            return Ok(()); // EOF between requests: client left without DISC
        };
        if req.magic != NBD_REQUEST_MAGIC {
            return Err(NbdError::Protocol(format!(
                "bad request magic {:#x}",
                req.magic
            )));
        }
        match dispatch(reader, conn, req, request_permit).await? {
            Flow::Continue => {}
            Flow::Disconnect => return Ok(()),
        }
    }
}

/// Validate one request and either reply immediately or start the backend operation.
async fn dispatch<R, E>(
    reader: &mut R,
    conn: &Conn<E>,
    req: Request,
    request: OwnedSemaphorePermit,
) -> Result<Flow, NbdError>
where
    R: AsyncRead + Unpin + Send,
    E: NbdExport,
{
    let fua = req.flags & NBD_CMD_FLAG_FUA != 0;
    let in_bounds = req.in_bounds(conn.size);
    let permit = InflightPermit {
        _request: request,
        _bytes: None,
    };
    let error = match req.command {
        NBD_CMD_READ => return dispatch_read(conn, req, permit).await,
        NBD_CMD_WRITE => return dispatch_write(reader, conn, req, permit).await,
        NBD_CMD_DISC => return Ok(Flow::Disconnect),
        NBD_CMD_FLUSH => {
            spawn_op(conn, req.cookie, permit, conn.export.flush());
            return Ok(Flow::Continue);
        }
        NBD_CMD_TRIM | NBD_CMD_WRITE_ZEROES if conn.read_only => NBD_EPERM,
        // Spec: EINVAL for trims beyond the end, ENOSPC for zero-writes beyond the end.
        NBD_CMD_TRIM if !in_bounds => NBD_EINVAL,
        NBD_CMD_WRITE_ZEROES if !in_bounds => NBD_ENOSPC,
        NBD_CMD_TRIM | NBD_CMD_WRITE_ZEROES if req.length == 0 => NBD_OK,
        NBD_CMD_TRIM => {
            spawn_op(
                conn,
                req.cookie,
                permit,
                conn.export.trim(req.offset, req.length, fua),
            );
            return Ok(Flow::Continue);
        }
        NBD_CMD_WRITE_ZEROES => {
            let no_hole = req.flags & NBD_CMD_FLAG_NO_HOLE != 0;
            let op = conn
                .export
                .write_zeroes(req.offset, req.length, fua, no_hole);
            spawn_op(conn, req.cookie, permit, op);
            return Ok(Flow::Continue);
        }
        // Unknown commands carry no payload we know how to skip; spec says EINVAL and go on.
        _ => NBD_EINVAL,
    };
    reply_now(conn, req.cookie, error, permit).await;
    Ok(Flow::Continue)
}

async fn dispatch_read<E: NbdExport>(
    conn: &Conn<E>,
    req: Request,
    mut permit: InflightPermit,
) -> Result<Flow, NbdError> {
    // A READ carries no payload, so an invalid one costs nothing to refuse and keep going.
    if req.length > NBD_PAYLOAD_BYTES_MAX || !req.in_bounds(conn.size) {
        reply_now(conn, req.cookie, NBD_EINVAL, permit).await;
        return Ok(Flow::Continue);
    }
    if req.length == 0 {
        reply_now(conn, req.cookie, NBD_OK, permit).await;
        return Ok(Flow::Continue);
    }
    permit._bytes = Some(acquire_bytes(conn, req.length).await?);
    let op = conn.export.read(req.offset, req.length);
    let (cookie, expected, tx) = (req.cookie, req.length as usize, conn.tx.clone());
    tokio::spawn(async move {
        let (error, data) = match op.await {
            Ok(data) if data.len() == expected => (NBD_OK, Some(data)),
            Ok(data) => {
                // Sending the wrong byte count would desynchronise the client's stream.
                tracing::error!(
                    expected,
                    got = data.len(),
                    "nbd: backend read returned wrong length"
                );
                (NBD_EIO, None)
            }
            Err(err) => (backend_errno(&err), None),
        };
        let _ = tx
            .send(Reply {
                cookie,
                error,
                data,
                _permit: permit,
            })
            .await;
    });
    Ok(Flow::Continue)
}

async fn dispatch_write<R, E>(
    reader: &mut R,
    conn: &Conn<E>,
    req: Request,
    mut permit: InflightPermit,
) -> Result<Flow, NbdError>
where
    R: AsyncRead + Unpin + Send,
    E: NbdExport,
{
    // The payload follows the header; refusing to buffer it leaves no way to find the next header.
    if req.length > NBD_PAYLOAD_BYTES_MAX {
        return Err(NbdError::Protocol(format!(
            "write payload of {} bytes exceeds maximum",
            req.length
        )));
    }
    permit._bytes = Some(acquire_bytes(conn, req.length).await?);
    let data = crate::net::read_vec(reader, req.length as usize).await?;
    // The payload is consumed even for refused writes, so the stream stays in sync.
    let error = if conn.read_only {
        NBD_EPERM
    } else if !req.in_bounds(conn.size) {
        NBD_ENOSPC
    } else if data.is_empty() {
        NBD_OK
    } else {
        let fua = req.flags & NBD_CMD_FLAG_FUA != 0;
        spawn_op(
            conn,
            req.cookie,
            permit,
            conn.export.write(req.offset, data, fua),
        );
        return Ok(Flow::Continue);
    };
    reply_now(conn, req.cookie, error, permit).await;
    Ok(Flow::Continue)
}

async fn acquire_bytes<E>(conn: &Conn<E>, len: u32) -> Result<OwnedSemaphorePermit, NbdError> {
    conn.bytes
        .clone()
        .acquire_many_owned(len)
        .await
        .map_err(|_| NbdError::Protocol("in-flight byte budget closed".into()))
}

/// Run a backend operation without data on its own task so operations overlap.
fn spawn_op<E, F>(conn: &Conn<E>, cookie: u64, permit: InflightPermit, op: F)
where
    F: Future<Output = Result<(), ExportError>> + Send + 'static,
{
    let tx = conn.tx.clone();
    tokio::spawn(async move {
        let error = match op.await {
            Ok(()) => NBD_OK,
            Err(err) => backend_errno(&err),
        };
        // A send failure means the connection is gone; nothing left to tell.
        let _ = tx
            .send(Reply {
                cookie,
                error,
                data: None,
                _permit: permit,
            })
            .await;
    });
}

/// Queue a reply decided by the reader itself (validation failures, no-ops).
async fn reply_now<E>(conn: &Conn<E>, cookie: u64, error: u32, permit: InflightPermit) {
    let _ = conn
        .tx
        .send(Reply {
            cookie,
            error,
            data: None,
            _permit: permit,
        })
        .await;
}

fn backend_errno(err: &ExportError) -> u32 {
    tracing::debug!(%err, "nbd: backend error");
    match err {
        ExportError::Io(_) => NBD_EIO,
        ExportError::NoSpace => NBD_ENOSPC,
        ExportError::ReadOnly => NBD_EPERM,
        ExportError::ShuttingDown => NBD_ESHUTDOWN,
    }
}

/// Single writer: replies never interleave. Flushing only when the queue is empty batches many
/// small replies into one syscall under load while keeping latency low when idle.
async fn write_replies<W>(mut w: W, mut rx: mpsc::Receiver<Reply>) -> Result<(), NbdError>
where
    W: AsyncWrite + Unpin + Send,
{
    loop {
        let reply = match rx.try_recv() {
            Ok(reply) => reply,
            Err(TryRecvError::Empty) => {
                w.flush().await?;
                match rx.recv().await {
                    Some(reply) => reply,
                    None => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        w.write_all(&encode_simple_reply(reply.error, reply.cookie))
            .await?;
        if let Some(data) = &reply.data {
            w.write_all(data).await?;
        }
        // `reply` drops here, releasing its in-flight budget.
    }
    w.flush().await?;
    // Half-close so the client sees EOF after DISC; failure means the peer already left.
    let _ = w.shutdown().await;
    Ok(())
}
