//! The application: binds its listeners first, then runs until told to stop; reloads its
//! config on demand.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::net::TcpListener;

use crate::config::{Config, ConfigError};
use crate::hub::Hub;
use crate::metrics::{Metrics, ReloadLabels};
use crate::proxy::Proxy;
use crate::server::{self, Limits};
use crate::tls::{self, Acceptor, TlsError};

/// Why ssegate could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a reload was refused; the old config stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// There is no file to reload from (`ssegate demo`).
    #[error("this instance was not started from a config file")]
    NoFile,
    /// The file is not a valid config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The new certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
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

/// A handle on a running ssegate: reload, readiness, metrics, streams. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Control {
    inner: Arc<ControlInner>,
}

#[derive(Debug)]
struct ControlInner {
    config_path: Option<PathBuf>,
    config: RwLock<Arc<Config>>,
    proxy: Proxy,
    hub: Hub,
    metrics: Arc<Metrics>,
    limits: Arc<RwLock<Limits>>,
    tls: Option<Acceptor>,
    draining: AtomicBool,
    /// One reload at a time.
    reloading: Mutex<()>,
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
        let bind = |addr: SocketAddr| async move {
            let bind_error = |source| AppError::Bind { addr, source };
            let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
            let local = listener.local_addr().map_err(bind_error)?;
            Ok::<_, AppError>((listener, local))
        };
        let (listener, local_addr) = bind(config.listen).await?;
        let (admin, admin_addr) = match config.admin_listen {
            Some(addr) => {
                let (listener, local) = bind(addr).await?;
                (Some(listener), Some(local))
            }
            None => (None, None),
        };
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(&config, metrics.clone());
        let proxy = Proxy::new(&config, hub.clone(), metrics.clone());
        let control = Control {
            inner: Arc::new(ControlInner {
                config_path: path.map(Path::to_path_buf),
                limits: Arc::new(RwLock::new(Limits::of(&config))),
                tls,
                config: RwLock::new(Arc::new(config)),
                proxy,
                hub,
                metrics,
                draining: AtomicBool::new(false),
                reloading: Mutex::new(()),
            }),
        };
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
        tracing::info!(listen = %self.local_addr, admin = ?self.admin_addr, routes = config.routes.len(), "ssegate listening");
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
            draining.inner.draining.store(true, Ordering::SeqCst);
            tracing::info!("draining: /readyz answers 503");
        };
        let hub = control.inner.hub.clone();
        server::serve(
            self.listener,
            control.inner.proxy.clone(),
            drain,
            move || hub.shutdown(),
            control.inner.limits.clone(),
            control.inner.metrics.clone(),
            control.inner.tls.clone(),
        )
        .await;
        let _ = admin_stop.send(());
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        tracing::info!("stopped");
    }
}

impl Control {
    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.inner
            .config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the instance takes traffic: listening, config loaded, not draining.
    pub fn is_ready(&self) -> bool {
        !self.inner.draining.load(Ordering::SeqCst)
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The hub of streams.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// Re-reads the config file and applies it; if it is invalid, the old config stays and the
    /// error says why.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let result = match &self.inner.config_path {
            Some(path) => Config::load(path)
                .map_err(ReloadError::from)
                .and_then(|config| self.apply(config)),
            None => Err(ReloadError::NoFile),
        };
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.inner
            .metrics
            .reloads
            .get_or_create(&ReloadLabels {
                result: outcome.to_owned(),
            })
            .inc();
        if let Err(error) = &result {
            tracing::error!(%error, "reload refused; the running config stays in force");
        }
        result
    }

    /// Swaps in `config`: routes, settings and the TLS certificate at once (new handshakes use
    /// the new certificate; open connections keep theirs). Listen addresses, and turning TLS on
    /// or off, take a restart; such a change is logged and ignored. A certificate that cannot be
    /// used refuses the whole reload.
    pub fn apply(&self, mut config: Config) -> Result<(), ReloadError> {
        let _one_at_a_time = self
            .inner
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = self.config();
        match (&self.inner.tls, &config.tls) {
            (Some(acceptor), Some(settings)) => {
                let loaded = tls::load(settings)?;
                acceptor.replace(tls::server_config(&loaded, settings.min_version)?);
                tracing::info!(subject = %loaded.subject, not_after = %loaded.not_after, "TLS certificate reloaded");
            }
            (None, None) => {}
            _ => {
                tracing::warn!(
                    "turning TLS on or off takes effect on restart only; keeping the listener as it is"
                );
                config.tls = old.tls.clone();
            }
        }
        if config.listen != old.listen || config.admin_listen != old.admin_listen {
            tracing::warn!(
                "listen and admin_listen take effect on restart only; keeping the addresses in use"
            );
            config.listen = old.listen;
            config.admin_listen = old.admin_listen;
        }
        *self.inner.limits.write().unwrap_or_else(PoisonError::into_inner) = Limits::of(&config);
        self.inner.proxy.reload(&config);
        let routes = config.routes.len();
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        *self.inner.config.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        tracing::info!(routes, "config reloaded");
        Ok(())
    }
}
