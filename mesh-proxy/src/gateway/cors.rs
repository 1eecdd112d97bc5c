//! Cross-origin calls at the gateway: a browser asks first (a preflight `OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`), and the gateway answers it itself, from the document's
//! `cors.allowed_origins`; the real call's response then tells an allowed page it may read it,
//! gRPC's status headers included. A page from another origin gets a 403 to its preflight that
//! names the origin, and no CORS headers on anything else (its browser withholds the response).

use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, CONTENT_TYPE, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use mesh_registry::gateway::Cors;

/// What a page may send when its preflight does not say (and what gRPC-Web clients send).
const DEFAULT_ALLOW_HEADERS: &str = "content-type, x-grpc-web, x-user-agent, grpc-timeout, authorization";
/// The response headers an allowed page may read.
const EXPOSE_HEADERS: &str = "grpc-status, grpc-message, grpc-status-details-bin, mesh-error, mesh-error-message";
const ALLOW_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
/// The longest `Access-Control-Request-Headers` echoed back.
const MAX_REQUEST_HEADERS: usize = 1024;

/// Whether `req` is a CORS preflight.
pub(crate) fn is_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(ORIGIN)
        && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// Answers a preflight: 204 with what the origin may do, or 403 naming the origin.
pub(crate) fn preflight(cors: Option<&Cors>, headers: &HeaderMap) -> Response<Full<Bytes>> {
    let origin = headers.get(ORIGIN).and_then(|o| o.to_str().ok()).unwrap_or_default();
    let Some(cors) = cors.filter(|c| c.allows(origin)) else {
        let text = format!("mesh: gateway: origin {origin:?} may not call (not in cors.allowed_origins)\n");
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = StatusCode::FORBIDDEN;
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        return response;
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let out = response.headers_mut();
    if let Some(origin) = headers.get(ORIGIN) {
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    }
    out.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOW_METHODS));
    let asked = headers.get(ACCESS_CONTROL_REQUEST_HEADERS).filter(|h| h.len() <= MAX_REQUEST_HEADERS);
    out.insert(ACCESS_CONTROL_ALLOW_HEADERS, asked.cloned().unwrap_or(HeaderValue::from_static(DEFAULT_ALLOW_HEADERS)));
    out.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(cors.max_age_s));
    out.insert(VARY, HeaderValue::from_static("origin, access-control-request-method, access-control-request-headers"));
    response
}

/// Tells an allowed origin's page that it may read this response.
pub(crate) fn allow(cors: Option<&Cors>, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
    let (Some(cors), Some(origin)) = (cors, origin) else { return };
    if !origin.to_str().is_ok_and(|o| cors.allows(o)) {
        return;
    }
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE_HEADERS));
    headers.append(VARY, HeaderValue::from_static("origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors() -> Cors {
        Cors { allowed_origins: vec!["http://app.test".into()], max_age_s: 60 }
    }

    fn preflight_from(origin: &str) -> Request<()> {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/mesh.demo.v1.Echo/Unary")
            .header(ORIGIN, origin)
            .header(ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(ACCESS_CONTROL_REQUEST_HEADERS, "content-type,x-grpc-web")
            .body(())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_allowed_origin_gets_its_preflight_answered_and_others_are_refused() {
        let req = preflight_from("http://app.test");
        assert!(is_preflight(&req));
        let ok = preflight(Some(&cors()), req.headers());
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        assert_eq!(ok.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "http://app.test");
        assert_eq!(ok.headers()[ACCESS_CONTROL_ALLOW_HEADERS], "content-type,x-grpc-web");
        assert_eq!(ok.headers()[ACCESS_CONTROL_MAX_AGE], "60");

        let refused = preflight(Some(&cors()), preflight_from("http://evil.test").headers());
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(refused.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert_eq!(preflight(None, req.headers()).status(), StatusCode::FORBIDDEN, "no cors section: none allowed");

        let mut headers = HeaderMap::new();
        allow(Some(&cors()), Some(&HeaderValue::from_static("http://app.test")), &mut headers);
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_ORIGIN], "http://app.test");
        assert!(headers[ACCESS_CONTROL_EXPOSE_HEADERS].to_str().unwrap_or_default().contains("grpc-status"));
        let mut headers = HeaderMap::new();
        allow(Some(&cors()), Some(&HeaderValue::from_static("http://evil.test")), &mut headers);
        assert!(headers.is_empty());
        assert!(!is_preflight(&Request::builder().method(Method::OPTIONS).body(()).unwrap_or_default()));
    }
}
