//! The transport seam: how bytes reach a peer and how a peer's connection is accepted.
//!
//! Everything above this module speaks HTTP/2 over an [`Io`]; everything below is plaintext TCP
//! (app-facing, and between proxies when no identity is configured) or mutual TLS (between
//! proxies with an identity). Handshakes run in each connection's own task with a timeout, and
//! every outcome is counted by reason.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_registry::identity::Identity;
use mesh_registry::{Address, ServiceName};
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::tls;
use crate::identity::IdentityState;
use crate::identity::spiffe::spiffe_identity;
use crate::telemetry::events::{TlsHandshakeFailed, TlsHandshakeOk};
use crate::telemetry::{Direction, Telemetry};

/// A connection's byte stream.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed byte stream, so that plaintext and TLS share one request path.
pub(crate) type BoxIo = Box<dyn Io>;

/// What the transport knows about the peer of an accepted connection. Inserted into every
/// request's extensions.
#[derive(Clone, Debug)]
pub(crate) struct PeerInfo {
    /// The remote socket address.
    pub(crate) addr: SocketAddr,
    /// The peer's verified identity (mutual TLS only).
    pub(crate) identity: Option<Identity>,
}

fn timed_out(what: &str, after: Duration) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out after {after:?}"))
}

/// Client-side TLS: one configuration per identity this proxy calls.
struct TlsClient {
    state: Arc<IdentityState>,
    configs: Mutex<HashMap<ServiceName, Arc<rustls::ClientConfig>>>,
    telemetry: Arc<Telemetry>,
}

/// Opens connections to peers.
#[derive(Clone)]
pub(crate) struct Connector {
    timeout: Duration,
    tls: Option<Arc<TlsClient>>,
    /// In process, no sockets: the call-path benchmark's peers (`callpath.rs`).
    #[cfg(test)]
    memory: Option<MemoryDial>,
}

/// Opens an in-process connection (the benchmark's: an in-memory pipe to a peer it serves).
#[cfg(test)]
pub(crate) type MemoryDial = Arc<dyn Fn() -> BoxIo + Send + Sync>;

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").field("timeout", &self.timeout).field("tls", &self.tls.is_some()).finish()
    }
}

impl Connector {
    /// Plaintext TCP with `timeout` on connecting.
    pub(crate) fn plaintext(timeout: Duration) -> Self {
        Self {
            timeout,
            tls: None,
            #[cfg(test)]
            memory: None,
        }
    }

    /// Mutual TLS: the server must prove the identity of the service being called.
    pub(crate) fn mtls(timeout: Duration, state: Arc<IdentityState>, telemetry: Arc<Telemetry>) -> Self {
        Self {
            timeout,
            tls: Some(Arc::new(TlsClient { state, configs: Mutex::default(), telemetry })),
            #[cfg(test)]
            memory: None,
        }
    }

    /// In process: every connection is what `dial` opens, whatever the address.
    #[cfg(test)]
    pub(crate) fn memory(dial: MemoryDial) -> Self {
        Self { timeout: Duration::from_secs(1), tls: None, memory: Some(dial) }
    }

    /// Connects to `addr` (resolving DNS names), an instance of `service`, within the timeout.
    pub(crate) async fn connect(&self, addr: &Address, service: &ServiceName) -> io::Result<BoxIo> {
        #[cfg(test)]
        if let Some(dial) = &self.memory {
            return Ok(dial());
        }
        let connect = TcpStream::connect((addr.host(), addr.port()));
        let tcp =
            tokio::time::timeout(self.timeout, connect).await.map_err(|_| timed_out("connect", self.timeout))??;
        tcp.set_nodelay(true)?;
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let config = tls.config(service).map_err(io::Error::other)?;
        let server_name = ServerName::try_from(service.to_string()).map_err(io::Error::other)?;
        let handshake = TlsConnector::from(config).connect(server_name, tcp);
        let result = match tokio::time::timeout(self.timeout, handshake).await {
            Ok(result) => result,
            Err(_) => Err(timed_out("TLS handshake", self.timeout)),
        };
        let direction = Direction::Outbound;
        match result {
            Ok(stream) => {
                TlsHandshakeOk { direction }.emit(&tls.telemetry);
                Ok(Box::new(stream))
            }
            Err(error) => {
                let peer = format!("{service} at {addr}");
                let reason = tls::failure_reason(&error);
                TlsHandshakeFailed { direction, peer: &peer, reason, error: &error }.emit(&tls.telemetry);
                Err(error)
            }
        }
    }
}

