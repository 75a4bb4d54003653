//! The network between the demo page and ssegate, which the page can cut: a relay of bytes
//! that closes every connection it carries when asked, as a dropped Wi-Fi or a restarted load
//! balancer would. The browser's EventSource sees its connection break and reconnects on its
//! own, with `Last-Event-ID`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A handle on the wire: its port, and the cut.
#[derive(Debug, Clone)]
pub(crate) struct Wire {
    port: u16,
    /// Bumped by each cut; a connection ends when it changes.
    cuts: watch::Sender<u64>,
    /// Where the bytes go (ssegate), known once ssegate listens.
    target: Arc<OnceLock<SocketAddr>>,
}

impl Wire {
    /// Binds `addr`; connections are relayed once [`Wire::connect_to`] says where.
    pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<(Wire, TcpListener)> {
        let listener = TcpListener::bind(addr).await?;
        let wire = Wire {
            port: listener.local_addr()?.port(),
            cuts: watch::Sender::new(0),
            target: Arc::new(OnceLock::new()),
        };
        Ok((wire, listener))
    }

    /// Relays every connection `listener` accepts to `target`.
    pub(crate) fn connect_to(&self, listener: TcpListener, target: SocketAddr) {
        let _ = self.target.set(target);
        let wire = self.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((client, _)) => {
                        tokio::spawn(wire.clone().relay(client));
                    }
                    // Out of file descriptors, say: let some close.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
    }

    async fn relay(self, mut client: TcpStream) {
        let Some(target) = self.target.get().copied() else {
            return;
        };
        let mut cuts = self.cuts.subscribe();
        let Ok(mut server) = TcpStream::connect(target).await else {
            return;
        };
        let _ = (client.set_nodelay(true), server.set_nodelay(true));
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
            _ = cuts.changed() => {}
        }
    }

    /// The port the page connects to.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Closes every connection on the wire, just after the answer that asked for it has gone
    /// out (it may have come over the wire too).
    pub(crate) fn cut_soon(&self) {
        let cuts = self.cuts.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cuts.send_modify(|cuts| *cuts += 1);
            tracing::info!("demo: the wire between the page and ssegate is cut (as asked)");
        });
    }
}
