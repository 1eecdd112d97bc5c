//! The gateway routes' rate limits (`per_client` and `per_route` in the document's `limits`):
//! token buckets in this gateway, one per route and one per client address and route. A request
//! must find a token in each bucket that applies before it takes one from each; a refusal says
//! when a token will be there.
//!
//! Bounded: at most [`MAX_CLIENTS`] client buckets per route. When a new client finds them all
//! taken, the buckets idle long enough to have refilled are dropped (nothing is lost: a new one
//! starts as full); if none is, the new client shares one overflow bucket with every client not
//! yet seen. The buckets belong to the document in force: a reload starts them afresh.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_registry::gateway::{Limits, Rate};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::inbound::ratelimit::Bucket;
use crate::telemetry::labels::EdgeLimit;

/// Client buckets per route at most.
pub(crate) const MAX_CLIENTS: usize = 16_384;

/// The buckets of every route with a rate limit.
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    routes: Mutex<HashMap<Arc<str>, RouteBuckets>>,
}

#[derive(Debug, Default)]
struct RouteBuckets {
    route: Option<Bucket>,
    clients: HashMap<IpAddr, Bucket>,
    /// The clients beyond [`MAX_CLIENTS`].
    overflow: Option<Bucket>,
}

/// A refusal: which limit, at what rate, and how long until a token is there.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) limit: EdgeLimit,
    /// `for client <address>`, `for the route`.
    pub(crate) per: String,
    pub(crate) rate: Rate,
    pub(crate) wait: Duration,
}

impl Limiter {
    /// Admits a request on `route` (with its `limits`) from `client`, or says which bucket was empty.
    pub(crate) fn admit(&self, route: &Arc<str>, limits: &Limits, client: Option<IpAddr>) -> Result<(), Refused> {
        let per_client = limits.per_client.zip(client);
        if per_client.is_none() && limits.per_route.is_none() {
            return Ok(());
        }
        let now = Instant::now();
        let mut routes = self.routes.lock();
        let RouteBuckets { route: all, clients, overflow } = routes.entry(route.clone()).or_default();
        let mut client_bucket =
            per_client.map(|(rate, ip)| (rate, ip, client_bucket(clients, overflow, ip, rate, now)));
        if let Some((rate, ip, bucket)) = &mut client_bucket {
            let wait = bucket.refill(now, f64::from(rate.per_second), size(rate));
            if !wait.is_zero() {
                return Err(Refused {
                    limit: EdgeLimit::PerClient,
                    per: format!("for client {ip}"),
                    rate: *rate,
                    wait,
                });
            }
        }
        let mut route_bucket =
            limits.per_route.map(|rate| (rate, all.get_or_insert_with(|| Bucket::full(size(&rate), now))));
        if let Some((rate, bucket)) = &mut route_bucket {
            let wait = bucket.refill(now, f64::from(rate.per_second), size(rate));
            if !wait.is_zero() {
                return Err(Refused { limit: EdgeLimit::PerRoute, per: "for the route".into(), rate: *rate, wait });
            }
        }
        if let Some((_, _, bucket)) = client_bucket {
            bucket.take();
        }
        if let Some((_, bucket)) = route_bucket {
            bucket.take();
        }
        Ok(())
    }
}

fn size(rate: &Rate) -> f64 {
    f64::from(rate.burst())
}

/// The client's bucket, made (full) on its first request.
fn client_bucket<'a>(
    clients: &'a mut HashMap<IpAddr, Bucket>,
    overflow: &'a mut Option<Bucket>,
    ip: IpAddr,
    rate: Rate,
    now: Instant,
) -> &'a mut Bucket {
    let full = Bucket::full(size(&rate), now);
    if clients.len() >= MAX_CLIENTS && !clients.contains_key(&ip) {
        // Idle long enough to have refilled: a new bucket would be the same.
        let refill = Duration::from_secs_f64(size(&rate) / f64::from(rate.per_second));
        clients.retain(|_, bucket| now.saturating_duration_since(bucket.last_used()) < refill);
        if clients.len() >= MAX_CLIENTS {
            return overflow.get_or_insert(full);
        }
    }
    clients.entry(ip).or_insert(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, last]))
    }

    #[tokio::test(start_paused = true)]
    async fn each_client_has_its_own_bucket_and_the_route_one_for_all() {
        let limiter = Limiter::default();
        let route: Arc<str> = "echo".into();
        let limits = Limits {
            per_client: Some(Rate { per_second: 10, burst: Some(3) }),
            per_route: Some(Rate { per_second: 100, burst: Some(5) }),
            ..Limits::default()
        };
        let admitted = |client| (0..10).filter(|_| limiter.admit(&route, &limits, client).is_ok()).count();
        assert_eq!(admitted(ip(1)), 3, "client 1's burst");
        assert_eq!(admitted(ip(2)), 2, "client 2's burst is cut by the route's (5 in all)");
        let refused = limiter.admit(&route, &limits, ip(3)).unwrap_err();
        assert_eq!((refused.limit, refused.per.as_str()), (EdgeLimit::PerRoute, "for the route"));
        assert_eq!(refused.wait, Duration::from_millis(10), "a token every 10 ms at 100/s");
        // 50 ms later the route has its burst back; client 1 half a token.
        tokio::time::advance(Duration::from_millis(50)).await;
        let refused = limiter.admit(&route, &limits, ip(1)).unwrap_err();
        assert_eq!((refused.limit, refused.per.as_str()), (EdgeLimit::PerClient, "for client 127.0.0.1"));
        assert_eq!(refused.wait, Duration::from_millis(50));
        assert_eq!(admitted(ip(3)), 3, "another client is unaffected");
        assert_eq!(admitted(ip(2)), 1, "client 2's refused request took none of its tokens");
        assert!(limiter.admit(&"other".into(), &limits, ip(1)).is_ok(), "another route has its own buckets");
    }

    #[tokio::test(start_paused = true)]
    async fn client_buckets_are_bounded_and_idle_ones_go_first() {
        let limiter = Limiter::default();
        let route: Arc<str> = "r".into();
        let limits = Limits { per_client: Some(Rate { per_second: 1, burst: Some(1) }), ..Limits::default() };
        for i in 0..MAX_CLIENTS {
            let v6 = IpAddr::from((u128::try_from(i).unwrap_or_default() + 1).to_be_bytes());
            assert!(limiter.admit(&route, &limits, Some(v6)).is_ok());
        }
        // Beyond the cap, every new client shares one bucket.
        assert!(limiter.admit(&route, &limits, ip(1)).is_ok());
        assert!(limiter.admit(&route, &limits, ip(2)).is_err(), "the overflow bucket is shared");
        assert_eq!(limiter.routes.lock()[&route].clients.len(), MAX_CLIENTS);
        // Once the others have refilled (1 s at 1/s), they make way.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limiter.admit(&route, &limits, ip(2)).is_ok());
        assert_eq!(limiter.routes.lock()[&route].clients.len(), 1);
    }
}
