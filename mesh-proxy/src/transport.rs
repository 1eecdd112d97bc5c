//! The transport seam: how bytes reach a peer and how a peer's connection is accepted.
//!
//! Everything above this module speaks HTTP/2 over an [`Io`]; everything below is TCP today and
//! mutual TLS tomorrow. Changing the transport changes [`Connector`] and [`Acceptor`], not the
//! request path.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use mesh_registry::Address;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A connection's byte stream.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed byte stream, so that plaintext and TLS share one request path.
pub(crate) type BoxIo = Box<dyn Io>;

/// What the transport knows about the peer of an accepted connection.
#[derive(Clone, Debug)]
pub(crate) struct PeerInfo {
    /// The remote socket address.
    pub(crate) addr: SocketAddr,
}

/// Opens connections to peers.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    timeout: Duration,
}

impl Connector {
    /// Plaintext TCP with `timeout` on connecting.
    pub(crate) fn plaintext(timeout: Duration) -> Self {
        Self { timeout }
    }

    /// Connects to `addr` (resolving DNS names), within the connect timeout.
    pub(crate) async fn connect(&self, addr: &Address) -> io::Result<BoxIo> {
        let connect = TcpStream::connect((addr.host(), addr.port()));
        let tcp = tokio::time::timeout(self.timeout, connect).await.map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, format!("connect timed out after {:?}", self.timeout))
        })??;
        tcp.set_nodelay(true)?;
        Ok(Box::new(tcp))
    }
}

/// Accepts peers' connections.
#[derive(Clone, Debug)]
pub(crate) struct Acceptor {
    handshake_timeout: Duration,
}

impl Acceptor {
    /// Plaintext: the connection is the TCP stream, once the peer has sent its first bytes.
    pub(crate) fn plaintext(handshake_timeout: Duration) -> Self {
        Self { handshake_timeout }
    }

    /// Prepares an accepted TCP stream. A peer that sends nothing within the handshake timeout
    /// is dropped, so idle sockets cannot pile up before the HTTP/2 preface.
    pub(crate) async fn accept(&self, tcp: TcpStream, addr: SocketAddr) -> io::Result<(BoxIo, PeerInfo)> {
        tcp.set_nodelay(true)?;
        tokio::time::timeout(self.handshake_timeout, tcp.readable())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no handshake within the timeout"))??;
        Ok((Box::new(tcp), PeerInfo { addr }))
    }
}
