//! The ingress gateway's request path: a request from outside the mesh, to a mesh service.
//!
//! ```text
//! client --TLS (SNI: certs.rs) or plaintext, HTTP/1.1 or HTTP/2--> edge listener
//!        -> a CORS preflight is answered here (cors.rs)
//!        -> the gateway document's first route that fits host and path (else 404 / UNIMPLEMENTED)
//!        -> the route's rate limits (limits.rs), its token check (auth.rs), its size cap
//!        -> gRPC-Web made gRPC (web.rs); the route's service as :authority, HTTP/2 onwards,
//!           with the route's timeout as the deadline
//!        -> outbound: the destination's policy, balancing, mTLS as this proxy's identity
//!        <- the response made gRPC-Web again, CORS headers for an allowed origin
//! ```
//!
//! Every request is recorded once its response ends (`telemetry::edge`): by route and host,
//! under the gateway's span (the root of the trace: an outside `traceparent` is removed unless
//! the document trusts it), and as a JSON access log line if the document asks for one.
//!
//! The gateway is a proxy with no app of its own (`--gateway FILE`): it is a mesh member with its
//! identity, so every call it makes is a caller's call, subject to the destination's policy and
//! authorization. `reload.rs` follows the document and the certificate files.

mod auth;
pub(crate) mod certs;
mod cors;
mod files;
mod limits;
pub(crate) mod reload;
mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{Either, ready};
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use mesh_registry::gateway::{GatewayDocument, GatewayRoute, Limits, PREFLIGHT, RouteAuth};
use parking_lot::RwLock;

use crate::headers::{
    GRPC_TIMEOUT, MESH_ERROR, MESH_ERROR_MESSAGE, TRACEPARENT, TRACESTATE, encode_grpc_timeout, grpc_timeout, is_grpc,
};
use crate::http::body::{EdgeBody, Source};
use crate::http::errors::ProxyError;
use crate::outbound::{Outbound, OutboundBody};
use crate::telemetry::Direction;
use crate::telemetry::edge::{AccessLog, EdgeCall, EdgeRequest};
use crate::telemetry::events::{AuthRefused, EdgeLimited};
use crate::telemetry::labels::{AuthFailure, EdgeLimit, EdgeProtocol};
use crate::telemetry::trace::{self, SpanKind};

/// What a gateway response's body is made of.
#[derive(Debug)]
pub(crate) enum Reply {
    /// The service's (or the outbound path's error), streamed as is.
    Mesh(OutboundBody),
    /// The service's, as gRPC-Web.
    Web(web::WebBody),
    /// Written by the gateway: an error's message, a preflight's answer.
    Text(Full<Bytes>),
}

impl Body for Reply {
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

/// A gateway response's body: its reply, and the outside request's telemetry, recorded when
/// the body ends or is dropped.
#[derive(Debug)]
pub(crate) struct GatewayBody {
    reply: Reply,
    call: Option<EdgeCall>,
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.reply).poll_frame(cx);
        if let (Some(call), Poll::Ready(frame)) = (&mut this.call, &polled) {
            match frame {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        call.data(data.len());
                    } else if let Some(trailers) = frame.trailers_ref() {
                        call.trailers(trailers);
                    }
                    if let Some(trailers) = match &mut this.reply {
                        Reply::Web(web) => web.take_trailers(),
                        _ => None,
                    } {
                        call.trailers(&trailers);
                    }
                }
                Some(Err(_)) => call.broken(),
                None => call.ended(),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.reply.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.reply.size_hint()
    }
}

/// The response to an outside request, carrying its telemetry to the end of its body.
fn recorded(response: Response<Reply>, mut call: EdgeCall) -> Response<GatewayBody> {
    call.respond(response.status(), response.headers(), response.body().is_end_stream());
    response.map(|reply| GatewayBody { reply, call: Some(call) })
}

/// The gateway's side of the proxy.
#[derive(Debug)]
pub(crate) struct Gateway {
    pub(crate) outbound: Arc<Outbound>,
    /// The document in force, and its token verifier.
    pub(crate) state: RwLock<Arc<InForce>>,
    /// Where access log lines go when the document asks for them.
    pub(crate) access_log: Arc<AccessLog>,
}

/// What the gateway's document puts in force for requests (its certificates are in `certs.rs`).
#[derive(Debug, Default)]
pub(crate) struct InForce {
    pub(crate) document: GatewayDocument,
    pub(crate) verifier: Option<auth::Verifier>,
    /// The routes' token buckets.
    pub(crate) limiter: limits::Limiter,
}

