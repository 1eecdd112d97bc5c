//! The ingress gateway's request path: a request from outside the mesh, to a mesh service.
//!
//! ```text
//! client --TLS (SNI: certs.rs) or plaintext, HTTP/1.1 or HTTP/2--> edge listener
//!        -> the gateway document's first route that fits host and path (else 404 / UNIMPLEMENTED)
//!        -> the route's service as :authority, HTTP/2 onwards
//!        -> outbound: the destination's policy, balancing, mTLS as this proxy's identity
//! ```
//!
//! The gateway is a proxy with no app of its own (`--gateway FILE`): it is a mesh member with its
//! identity, so every call it makes is a caller's call, subject to the destination's policy and
//! authorization. `reload.rs` follows the document and the certificate files.

pub(crate) mod certs;
pub(crate) mod reload;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{Either, ready};
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use mesh_registry::gateway::GatewayDocument;
use parking_lot::RwLock;

use crate::headers::{MESH_ERROR, MESH_ERROR_MESSAGE, is_grpc};
use crate::http::errors::ProxyError;
use crate::outbound::{Outbound, OutboundBody};
use crate::telemetry::Direction;

/// A gateway response: the service's, streamed, or one the gateway wrote with a text body.
pub(crate) type GatewayBody = http_body_util::Either<OutboundBody, Full<Bytes>>;

/// The gateway's side of the proxy.
#[derive(Debug)]
pub(crate) struct Gateway {
    pub(crate) outbound: Arc<Outbound>,
    /// The routes in force.
    pub(crate) document: RwLock<Arc<GatewayDocument>>,
}

impl Gateway {
    /// Takes a request from outside.
    pub(crate) fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<GatewayBody>> + Send + use<> {
        let grpc = is_grpc(&req);
        let host = host(&req);
        let document = self.document.read().clone();
        let Some(route) = document.route(&host, req.uri().path()) else {
            let error = ProxyError::NoRoute { host, path: req.uri().path().to_string() };
            return Either::Left(ready(self.unrouted(error, grpc, req.uri().path())));
        };
        let (mut parts, body) = req.into_parts();
        // Onwards it is HTTP/2 to a service, whatever the client spoke: the service's name as
        // the authority, and no `Host` beside it.
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = Uri::builder()
            .scheme("http")
            .authority(route.service.as_str())
            .path_and_query(path)
            .build()
            .unwrap_or_else(|_| Uri::from_static("/"));
        parts.version = Version::HTTP_2;
        parts.headers.remove(http::header::HOST);
        let req = Request::from_parts(parts, body);
        let call = self.outbound.forward(Ok(route.service.clone()), route.subset.clone(), req);
        Either::Right(call.map(move |response| with_text_body(response, grpc)))
    }

    /// Answers a request no route takes, recorded as a failed call.
    fn unrouted(&self, error: ProxyError, grpc: bool, path: &str) -> Response<GatewayBody> {
        let telemetry = &self.outbound.telemetry;
        let method = telemetry.method_label(path);
        let recorder = telemetry.start(Direction::Outbound, self.outbound.local.as_str(), "unknown", method);
        tracing::debug!(%error, "gateway: no route");
        with_text_body(error.respond(grpc, recorder), grpc)
    }
}

/// The request's host: `:authority` or `Host`, lowercase, without the port.
fn host<B>(req: &Request<B>) -> String {
    let from_header = || {
        let value = req.headers().get(http::header::HOST)?.to_str().ok()?;
        value.parse::<http::uri::Authority>().ok()
    };
    match req.uri().authority().cloned().or_else(from_header) {
        Some(authority) => authority.host().to_ascii_lowercase(),
        None => String::new(),
    }
}

/// An HTTP error the proxy wrote (it has no body: the message is in `mesh-error-message`) gets
/// the message as its body, for people and tools that show bodies; everything else streams as is.
fn with_text_body(response: Response<OutboundBody>, grpc: bool) -> Response<GatewayBody> {
    let proxy_made = !grpc && response.headers().contains_key(MESH_ERROR);
    let message = response.headers().get(MESH_ERROR_MESSAGE).map(|m| m.as_bytes().to_vec());
    match message {
        Some(mut text) if proxy_made => {
            text.push(b'\n');
            let (mut parts, _) = response.into_parts();
            parts.headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            Response::from_parts(parts, http_body_util::Either::Right(Full::new(Bytes::from(text))))
        }
        _ => response.map(http_body_util::Either::Left),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_comes_without_its_port_and_in_lowercase() {
        let req = |uri: &str, host: Option<&str>| {
            let mut builder = Request::builder().uri(uri);
            if let Some(host) = host {
                builder = builder.header("host", host);
            }
            builder.body(()).unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(host(&req("https://API.example.com:8443/x", None)), "api.example.com");
        assert_eq!(host(&req("/x", Some("Api.Example.com:8080"))), "api.example.com");
        assert_eq!(host(&req("/x", Some("localhost"))), "localhost");
        assert_eq!(host(&req("/x", None)), "");
    }

    #[tokio::test]
    async fn an_http_error_of_the_proxy_gets_its_message_as_the_body() {
        let error = ProxyError::NoRoute { host: "a.test".into(), path: "/nope".into() };
        let response = with_text_body(error.clone().into_response(false), false);
        assert_eq!(response.status(), http::StatusCode::NOT_FOUND);
        let http_body_util::Either::Right(body) = response.into_body() else { panic!("no text body") };
        let text = http_body_util::BodyExt::collect(body).await.unwrap_or_else(|e| match e {}).to_bytes();
        assert_eq!(text, format!("{error}\n").as_bytes());

        let grpc = with_text_body(error.into_response(true), true);
        assert_eq!(grpc.headers()["grpc-status"], "12");
        assert!(matches!(grpc.into_body(), http_body_util::Either::Left(_)), "gRPC errors stay trailers-only");
    }
}
