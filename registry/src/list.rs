//! One-shot reads of the registry, for tools that want a consistent listing rather than a live
//! view (`meshctl`, the control plane's checks).

use etcd_client::{Client, GetOptions};

use crate::layout::Layout;
use crate::name::ServiceName;
use crate::record::InstanceRecord;
use crate::view::Malformed;

/// Everything under the services prefix (or one service's part of it) at one revision.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Valid records with the id of the lease each is attached to (0: none).
    pub instances: Vec<(InstanceRecord, i64)>,
    /// Values that are not valid records, with the reason.
    pub malformed: Vec<Malformed>,
    /// The etcd revision of the listing.
    pub revision: i64,
}

/// Lists all instances, or those of `service`, in one consistent read.
pub async fn list(
    client: &mut Client,
    layout: &Layout,
    service: Option<&ServiceName>,
) -> Result<Listing, etcd_client::Error> {
    let prefix = service.map_or_else(|| layout.services(), |s| layout.instances(s));
    let resp = client.get(prefix, Some(GetOptions::new().with_prefix())).await?;
    let mut listing = Listing { revision: resp.header().map_or(0, |h| h.revision()), ..Listing::default() };
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        match InstanceRecord::decode(layout, &key, kv.value()) {
            Ok(record) => listing.instances.push((record, kv.lease())),
            Err(error) => listing.malformed.push(Malformed { key: key.into_owned(), error }),
        }
    }
    Ok(listing)
}
