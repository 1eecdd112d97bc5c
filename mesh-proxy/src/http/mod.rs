//! The HTTP/2 plumbing both request paths share: bodies streamed through and observed on the way
//! ([`body`]), request bodies kept for another attempt ([`replay`]), and the answers the proxy
//! makes itself, each a real gRPC status with a stable reason ([`errors`]).

pub(crate) mod body;
pub(crate) mod errors;
pub(crate) mod replay;
