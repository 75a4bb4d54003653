//! The Redis client of `[cluster]`: built once from the config, and the connection check of
//! `ssegate check --connect`.

use std::time::Duration;

use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
use redis::{AsyncConnectionConfig, ErrorKind, IntoConnectionInfo, ProtocolVersion, RedisError, Value};

use crate::config::ClusterConfig;

/// An idle connection is probed after this long, then every [`KEEPALIVE_INTERVAL`], and given
/// up after [`KEEPALIVE_RETRIES`] unanswered probes: a Redis host that vanished without a reset
/// is noticed in about 25 s even by a connection nobody uses.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;
/// Data unacknowledged this long fails the connection (Linux `TCP_USER_TIMEOUT`): the crate's
/// own timeouts never close a connection, and a half-open one would time out every command.
/// A stopped but living Redis still acknowledges (its kernel does), so this never cuts it.
const USER_TIMEOUT: Duration = Duration::from_secs(10);

/// The client for `config`: its URL, with `password` (from `password_file`) in place of the
/// URL's, speaking RESP2 (the replies this module parses), with keepalive.
pub(crate) fn build(config: &ClusterConfig) -> Result<redis::Client, RedisError> {
    install_crypto_provider();
    let info = config.redis.as_str().into_connection_info()?;
    let mut settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP2)
        .set_lib_name("ssegate", env!("CARGO_PKG_VERSION"));
    if let Some(password) = &config.password {
        settings = settings.set_password(password);
    }
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let tcp = TcpSettings::default().set_nodelay(true).set_keepalive(keepalive);
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    let tcp = tcp.set_user_timeout(USER_TIMEOUT);
    redis::Client::open(info.set_redis_settings(settings).set_tcp_settings(tcp))
}

/// Installs ring as rustls' process-wide crypto provider: the crate builds its TLS config for
/// `rediss://` with `rustls::ClientConfig::builder()`, which needs one.
fn install_crypto_provider() {
    // An error only says a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `url` fit to show: without the password (`redis://user:secret@`, `unix://...?pass=`).
pub(crate) fn shown_url(url: &str) -> String {
    let Some(mut parsed) = redis::parse_redis_url(url) else {
        return "the URL in cluster.redis".to_owned();
    };
    if parsed.password().is_some() {
        // Only fails for URLs without a host, which have no password part.
        let _ = parsed.set_password(None);
    }
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(name, _)| name != "pass" && name != "password")
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    if parsed.query().is_some() {
        parsed.set_query(None);
        if !kept.is_empty() {
            parsed.query_pairs_mut().extend_pairs(kept);
        }
    }
    parsed.to_string()
}

/// What `ssegate check --connect` learned about the Redis server.
#[derive(Debug)]
pub struct Connected {
    /// The URL connected to, without its password.
    pub url: String,
    /// The server's version (`redis_version` of `INFO`).
    pub version: String,
    /// Settings of the server that work against ssegate, one sentence each.
    pub warnings: Vec<String>,
}

/// Why `ssegate check --connect` failed, naming the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `cluster.redis` is no URL the client understands: a config error.
    #[error("cluster.redis: {0}")]
    Url(String),
    /// Nothing answers at the URL.
    #[error("cluster.redis: cannot connect to {url}: {reason}")]
    Unreachable {
        /// The URL, without its password.
        url: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// The URL answers, but not in time.
    #[error("cluster.redis: {url} did not answer within {after:?}")]
    Timeout {
        /// The URL, without its password.
        url: String,
        /// How long it was given.
        after: Duration,
    },
    /// Redis refused the password, or wants one and got none.
    #[error(
        "cluster.redis: {url} refused the credentials ({reason}); check cluster.password_file \
         (or the password in cluster.redis)"
    )]
    Auth {
        /// The URL, without its password.
        url: String,
        /// What Redis said.
        reason: String,
    },
    /// Redis refuses a command ssegate needs.
    #[error("Redis at {url} refuses {what}: {reason}")]
    Refused {
        /// The URL, without its password.
        url: String,
        /// Which commands, and why ssegate needs them.
        what: &'static str,
        /// What Redis said.
        reason: String,
    },
    /// Redis is too old for ssegate.
    #[error("Redis at {url} is version {version}; ssegate needs Redis 5 or later (streams)")]
    TooOld {
        /// The URL, without its password.
        url: String,
        /// The server's version.
        version: String,
    },
}

impl ConnectError {
    /// An error of the config file rather than of the server (`ssegate check` exits 2).
    pub fn is_config(&self) -> bool {
        matches!(self, ConnectError::Url(_))
    }
}

