//! The etcd key layout. Everything the mesh stores lives under one prefix, versioned:
//!
//! ```text
//! <prefix>/v1/services/<service>/instances/<instance-id>  -> InstanceRecord (JSON), on the instance's lease
//! ```

use std::fmt;
use std::str::FromStr;

use crate::name::{InstanceId, ServiceName};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/mesh";

/// The layout version this build reads and writes.
const VERSION: &str = "v1";

/// Where the mesh's keys live in etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

/// A prefix that cannot hold the mesh's keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid etcd prefix {0:?}: it must start with '/', not end with '/', and hold no spaces")]
pub struct PrefixError(String);

impl FromStr for Layout {
    type Err = PrefixError;
    fn from_str(prefix: &str) -> Result<Self, PrefixError> {
        let ok = prefix.starts_with('/')
            && (prefix.len() == 1 || !prefix.ends_with('/'))
            && prefix.len() <= 256
            && !prefix.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            return Err(PrefixError(prefix.to_string()));
        }
        Ok(Self { prefix: prefix.trim_end_matches('/').to_string() })
    }
}

impl Default for Layout {
    fn default() -> Self {
        Self { prefix: DEFAULT_PREFIX.to_string() }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.prefix.is_empty() { "/" } else { &self.prefix })
    }
}

impl Layout {
    /// Everything this layout version owns: `<prefix>/v1/`.
    pub fn root(&self) -> String {
        format!("{}/{VERSION}/", self.prefix)
    }

    /// All instances of all services: `<prefix>/v1/services/`.
    pub fn services(&self) -> String {
        format!("{}/{VERSION}/services/", self.prefix)
    }

    /// All instances of one service.
    pub fn instances(&self, service: &ServiceName) -> String {
        format!("{}{service}/instances/", self.services())
    }

    /// One instance's record.
    pub fn instance(&self, service: &ServiceName, id: &InstanceId) -> String {
        format!("{}{id}", self.instances(service))
    }

    /// Join tokens: `<prefix>/v1/tokens/<id>`.
    pub fn tokens(&self) -> String {
        format!("{}/{VERSION}/tokens/", self.prefix)
    }

    /// Splits an instance key into its service and instance id, if it is one.
    pub fn parse_instance_key<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        let rest = key.strip_prefix(&self.services())?;
        let (service, rest) = rest.split_once('/')?;
        let id = rest.strip_prefix("instances/")?;
        (!id.is_empty() && !id.contains('/')).then_some((service, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_versioned_under_the_prefix() -> Result<(), Box<dyn std::error::Error>> {
        let layout: Layout = "/mesh".parse()?;
        let svc: ServiceName = "orders".parse()?;
        let id: InstanceId = "host-1".parse()?;
        let key = layout.instance(&svc, &id);
        assert_eq!(key, "/mesh/v1/services/orders/instances/host-1");
        assert_eq!(layout.parse_instance_key(&key), Some(("orders", "host-1")));
        assert_eq!(layout.parse_instance_key("/mesh/v1/services/orders/other/x"), None);
        assert_eq!("/".parse::<Layout>()?.services(), "/v1/services/");
        assert!("mesh".parse::<Layout>().is_err());
        assert!("/mesh/".parse::<Layout>().is_err());
        Ok(())
    }
}
