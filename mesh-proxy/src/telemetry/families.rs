//! The proxy's metric families: declared here, held here, and touched only by the telemetry
//! module (through [`super::Telemetry`], its events and its recorder). Names follow the brief
//! (`mesh_` prefix, `_total`, `_seconds`); the README's metrics table is checked against what is
//! declared here.

use mesh_common::metrics::Declare;
use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

use super::labels::{Direction, Limit};

/// The request families' label keys.
const REQUEST_LABELS: [&str; 5] = ["direction", "src_service", "dst_service", "grpc_method", "grpc_status"];

/// Latency buckets, 0.5 ms to 30 s.
const LATENCY_BUCKETS: [f64; 15] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Every family the proxy's own code records into.
#[derive(Debug)]
pub(super) struct Families {
    pub(super) requests: IntCounterVec,
    pub(super) duration: HistogramVec,
    pub(super) request_bytes: IntCounterVec,
    pub(super) response_bytes: IntCounterVec,
    /// By [`Direction`].
    pub(super) open_streams: [IntGauge; 3],
    pub(super) proxy_errors: IntCounterVec,
    pub(super) retries: IntCounterVec,
    pub(super) retries_refused: IntCounterVec,
    pub(super) ejections: IntCounterVec,
    pub(super) shed: IntCounterVec,
    pub(super) hedges: IntCounterVec,
    pub(super) hedges_won: IntCounterVec,
    pub(super) ejection_returns: IntCounterVec,
    pub(super) balancer_picks: IntCounterVec,
    pub(super) endpoints: IntGaugeVec,
    pub(super) policy_revision: IntGaugeVec,
    pub(super) mirrored: IntCounterVec,
    pub(super) route_requests: IntCounterVec,
    pub(super) rate_limited: IntCounterVec,
    /// By [`Direction`].
    pub(super) open_connections: [IntGauge; 3],
    /// By [`Direction`].
    pub(super) connections: [IntCounter; 3],
    pub(super) connection_errors: IntCounterVec,
    /// By [`Limit`].
    pub(super) limit_hits: Vec<IntCounter>,
    pub(super) label_overflow: IntCounter,
    pub(super) tls_handshakes: IntCounterVec,
    pub(super) authz_decisions: IntCounterVec,
    pub(super) identity_expiry: IntGauge,
    pub(super) identity_renewals: IntCounterVec,
    pub(super) gateway_requests: IntCounterVec,
    pub(super) gateway_duration: HistogramVec,
    pub(super) gateway_reloads: IntCounterVec,
    pub(super) gateway_auth_refused: IntCounterVec,
    pub(super) gateway_limited: IntCounterVec,
    pub(super) gateway_cert_expiry: IntGaugeVec,
    pub(super) telemetry_exported: IntCounterVec,
    pub(super) telemetry_dropped: IntCounterVec,
    pub(super) spans_unsampled: IntCounter,
    pub(super) app_unreachable: IntCounter,
    pub(super) inbound_limit: IntGauge,
}

