//! The proxy's telemetry events (after vector's `internal_events`): each thing worth knowing is
//! one type, and its `emit` both logs it (at the level it deserves) and counts it (with label
//! values from [`super::labels`]). Code elsewhere says what happened; it never picks a metric, a
//! label string or a log level itself.

use std::fmt::Display;
use std::net::SocketAddr;

use prometheus::{IntCounter, IntGauge};

use super::Telemetry;
use super::labels::{
    AuthFailure, AuthzResult, ConnectionError, Direction, DropReason, EdgeLimit, Limit, Outcome, RetryReason,
    RetryRefused, Signal, TlsFailure,
};

/// A connection accepted by a listener: counted, and held open in the gauge until dropped.
#[derive(Debug)]
#[must_use = "the connection counts as open until this is dropped"]
pub(crate) struct OpenConnection(IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Telemetry {
    /// A listener accepted a connection.
    pub(crate) fn connection_opened(&self, direction: Direction) -> OpenConnection {
        self.families.connections[direction as usize].inc();
        let open = self.families.open_connections[direction as usize].clone();
        open.inc();
        OpenConnection(open)
    }

    fn limit_hit(&self, limit: Limit) {
        self.families.limit_hits[limit as usize].inc();
    }

    /// The counter of one limit, for code outside the proxy's request path that counts its own
    /// refusals (the admin server's connection cap).
    pub(crate) fn limit_counter(&self, limit: Limit) -> IntCounter {
        self.families.limit_hits[limit as usize].clone()
    }
}

/// A listener at its connection cap refused a connection.
#[derive(Debug)]
pub(crate) struct ConnectionRefused {
    pub(crate) direction: Direction,
    pub(crate) peer: SocketAddr,
    pub(crate) limit: usize,
}

impl ConnectionRefused {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.limit_hit(Limit::MaxConnections);
        tracing::warn!(direction = %self.direction, peer = %self.peer, limit = self.limit, "connection refused: at the connection limit");
    }
}

/// `accept` itself failed (out of file descriptors and the like).
#[derive(Debug)]
pub(crate) struct AcceptFailed<'a> {
    pub(crate) direction: Direction,
    pub(crate) error: &'a std::io::Error,
}

impl AcceptFailed<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.limit_hit(Limit::AcceptError);
        tracing::warn!(direction = %self.direction, error = %self.error, "accept failed");
    }
}

/// An accepted connection ended in an error (or never finished its handshake).
pub(crate) struct ConnectionFailed<'a> {
    pub(crate) direction: Direction,
    pub(crate) peer: SocketAddr,
    pub(crate) reason: ConnectionError,
    pub(crate) error: &'a dyn Display,
}

impl ConnectionFailed<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.families.connection_errors.with_label_values(&[self.direction.as_str(), self.reason.as_str()]).inc();
        tracing::debug!(direction = %self.direction, peer = %self.peer, reason = %self.reason, error = %self.error, "connection ended with an error");
    }
}

/// An mTLS handshake with a peer proxy completed.
#[derive(Debug)]
pub(crate) struct TlsHandshakeOk {
    pub(crate) direction: Direction,
}

impl TlsHandshakeOk {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.families.tls_handshakes.with_label_values(&[self.direction.as_str(), "ok", "ok"]).inc();
    }
}

/// An mTLS handshake with a peer proxy failed.
pub(crate) struct TlsHandshakeFailed<'a> {
    pub(crate) direction: Direction,
    /// Who was on the other side (an address, or an address and the service called).
    pub(crate) peer: &'a dyn Display,
    pub(crate) reason: TlsFailure,
    pub(crate) error: &'a std::io::Error,
}

impl TlsHandshakeFailed<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        let direction = self.direction.as_str();
        t.families.tls_handshakes.with_label_values(&[direction, "failure", self.reason.as_str()]).inc();
        match self.direction {
            // A peer we called failed to prove who it is: worth a warning.
            Direction::Outbound => {
                tracing::warn!(peer = %self.peer, reason = %self.reason, error = %self.error, "TLS handshake with a peer failed");
            }
            // Anyone can knock on the inbound port, or the gateway's.
            Direction::Inbound | Direction::Gateway => {
                tracing::info!(peer = %self.peer, reason = %self.reason, error = %self.error, "refused a connection: TLS handshake failed");
            }
        }
    }
}

/// An inbound call was allowed or denied.
#[derive(Debug)]
pub(crate) struct AuthzDecided {
    pub(crate) result: AuthzResult,
}

