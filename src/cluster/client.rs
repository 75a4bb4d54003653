//! The Redis client of `[cluster]`, built from the config.
// Used by the stream task's cluster roles (next commits).
#![allow(dead_code)]

use std::time::Duration;

use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
use redis::{IntoConnectionInfo, ProtocolVersion, RedisError};

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

#[cfg(test)]
mod tests {
    use super::*;

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