impl Families {
    pub(super) fn declare(d: &mut Declare) -> prometheus::Result<Self> {
        let by_direction = |v: &IntGaugeVec| per_direction(|dir| v.with_label_values(&[dir.as_str()]));
        let open_streams = d.gauge_vec("mesh_open_streams", "Requests in flight through the proxy.", &["direction"])?;
        let open_connections =
            d.gauge_vec("mesh_open_connections", "Open connections accepted by the proxy.", &["direction"])?;
        let connections =
            d.counter_vec("mesh_connections_total", "Connections accepted by the proxy.", &["direction"])?;
        let limit_hits =
            d.counter_vec("mesh_limit_hits_total", "Times a configured limit refused work.", &["limit"])?;
        Ok(Self {
            requests: d.counter_vec("mesh_requests_total", "Requests through the proxy, by outcome.", &REQUEST_LABELS)?,
            duration: d.histogram_vec(
                "mesh_request_duration_seconds",
                "Request latency through the proxy, to the end of the response.",
                &REQUEST_LABELS,
                LATENCY_BUCKETS.to_vec(),
            )?,
            request_bytes: d.counter_vec(
                "mesh_request_bytes_total",
                "Request body bytes through the proxy.",
                &["direction", "src_service", "dst_service"],
            )?,
            response_bytes: d.counter_vec(
                "mesh_response_bytes_total",
                "Response body bytes through the proxy.",
                &["direction", "src_service", "dst_service"],
            )?,
            open_streams: by_direction(&open_streams),
            proxy_errors: d.counter_vec(
                "mesh_proxy_errors_total",
                "Requests the proxy answered itself, by stable reason.",
                &["direction", "reason"],
            )?,
            retries: d.counter_vec(
                "mesh_retries_total",
                "Attempts sent again, by destination service and reason (not_processed, status, per_try_timeout, connection_failed).",
                &["dst_service", "reason"],
            )?,
            retries_refused: d.counter_vec(
                "mesh_retries_refused_total",
                "Retries a call qualified for but did not get, by destination service and reason (budget, deadline, attempts, body_too_large, pushback).",
                &["dst_service", "reason"],
            )?,
            shed: d.counter_vec(
                "mesh_circuit_breaker_shed_total",
                "Calls failed at once because the destination's circuit breaker was full (calls in flight and waiting), by destination service.",
                &["dst_service"],
            )?,
            hedges: d.counter_vec(
                "mesh_hedges_total",
                "Second attempts sent because a hedged call's first was late, by destination service (charged to the retry budget).",
                &["dst_service"],
            )?,
            hedges_won: d.counter_vec(
                "mesh_hedges_won_total",
                "Hedges that answered first (the late attempt was cancelled), by destination service.",
                &["dst_service"],
            )?,
            ejections: d.counter_vec(
                "mesh_outlier_ejections_total",
                "Endpoints taken out of the balancer after 5 failures in a row, a failed probe, or a success rate far below their peers', by destination service.",
                &["dst_service"],
            )?,
            ejection_returns: d.counter_vec(
                "mesh_outlier_returns_total",
                "Ejected endpoints whose probe call succeeded, back to full load, by destination service.",
                &["dst_service"],
            )?,
            balancer_picks: d.counter_vec(
                "mesh_balancer_picks_total",
                "Endpoints chosen by the balancer, by destination service and endpoint instance id (series go with the endpoint).",
                &["dst_service", "endpoint"],
            )?,
            endpoints: d.gauge_vec("mesh_endpoints", "Endpoints known per destination service.", &["dst_service"])?,
            rate_limited: d.counter_vec(
                "mesh_rate_limited_total",
                "Inbound calls refused by a rate limit of the local service's policy, by limit name.",
                &["limit"],
            )?,
            route_requests: d.counter_vec(
                "mesh_route_requests_total",
                "Outbound calls that took a route of their service's policy, by destination service, route, subset drawn (all: every instance) and gRPC status.",
                &["dst_service", "route", "subset", "grpc_status"],
            )?,
            mirrored: d.counter_vec(
                "mesh_mirrored_total",
                "Mirrored copies of calls, by shadow service and outcome (answered, failed, skipped); the caller never sees them.",
                &["dst_service", "outcome"],
            )?,
            policy_revision: d.gauge_vec(
                "mesh_policy_revision",
                "The etcd revision of the service policy in force, by destination service and state (in_force; rejected: the live one, when it could not be used).",
                &["dst_service", "state"],
            )?,
            open_connections: by_direction(&open_connections),
            // Exported at 0 from the start, so dashboards and alerts see them before the first
            // connection.
            connections: per_direction(|dir| connections.with_label_values(&[dir.as_str()])),
            connection_errors: d.counter_vec(
                "mesh_connection_errors_total",
                "Accepted connections that ended in an error, by class (protocol, timeout, io, handshake).",
                &["direction", "reason"],
            )?,
            limit_hits: Limit::ALL.iter().map(|l| limit_hits.with_label_values(&[l.as_str()])).collect(),
            label_overflow: d.counter(
                "mesh_metric_label_overflow_total",
                "Requests whose gRPC method was recorded as `other` because the method label limit was reached.",
            )?,
            tls_handshakes: d.counter_vec(
                "mesh_tls_handshakes_total",
                "mTLS handshakes between proxies by outcome and reason (expired, not_yet_valid, unknown_ca, wrong_identity, no_client_certificate, not_tls, timeout ...).",
                &["direction", "outcome", "reason"],
            )?,
            authz_decisions: d.counter_vec(
                "mesh_authz_decisions_total",
                "Inbound authorization decisions by result (allow, deny).",
                &["result"],
            )?,
            identity_expiry: d.gauge(
                "mesh_identity_expiry_timestamp_seconds",
                "When this proxy's current certificate expires, Unix seconds (0: none).",
            )?,
            identity_renewals: d.counter_vec(
                "mesh_identity_renewals_total",
                "Certificate requests to the control plane by outcome.",
                &["outcome"],
            )?,
            gateway_requests: d.counter_vec(
                "mesh_gateway_requests_total",
                "Outside requests at the gateway, by route, the route's host pattern, protocol, HTTP code, gRPC status and outcome.",
                &["route", "host", "protocol", "code", "grpc_status", "outcome"],
            )?,
            gateway_duration: d.histogram_vec(
                "mesh_gateway_request_duration_seconds",
                "Outside requests' latency at the gateway, to the end of the response, by route, host pattern and protocol.",
                &["route", "host", "protocol"],
                LATENCY_BUCKETS.to_vec(),
            )?,
            gateway_reloads: d.counter_vec(
                "mesh_gateway_reloads_total",
                "Times the gateway read its changed document and certificates, by outcome (error: the previous ones stay).",
                &["outcome"],
            )?,
            gateway_auth_refused: d.counter_vec(
                "mesh_gateway_auth_refused_total",
                "Requests the gateway refused on an authenticated route, by why the token was refused.",
                &["reason"],
            )?,
            gateway_limited: d.counter_vec(
                "mesh_gateway_limited_total",
                "Requests a limit of their gateway route refused, by route and limit.",
                &["route", "limit"],
            )?,
            gateway_cert_expiry: d.gauge_vec(
                "mesh_gateway_certificate_expiry_timestamp_seconds",
                "When each certificate the gateway serves expires, Unix seconds, by its first DNS name.",
                &["name"],
            )?,
            telemetry_exported: d.counter_vec(
                "mesh_telemetry_exported_total",
                "Telemetry sent to the collector, by signal (spans; metrics counts data points).",
                &["signal"],
            )?,
            telemetry_dropped: d.counter_vec(
                "mesh_telemetry_dropped_total",
                "Telemetry dropped instead of slowing traffic, by signal and reason (queue_full, export_failed).",
                &["signal", "reason"],
            )?,
            spans_unsampled: d.counter(
                "mesh_spans_unsampled_total",
                "Finished spans not exported: not sampled, and neither failed nor slow.",
            )?,
            app_unreachable: d.counter(
                "mesh_app_unreachable_total",
                "Times the local app stopped answering probes and the instance was deregistered until it answered again.",
            )?,
            inbound_limit: d.gauge(
                "mesh_inbound_concurrency_limit",
                "Calls the local app may have in flight: the adaptive limit learnt from its latency (refusing only while the app queues), or the fixed one.",
            )?,
        })
    }
}

/// One value per direction, indexed by `Direction as usize`.
pub(super) fn per_direction<T>(f: impl Fn(Direction) -> T) -> [T; 3] {
    [f(Direction::Inbound), f(Direction::Outbound), f(Direction::Gateway)]
}
