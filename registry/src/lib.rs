//! The mesh's service registry, backed by etcd.
//!
//! Every mesh component that needs to know which service instances exist goes through this
//! crate: the proxy registers its instance and discovers peers, the control plane and `meshctl`
//! read the same records.
//!
//! # Data model
//! One JSON [`InstanceRecord`] per instance at
//! `<prefix>/v1/services/<service>/instances/<instance-id>` (see [`Layout`]), attached to the
//! instance's lease. The record disappears when the lease is revoked (clean shutdown) or expires
//! (the process died; default TTL 10 s).
//!
//! # Structure
//! - [`name`], [`layout`], [`record`]: validated names, the key layout, the record and its strict decoder.
//! - [`register`]: [`Registration`], a lease kept alive in the background that re-registers by itself.
//! - [`discover`]: [`View`], a live watch-driven view of one service or of every service;
//!   [`list`]: a one-shot consistent listing for tools.
//! - [`identity`]: SPIFFE service identities; [`tokens`]: join tokens that bind a service name,
//!   created by operators and verified by the certificate authority.
//! - [`authz`]: authorization policies and their evaluation; [`policy`]: service policy
//!   documents (timeouts, retries, the retry budget) callers' proxies follow, and [`routes`]: their
//!   subsets and routes (splits, header matches, sticky users, faults); [`versions`]: their
//!   numbered, bounded history; [`limits`]: rate limits the service's own proxies enforce; [`status`]: which version each proxy runs; [`watch_prefix`]: a live copy of
//!   any prefix's raw values (policies).
//! - [`gateway`]: the ingress gateway's routes and certificates.
//! - [`etcd`]: connection settings; [`metrics`]: counters for all of the above.
//!
//! # Feature flags
//! - `cli`: the clap flags (`--etcd-*`, `--lease-*`) every mesh binary shares.

pub mod authz;
#[cfg(feature = "cli")]
pub mod cli;
pub mod discover;
mod document;
pub mod etcd;
pub mod gateway;
pub mod identity;
pub mod layout;
pub mod limits;
pub mod list;
pub mod metrics;
pub mod name;
pub mod policy;
pub mod record;
pub mod register;
pub mod routes;
pub mod status;
pub mod tokens;
pub mod versions;
mod view;
pub mod watch_prefix;

pub use discover::{View, ViewConfig};
pub use etcd::EtcdConfig;
pub use layout::Layout;
pub use metrics::Metrics;
pub use name::{Address, InstanceId, ServiceName};
pub use record::InstanceRecord;
pub use register::{Registration, RegistrationConfig, RegistrationState};
pub use view::{Malformed, Snapshot};
