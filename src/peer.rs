//! What a request carries of its connection. The server inserts it into every request's
//! extensions; the proxy reads it there. Neither needs to know the other to agree on it.

use std::net::{Ipv4Addr, SocketAddr};

/// The client a request came from, as the upstream is told in `X-Forwarded-*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peer {
    /// The client's address.
    pub(crate) addr: SocketAddr,
    /// Whether it came over TLS.
    pub(crate) secure: bool,
}

impl Default for Peer {
    /// An unknown peer (0.0.0.0:0, cleartext): what a request that did not come through the
    /// server (a test calling a service directly) is taken to be from.
    fn default() -> Self {
        Peer {
            addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            secure: false,
        }
    }
}
