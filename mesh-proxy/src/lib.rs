//! `mesh-proxy`, the mesh's sidecar: it sits beside one instance of a service and carries all of
//! its HTTP/2 and gRPC traffic.
//!
//! ```text
//!            outbound (127.0.0.1:4140, h2c)                       inbound (0.0.0.0:4143)
//!  app ─────▶ route by :authority ─▶ balance per request ─────▶ peer proxy ─▶ peer app
//!  app ◀───── (responses, trailers and resets streamed back) ◀──
//! ```
//!
//! Streams are forwarded frame by frame with hyper: headers, data and trailers pass through,
//! bodies are never decoded or buffered whole, flow control and cancellation (RST_STREAM) carry
//! across both hops.
//!
//! # Layers
//! Each folder is a layer and uses only the layers below it (a test, `tests/layers.rs`, fails on
//! an import that points up or closes a cycle):
//!
//! | layer | folder | what it holds |
//! | --- | --- | --- |
//! | top | [`config`], `proxy.rs` | typed settings; [`build`] then [`Proxy::serve`] |
//! | request paths | `outbound/`, `inbound/`, `gateway/`, `admin/` | the logical outbound path (routes, attempts, deadlines); inbound (authorization, the app); the ingress gateway (edge listeners, routes by host and path, then outbound); the admin server |
//! | concrete | `balance/` | one service's endpoints (a keyed pool), P2C over peak-EWMA, discovery |
//! | endpoint | `endpoint/` | connections: transport, mutual TLS, one HTTP/2 connection per peer, listeners |
//! | shared | `http/`, `identity/` | bodies and proxy-made errors; this proxy's certificate and SPIFFE identities |
//! | bottom | `telemetry/`, `headers.rs` | metric families, typed events, the per-call recorder, spans, export; header names |

pub(crate) mod admin;
pub(crate) mod balance;
#[cfg(test)]
mod callpath;
pub mod config;
pub(crate) mod endpoint;
pub(crate) mod gateway;
pub(crate) mod headers;
pub(crate) mod http;
pub(crate) mod identity;
pub(crate) mod inbound;
pub(crate) mod outbound;
mod proxy;
pub(crate) mod telemetry;

pub use proxy::{Addrs, Error, Proxy, build};
