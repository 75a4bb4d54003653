//! The handle on a running ssegate: reload, readiness, metrics and streams. The admin listener
//! and the application both use it; it knows the parts a reload swaps, not how they are served.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::config::{Config, ConfigError};
use crate::hub::Hub;
use crate::metrics::{Metrics, ReloadLabels};
use crate::proxy::Proxy;
use crate::server::{ConnectionLimit, Limits};
use crate::tls::{self, Acceptor, TlsError};

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
    connections: ConnectionLimit,
    tls: Option<Acceptor>,
    draining: AtomicBool,
    /// One reload at a time.
    reloading: Mutex<()>,
}

/// What a [`Control`] is made of: the parts a reload swaps or reads.
pub(crate) struct Parts {
    pub config_path: Option<PathBuf>,
    pub config: Config,
    pub proxy: Proxy,
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    pub limits: Arc<RwLock<Limits>>,
    pub connections: ConnectionLimit,
    pub tls: Option<Acceptor>,
}

impl Control {
    /// A handle on the parts of a bound instance.
    pub(crate) fn new(parts: Parts) -> Control {
        Control {
            inner: Arc::new(ControlInner {
                config_path: parts.config_path,
                config: RwLock::new(Arc::new(parts.config)),
                proxy: parts.proxy,
                hub: parts.hub,
                metrics: parts.metrics,
                limits: parts.limits,
                connections: parts.connections,
                tls: parts.tls,
                draining: AtomicBool::new(false),
                reloading: Mutex::new(()),
            }),
        }
    }

    /// The proxy service a reload updates.
    pub(crate) fn proxy(&self) -> &Proxy {
        &self.inner.proxy
    }

    /// The connection limits a reload replaces.
    pub(crate) fn limits(&self) -> &Arc<RwLock<Limits>> {
        &self.inner.limits
    }

    /// The `max_connections` limit a reload changes.
    pub(crate) fn connections(&self) -> &ConnectionLimit {
        &self.inner.connections
    }

    /// The TLS acceptor a reload swaps certificates in, if TLS is on.
    pub(crate) fn tls(&self) -> Option<&Acceptor> {
        self.inner.tls.as_ref()
    }

    /// Marks the instance as draining: `/readyz` answers 503 from now on.
    pub(crate) fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

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
    /// used refuses the whole reload. `[cluster]` too takes a restart.
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
        if config.cluster != old.cluster {
            tracing::warn!("[cluster] takes effect on restart only; keeping the cluster as it is");
            config.cluster = old.cluster.clone();
        }
        *self.inner.limits.write().unwrap_or_else(PoisonError::into_inner) = Limits::of(&config);
        self.inner.connections.set(config.max_connections);
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
