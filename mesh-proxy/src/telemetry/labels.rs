//! The closed vocabularies of the proxy's metric labels. Every label value the proxy records is
//! one of these enums (or a service name from the registry, or a capped gRPC method), so a label
//! set cannot grow with traffic and a typo cannot become a new series.

/// Declares a label enum and its `as_str`.
macro_rules! label {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $value:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub(crate) enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            #[allow(dead_code)] // Used by tests and to pre-create series.
            pub(crate) const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The label value.
            pub(crate) fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $value),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label! {
    /// Which listener a request came through.
    Direction {
        /// From a peer proxy to the local app.
        Inbound => "inbound",
        /// From the local app to another service.
        Outbound => "outbound",
        /// From outside the mesh, at the ingress gateway's edge listeners.
        Gateway => "gateway",
    }
}

label! {
    /// What an outside request at the gateway spoke (`mesh_gateway_requests_total{protocol}`).
    EdgeProtocol {
        /// gRPC (HTTP/2, `application/grpc`).
        Grpc => "grpc",
        /// gRPC-Web, binary or text (a browser's `fetch`).
        GrpcWeb => "grpc_web",
        /// Anything else: HTTP/1.1 or HTTP/2.
        Http => "http",
    }
}

label! {
    /// How an outside request ended (`mesh_gateway_requests_total{outcome}`), as HTTP classes
    /// them: gRPC's server-side statuses (UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE,
    /// DATA_LOSS, a reset stream) are server errors like a 5xx, its other failures (a refused
    /// token, a rate limit, no route, a caller that went away ...) client errors like a 4xx.
    EdgeOutcome {
        /// OK, or an HTTP status below 400.
        Success => "success",
        /// The caller's request or its going away.
        ClientError => "client_error",
        /// The gateway's or the mesh's failure: what an error-rate alert counts.
        ServerError => "server_error",
    }
}

impl EdgeOutcome {
    /// The outcome of a request answered with HTTP `code` and gRPC status label `grpc_status`.
    pub(crate) fn of(code: Option<http::StatusCode>, grpc_status: &str) -> Self {
        match grpc_status {
            "OK" => Self::Success,
            STATUS_NONE => match code {
                Some(code) if code.is_server_error() => Self::ServerError,
                Some(code) if code.as_u16() < 400 => Self::Success,
                _ => Self::ClientError,
            },
            "UNKNOWN" | "DEADLINE_EXCEEDED" | "INTERNAL" | "UNAVAILABLE" | "DATA_LOSS" | STATUS_RESET => {
                Self::ServerError
            }
            _ => Self::ClientError,
        }
    }
}

label! {
    /// Which limit of a gateway route refused a request (`mesh_gateway_limited_total{limit}`).
    EdgeLimit {
        /// The client address's token bucket was empty.
        PerClient => "per_client",
        /// The route's token bucket was empty.
        PerRoute => "per_route",
        /// The request body was over `max_request_bytes`.
        MaxRequestBytes => "max_request_bytes",
    }
}

label! {
    /// Why the gateway refused a caller's token (`mesh_gateway_auth_refused_total{reason}`).
    AuthFailure {
        /// No `Authorization: Bearer` token on an authenticated route.
        Missing => "missing",
        /// Not a JWT, or a subject that cannot be passed on.
        Malformed => "malformed",
        /// `alg: none`, an HMAC or other algorithm, or one that does not fit the key.
        Algorithm => "algorithm",
        /// Its `kid` names no key of the JWKS.
        UnknownKey => "unknown_key",
        /// The signature does not verify.
        BadSignature => "bad_signature",
        /// Past its `exp`.
        Expired => "expired",
        /// Before its `nbf`.
        NotYetValid => "not_yet_valid",
        /// Another `iss`.
        WrongIssuer => "wrong_issuer",
        /// None of the configured audiences.
        WrongAudience => "wrong_audience",
        /// No `exp`, `iss`, `aud` or `sub`.
        MissingClaim => "missing_claim",
    }
}

label! {
    /// A configured limit that refused work (`mesh_limit_hits_total{limit}`).
    Limit {
        /// A listener at its connection cap.
        MaxConnections => "max_connections",
        /// The proxy already tracks as many services as it may.
        MaxServices => "max_services",
        /// `accept` failed (out of descriptors and the like).
        AcceptError => "accept_error",
        /// An authorization policy in etcd could not be parsed (the previous one stays).
        InvalidPolicy => "invalid_policy",
        /// The admin server at its connection cap.
        AdminConnections => "admin_connections",
    }
}

