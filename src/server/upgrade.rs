//! What an upgraded connection (a WebSocket) keeps of the server once hyper has handed its
//! socket over: its place under `max_connections`, and the drain, which gives it
//! `shutdown_grace` and then closes it.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::limit::Slot;

/// Put into the extensions of a request that asks for an upgrade: the service runs the
/// upgraded connection with [`Upgrades::spawn`].
#[derive(Clone)]
pub(crate) struct Upgrades {
    /// The connection's place: the upgraded connection takes it over.
    slot: Arc<Mutex<Option<Slot>>>,
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
    pub(super) fn new(
        slot: Arc<Mutex<Option<Slot>>>,
        tunnels: TaskTracker,
        closed: CancellationToken,
    ) -> Self {
        Upgrades {
            slot,
            tunnels,
            closed,
        }
    }

    /// Runs an upgraded connection: it holds the connection's place while it lives, a drain
    /// waits for it, and it is dropped (closing both sockets) when the drain's grace is over.
    pub(crate) fn spawn(&self, tunnel: impl Future<Output = ()> + Send + 'static) {
        let slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        let closed = self.closed.clone();
        self.tunnels.spawn(async move {
            let _open = slot;
            tokio::select! {
                () = tunnel => {}
                () = closed.cancelled() => {}
            }
        });
    }
}
