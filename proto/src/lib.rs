//! The mesh's protobuf contracts, compiled to tonic code.
//!
//! Every package is versioned (`mesh.<area>.v<N>`); fields are never renumbered, and removed
//! fields stay `reserved`. The `.proto` sources live next to this crate under `mesh/`.
//!
//! # Structure
//! - [`demo::v1`]: the demo application's `Frontend` and `Backend` services, and `Echo`, the test
//!   and benchmark service.
//! - [`identity::v1`]: the control plane's certificate authority API (`Certify`).

#![allow(unreachable_pub, missing_debug_implementations)]

/// The demo application's API.
pub mod demo {
    /// Version 1 of the demo API.
    pub mod v1 {
        tonic::include_proto!("mesh.demo.v1");
    }
}

/// The mesh's identity (certificate authority) API.
pub mod identity {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("mesh.identity.v1");
    }
}