label! {
    /// How an accepted connection ended in error (`mesh_connection_errors_total{reason}`).
    ConnectionError {
        /// HTTP/2 protocol violation or malformed framing.
        Protocol => "protocol",
        /// A keepalive or header timeout.
        Timeout => "timeout",
        /// The socket failed.
        Io => "io",
        /// The transport handshake (TLS, or the first bytes) failed.
        Handshake => "handshake",
        /// Anything else.
        Other => "other",
    }
}

label! {
    /// Why an mTLS handshake failed (`mesh_tls_handshakes_total{reason}`).
    TlsFailure {
        /// The peer's certificate has expired.
        Expired => "expired",
        /// The peer's certificate is not valid yet.
        NotYetValid => "not_yet_valid",
        /// Signed by no root this proxy trusts.
        UnknownCa => "unknown_ca",
        /// A valid certificate for another identity than required.
        WrongIdentity => "wrong_identity",
        /// A certificate that cannot be used.
        BadCertificate => "bad_certificate",
        /// The client sent no certificate.
        NoClientCertificate => "no_client_certificate",
        /// The peer refused our certificate.
        RejectedByPeer => "rejected_by_peer",
        /// The peer does not speak TLS (plaintext on the mTLS port).
        NotTls => "not_tls",
        /// No common application protocol (`h2`).
        NoAlpn => "no_alpn",
        /// No common protocol version or cipher suite (a TLS 1.1 client at the gateway).
        Incompatible => "incompatible",
        /// The gateway holds no certificate for the server name the client asked for (SNI).
        UnknownServerName => "unknown_server_name",
        /// The handshake did not finish in time.
        Timeout => "timeout",
        /// The socket failed.
        Io => "io",
        /// Anything else.
        Other => "other",
    }
}

label! {
    /// An outcome: a certificate request, an authorization decision.
    Outcome {
        /// It worked (or: allowed).
        Ok => "ok",
        /// It failed.
        Error => "error",
    }
}

label! {
    /// An inbound authorization decision (`mesh_authz_decisions_total{result}`).
    AuthzResult {
        /// A rule or the default allowed the call.
        Allow => "allow",
        /// Nothing allowed it.
        Deny => "deny",
    }
}

label! {
    /// What kind of telemetry (`mesh_telemetry_*_total{signal}`).
    Signal {
        /// Finished spans.
        Spans => "spans",
        /// Metric data points.
        Metrics => "metrics",
        /// The gateway's access log lines.
        AccessLog => "access_log",
    }
}

label! {
    /// Why telemetry was dropped instead of slowing traffic.
    DropReason {
        /// The span queue (or the access log's) was full.
        QueueFull => "queue_full",
        /// The collector did not take the export.
        ExportFailed => "export_failed",
    }
}

label! {
    /// Why the proxy answered a call itself: the stable reason in the `mesh-error` header and in
    /// `mesh_proxy_errors_total{reason}`.
    ErrorReason {
        /// `:authority` does not name a service.
        BadAuthority => "bad_authority",
        /// The service has no registered instance.
        NoEndpoints => "no_endpoints",
        /// Instances are registered but none could be reached.
        NoReadyEndpoint => "no_ready_endpoint",
        /// etcd has been unreachable since the service was first used.
        DiscoveryUnavailable => "discovery_unavailable",
        /// The caller's deadline ran out inside the proxy.
        DeadlineExceeded => "deadline_exceeded",
        /// The chosen instance failed after the call was sent.
        UpstreamFailed => "upstream_failed",
        /// The local app cannot be reached.
        AppUnavailable => "app_unavailable",
        /// The proxy already tracks as many services as it may.
        TooManyServices => "too_many_services",
        /// No authorization rule allows the call.
        NotAuthorized => "not_authorized",
        /// One attempt waited out the policy's per-try timeout and could not be retried.
        PerTryTimeout => "per_try_timeout",
        /// The destination's circuit breaker is full (calls in flight and waiting).
        Overloaded => "overloaded",
        /// The inbound concurrency limit refused the call: the local app is queueing.
        AppOverloaded => "app_overloaded",
        /// The route's fault injection failed the call on purpose.
        FaultInjected => "fault_injected",
        /// A rate limit of the service's policy, or of the gateway's route, refused the call.
        RateLimited => "rate_limited",
        /// The request's body is over its gateway route's `max_request_bytes`.
        RequestTooLarge => "request_too_large",
        /// No route of the gateway takes the request (host and path).
        NoRoute => "no_route",
        /// The gateway refused the caller's token on an authenticated route.
        Unauthenticated => "unauthenticated",
    }
}

