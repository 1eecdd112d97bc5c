//! Which service a call is for, read from its `:authority` (or `Host`).
//!
//! Accepted forms: `orders`, `orders:<port>`, `orders.mesh`, `orders.mesh:<port>`. The port, if
//! any, is ignored: a service is reached on its instances' registered addresses.

use std::time::Duration;

use http::Request;
use mesh_registry::ServiceName;

/// The target service, or the raw authority that does not name one.
pub(crate) fn target<B>(req: &Request<B>) -> Result<ServiceName, String> {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
        .unwrap_or_default();
    parse(&raw).ok_or(raw)
}

fn parse(raw: &str) -> Option<ServiceName> {
    let host = match raw.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        Some(_) => return None,
        None => raw,
    };
    let name = host.strip_suffix(".mesh").unwrap_or(host);
    name.parse().ok()
}

/// The caller's deadline from `grpc-timeout` (`<digits><unit>`, unit one of H M S m u n).
pub(crate) fn grpc_timeout<B>(req: &Request<B>) -> Option<Duration> {
    let value = req.headers().get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(authority: &str) -> Request<()> {
        Request::builder().uri(format!("http://{authority}/pkg.Svc/Method")).body(()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn accepted_authority_forms() {
        for ok in ["orders", "orders:80", "orders.mesh", "orders.mesh:4140"] {
            assert_eq!(target(&req(ok)).map(|s| s.to_string()), Ok("orders".to_string()), "{ok}");
        }
        for bad in ["Orders", "orders.svc.cluster.local", "127.0.0.1:80", "orders:x"] {
            assert!(target(&req(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn grpc_timeouts_parse() {
        let with = |v: &str| {
            Request::builder()
                .header("grpc-timeout", v)
                .body(())
                .map(|r| grpc_timeout(&r))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(with("100m"), Some(Duration::from_millis(100)));
        assert_eq!(with("2S"), Some(Duration::from_secs(2)));
        assert_eq!(with("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(with("5x"), None);
        assert_eq!(with("S"), None);
        assert_eq!(with("1234567890S"), None);
    }
}