impl TlsClient {
    fn config(&self, service: &ServiceName) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        let mut configs = self.configs.lock();
        if let Some(config) = configs.get(service) {
            return Ok(config.clone());
        }
        let expected = Identity::new(self.state.trust_domain.clone(), service.clone());
        let config = tls::client_config(&self.state, expected)?;
        configs.insert(service.clone(), config.clone());
        Ok(config)
    }
}

/// Accepts peers' connections.
#[derive(Clone)]
pub(crate) struct Acceptor {
    handshake_timeout: Duration,
    tls: Option<(TlsAcceptor, Direction, Arc<Telemetry>)>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor").field("tls", &self.tls.is_some()).finish_non_exhaustive()
    }
}

impl Acceptor {
    /// Plaintext: the connection is the TCP stream, once the peer has sent its first bytes.
    pub(crate) fn plaintext(handshake_timeout: Duration) -> Self {
        Self { handshake_timeout, tls: None }
    }

    /// Mutual TLS with the current identity; plaintext peers are refused.
    pub(crate) fn mtls(
        handshake_timeout: Duration,
        state: &Arc<IdentityState>,
        telemetry: Arc<Telemetry>,
    ) -> Result<Self, rustls::Error> {
        let acceptor = TlsAcceptor::from(tls::server_config(state)?);
        Ok(Self { handshake_timeout, tls: Some((acceptor, Direction::Inbound, telemetry)) })
    }

    /// The gateway's edge: server-only TLS 1.2+ with the certificate `resolver` picks by SNI;
    /// plaintext and old clients are refused.
    pub(crate) fn edge(
        handshake_timeout: Duration,
        resolver: Arc<dyn rustls::server::ResolvesServerCert>,
        telemetry: Arc<Telemetry>,
    ) -> Result<Self, rustls::Error> {
        let acceptor = TlsAcceptor::from(tls::edge_server_config(resolver)?);
        Ok(Self { handshake_timeout, tls: Some((acceptor, Direction::Gateway, telemetry)) })
    }

    /// Prepares an accepted TCP stream within the handshake timeout. A peer that sends nothing,
    /// or fails the TLS handshake, is dropped.
    pub(crate) async fn accept(&self, tcp: TcpStream, addr: SocketAddr) -> io::Result<(BoxIo, PeerInfo)> {
        tcp.set_nodelay(true)?;
        let Some((acceptor, direction, telemetry)) = &self.tls else {
            tokio::time::timeout(self.handshake_timeout, tcp.readable())
                .await
                .map_err(|_| timed_out("first bytes", self.handshake_timeout))??;
            return Ok((Box::new(tcp), PeerInfo { addr, identity: None }));
        };
        let result = match tokio::time::timeout(self.handshake_timeout, acceptor.accept(tcp)).await {
            Ok(result) => result,
            Err(_) => Err(timed_out("TLS handshake", self.handshake_timeout)),
        };
        let direction = *direction;
        match result {
            Ok(stream) => {
                let identity = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(spiffe_identity);
                TlsHandshakeOk { direction }.emit(telemetry);
                Ok((Box::new(stream), PeerInfo { addr, identity }))
            }
            Err(error) => {
                let reason = tls::failure_reason(&error);
                TlsHandshakeFailed { direction, peer: &addr, reason, error: &error }.emit(telemetry);
                Err(error)
            }
        }
    }
}
