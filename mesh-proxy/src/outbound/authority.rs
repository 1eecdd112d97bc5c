//! Which service a call is for, read from its `:authority` (or `Host`).
//!
//! Accepted forms: `orders`, `orders:<port>`, `orders.mesh`, `orders.mesh:<port>`. The port, if
//! any, is ignored: a service is reached on its instances' registered addresses.

use http::Request;
use mesh_registry::ServiceName;

/// The target service, or the raw authority that does not name one.
pub(crate) fn target<B>(req: &Request<B>) -> Result<ServiceName, String> {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or_default();
    parse(raw).ok_or_else(|| raw.to_string())
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
}