impl Gateway {
    /// Takes a request from outside, from `client`.
    pub(crate) fn handle(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        client: SocketAddr,
    ) -> impl Future<Output = Response<GatewayBody>> + Send + use<> {
        let grpc = is_grpc(&req);
        let host = host(&req);
        let state = self.state.read().clone();
        let web = web::Mode::of(req.headers());
        let mut call = self.arrive(&state, &mut req, &host, client, grpc, web);
        if cors::is_preflight(&req) {
            call.routed(&Arc::from(PREFLIGHT), "*");
            let response = cors::preflight(state.document.cors.as_ref(), req.headers());
            return Either::Left(ready(recorded(response.map(Reply::Text), call)));
        }
        let origin = req.headers().get(http::header::ORIGIN).cloned();
        let Some(route) = state.document.route(&host, req.uri().path()) else {
            let error = ProxyError::NoRoute { host, path: req.uri().path().to_string() };
            return Either::Left(ready(recorded(self.refuse(error, &req, web, &state, origin.as_ref()), call)));
        };
        call.routed(&route.name, route.host_pattern(&host).unwrap_or("*"));
        let limits = state.document.limits_of(route);
        let admitted =
            self.limit(&state, route, &limits, &req, client).and_then(|()| self.authenticate(&state, route, &mut req));
        match admitted {
            Ok(subject) => subject.iter().for_each(|subject| call.subject(subject)),
            Err(error) => {
                return Either::Left(ready(recorded(self.refuse(error, &req, web, &state, origin.as_ref()), call)));
            }
        }
        let service = match (&route.service, &route.files) {
            (Some(service), _) => service.clone(),
            (None, dir) => {
                let prefix = route.path_prefix.as_deref().unwrap_or("/");
                let rest = req.uri().path().strip_prefix(prefix).unwrap_or_default().to_string();
                let dir = dir.clone().unwrap_or_default();
                let page = files::serve(dir, rest, req.method().clone()).map(move |response| {
                    let mut response = response.map(Reply::Text);
                    cors::allow(state.document.cors.as_ref(), origin.as_ref(), response.headers_mut());
                    recorded(response, call)
                });
                return Either::Right(Either::Right(page));
            }
        };
        call.service(service.as_str());
        if let Some(ms) = limits.timeout_ms {
            // The route's timeout is the call's deadline, unless the caller's is sooner.
            let timeout = Duration::from_millis(ms);
            if grpc_timeout(&req).is_none_or(|t| t > timeout) {
                req.headers_mut().insert(GRPC_TIMEOUT, encode_grpc_timeout(timeout));
            }
        }
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
        if web.is_some() {
            web::request(&mut parts.headers);
        }
        let (limit, over) = (limits.max_request_bytes(), Arc::new(AtomicBool::new(false)));
        let body = EdgeBody::new(body, web == Some(web::Mode::Text), limit, over.clone());
        let req = Request::from_parts(parts, Source::Edge(Box::new(body)));
        let forwarded = self.outbound.forward(Ok(service), route.subset.clone(), req);
        let (this, name) = (self.clone(), route.name.clone());
        Either::Right(Either::Left(forwarded.map(move |response| {
            // A body cut off at its cap failed the call: say why, whatever the service said.
            let response = if over.load(Ordering::Relaxed) { this.too_large(&name, limit, grpc) } else { response };
            let mut response = outward(response, grpc, web);
            cors::allow(state.document.cors.as_ref(), origin.as_ref(), response.headers_mut());
            recorded(response, call)
        })))
    }

    /// Starts recording an outside request: its protocol, its place in a trace (a new trace
    /// unless the document trusts the caller's `traceparent`), its access log line.
    fn arrive(
        &self,
        state: &InForce,
        req: &mut Request<Incoming>,
        host: &str,
        client: SocketAddr,
        grpc: bool,
        web: Option<web::Mode>,
    ) -> EdgeCall {
        let protocol = match (web, grpc) {
            (Some(_), _) => EdgeProtocol::GrpcWeb,
            (None, true) => EdgeProtocol::Grpc,
            (None, false) => EdgeProtocol::Http,
        };
        let headers = req.headers_mut();
        if !state.document.trust_traceparent {
            headers.remove(TRACEPARENT);
            headers.remove(TRACESTATE);
        }
        let (span, trace_id) = match &self.outbound.tracer {
            Some(tracer) => {
                let span = tracer.start(SpanKind::Server, headers);
                let trace_id = span.context.trace_id;
                (Some(span), trace_id)
            }
            // Not exporting spans: the request still gets a trace id, for its log line and the apps'.
            None => (None, trace::step(headers, 0.0).0.trace_id),
        };
        let request = EdgeRequest {
            protocol,
            method: req.method(),
            host,
            path: req.uri().path(),
            headers: req.headers(),
            client: Some(client),
        };
        let log = state.document.access_log.then_some(&self.access_log);
        EdgeCall::start(&self.outbound.telemetry, &request, span, trace_id, log)
    }

