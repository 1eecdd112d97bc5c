//! Validated names: what a service, an instance and an address may look like.
//!
//! Everything read from flags or from etcd is parsed into these types once, at the edge, so the
//! rest of the mesh never handles an unchecked string.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A service name must be a DNS label.
    #[error("invalid service name {0:?}: use 1-63 lowercase letters, digits or '-', starting with a letter")]
    Service(String),
    /// An instance id is a short token.
    #[error("invalid instance id {0:?}: use 1-128 letters, digits, '.', '_' or '-'")]
    Instance(String),
    /// An address is `host:port`.
    #[error("invalid address {0:?}: {1}")]
    Address(String, &'static str),
}

/// A service's name, a DNS label such as `orders`: what callers put in `:authority`. Shared, not
/// copied: a clone (every call's telemetry, balancer and errors carry one) takes a reference.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(Arc<str>);

impl ServiceName {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `s` is a valid service name (checked without making one).
    pub fn is_valid(s: &str) -> bool {
        (1..=63).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && !s.ends_with('-')
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    }
}

impl TryFrom<String> for ServiceName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        if Self::is_valid(&s) { Ok(Self(Arc::from(s))) } else { Err(NameError::Service(s)) }
    }
}

impl FromStr for ServiceName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        if Self::is_valid(s) { Ok(Self(Arc::from(s))) } else { Err(NameError::Service(s.to_string())) }
    }
}

impl From<ServiceName> for String {
    fn from(v: ServiceName) -> String {
        v.0.to_string()
    }
}

/// An instance's id, unique within its service (default: host name and pid).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstanceId(String);

impl InstanceId {
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The default id of this process: `<host>-<pid>`, sanitised into the allowed alphabet.
    pub fn for_this_process(host: &str) -> Self {
        let host: String = host.chars().map(|c| if is_instance_char(c) { c } else { '-' }).take(100).collect();
        let host = if host.is_empty() { "host".to_string() } else { host };
        Self(format!("{host}-{}", std::process::id()))
    }
}

fn is_instance_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

impl TryFrom<String> for InstanceId {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        if (1..=128).contains(&s.len()) && s.chars().all(is_instance_char) {
            Ok(Self(s))
        } else {
            Err(NameError::Instance(s))
        }
    }
}

/// What peers dial to reach an instance: `ip:port`, `[ipv6]:port` or `dns-name:port`, port > 0.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Address {
    text: String,
    port: u16,
}

impl Address {
    /// The address as `host:port`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The port, never 0.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host part (an IP literal without brackets, or a DNS name).
    pub fn host(&self) -> &str {
        let host = &self.text[..self.text.len() - self.port.to_string().len() - 1];
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

impl TryFrom<String> for Address {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        let bad = |why| NameError::Address(s.clone(), why);
        if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
            if sa.port() == 0 {
                return Err(bad("port must be 1-65535"));
            }
            if sa.ip().is_unspecified() {
                return Err(bad("a wildcard address cannot be dialed"));
            }
            return Ok(Self { port: sa.port(), text: s });
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("expected host:port"))?;
        let port: u16 = port.parse().map_err(|_| bad("port must be 1-65535"))?;
        if port == 0 {
            return Err(bad("port must be 1-65535"));
        }
        let host_ok = (1..=253).contains(&host.len())
            && host
                .split('.')
                .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !host_ok {
            return Err(bad("host must be an IP address or a DNS name"));
        }
        Ok(Self { port, text: s })
    }
}

macro_rules! string_newtype_impls {
    ($($ty:ty => $field:tt),*) => {$(
        impl From<$ty> for String {
            fn from(v: $ty) -> String { v.$field }
        }
        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> { Self::try_from(s.to_string()) }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(&self.$field) }
        }
    )*};
}
string_newtype_impls!(InstanceId => 0, Address => text);

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_dns_labels() {
        for ok in ["orders", "a", "svc-2", "x23"] {
            assert!(ok.parse::<ServiceName>().is_ok(), "{ok}");
        }
        for bad in ["", "Orders", "2svc", "svc-", "a.b", "a_b", &"a".repeat(64)] {
            assert!(bad.parse::<ServiceName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_need_a_dialable_host_and_a_port() {
        for ok in ["127.0.0.1:4143", "[::1]:80", "backend-1:4143", "a.b.c:1"] {
            assert!(ok.parse::<Address>().is_ok(), "{ok}");
        }
        for bad in ["127.0.0.1:0", "0.0.0.0:4143", "host", "host:", "host:70000", ":80", "a..b:1", "h st:1"] {
            assert!(bad.parse::<Address>().is_err(), "{bad}");
        }
        let a: Address = "[::1]:8080".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((a.host(), a.port()), ("::1", 8080));
        let a: Address = "backend:4143".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((a.host(), a.port()), ("backend", 4143));
    }

    #[test]
    fn default_instance_id_is_sanitised() {
        let id = InstanceId::for_this_process("my host/1");
        assert!(id.as_str().starts_with("my-host-1-"));
        assert!(id.as_str().parse::<InstanceId>().is_ok());
    }
}
