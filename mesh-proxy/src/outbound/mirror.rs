//! Mirroring: a copy of a call goes to a shadow (a subset of the service, or another service)
//! beside the real one, in a task of its own. The caller never waits for it and never sees it:
//! the shadow's answer is read and dropped, its latency and failures stay here. The copy waits
//! until the call's attempts have read the whole request body, and is sent only if the body fit
//! the replay buffer (64 KiB), so it never reads the caller's body itself. Bounded: at most
//! [`MAX_IN_FLIGHT`] mirrored calls per destination at once (more are skipped) and
//! [`MAX_DURATION`] each. Counted in `mesh_mirrored_total{dst_service,outcome}`.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request};
use http_body_util::BodyExt;
use mesh_registry::routes::Selector;
use tokio::sync::Semaphore;

use super::{PeerBody, PeerClient};
use crate::balance::{Balancer, InFlight};
use crate::telemetry::Telemetry;
use crate::telemetry::labels::MirrorOutcome;

/// Mirrored calls in flight per destination at most.
pub(crate) const MAX_IN_FLIGHT: usize = 100;
/// The longest a mirrored call may take, body and answer included.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(10);
/// The header a mirrored call carries, so the shadow's app can tell.
const MIRRORED: &str = "mesh-mirrored";

/// Where one call's copy goes.
#[derive(Debug)]
pub(super) struct Mirror {
    /// The shadow's balancer (this service's, or another's).
    pub(super) balancer: Arc<Balancer<PeerClient>>,
    pub(super) subset: Option<Selector>,
    /// The shadow's service name (for the metric).
    pub(super) service: String,
    /// The destination's bound on mirrored calls in flight.
    pub(super) slots: Arc<Semaphore>,
    pub(super) telemetry: Arc<Telemetry>,
}

impl Mirror {
    /// Sends `req` (whose body replays the call's) to the shadow in the background.
    pub(super) fn spawn(self, mut req: Request<PeerBody>) {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.telemetry.mirrored(&self.service, MirrorOutcome::Skipped);
            return;
        };
        req.headers_mut().insert(MIRRORED, HeaderValue::from_static("true"));
        tokio::spawn(async move {
            let outcome = tokio::time::timeout(MAX_DURATION, self.send(req)).await.unwrap_or(MirrorOutcome::Failed);
            self.telemetry.mirrored(&self.service, outcome);
            drop(slot);
        });
    }

    async fn send(&self, req: Request<PeerBody>) -> MirrorOutcome {
        if !req.body().settled().await {
            // Too large to copy, or the caller's body failed: nothing safe to send.
            return MirrorOutcome::Skipped;
        }
        let Ok(picked) = self.balancer.try_pick_in(self.subset.as_ref()) else { return MirrorOutcome::Skipped };
        let picked: InFlight<PeerClient> = picked;
        match picked.endpoint().client().send(req).await {
            Ok(response) => {
                let trailers_only = response.headers().get("grpc-status").is_some_and(|s| s != "0");
                let ok = response.status().is_success() && !trailers_only;
                // Read to the end (trailers included) and dropped.
                match response.into_body().collect().await {
                    Ok(body) if ok && body.trailers().is_none_or(|t| t.get("grpc-status").is_none_or(|s| s == "0")) => {
                        MirrorOutcome::Answered
                    }
                    _ => MirrorOutcome::Failed,
                }
            }
            Err(_) => MirrorOutcome::Failed,
        }
    }
}
