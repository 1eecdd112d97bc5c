//! The ingress gateway's request path: a request from outside the mesh, to a mesh service.
//!
//! ```text
//! client --TLS (SNI: certs.rs) or plaintext, HTTP/1.1 or HTTP/2--> edge listener
//!        -> a CORS preflight is answered here (cors.rs)
//!        -> the gateway document's first route that fits host and path (else 404 / UNIMPLEMENTED)
//!        -> gRPC-Web made gRPC (web.rs); the route's service as :authority, HTTP/2 onwards
//!        -> outbound: the destination's policy, balancing, mTLS as this proxy's identity
//!        <- the response made gRPC-Web again, CORS headers for an allowed origin
//! ```
//!
//! The gateway is a proxy with no app of its own (`--gateway FILE`): it is a mesh member with its
//! identity, so every call it makes is a caller's call, subject to the destination's policy and
//! authorization. `reload.rs` follows the document and the certificate files.

mod auth;
pub(crate) mod certs;
mod cors;
mod files;
pub(crate) mod reload;
mod web;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{Either, ready};
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use mesh_registry::gateway::{GatewayDocument, RouteAuth};
use parking_lot::RwLock;

use crate::headers::{MESH_ERROR, MESH_ERROR_MESSAGE, is_grpc};
use crate::http::body::Source;
use crate::http::errors::ProxyError;
use crate::outbound::{Outbound, OutboundBody};
use crate::telemetry::Direction;
use crate::telemetry::events::AuthRefused;

/// A gateway response's body.
#[derive(Debug)]
pub(crate) enum GatewayBody {
    /// The service's (or the outbound path's error), streamed as is.
    Mesh(OutboundBody),
    /// The service's, as gRPC-Web.
    Web(web::WebBody),
    /// Written by the gateway: an error's message, a preflight's answer.
    Text(Full<Bytes>),
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Mesh(body) => Pin::new(body).poll_frame(cx),
            Self::Web(body) => Pin::new(body).poll_frame(cx),
            Self::Text(body) => Pin::new(body).poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Mesh(body) => body.is_end_stream(),
            Self::Web(body) => body.is_end_stream(),
            Self::Text(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Mesh(body) => body.size_hint(),
            Self::Web(_) => SizeHint::default(),
            Self::Text(body) => body.size_hint(),
        }
    }
}

/// The gateway's side of the proxy.
#[derive(Debug)]
pub(crate) struct Gateway {
    pub(crate) outbound: Arc<Outbound>,
    /// The document in force, and its token verifier.
    pub(crate) state: RwLock<Arc<InForce>>,
}

/// What the gateway's document puts in force for requests (its certificates are in `certs.rs`).
#[derive(Debug, Default)]
pub(crate) struct InForce {
    pub(crate) document: GatewayDocument,
    pub(crate) verifier: Option<auth::Verifier>,
}

