//! The endpoint level: connections. How bytes reach a peer and how a peer's connection is
//! accepted ([`transport`], plaintext or mutual TLS with [`tls`]), one multiplexed HTTP/2
//! connection per peer ([`client`]), and the listeners that serve HTTP/2 with every limit set
//! explicitly and drain on shutdown ([`listen`]; the gateway's edge gives a client's first
//! bytes a deadline, `first_byte`).

pub(crate) mod client;
mod first_byte;
pub(crate) mod listen;
pub(crate) mod tls;
pub(crate) mod transport;