label! {
    /// What became of a mirrored call (`mesh_mirrored_total{outcome}`).
    MirrorOutcome {
        /// The shadow answered OK.
        Answered => "answered",
        /// The shadow failed, answered an error, or took too long.
        Failed => "failed",
        /// Not sent: the body was over the replay buffer, too many mirrors were in flight, or
        /// the shadow had no ready instance.
        Skipped => "skipped",
    }
}

label! {
    /// Why a call was sent again (`mesh_retries_total{reason}`).
    RetryReason {
        /// It never reached an app (connect failure, closed connection, refused stream, or the
        /// endpoint's app unreachable): retried for any method, not charged to the budget.
        NotProcessed => "not_processed",
        /// An idempotent call answered with one of the policy's `retry_on` statuses.
        Status => "status",
        /// An idempotent call's attempt waited out the per-try timeout.
        PerTryTimeout => "per_try_timeout",
        /// An idempotent call's connection failed after it was sent.
        ConnectionFailed => "connection_failed",
    }
}

label! {
    /// Why a call that could have been retried was not (`mesh_retries_refused_total{reason}`).
    RetryRefused {
        /// The destination's retry budget was spent.
        Budget => "budget",
        /// The call's deadline could not cover another attempt.
        Deadline => "deadline",
        /// The policy's `max_attempts` were used.
        Attempts => "attempts",
        /// The request body outgrew the replay buffer.
        BodyTooLarge => "body_too_large",
        /// The endpoint asked not to be retried (`grpc-retry-pushback-ms` negative or malformed).
        Pushback => "pushback",
    }
}

impl RetryRefused {
    /// Why not, for a proxy-made error's message.
    pub(crate) fn description(self) -> &'static str {
        match self {
            Self::Budget => "the service's retry budget is spent",
            Self::Deadline => "the deadline leaves no time for another try",
            Self::Attempts => "no attempts left",
            Self::BodyTooLarge => "the request body is too large to send again",
            Self::Pushback => "the server asked not to be retried",
        }
    }
}

/// The gRPC status code names, by code.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The `grpc_status` label of a response that carried no `grpc-status` (not gRPC).
pub(crate) const STATUS_NONE: &str = "none";
/// The `grpc_status` label of a call whose caller went away before it ended.
pub(crate) const STATUS_CANCELLED: &str = "CANCELLED";
/// The `grpc_status` label of a call whose upstream stream was reset.
pub(crate) const STATUS_RESET: &str = "reset";

/// The `grpc_status` label for a `grpc-status` header value: the code's name (`OK`,
/// `UNAVAILABLE` ...), `UNKNOWN` for values outside the spec.
pub(crate) fn grpc_status(value: &[u8]) -> &'static str {
    std::str::from_utf8(value).ok().and_then(|s| s.trim().parse::<usize>().ok()).map_or("UNKNOWN", code_name)
}

/// The numeric gRPC code of a [`grpc_status`] label (2, UNKNOWN, for anything else).
pub(crate) fn grpc_code(label: &str) -> i64 {
    GRPC_CODES.iter().position(|n| *n == label).map_or(2, |i| i as i64)
}

/// The `grpc_status` label of a status the proxy makes itself.
pub(crate) fn code_label(code: tonic::Code) -> &'static str {
    code_name(code as usize)
}

fn code_name(code: usize) -> &'static str {
    GRPC_CODES.get(code).copied().unwrap_or("UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_are_code_names() {
        assert_eq!(grpc_status(b"0"), "OK");
        assert_eq!(grpc_status(b"14"), "UNAVAILABLE");
        assert_eq!(grpc_status(b"99"), "UNKNOWN");
        assert_eq!(grpc_status(b"x"), "UNKNOWN");
        assert_eq!(code_label(tonic::Code::PermissionDenied), "PERMISSION_DENIED");
        assert_eq!(grpc_code("UNAVAILABLE"), 14);
        assert_eq!(grpc_code("reset"), 2);
    }

    #[test]
    fn label_values_are_distinct_snake_case() {
        let values: Vec<&str> = Limit::ALL.iter().map(|l| l.as_str()).collect();
        assert_eq!(values, ["max_connections", "max_services", "accept_error", "invalid_policy", "admin_connections"]);
        for v in TlsFailure::ALL.iter().map(|r| r.as_str()).chain(ErrorReason::ALL.iter().map(|r| r.as_str())) {
            assert!(v.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{v}");
        }
    }
}