impl AuthzDecided {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.families.authz_decisions.with_label_values(&[self.result.as_str()]).inc();
    }
}

/// A value in etcd (an authorization policy) could not be applied; the previous one stays.
pub(crate) struct PolicyRejected<'a> {
    pub(crate) key: &'a str,
    pub(crate) error: &'a dyn Display,
}

impl PolicyRejected<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.limit_hit(Limit::InvalidPolicy);
        tracing::warn!(key = %self.key, error = %self.error, "ignoring an invalid policy; the previous one stays in force");
    }
}

/// A call named a new service while the proxy already tracks as many as it may.
#[derive(Debug)]
pub(crate) struct ServiceLimitReached<'a> {
    pub(crate) service: &'a str,
    pub(crate) limit: usize,
}

impl ServiceLimitReached<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.limit_hit(Limit::MaxServices);
        tracing::warn!(service = %self.service, limit = self.limit, "not tracking another service: at the service limit");
    }
}

/// Discovery changed how many endpoints a destination service has.
#[derive(Debug)]
pub(crate) struct EndpointsKnown<'a> {
    pub(crate) service: &'a str,
    pub(crate) count: usize,
}

impl EndpointsKnown<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        let count = i64::try_from(self.count).unwrap_or(i64::MAX);
        t.families.endpoints.with_label_values(&[self.service]).set(count);
    }
}

/// A destination service went unused for the idle timeout: its watch and series are dropped.
#[derive(Debug)]
pub(crate) struct ServiceIdle<'a> {
    pub(crate) service: &'a str,
}

impl ServiceIdle<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        let f = &t.families;
        let _ = f.endpoints.remove_label_values(&[self.service]);
        for reason in RetryReason::ALL {
            let _ = f.retries.remove_label_values(&[self.service, reason.as_str()]);
        }
        for reason in RetryRefused::ALL {
            let _ = f.retries_refused.remove_label_values(&[self.service, reason.as_str()]);
        }
        let _ = f.ejections.remove_label_values(&[self.service]);
        let _ = f.ejection_returns.remove_label_values(&[self.service]);
        let _ = f.shed.remove_label_values(&[self.service]);
        let _ = f.hedges.remove_label_values(&[self.service]);
        let _ = f.hedges_won.remove_label_values(&[self.service]);
        tracing::debug!(service = %self.service, "dropping the watch of an idle service");
    }
}

/// The proxy started tracking a destination service: its resilience series start at 0, so
/// dashboards and alerts see them before the first retry or ejection.
#[derive(Debug)]
pub(crate) struct ServiceTracked<'a> {
    pub(crate) service: &'a str,
}

impl ServiceTracked<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        let f = &t.families;
        for reason in RetryReason::ALL {
            f.retries.with_label_values(&[self.service, reason.as_str()]);
        }
        for reason in RetryRefused::ALL {
            f.retries_refused.with_label_values(&[self.service, reason.as_str()]);
        }
        f.ejections.with_label_values(&[self.service]);
        f.ejection_returns.with_label_values(&[self.service]);
        f.shed.with_label_values(&[self.service]);
        f.hedges.with_label_values(&[self.service]);
        f.hedges_won.with_label_values(&[self.service]);
        tracing::debug!(service = %self.service, "watching a new service");
    }
}

/// A call was sent again.
#[derive(Debug)]
pub(crate) struct Retried<'a> {
    pub(crate) service: &'a str,
    /// The endpoint the previous attempt went to.
    pub(crate) instance: &'a str,
    pub(crate) reason: RetryReason,
    /// What happened, for the log.
    pub(crate) cause: &'a str,
    /// The attempt that failed (1 for the first).
    pub(crate) attempt: u32,
}

impl Retried<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.families.retries.with_label_values(&[self.service, self.reason.as_str()]).inc();
        tracing::debug!(service = %self.service, instance = %self.instance, reason = %self.reason, cause = %self.cause, attempt = self.attempt, "retrying");
    }
}

/// A hedged call's first attempt was late: a second one went to another endpoint.
#[derive(Debug)]
pub(crate) struct Hedged<'a> {
    pub(crate) service: &'a str,
    /// The late endpoint.
    pub(crate) instance: &'a str,
    pub(crate) after: std::time::Duration,
}

impl Hedged<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.families.hedges.with_label_values(&[self.service]).inc();
        tracing::debug!(service = %self.service, instance = %self.instance, after = ?self.after, "hedging a late call");
    }
}