impl Gateway {
    /// Takes a request from outside.
    pub(crate) fn handle(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
    ) -> impl Future<Output = Response<GatewayBody>> + Send + use<> {
        let grpc = is_grpc(&req);
        let host = host(&req);
        let state = self.state.read().clone();
        if cors::is_preflight(&req) {
            let response = cors::preflight(state.document.cors.as_ref(), req.headers());
            return Either::Left(ready(response.map(GatewayBody::Text)));
        }
        let origin = req.headers().get(http::header::ORIGIN).cloned();
        let web = web::Mode::of(req.headers());
        let Some(route) = state.document.route(&host, req.uri().path()) else {
            let error = ProxyError::NoRoute { host, path: req.uri().path().to_string() };
            let mut response = self.refuse(error, grpc, req.uri().path(), web);
            cors::allow(state.document.cors.as_ref(), origin.as_ref(), response.headers_mut());
            return Either::Left(ready(response));
        };
        // The subject header is the gateway's to set: never the outside caller's.
        let subject = state.verifier.as_ref().map(|v| v.subject_header.clone());
        if let Some(header) = &subject {
            req.headers_mut().remove(header);
        }
        if route.auth == RouteAuth::Authenticated {
            let verified = match &state.verifier {
                Some(verifier) => verifier.verify(req.headers()),
                None => Err(auth::Refusal {
                    reason: crate::telemetry::labels::AuthFailure::Missing,
                    detail: "no auth".into(),
                }),
            };
            match (verified, &subject) {
                (Ok(sub), Some(header)) => {
                    req.headers_mut().insert(header.clone(), sub);
                }
                (Ok(_), None) => {}
                (Err(refusal), _) => {
                    let telemetry = &self.outbound.telemetry;
                    AuthRefused { reason: refusal.reason, detail: &refusal.detail, route: &route.name }.emit(telemetry);
                    let error = ProxyError::Unauthenticated { reason: refusal.reason.as_str(), detail: refusal.detail };
                    let mut response = self.refuse(error, grpc, req.uri().path(), web);
                    cors::allow(state.document.cors.as_ref(), origin.as_ref(), response.headers_mut());
                    return Either::Left(ready(response));
                }
            }
        }
        let service = match (&route.service, &route.files) {
            (Some(service), _) => service.clone(),
            (None, dir) => {
                let prefix = route.path_prefix.as_deref().unwrap_or("/");
                let rest = req.uri().path().strip_prefix(prefix).unwrap_or_default().to_string();
                let dir = dir.clone().unwrap_or_default();
                let page = files::serve(dir, rest, req.method().clone()).map(move |response| {
                    let mut response = response.map(GatewayBody::Text);
                    cors::allow(state.document.cors.as_ref(), origin.as_ref(), response.headers_mut());
                    response
                });
                return Either::Right(Either::Right(page));
            }
        };
        let (mut parts, body) = req.into_parts();
        // Onwards it is HTTP/2 to a service, whatever the client spoke: the service's name as
        // the authority, and no `Host` beside it.
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = Uri::builder()
            .scheme("http")
            .authority(service.as_str())
            .path_and_query(path)
            .build()
            .unwrap_or_else(|_| Uri::from_static("/"));
        parts.version = Version::HTTP_2;
        parts.headers.remove(http::header::HOST);
        let body = match web {
            Some(mode) => web::request(&mut parts.headers, body, mode),
            None => Source::Plain(body),
        };
        let req = Request::from_parts(parts, body);
        let call = self.outbound.forward(Ok(service), route.subset.clone(), req);
        Either::Right(Either::Left(call.map(move |response| {
            let mut response = outward(response, grpc, web);
            cors::allow(state.document.cors.as_ref(), origin.as_ref(), response.headers_mut());
            response
        })))
    }

    /// Answers a request the gateway refuses itself (no route, no valid token), recorded as a
    /// failed call.
    fn refuse(&self, error: ProxyError, grpc: bool, path: &str, web: Option<web::Mode>) -> Response<GatewayBody> {
        let telemetry = &self.outbound.telemetry;
        let method = telemetry.method_label(path);
        let recorder = telemetry.start(Direction::Outbound, self.outbound.local.as_str(), "unknown", method);
        tracing::debug!(%error, "gateway: refused");
        outward(error.respond(grpc, recorder), grpc, web)
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

/// A response on its way out: as gRPC-Web to a gRPC-Web caller, else as it is (with a text body
/// for an HTTP error of the proxy's).
fn outward(response: Response<OutboundBody>, grpc: bool, web: Option<web::Mode>) -> Response<GatewayBody> {
    match web {
        Some(mode) => web::response(response, mode).map(GatewayBody::Web),
        None => with_text_body(response, grpc),
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
            Response::from_parts(parts, GatewayBody::Text(Full::new(Bytes::from(text))))
        }
        _ => response.map(GatewayBody::Mesh),
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
        let GatewayBody::Text(body) = response.into_body() else { panic!("no text body") };
        let text = http_body_util::BodyExt::collect(body).await.unwrap_or_else(|e| match e {}).to_bytes();
        assert_eq!(text, format!("{error}\n").as_bytes());

        let grpc = with_text_body(error.into_response(true), true);
        assert_eq!(grpc.headers()["grpc-status"], "12");
        assert!(matches!(grpc.into_body(), GatewayBody::Mesh(_)), "gRPC errors stay trailers-only");
    }
}
