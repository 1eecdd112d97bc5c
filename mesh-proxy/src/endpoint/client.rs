//! One multiplexed HTTP/2 connection to one peer (another proxy, or the local app), opened on
//! first use and re-opened after it closes.
//!
//! [`H2Client::send`] tells apart a request that never left (the connection could not be
//! opened, or closed before the request was written: safe to send elsewhere) from one that
//! failed on the wire (not safe to repeat).

use hyper::client::conn::http2::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_registry::{Address, ServiceName};
use parking_lot::Mutex;

use super::transport::Connector;
use crate::http::body::RequestBody;

/// HTTP/2 settings for connections this proxy opens.
#[derive(Clone, Copy, Debug)]
pub struct ClientSettings {
    /// Connection-level window.
    pub connection_window: u32,
    /// Stream-level window.
    pub stream_window: u32,
    /// Largest header list accepted from the peer.
    pub max_header_list_size: u32,
    /// PING interval and timeout: a peer that stops answering is dropped.
    pub keepalive: std::time::Duration,
}

/// Why a request could not be sent.
#[derive(Debug)]
pub(crate) enum SendError<B = RequestBody> {
    /// The request never reached the peer; here it is back, to send elsewhere.
    NotSent(Box<Request<B>>, String),
    /// The request or its response failed on the wire.
    Failed(hyper::Error),
}

/// A lazily connected HTTP/2 client for one address, sending request bodies of type `B`.
#[derive(Debug)]
pub(crate) struct H2Client<B = RequestBody> {
    addr: Address,
    /// The service this peer is an instance of (what its certificate must prove under mTLS).
    service: ServiceName,
    connector: Connector,
    settings: ClientSettings,
    ready: Mutex<Option<SendRequest<B>>>,
    connecting: tokio::sync::Mutex<()>,
}

impl<B> H2Client<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub(crate) fn new(addr: Address, service: ServiceName, connector: Connector, settings: ClientSettings) -> Self {
        Self { addr, service, connector, settings, ready: Mutex::new(None), connecting: tokio::sync::Mutex::new(()) }
    }

    pub(crate) fn addr(&self) -> &Address {
        &self.addr
    }

    /// Sends `req` on the shared connection, connecting first if needed.
    pub(crate) async fn send(&self, req: Request<B>) -> Result<Response<hyper::body::Incoming>, SendError<B>> {
        let mut sender = match self.current() {
            Some(sender) => sender,
            // Connecting (TCP, TLS, the HTTP/2 handshake) is rare and its future is large: boxed,
            // so that it does not size every call's future (measured: 1.9 KiB -> 0.6 KiB).
            None => match Box::pin(self.connect()).await {
                Ok(sender) => sender,
                Err(cause) => return Err(SendError::NotSent(Box::new(req), cause)),
            },
        };
        match sender.try_send_request(req).await {
            Ok(response) => Ok(response),
            Err(mut error) => match error.take_message() {
                Some(req) => {
                    self.forget(&sender);
                    Err(SendError::NotSent(Box::new(req), "connection closed".to_string()))
                }
                None => Err(SendError::Failed(error.into_error())),
            },
        }
    }

    fn current(&self) -> Option<SendRequest<B>> {
        let ready = self.ready.lock();
        ready.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    fn forget(&self, sender: &SendRequest<B>) {
        let mut ready = self.ready.lock();
        if ready.as_ref().is_some_and(|s| s.is_closed() || sender.is_closed()) {
            *ready = None;
        }
    }

    async fn connect(&self) -> Result<SendRequest<B>, String> {
        // One connection attempt at a time; whoever waited finds the result.
        let _connecting = self.connecting.lock().await;
        if let Some(sender) = self.current() {
            return Ok(sender);
        }
        let io = self.connector.connect(&self.addr, &self.service).await.map_err(|e| e.to_string())?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_connection_window_size(self.settings.connection_window)
            .initial_stream_window_size(self.settings.stream_window)
            .max_header_list_size(self.settings.max_header_list_size)
            .keep_alive_interval(self.settings.keepalive)
            .keep_alive_timeout(self.settings.keepalive)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
        let addr = self.addr.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%addr, %error, "connection to peer closed");
            }
        });
        *self.ready.lock() = Some(sender.clone());
        Ok(sender)
    }
}
