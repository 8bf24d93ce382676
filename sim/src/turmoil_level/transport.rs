//! turmoil's simulated TCP behind the runtime's `Transport` trait, so that the real drivers run
//! on simulated hosts.

use haven_runtime::transport::Transport;
use std::io;

#[derive(Clone, Copy, Debug, Default)]
pub struct TurmoilTcp;

impl Transport for TurmoilTcp {
    type Stream = turmoil::net::TcpStream;
    type Listener = turmoil::net::TcpListener;

    async fn connect(&self, addr: &str) -> io::Result<Self::Stream> {
        turmoil::net::TcpStream::connect(addr.to_string()).await
    }
    async fn bind(&self, addr: &str) -> io::Result<Self::Listener> {
        turmoil::net::TcpListener::bind(addr.to_string()).await
    }
    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, String)> {
        let (s, peer) = listener.accept().await?;
        Ok((s, peer.to_string()))
    }
    fn local_addr(listener: &Self::Listener) -> io::Result<String> {
        Ok(listener.local_addr()?.to_string())
    }
}
