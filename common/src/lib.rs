//! What every mesh binary shares, and nothing else: no etcd, no gRPC.
//!
//! - [`cli`]: the command-line conventions (a bad setting fails at start with one line naming it
//!   and exit code 64), logging (`MESH_LOG`, `MESH_LOG_FORMAT`), the runtime, listener binding, and
//!   the shutdown signal.
//! - [`backoff`]: exponential backoff with jitter, for every retry loop.
//! - [`deadline`]: the text form of gRPC's `grpc-timeout`, parsed and encoded once.
//! - [`http1`]: a small HTTP/1.1 server for admin and read APIs, bounded in connections and in the
//!   time a client may take to send its headers.
//! - [`metrics`]: one way to declare metric families, which also keeps the list of what was
//!   declared so a test can hold the documentation to it.

pub mod backoff;
pub mod cli;
pub mod deadline;
pub mod http1;
pub mod metrics;