    /// Checks a request against its route's rate limits and, by its declared length, size cap.
    fn limit<B>(
        &self,
        state: &InForce,
        route: &GatewayRoute,
        limits: &Limits,
        req: &Request<B>,
        client: SocketAddr,
    ) -> Result<(), ProxyError> {
        let telemetry = &self.outbound.telemetry;
        if let Err(refused) = state.limiter.admit(&route.name, limits, Some(client.ip())) {
            let error = ProxyError::EdgeRateLimited {
                route: route.name.to_string(),
                per: refused.per,
                per_second: refused.rate.per_second,
                burst: refused.rate.burst(),
                pushback_ms: u64::try_from(refused.wait.as_micros().div_ceil(1000)).unwrap_or(u64::MAX),
            };
            EdgeLimited { route: &route.name, limit: refused.limit, error: &error }.emit(telemetry);
            return Err(error);
        }
        let declared =
            req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let limit = limits.max_request_bytes();
        if declared.is_some_and(|length| length > limit) {
            let error = ProxyError::RequestTooLarge { route: route.name.to_string(), limit };
            EdgeLimited { route: &route.name, limit: EdgeLimit::MaxRequestBytes, error: &error }.emit(telemetry);
            return Err(error);
        }
        Ok(())
    }

    /// Removes the subject header from the outside request (it is the gateway's to set, on every
    /// route), and on an authenticated route checks the token and sets the header to its subject
    /// (which it returns).
    fn authenticate(
        &self,
        state: &InForce,
        route: &GatewayRoute,
        req: &mut Request<Incoming>,
    ) -> Result<Option<HeaderValue>, ProxyError> {
        if let Some(verifier) = &state.verifier {
            req.headers_mut().remove(&verifier.subject_header);
        }
        if route.auth != RouteAuth::Authenticated {
            return Ok(None);
        }
        // A document with an authenticated route always has `auth` (checked when it is read).
        let missing = || auth::Refusal { reason: AuthFailure::Missing, detail: "no auth section".into() };
        let verified = state.verifier.as_ref().ok_or_else(missing).and_then(|v| Ok((v, v.verify(req.headers())?)));
        match verified {
            Ok((verifier, subject)) => {
                req.headers_mut().insert(verifier.subject_header.clone(), subject.clone());
                Ok(Some(subject))
            }
            Err(refusal) => {
                let telemetry = &self.outbound.telemetry;
                AuthRefused { reason: refusal.reason, detail: &refusal.detail, route: &route.name }.emit(telemetry);
                Err(ProxyError::Unauthenticated { reason: refusal.reason.as_str(), detail: refusal.detail })
            }
        }
    }

    /// The answer to a call whose body went over its cap on the way (the service's stream was
    /// reset; the call was recorded as the outbound path saw it).
    fn too_large(&self, route: &str, limit: u64, grpc: bool) -> Response<OutboundBody> {
        let error = ProxyError::RequestTooLarge { route: route.to_string(), limit };
        EdgeLimited { route, limit: EdgeLimit::MaxRequestBytes, error: &error }.emit(&self.outbound.telemetry);
        error.into_response(grpc)
    }

    /// Answers a request the gateway refuses itself (no route, a limit, no valid token), recorded
    /// as a failed call, readable by an allowed origin's page.
    fn refuse<B>(
        &self,
        error: ProxyError,
        req: &Request<B>,
        web: Option<web::Mode>,
        state: &InForce,
        origin: Option<&HeaderValue>,
    ) -> Response<Reply> {
        let telemetry = &self.outbound.telemetry;
        let method = telemetry.method_label(req.uri().path());
        let recorder = telemetry.start(Direction::Outbound, self.outbound.local.as_str(), "unknown", method);
        tracing::debug!(%error, "gateway: refused");
        let grpc = is_grpc(req);
        let mut response = outward(error.respond(grpc, recorder), grpc, web);
        cors::allow(state.document.cors.as_ref(), origin, response.headers_mut());
        response
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
fn outward(response: Response<OutboundBody>, grpc: bool, web: Option<web::Mode>) -> Response<Reply> {
    match web {
        Some(mode) => web::response(response, mode).map(Reply::Web),
        None => with_text_body(response, grpc),
    }
}

/// An HTTP error the proxy wrote (it has no body: the message is in `mesh-error-message`) gets
/// the message as its body, for people and tools that show bodies; everything else streams as is.
fn with_text_body(response: Response<OutboundBody>, grpc: bool) -> Response<Reply> {
    let proxy_made = !grpc && response.headers().contains_key(MESH_ERROR);
    let message = response.headers().get(MESH_ERROR_MESSAGE).map(|m| m.as_bytes().to_vec());
    match message {
        Some(mut text) if proxy_made => {
            text.push(b'\n');
            let (mut parts, _) = response.into_parts();
            parts.headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            Response::from_parts(parts, Reply::Text(Full::new(Bytes::from(text))))
        }
        _ => response.map(Reply::Mesh),
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
        let Reply::Text(body) = response.into_body() else { panic!("no text body") };
        let text = http_body_util::BodyExt::collect(body).await.unwrap_or_else(|e| match e {}).to_bytes();
        assert_eq!(text, format!("{error}\n").as_bytes());

        let grpc = with_text_body(error.into_response(true), true);
        assert_eq!(grpc.headers()["grpc-status"], "12");
        assert!(matches!(grpc.into_body(), Reply::Mesh(_)), "gRPC errors stay trailers-only");
    }
}