/// A hedge answered before the attempt it raced (which is cancelled).
#[derive(Debug)]
pub(crate) struct HedgeWon<'a> {
    pub(crate) service: &'a str,
}

impl HedgeWon<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.families.hedges_won.with_label_values(&[self.service]).inc();
    }
}

/// An endpoint failed too often in a row and was taken out of its service's balancer.
#[derive(Debug)]
pub(crate) struct EndpointEjected<'a> {
    pub(crate) service: &'a str,
    pub(crate) instance: &'a str,
    pub(crate) length: std::time::Duration,
    /// What gave it away.
    pub(crate) why: &'static str,
}

impl EndpointEjected<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.families.ejections.with_label_values(&[self.service]).inc();
        tracing::warn!(service = %self.service, instance = %self.instance, seconds = self.length.as_secs(), why = self.why, "endpoint ejected");
    }
}

/// An ejected endpoint's probe call succeeded: it takes full load again.
#[derive(Debug)]
pub(crate) struct EndpointReturned<'a> {
    pub(crate) service: &'a str,
    pub(crate) instance: &'a str,
}

impl EndpointReturned<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.families.ejection_returns.with_label_values(&[self.service]).inc();
        tracing::info!(service = %self.service, instance = %self.instance, "ejected endpoint is back");
    }
}

/// A call found the destination's circuit breaker full.
#[derive(Debug)]
pub(crate) struct Overloaded<'a> {
    pub(crate) service: &'a str,
}

impl Overloaded<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.families.shed.with_label_values(&[self.service]).inc();
        tracing::debug!(service = %self.service, "circuit breaker full; call shed");
    }
}

/// A call qualified for a retry and did not get it.
#[derive(Debug)]
pub(crate) struct RetryWithheld<'a> {
    pub(crate) service: &'a str,
    pub(crate) reason: RetryRefused,
}

impl RetryWithheld<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.families.retries_refused.with_label_values(&[self.service, self.reason.as_str()]).inc();
        tracing::debug!(service = %self.service, reason = %self.reason, "not retrying");
    }
}

/// The control plane issued this proxy a certificate.
pub(crate) struct CertificateIssued<'a> {
    pub(crate) identity: &'a dyn Display,
    /// Expiry, Unix seconds.
    pub(crate) not_after: i64,
    /// A renewal (not the first certificate).
    pub(crate) renewal: bool,
}

impl CertificateIssued<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.families.identity_renewals.with_label_values(&[Outcome::Ok.as_str()]).inc();
        t.families.identity_expiry.set(self.not_after);
        let what = if self.renewal { "renewed the identity" } else { "obtained an identity" };
        tracing::info!(identity = %self.identity, not_after = self.not_after, "{what}");
    }
}

/// The gateway put a document and its certificates in force (at startup, or on a change).
pub(crate) struct GatewayLoaded<'a> {
    pub(crate) routes: usize,
    /// Each certificate's first DNS name and expiry (Unix seconds).
    pub(crate) certificates: &'a [(&'a str, i64)],
    /// A change (not the first load).
    pub(crate) reload: bool,
}

impl GatewayLoaded<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        let expiry = &t.families.gateway_cert_expiry;
        // Certificates no longer served go with their series.
        expiry.reset();
        for (name, not_after) in self.certificates {
            expiry.with_label_values(&[name]).set(*not_after);
        }
        if self.reload {
            t.families.gateway_reloads.with_label_values(&[Outcome::Ok.as_str()]).inc();
        }
        let names: Vec<&str> = self.certificates.iter().map(|(name, _)| *name).collect();
        tracing::info!(routes = self.routes, certificates = ?names, reload = self.reload, "gateway document in force");
    }
}

/// The gateway refused a caller's token.
pub(crate) struct AuthRefused<'a> {
    pub(crate) reason: AuthFailure,
    pub(crate) detail: &'a str,
    pub(crate) route: &'a str,
}

impl AuthRefused<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.families.gateway_auth_refused.with_label_values(&[self.reason.as_str()]).inc();
        tracing::debug!(reason = %self.reason, detail = self.detail, route = self.route, "gateway: token refused");
    }
}

/// A limit of a gateway route refused a request.
pub(crate) struct EdgeLimited<'a> {
    pub(crate) route: &'a str,
    pub(crate) limit: EdgeLimit,
    pub(crate) error: &'a dyn Display,
}

