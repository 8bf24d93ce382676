//! A minimal NBD client (fixed newstyle, EXPORT_NAME; requests one at a time or several in flight) for the simulated
//! workload: it reaches the agent exactly as qemu does, through the NBD server.

use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const REPLY_MAGIC: u32 = 0x6744_6698;
const OPT_EXPORT_NAME: u32 = 1;
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
const FLAG_FIXED_NEWSTYLE: u32 = 1;
const FLAG_NO_ZEROES: u32 = 2;

pub struct NbdClient<S> {
    s: S,
    pub size: u64,
    handle: u64,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl<S: AsyncRead + AsyncWrite + Unpin> NbdClient<S> {
    pub async fn connect(mut s: S, export: &str) -> io::Result<Self> {
        if s.read_u64().await? != NBDMAGIC || s.read_u64().await? != IHAVEOPT {
            return Err(bad("not an NBD newstyle server"));
        }
        let _flags = s.read_u16().await?;
        s.write_u32(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).await?;
        s.write_u64(IHAVEOPT).await?;
        s.write_u32(OPT_EXPORT_NAME).await?;
        s.write_u32(export.len() as u32).await?;
        s.write_all(export.as_bytes()).await?;
        s.flush().await?;
        let size = s.read_u64().await?;
        let _tflags = s.read_u16().await?;
        Ok(NbdClient { s, size, handle: 1 })
    }

    /// Sends a request without waiting for its reply (requests may be in flight together);
    /// returns its handle.
    pub async fn send(&mut self, cmd: u16, offset: u64, len: u32, data: &[u8]) -> io::Result<u64> {
        let handle = self.handle;
        self.handle += 1;
        self.s.write_u32(REQUEST_MAGIC).await?;
        self.s.write_u16(0).await?;
        self.s.write_u16(cmd).await?;
        self.s.write_u64(handle).await?;
        self.s.write_u64(offset).await?;
        self.s.write_u32(len).await?;
        self.s.write_all(data).await?;
        self.s.flush().await?;
        Ok(handle)
    }

    /// Reads one reply without a payload (any request but a read); returns its handle.
    pub async fn recv(&mut self) -> io::Result<u64> {
        if self.s.read_u32().await? != REPLY_MAGIC {
            return Err(bad("bad reply magic"));
        }
        let error = self.s.read_u32().await?;
        let handle = self.s.read_u64().await?;
        if error != 0 {
            return Err(io::Error::other(format!("NBD error {error}")));
        }
        Ok(handle)
    }

    async fn request(
        &mut self,
        cmd: u16,
        offset: u64,
        len: u32,
        data: &[u8],
    ) -> io::Result<Vec<u8>> {
        let handle = self.send(cmd, offset, len, data).await?;
        if self.recv().await? != handle {
            return Err(bad("reply for another request"));
        }
        let mut out = vec![0u8; if cmd == CMD_READ { len as usize } else { 0 }];
        self.s.read_exact(&mut out).await?;
        Ok(out)
    }

    pub async fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.request(CMD_WRITE, offset, data.len() as u32, data)
            .await
            .map(|_| ())
    }
    pub async fn read(&mut self, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        self.request(CMD_READ, offset, len, &[]).await
    }
    pub async fn trim(&mut self, offset: u64, len: u32) -> io::Result<()> {
        self.request(CMD_TRIM, offset, len, &[]).await.map(|_| ())
    }
    pub async fn write_zeroes(&mut self, offset: u64, len: u32) -> io::Result<()> {
        self.request(CMD_WRITE_ZEROES, offset, len, &[])
            .await
            .map(|_| ())
    }
    pub async fn flush(&mut self) -> io::Result<()> {
        self.request(CMD_FLUSH, 0, 0, &[]).await.map(|_| ())
    }
}
