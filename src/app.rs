//! The application: binds its listeners first, then runs until told to stop; reloads its
//! config on demand.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};

use http::{header, Request};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::cluster::Cluster;
use crate::config::{format_duration, Config};
use crate::control::{Control, Parts};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::proxy::{IncomingBody, Proxy};
use crate::server::{self, ConnectionLimit, Limits, Server};
use crate::tls::{self, Acceptor, TlsError};

/// Why ssegate could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {}", bind_advice(source, key))]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The config key that set it (`listen` or `admin_listen`), named in the message.
        key: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Why binding failed, in words a first-time user can act on, naming the key to change.
fn bind_advice(error: &std::io::Error, key: &str) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::AddrInUse => format!(
            "the address is already in use by another process; stop that process or set `{key}` to a free port in the config"
        ),
        ErrorKind::PermissionDenied => format!(
            "permission denied (a port below 1024 needs root or CAP_NET_BIND_SERVICE); set `{key}` to a port above 1023 or grant the capability"
        ),
        ErrorKind::AddrNotAvailable => {
            format!("this machine has no such address; set `{key}` to one of its addresses (or 0.0.0.0)")
        }
        _ => format!("{error} (set by `{key}` in the config)"),
    }
}

/// A bound, ready-to-run ssegate. Tests bind `127.0.0.1:0` and read [`App::local_addr`].
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    admin: Option<TcpListener>,
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    control: Control,
}

impl App {
    /// Binds the listeners of `config` (the public one, and the admin one if set).
    pub async fn bind(config: Config) -> Result<App, AppError> {
        App::bind_from(config, None).await
    }

    /// Like [`App::bind`], remembering the file `config` came from, for reloads.
    pub async fn bind_from(config: Config, path: Option<&Path>) -> Result<App, AppError> {
        let tls = match &config.tls {
            Some(settings) => {
                let loaded = tls::load(settings)?;
                tracing::info!(subject = %loaded.subject, not_after = %loaded.not_after, "TLS certificate loaded");
                Some(Acceptor::new(tls::server_config(&loaded, settings.min_version)?))
            }
            None => None,
        };
        let bind = |addr: SocketAddr, key: &'static str| async move {
            let bind_error = |source| AppError::Bind { addr, key, source };
            let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
            let local = listener.local_addr().map_err(bind_error)?;
            Ok::<_, AppError>((listener, local))
        };
        let (listener, local_addr) = bind(config.listen, "listen").await?;
        let (admin, admin_addr) = match config.admin_listen {
            Some(addr) => {
                let (listener, local) = bind(addr, "admin_listen").await?;
                (Some(listener), Some(local))
            }
            None => (None, None),
        };
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(&config, metrics.clone());
        if let Some(cluster) = &config.cluster {
            hub.join_cluster(Cluster::start(cluster, metrics.cluster.clone()));
        }
        let proxy = Proxy::new(&config, hub.clone(), metrics.clone());
        let control = Control::new(Parts {
            config_path: path.map(Path::to_path_buf),
            limits: Arc::new(RwLock::new(Limits::of(&config))),
            connections: ConnectionLimit::new(config.max_connections, metrics.clone()),
            tls,
            config,
            proxy,
            hub,
            metrics,
        });
        Ok(App {
            listener,
            admin,
            local_addr,
            admin_addr,
            control,
        })
    }

    /// The public address actually bound (useful when `listen` has port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin address actually bound, if there is an admin listener.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// A handle to reload and observe the running instance.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Serves until `shutdown` resolves, then drains: `/readyz` turns 503 at once, the listener
    /// stops accepting, every SSE response ends cleanly after flushing, and other requests get
    /// `shutdown_grace` to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let control = self.control;
        let config = control.config();
        let admin = self
            .admin_addr
            .map_or_else(|| "off".to_owned(), |addr| addr.to_string());
        tracing::info!(listen = %self.local_addr, admin = %admin, routes = config.routes.len(), "ssegate listening");
        for route in &config.routes {
            tracing::info!(path = %route.path, upstream = %route.upstream, "route");
        }
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = self.admin.map(|listener| {
            tokio::spawn(crate::admin::serve(listener, control.clone(), async move {
                let _ = admin_stopped.await;
            }))
        });
        let draining = control.clone();
        let drain = async move {
            shutdown.await;
            draining.start_draining();
            // Read now: a reload may have changed it.
            let delay = draining.config().shutdown_delay;
            if delay.is_zero() {
                tracing::info!("draining: /readyz answers 503");
            } else {
                // The load balancer sees the 503 and stops sending new clients here, while
                // everything still works; then the listener closes.
                tracing::info!(shutdown_delay = %format_duration(delay), "draining: /readyz answers 503; still serving for shutdown_delay");
                tokio::time::sleep(delay).await;
            }
        };
        let hub = control.hub().clone();
        let proxy = control.proxy().clone();
        let is_lean: server::IsLean = {
            let proxy = proxy.clone();
            Arc::new(move |head: &Request<()>| proxy.is_subscription_head(head))
        };
        // The credentials a request carries stay out of any log or trace of it.
        let service = ServiceBuilder::new()
            .layer(SetSensitiveRequestHeadersLayer::new([
                header::AUTHORIZATION,
                header::COOKIE,
                header::PROXY_AUTHORIZATION,
            ]))
            .service(proxy);
        Server::new(
            service,
            control.limits().clone(),
            control.connections().clone(),
            control.metrics().clone(),
        )
        .lean(is_lean)
        .tls(control.tls().cloned())
        .serve::<IncomingBody, _>(self.listener, drain, {
            let control = control.clone();
            move || hub.shutdown(control.config().drain_spread)
        })
        .await;
        let _ = admin_stop.send(());
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        tracing::info!("stopped");
    }
}
