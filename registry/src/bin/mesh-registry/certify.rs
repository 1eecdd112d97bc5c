//! The `mesh.identity.v1.Identity/Certify` API: a join token and a CSR in, a leaf certificate for
//! the token's service and the trust bundle out. Refusals are counted by reason.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use mesh_proto::identity::v1::identity_server::Identity;
use mesh_proto::identity::v1::{CertifyRequest, CertifyResponse};
use mesh_registry::Layout;
use tonic::{Request, Response, Status};

use crate::ca::Ca;

/// Largest CSR accepted, bytes.
const MAX_CSR_BYTES: usize = 8 * 1024;

pub(crate) struct Certify {
    /// The current CA; swapped when its files change.
    pub(crate) ca: Arc<RwLock<Arc<Ca>>>,
    pub(crate) etcd: etcd_client::Client,
    pub(crate) layout: Layout,
    /// Issued and refused counts, by reason (logged; exported once the control plane has metrics).
    pub(crate) outcomes: Mutex<BTreeMap<&'static str, u64>>,
}

impl Certify {
    fn count(&self, outcome: &'static str) {
        *self.outcomes.lock().entry(outcome).or_default() += 1;
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[tonic::async_trait]
impl Identity for Certify {
    async fn certify(&self, request: Request<CertifyRequest>) -> Result<Response<CertifyResponse>, Status> {
        let peer = request.remote_addr();
        let CertifyRequest { token, csr_der } = request.into_inner();
        if csr_der.len() > MAX_CSR_BYTES {
            self.count("csr_too_large");
            return Err(Status::invalid_argument(format!("certificate signing request over {MAX_CSR_BYTES} bytes")));
        }
        let service = match mesh_registry::tokens::verify(
            &mut self.etcd.clone(),
            &self.layout,
            &token,
            SystemTime::now(),
        )
        .await
        {
            Ok(service) => service,
            Err(error) => {
                self.count(error.reason());
                tracing::warn!(?peer, reason = error.reason(), %error, "refused a certificate request");
                return Err(match error {
                    mesh_registry::tokens::TokenError::Etcd(_) => Status::unavailable(format!("mesh: {error}")),
                    _ => Status::unauthenticated(format!("mesh: {error}")),
                });
            }
        };
        let ca = self.ca.read().clone();
        let leaf = ca.issue(&csr_der, &service).map_err(|error| {
            self.count("bad_csr");
            Status::invalid_argument(format!("mesh: {error}"))
        })?;
        self.count("issued");
        tracing::info!(?peer, identity = %leaf.identity, not_after = unix(leaf.not_after), "issued a certificate");
        Ok(Response::new(CertifyResponse {
            certificate_chain_pem: leaf.chain_pem,
            trust_bundle_pem: ca.bundle_pem().to_string(),
            identity: leaf.identity.uri(),
            not_before: unix(leaf.not_before),
            not_after: unix(leaf.not_after),
        }))
    }
}