impl EdgeLimited<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.families.gateway_limited.with_label_values(&[self.route, self.limit.as_str()]).inc();
        tracing::debug!(route = self.route, limit = %self.limit, error = %self.error, "gateway: limited");
    }
}

/// A changed gateway document or certificate could not be used; the previous ones stay.
pub(crate) struct GatewayReloadFailed<'a> {
    pub(crate) error: &'a dyn Display,
}

impl GatewayReloadFailed<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.families.gateway_reloads.with_label_values(&[Outcome::Error.as_str()]).inc();
        tracing::warn!(error = %self.error, "gateway: the changed document or certificates cannot be used; keeping the previous ones");
    }
}

/// A certificate request to the control plane failed.
pub(crate) struct CertificateRequestFailed<'a> {
    pub(crate) error: &'a dyn Display,
    /// Failures in a row.
    pub(crate) failures: u32,
    /// When the next request goes out.
    pub(crate) retry_in: std::time::Duration,
    /// Whether a certificate is still in hand to serve on.
    pub(crate) serving: bool,
}

impl CertificateRequestFailed<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.families.identity_renewals.with_label_values(&[Outcome::Error.as_str()]).inc();
        if self.serving {
            tracing::warn!(error = %self.error, failures = self.failures, retry_in = ?self.retry_in, "identity renewal failed; serving on the current certificate");
        } else {
            tracing::warn!(error = %self.error, failures = self.failures, retry_in = ?self.retry_in, "cannot obtain an identity yet");
        }
    }
}

/// Telemetry reached the collector.
#[derive(Debug)]
pub(crate) struct TelemetryExported {
    pub(crate) signal: Signal,
    /// Spans, or metric data points.
    pub(crate) items: u64,
}

impl TelemetryExported {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.families.telemetry_exported.with_label_values(&[self.signal.as_str()]).inc_by(self.items);
    }
}

/// Telemetry was dropped instead of slowing traffic.
pub(crate) struct TelemetryDropped<'a> {
    pub(crate) signal: Signal,
    pub(crate) reason: DropReason,
    pub(crate) items: u64,
    pub(crate) error: Option<&'a dyn Display>,
}

impl TelemetryDropped<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.families
            .telemetry_dropped
            .with_label_values(&[self.signal.as_str(), self.reason.as_str()])
            .inc_by(self.items);
        if let Some(error) = self.error {
            tracing::debug!(signal = %self.signal, items = self.items, %error, "telemetry export failed; dropped (metrics: the next export carries the counts)");
        }
    }
}

impl Telemetry {
    /// The counter the tracer bumps for each span its full queue could not take (it must not
    /// wait, log or allocate on the request path).
    pub(crate) fn span_queue_full(&self) -> IntCounter {
        self.families.telemetry_dropped.with_label_values(&[Signal::Spans.as_str(), DropReason::QueueFull.as_str()])
    }

    /// The counter of finished spans not exported (not sampled, neither failed nor slow).
    pub(crate) fn spans_unsampled(&self) -> IntCounter {
        self.families.spans_unsampled.clone()
    }
}

/// The local app stopped answering: the instance is deregistered until it answers again.
pub(crate) struct AppUnreachable<'a> {
    pub(crate) app: SocketAddr,
    pub(crate) why: &'a str,
}

impl AppUnreachable<'_> {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.families.app_unreachable.inc();
        tracing::warn!(app = %self.app, why = %self.why, "the local app stopped answering: deregistering until it is back");
    }
}

/// The inbound concurrency limit was set or learnt anew.
pub(crate) struct InboundLimitChanged {
    pub(crate) limit: u32,
    /// When it starts or stops binding: whether it binds now, and the app's latency in the
    /// window and unloaded.
    pub(crate) binding: Option<(bool, std::time::Duration, std::time::Duration)>,
}

impl InboundLimitChanged {
    pub(crate) fn emit(self, t: &Telemetry) {
        t.families.inbound_limit.set(i64::from(self.limit));
        match self.binding {
            Some((true, rtt, unloaded)) => {
                tracing::warn!(
                    limit = self.limit,
                    ?rtt,
                    ?unloaded,
                    "the local app is queueing: calls over the inbound concurrency limit are refused"
                );
            }
            Some((false, rtt, unloaded)) => {
                tracing::info!(
                    limit = self.limit,
                    ?rtt,
                    ?unloaded,
                    "the local app copes again: the inbound concurrency limit no longer refuses calls"
                );
            }
            None => {}
        }
    }
}