/// Connects to `config`'s Redis, authenticates, and proves what ssegate needs: the server's
/// version, Lua scripts (by `EVALSHA` and `SCRIPT LOAD`, as the store sends them), and the
/// stream commands (an `XADD` to a throwaway key under the prefix, deleted again). Each step
/// is bounded by `timeout`.
pub async fn check(config: &ClusterConfig, timeout: Duration) -> Result<Connected, ConnectError> {
    let url = shown_url(&config.redis);
    let client = build(config).map_err(|error| ConnectError::Url(error.to_string()))?;
    let bounded = |error: Option<RedisError>| match error {
        None => ConnectError::Timeout {
            url: url.clone(),
            after: timeout,
        },
        Some(error) => match redis_fault(&error) {
            StoreFault::Auth => ConnectError::Auth {
                url: url.clone(),
                reason: error.to_string(),
            },
            StoreFault::Timeout => ConnectError::Timeout {
                url: url.clone(),
                after: timeout,
            },
            _ => ConnectError::Unreachable {
                url: url.clone(),
                reason: error.to_string(),
            },
        },
    };
    let connection = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut conn = within(
        timeout,
        client.get_multiplexed_async_connection_with_config(&connection),
    )
    .await
    .map_err(bounded)?;

    // A Redis whose ACL refuses INFO can still serve ssegate: its version is then unknown.
    let info: String = match within(timeout, redis::cmd("INFO").query_async(&mut conn)).await {
        Ok(info) => info,
        Err(Some(error)) if redis_fault(&error) == StoreFault::Refused => String::new(),
        Err(error) => return Err(bounded(error)),
    };
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(|value| value.trim().to_owned())
    };
    let version = field("redis_version").unwrap_or_else(|| "unknown".to_owned());
    let major = version.split('.').next().and_then(|m| m.parse::<u32>().ok());
    if major.is_some_and(|major| major < 5) {
        return Err(ConnectError::TooOld { url, version });
    }
    let mut warnings = Vec::new();
    if let Some(policy) = field("maxmemory_policy").filter(|p| p != "noeviction") {
        warnings.push(format!(
            "Redis evicts keys under memory pressure (maxmemory-policy {policy}): an evicted \
             stream starts a new epoch, a gap for its clients; noeviction is recommended"
        ));
    }
    if field("cluster_enabled").as_deref() == Some("1") {
        warnings.push(
            "Redis runs in cluster mode: ssegate talks to one server, so keys in other nodes' \
             slots will fail with MOVED; use a single server (or a cluster proxy)"
                .to_owned(),
        );
    }

    let refused = |what: &'static str| {
        let url = url.clone();
        let bounded = &bounded;
        move |error: Option<RedisError>| match error {
            Some(error) if matches!(redis_fault(&error), StoreFault::Refused | StoreFault::Server) => {
                ConnectError::Refused {
                    url,
                    what,
                    reason: error.to_string(),
                }
            }
            other => bounded(other),
        }
    };
    let one = redis::Script::new("return 1");
    let answer: Value = within(timeout, one.invoke_async(&mut conn))
        .await
        .map_err(refused(
            "Lua scripts (EVALSHA, SCRIPT LOAD); the cluster's leases and appends are scripts",
        ))?;
    if answer != Value::Int(1) {
        return Err(ConnectError::Refused {
            url,
            what: "Lua scripts",
            reason: format!("`return 1` answered {answer:?}"),
        });
    }

    let probe = format!("{}:check:{}", config.prefix, config.node);
    let streams = async {
        redis::cmd("XADD")
            .arg(&probe)
            .arg("MAXLEN")
            .arg(1)
            .arg("*")
            .arg("c")
            .arg(1)
            .query_async::<Value>(&mut conn)
            .await?;
        redis::cmd("DEL")
            .arg(&probe)
            .query_async::<Value>(&mut conn)
            .await
    };
    within(timeout, streams).await.map_err(refused(
        "stream commands (XADD); the shared logs are Redis streams",
    ))?;

    Ok(Connected {
        url,
        version,
        warnings,
    })
}

/// `future` within `timeout`: `Err(None)` when it took longer.
async fn within<T>(
    timeout: Duration,
    future: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, Option<RedisError>> {
    match tokio::time::timeout(timeout, future).await {
        Ok(result) => result.map_err(Some),
        Err(_) => Err(None),
    }
}

/// Whose fault a Redis error is, for a log line that says what to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreFault {
    /// Redis is down or unreachable: the network or the server's operator.
    Unreachable,
    /// No answer in time: Redis overloaded, stopped, or the network slow.
    Timeout,
    /// Redis refused the password (`cluster.redis` / `cluster.password_file`).
    Auth,
    /// Redis refuses a command ssegate needs (ACL, renamed or disabled command).
    Refused,
    /// Redis failed the command itself (out of memory, loading, read-only replica, ...).
    Server,
    /// Data under our keys that ssegate did not write, or a reply it does not understand.
    Data,
    /// The client's own settings (the URL).
    Config,
}

