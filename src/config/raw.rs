//! Serde structs that mirror the TOML file, key for key. No logic lives here: every value is
//! optional and keeps its span, so validation can name the line of anything it rejects.

use serde::Deserialize;
use toml::Spanned;

use super::value::{DurationValue, LimitValue, NameList, SizeValue, Toggle};
use super::{IdMode, OnGap, SseMode, StreamMode};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub listen: Option<Spanned<String>>,
    pub admin_listen: Option<Spanned<String>>,
    pub buffer_total_bytes: Option<Spanned<SizeValue>>,
    pub shutdown_grace: Option<Spanned<DurationValue>>,
    pub client_write_timeout: Option<Spanned<DurationValue>>,
    pub max_connections: Option<Spanned<LimitValue>>,
    pub max_streams: Option<Spanned<LimitValue>>,
    pub header_read_timeout: Option<Spanned<DurationValue>>,
    pub keepalive_timeout: Option<Spanned<DurationValue>>,
    pub lean_http1: Option<Spanned<bool>>,
    pub trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
    pub max_streams_per_client: Option<Spanned<LimitValue>>,
    pub new_streams_per_client: Option<Spanned<LimitValue>>,
    pub new_streams_burst: Option<Spanned<u64>>,
    pub shutdown_delay: Option<Spanned<DurationValue>>,
    pub drain_spread: Option<Spanned<DurationValue>>,
    pub tls: Option<RawTls>,
    pub cluster: Option<Spanned<RawCluster>>,
    pub defaults: Option<RawDefaults>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<RawRoute>>,
}

/// `[tls]`: the public listener serves HTTPS (HTTP/1.1 and HTTP/2 by ALPN).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    pub min_version: Option<Spanned<String>>,
}

/// `[cluster]`: instances sharing streams through Redis. `redis` and `secret_file` are
/// required, but optional here so that their absence gets an error that says what they are for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub redis: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub node: Option<Spanned<String>>,
    pub lease: Option<Spanned<DurationValue>>,
    pub prefix: Option<Spanned<String>>,
    pub secret_file: Option<Spanned<String>>,
}

/// Declares a struct holding every per-route setting (plus `$extra` fields), so `[defaults]` and
/// `[[route]]` accept exactly the same settings without `flatten`, which serde cannot combine
/// with `deny_unknown_fields`.
macro_rules! with_settings {
    ($(#[$meta:meta])* pub struct $name:ident { $($extra:tt)* }) => {
        $(#[$meta])*
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct $name {
            $($extra)*
            pub(crate) retry: Option<Spanned<Toggle>>,
            pub(crate) heartbeat: Option<Spanned<Toggle>>,
            pub(crate) ids: Option<Spanned<IdMode>>,
            pub(crate) mode: Option<Spanned<StreamMode>>,
            pub(crate) stream_key: Option<Spanned<Vec<Spanned<String>>>>,
            pub(crate) buffer_events: Option<Spanned<u64>>,
            pub(crate) buffer_bytes: Option<Spanned<SizeValue>>,
            pub(crate) buffer_age: Option<Spanned<Toggle>>,
            pub(crate) on_gap: Option<Spanned<OnGap>>,
            pub(crate) linger: Option<Spanned<DurationValue>>,
            pub(crate) coalesce: Option<Spanned<Toggle>>,
            pub(crate) max_event_bytes: Option<Spanned<SizeValue>>,
            pub(crate) reconnect_initial: Option<Spanned<DurationValue>>,
            pub(crate) reconnect_max: Option<Spanned<DurationValue>>,
            pub(crate) upstream_connect_timeout: Option<Spanned<DurationValue>>,
            pub(crate) upstream_down_grace: Option<Spanned<Toggle>>,
            pub(crate) max_clients: Option<Spanned<LimitValue>>,
            pub(crate) upstream_response_timeout: Option<Spanned<Toggle>>,
            pub(crate) max_request_body: Option<Spanned<SizeValue>>,
            pub(crate) merge_slashes: Option<Spanned<bool>>,
            pub(crate) allow_encoded_slashes: Option<Spanned<bool>>,
            pub(crate) response_headers: Option<Spanned<std::collections::BTreeMap<String, Spanned<String>>>>,
            pub(crate) upgrades: Option<Spanned<Vec<Spanned<String>>>>,
            pub(crate) upgrade_idle_timeout: Option<Spanned<DurationValue>>,
            pub(crate) upstream_ca: Option<Spanned<String>>,
            pub(crate) upstream_server_name: Option<Spanned<String>>,
            pub(crate) compress: Option<Spanned<NameList>>,
            pub(crate) client_headers: Option<Spanned<NameList>>,
        }
    };
}

with_settings! {
    /// `[defaults]`: settings for every route that does not set its own.
    #[derive(Default)]
    pub struct RawDefaults {}
}

with_settings! {
    /// One `[[route]]`.
    pub struct RawRoute {
        pub(crate) path: Spanned<String>,
        pub(crate) upstream: Spanned<String>,
        pub(crate) sse: Option<Spanned<SseMode>>,
    }
}
