//! The Zipkin v2 read API over the trace store, the subset Grafana's stock Zipkin data source
//! and the Zipkin UI use: `/api/v2/services`, `/api/v2/spans`, `/api/v2/remoteServices`,
//! `/api/v2/traces`, `/api/v2/trace/{id}`; plus `/health`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{Method, Request, Response, StatusCode};

use crate::pipeline::Pipeline;
use crate::traces::{Query, ZipkinSpan, parse_trace_id};
use mesh_common::http1::{Body, json, respond, text};

/// Default and largest number of traces one search returns.
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 1000;
/// Default search window: Zipkin's (one day).
const DEFAULT_LOOKBACK_MS: u64 = 86_400_000;

/// Answers one request.
pub(crate) fn handle<B>(pipeline: &Arc<Pipeline>, req: &Request<B>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET");
    }
    let params: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());
    let path = req.uri().path();
    let store = || pipeline.traces.lock();
    match path {
        "/health" | "/ready" => respond(StatusCode::OK, "text/plain", "ok\n"),
        "/api/v2/services" => json(&store().services()),
        "/api/v2/spans" | "/api/v2/remoteServices" => {
            let Some(service) = param("serviceName") else {
                return text(StatusCode::BAD_REQUEST, "serviceName is required");
            };
            let service = service.to_string();
            if path == "/api/v2/spans" {
                json(&store().span_names(&service))
            } else {
                json(&store().remote_services(&service))
            }
        }
        "/api/v2/traces" => {
            let query = match parse_query(&param) {
                Ok(q) => q,
                Err(message) => return text(StatusCode::BAD_REQUEST, message),
            };
            let store = store();
            let found: Vec<Vec<ZipkinSpan<'_>>> =
                store.search(&query).into_iter().map(|t| t.into_iter().map(ZipkinSpan::from).collect()).collect();
            json(&found)
        }
        "/api/v2/dependencies" => json(&Vec::<()>::new()),
        _ => match path.strip_prefix("/api/v2/trace/") {
            Some(id) => {
                let Some(id) = parse_trace_id(id) else {
                    return text(StatusCode::BAD_REQUEST, "trace id must be 16 or 32 hex digits");
                };
                let store = store();
                match store.trace(&id) {
                    Some(spans) => json(&spans.into_iter().map(ZipkinSpan::from).collect::<Vec<_>>()),
                    None => text(StatusCode::NOT_FOUND, "trace not found (never received, or evicted)"),
                }
            }
            None => text(
                StatusCode::NOT_FOUND,
                "not found: try /api/v2/services, /api/v2/spans?serviceName=, /api/v2/traces, /api/v2/trace/{id}",
            ),
        },
    }
}

fn parse_query<'a>(param: &dyn Fn(&str) -> Option<&'a str>) -> Result<Query, String> {
    fn number(name: &str, value: Option<&str>) -> Result<Option<u64>, String> {
        value
            .map(|v| v.parse::<u64>().map_err(|_| format!("{name} must be a non-negative integer, got {v:?}")))
            .transpose()
    }
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let annotations = param("annotationQuery")
        .map(|q| {
            q.split(" and ")
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| match t.split_once('=') {
                    Some((k, v)) => (k.trim().to_string(), Some(v.trim().to_string())),
                    None => (t.to_string(), None),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Query {
        service: param("serviceName").map(str::to_string),
        remote_service: param("remoteServiceName").map(str::to_string),
        span_name: param("spanName").filter(|n| !n.eq_ignore_ascii_case("all")).map(str::to_string),
        annotations,
        min_duration: number("minDuration", param("minDuration"))?,
        max_duration: number("maxDuration", param("maxDuration"))?,
        end_ts: number("endTs", param("endTs"))?.unwrap_or(now_ms),
        lookback: number("lookback", param("lookback"))?.unwrap_or(DEFAULT_LOOKBACK_MS),
        limit: number("limit", param("limit"))?.map_or(DEFAULT_LIMIT, |l| (l as usize).clamp(1, MAX_LIMIT)),
    })
}
