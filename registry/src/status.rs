//! What each proxy runs: a status record per proxy, on its registration lease (it goes when the
//! proxy goes), rewritten when a policy it follows changes:
//!
//! ```text
//! <prefix>/v1/status/<service>/<instance>   {"service":..,"instance":..,"policies":{"web":{"revision":123}}}
//! ```
//!
//! A policy is named by the etcd revision of the live document the proxy parsed; `meshctl
//! status` maps revisions to versions ([`versions`](crate::versions)) and shows which proxies run
//! the live one. A proxy that could not use the live document (written by hand, say) reports the
//! revision it kept and the one it rejected.

use std::collections::BTreeMap;

use etcd_client::{Client, GetOptions};
use serde::{Deserialize, Serialize};

use crate::layout::Layout;
use crate::name::{InstanceId, ServiceName};

/// Most policies one status record lists (the rest are counted in `more`).
pub const MAX_REPORTED: usize = 256;

/// The policy of one destination service as a proxy runs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// The etcd revision of the document in force.
    pub revision: i64,
    /// The revision of a live document it could not use (it kept `revision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<i64>,
}

/// One proxy's status record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStatus {
    /// The proxy's service.
    pub service: String,
    /// Its instance.
    pub instance: String,
    /// Destination service to the policy it runs.
    pub policies: BTreeMap<String, Running>,
    /// Policies beyond [`MAX_REPORTED`], not listed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Layout {
    /// Every proxy's status record: `<prefix>/v1/status/`.
    pub fn statuses(&self) -> String {
        format!("{}status/", self.root())
    }

    /// One proxy's status record.
    pub fn status(&self, service: &ServiceName, instance: &InstanceId) -> String {
        format!("{}{service}/{instance}", self.statuses())
    }
}

/// Every status record (records that do not parse are skipped).
pub async fn list(client: &mut Client, layout: &Layout) -> Result<Vec<ProxyStatus>, etcd_client::Error> {
    let resp = client.get(layout.statuses(), Some(GetOptions::new().with_prefix())).await?;
    Ok(resp.kvs().iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect())
}
