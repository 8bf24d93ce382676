//! The transport trait: how drivers reach peers. Production uses tokio TCP; the simulation
//! supplies turmoil's TCP behind the same trait, so that it runs the real drivers.

use std::future::Future;
use std::io;
use tokio::io::{AsyncRead, AsyncWrite};

pub trait Transport: Clone + Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    type Listener: Send + 'static;

    fn connect(&self, addr: &str) -> impl Future<Output = io::Result<Self::Stream>> + Send;
    fn bind(&self, addr: &str) -> impl Future<Output = io::Result<Self::Listener>> + Send;
    fn accept(
        listener: &Self::Listener,
    ) -> impl Future<Output = io::Result<(Self::Stream, String)>> + Send;
    fn local_addr(listener: &Self::Listener) -> io::Result<String>;
}

/// Real TCP through tokio.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tcp;

impl Transport for Tcp {
    type Stream = tokio::net::TcpStream;
    type Listener = tokio::net::TcpListener;

    async fn connect(&self, addr: &str) -> io::Result<Self::Stream> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }
    async fn bind(&self, addr: &str) -> io::Result<Self::Listener> {
        tokio::net::TcpListener::bind(addr).await
    }
    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, String)> {
        let (s, peer) = listener.accept().await?;
        s.set_nodelay(true)?;
        Ok((s, peer.to_string()))
    }
    fn local_addr(listener: &Self::Listener) -> io::Result<String> {
        Ok(listener.local_addr()?.to_string())
    }
}