impl StoreFault {
    /// The name written in logs.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            StoreFault::Unreachable => "unreachable",
            StoreFault::Timeout => "timeout",
            StoreFault::Auth => "auth",
            StoreFault::Refused => "refused",
            StoreFault::Server => "server",
            StoreFault::Data => "data",
            StoreFault::Config => "config",
        }
    }
}

impl std::fmt::Display for StoreFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whose fault a Redis error is.
pub(crate) fn redis_fault(error: &RedisError) -> StoreFault {
    let code = error.code().unwrap_or("");
    let detail = error.detail().unwrap_or("");
    if error.kind() == ErrorKind::AuthenticationFailed || matches!(code, "NOAUTH" | "WRONGPASS") {
        StoreFault::Auth
    } else if code == "NOPERM" || detail.starts_with("unknown command") {
        StoreFault::Refused
    } else if error.is_timeout() {
        StoreFault::Timeout
    } else if error.is_io_error() {
        StoreFault::Unreachable
    } else if error.kind() == ErrorKind::InvalidClientConfig {
        StoreFault::Config
    } else {
        StoreFault::Server
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::{free_port, RedisServer};

    const TIMEOUT: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn check_reports_the_version_and_leaves_no_key_behind() {
        let Some(redis) = RedisServer::start(&["--requirepass", "right"]) else {
            return;
        };
        let mut config = redis.config(Some("right"));
        config.redis = format!("redis://:wrong-but-overridden@127.0.0.1:{}", redis.port);
        let connected = check(&config, TIMEOUT).await.expect("check");
        assert_eq!(connected.url, redis.url());
        assert!(
            connected.version.starts_with(|c: char| c.is_ascii_digit()),
            "{connected:?}"
        );
        assert!(connected.warnings.is_empty(), "{connected:?}");

        let mut raw = redis::Client::open(format!("redis://:right@127.0.0.1:{}", redis.port))
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("raw");
        let left: u64 = redis::cmd("DBSIZE").query_async(&mut raw).await.expect("dbsize");
        assert_eq!(left, 0);
    }

    #[tokio::test]
    async fn check_names_the_password_setting_when_refused() {
        let Some(redis) = RedisServer::start(&["--requirepass", "right"]) else {
            return;
        };
        for password in [Some("wrong"), None] {
            let error = check(&redis.config(password), TIMEOUT)
                .await
                .expect_err("refused");
            assert!(matches!(error, ConnectError::Auth { .. }), "{error}");
            assert!(error.to_string().contains("cluster.password_file"), "{error}");
            assert!(!error.is_config());
        }
    }

    #[tokio::test]
    async fn check_names_the_url_nobody_answers_at() {
        let Some(redis) = RedisServer::start(&[]) else {
            return;
        };
        let mut config = redis.config(None);
        config.redis = format!("redis://127.0.0.1:{}", free_port());
        let error = check(&config, TIMEOUT).await.expect_err("refused");
        assert!(matches!(error, ConnectError::Unreachable { .. }), "{error}");
        assert!(error.to_string().contains(&config.redis), "{error}");
        config.redis = "http://127.0.0.1".to_owned();
        assert!(check(&config, TIMEOUT).await.expect_err("no URL").is_config());
    }

    #[tokio::test]
    async fn check_says_which_commands_redis_refuses() {
        let Some(redis) = RedisServer::start(&["--rename-command", "EVALSHA", ""]) else {
            return;
        };
        let error = check(&redis.config(None), TIMEOUT).await.expect_err("refused");
        assert!(
            matches!(error, ConnectError::Refused { what, .. } if what.contains("Lua")),
            "{error}"
        );
        let Some(redis) = RedisServer::start(&["--rename-command", "XADD", ""]) else {
            return;
        };
        let error = check(&redis.config(None), TIMEOUT).await.expect_err("refused");
        assert!(
            matches!(error, ConnectError::Refused { what, .. } if what.contains("stream")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn check_warns_about_eviction() {
        let Some(redis) = RedisServer::start(&["--maxmemory-policy", "allkeys-lru"]) else {
            return;
        };
        let connected = check(&redis.config(None), TIMEOUT).await.expect("check");
        assert!(
            connected.warnings.iter().any(|w| w.contains("allkeys-lru")),
            "{connected:?}"
        );
    }

    #[test]
    fn shown_urls_have_no_password() {
        assert_eq!(
            shown_url("redis://user:secret@127.0.0.1:6379/0"),
            "redis://user@127.0.0.1:6379/0"
        );
        assert_eq!(
            shown_url("redis://:secret@redis.internal"),
            "redis://redis.internal"
        );
        assert_eq!(
            shown_url("unix:///run/redis.sock?pass=secret&db=2"),
            "unix:///run/redis.sock?db=2"
        );
        assert_eq!(shown_url("rediss://h:6380"), "rediss://h:6380");
        assert_eq!(shown_url("http://x"), "the URL in cluster.redis");
    }
}
