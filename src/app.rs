//! The application: binds its listener first, then runs until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::hub::{Counter, Hub};
use crate::proxy::Proxy;
use crate::server;

/// Why ssegate could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A bound, ready-to-run ssegate. Tests bind `127.0.0.1:0` and read [`App::local_addr`].
#[derive(Debug)]
pub struct App {
    config: Config,
    listener: TcpListener,
    local_addr: SocketAddr,
    proxy: Proxy,
    hub: Hub,
    write_stalls: Arc<Counter>,
}

impl App {
    /// Binds the listener of `config`.
    pub async fn bind(config: Config) -> Result<App, AppError> {
        let bind_error = |source| AppError::Bind {
            addr: config.listen,
            source,
        };
        let listener = TcpListener::bind(config.listen).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let hub = Hub::new(config.buffer_total_bytes);
        let proxy = Proxy::new(&config, hub.clone());
        Ok(App {
            config,
            listener,
            local_addr,
            proxy,
            hub,
            write_stalls: Arc::default(),
        })
    }

    /// The address actually bound (useful when `listen` has port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The hub of SSE streams, with its counters.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Connections closed because the client stopped reading.
    pub fn write_stalls(&self) -> Arc<Counter> {
        self.write_stalls.clone()
    }

    /// Serves until `shutdown` resolves, then ends every SSE response and drains the
    /// connections within `shutdown_grace`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tracing::info!(listen = %self.local_addr, routes = self.config.routes.len(), "ssegate listening");
        for route in &self.config.routes {
            tracing::info!(path = %route.path, upstream = %route.upstream, "route");
        }
        let settings = server::Settings {
            grace: self.config.shutdown_grace,
            write_timeout: self.config.client_write_timeout,
            stalls: self.write_stalls,
        };
        let hub = self.hub;
        server::serve(
            self.listener,
            self.proxy,
            shutdown,
            move || hub.shutdown(),
            settings,
        )
        .await;
        tracing::info!("stopped");
    }
}
