//! What a request carries of its connection. The server inserts it into a request's extensions;
//! the proxy reads it there. Neither needs to know the other to agree on it.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

/// What a request that asks for an upgrade (a WebSocket) carries of its connection, for the
/// time after hyper has handed the socket over: its place under `max_connections`, and the
/// server's drain, which gives upgraded connections `shutdown_grace` and then closes them. The
/// server inserts it into such requests; the proxy runs the upgraded connection with
/// [`Upgrades::spawn`].
#[derive(Clone)]
pub(crate) struct Upgrades {
    /// The connection's place (the server's, opaque here): the upgraded connection takes it.
    hold: Arc<Mutex<Option<Box<dyn Send>>>>,
    /// The server's upgraded connections, which a drain waits for.
    tunnels: TaskTracker,
    /// Cancelled when the drain's grace is over.
    closed: CancellationToken,
}

impl std::fmt::Debug for Upgrades {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrades").finish_non_exhaustive()
    }
}

impl Upgrades {
    /// A connection's: `hold` is its place, released when the last clone is dropped unless an
    /// upgraded connection took it.
    pub(crate) fn new(hold: Option<Box<dyn Send>>, tunnels: TaskTracker, closed: CancellationToken) -> Self {
        Upgrades {
            hold: Arc::new(Mutex::new(hold)),
            tunnels,
            closed,
        }
    }

    /// Runs an upgraded connection: it holds the connection's place while it lives, a drain
    /// waits for it, and it is dropped (closing both sockets) when the drain's grace is over.
    pub(crate) fn spawn(&self, tunnel: impl Future<Output = ()> + Send + 'static) {
        let hold = self.hold.lock().unwrap_or_else(PoisonError::into_inner).take();
        let closed = self.closed.clone();
        self.tunnels.spawn(async move {
            let _open = hold;
            tokio::select! {
                () = tunnel => {}
                () = closed.cancelled() => {}
            }
        });
    }
}
