//! The effective configuration written back as TOML (what `ssegate check` prints).

use std::fmt;
use std::fmt::Write as _;

use super::*;

/// `text` as a TOML basic string (Rust's `{:?}` writes `\u{..}`, which TOML does not read):
/// `"` and `\` escaped, control characters as `\uXXXX`, everything else as it is.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() && c != '\t' => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A list key's value: `["a", "b"]`, or `"off"` when empty.
fn name_list(names: &[&str]) -> String {
    if names.is_empty() {
        return "\"off\"".to_owned();
    }
    let quoted: Vec<String> = names.iter().map(|name| quote(name)).collect();
    format!("[{}]", quoted.join(", "))
}

fn name_of<T: fmt::Debug>(value: T) -> String {
    // Enum names as the file writes them: `PerClient` → `per-client`.
    let debug = format!("{value:?}");
    let mut out = String::new();
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The effective configuration as TOML: what `ssegate check` prints.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "listen = \"{}\"", self.listen)?;
        if let Some(admin) = self.admin_listen {
            writeln!(f, "admin_listen = \"{admin}\"")?;
        }
        writeln!(
            f,
            "buffer_total_bytes = \"{}\"",
            format_size(self.buffer_total_bytes)
        )?;
        writeln!(f, "shutdown_grace = \"{}\"", format_duration(self.shutdown_grace))?;
        writeln!(f, "shutdown_delay = \"{}\"", format_duration(self.shutdown_delay))?;
        writeln!(f, "drain_spread = \"{}\"", format_duration(self.drain_spread))?;
        writeln!(
            f,
            "client_write_timeout = \"{}\"",
            format_duration(self.client_write_timeout)
        )?;
        writeln!(f, "max_connections = {}", format_limit(self.max_connections))?;
        let streams = (self.max_streams != usize::MAX).then_some(self.max_streams as u64);
        writeln!(f, "max_streams = {}", format_limit(streams))?;
        writeln!(
            f,
            "header_read_timeout = \"{}\"",
            format_duration(self.header_read_timeout)
        )?;
        writeln!(
            f,
            "keepalive_timeout = \"{}\"",
            format_duration(self.keepalive_timeout)
        )?;
        writeln!(f, "lean_http1 = {}", self.lean_http1)?;
        let blocks: Vec<String> = self.trusted_proxies.iter().map(|b| format!("\"{b}\"")).collect();
        writeln!(f, "trusted_proxies = [{}]", blocks.join(", "))?;
        writeln!(
            f,
            "max_streams_per_client = {}",
            format_limit(self.max_streams_per_client.map(|n| n as u64))
        )?;
        writeln!(
            f,
            "new_streams_per_client = {}",
            format_limit(self.new_streams_per_client.map(|r| r.per_second))
        )?;
        if let Some(rate) = self.new_streams_per_client {
            writeln!(f, "new_streams_burst = {}", rate.burst)?;
        }
        if let Some(tls) = &self.tls {
            writeln!(f, "\n[tls]")?;
            writeln!(f, "cert = {}", quote(&tls.cert.display().to_string()))?;
            writeln!(f, "key = {}", quote(&tls.key.display().to_string()))?;
            let version = match tls.min_version {
                TlsVersion::V1_2 => "1.2",
                TlsVersion::V1_3 => "1.3",
            };
            writeln!(f, "min_version = \"{version}\"")?;
        }
        if let Some(cluster) = &self.cluster {
            // The password and the secret are never printed: the URL's password is `***`, and
            // the files they came from are named.
            writeln!(f, "\n[cluster]")?;
            writeln!(f, "redis = {}", quote(&cluster.redis_masked()))?;
            let files = self.cluster_files.as_ref();
            if let Some(password) = files.and_then(|files| files.password.as_ref()) {
                writeln!(f, "password_file = {}", quote(&password.display().to_string()))?;
            }
            writeln!(f, "node = {}", quote(&cluster.node))?;
            writeln!(f, "lease = \"{}\"", format_duration(cluster.lease))?;
            writeln!(f, "prefix = {}", quote(&cluster.prefix))?;
            if let Some(files) = files {
                writeln!(f, "secret_file = {}", quote(&files.secret.display().to_string()))?;
            }
        }
        for route in &self.routes {
            let s = &route.settings;
            writeln!(f, "\n[[route]]")?;
            writeln!(f, "path = {}", quote(&route.path))?;
            writeln!(f, "upstream = {}", quote(&route.upstream.to_string()))?;
            if let Some(tls) = &route.upstream_tls {
                if let Some(ca) = &tls.ca {
                    writeln!(f, "upstream_ca = {}", quote(&ca.path.display().to_string()))?;
                }
                if tls.named {
                    let name = tls.server_name.to_str();
                    writeln!(f, "upstream_server_name = {}", quote(&name))?;
                }
            }
            writeln!(f, "sse = \"{}\"", name_of(route.sse))?;
            writeln!(f, "retry = \"{}\"", format_toggle(s.retry))?;
            writeln!(f, "heartbeat = \"{}\"", format_toggle(s.heartbeat))?;
            writeln!(f, "ids = \"{}\"", name_of(s.ids))?;
            writeln!(f, "mode = \"{}\"", name_of(s.mode))?;
            let key: Vec<String> = s.stream_key.iter().map(|p| quote(&p.to_string())).collect();
            writeln!(f, "stream_key = [{}]", key.join(", "))?;
            writeln!(f, "buffer_events = {}", s.buffer_events)?;
            writeln!(f, "buffer_bytes = \"{}\"", format_size(s.buffer_bytes as u64))?;
            writeln!(f, "buffer_age = \"{}\"", format_toggle(s.buffer_age))?;
            writeln!(f, "on_gap = \"{}\"", name_of(s.on_gap))?;
            writeln!(f, "linger = \"{}\"", format_duration(s.linger))?;
            writeln!(f, "coalesce = \"{}\"", format_toggle(s.coalesce))?;
            writeln!(
                f,
                "max_event_bytes = \"{}\"",
                format_size(s.max_event_bytes as u64)
            )?;
            writeln!(
                f,
                "reconnect_initial = \"{}\"",
                format_duration(s.reconnect_initial)
            )?;
            writeln!(f, "reconnect_max = \"{}\"", format_duration(s.reconnect_max))?;
            writeln!(
                f,
                "upstream_connect_timeout = \"{}\"",
                format_duration(s.upstream_connect_timeout)
            )?;
            writeln!(
                f,
                "upstream_down_grace = \"{}\"",
                format_toggle(s.upstream_down_grace)
            )?;
            writeln!(
                f,
                "max_clients = {}",
                format_limit(s.max_clients.map(|n| n as u64))
            )?;
            writeln!(
                f,
                "upstream_response_timeout = \"{}\"",
                format_toggle(s.upstream_response_timeout)
            )?;
            writeln!(f, "max_request_body = \"{}\"", format_size(s.max_request_body))?;
            writeln!(f, "merge_slashes = {}", s.merge_slashes)?;
            writeln!(f, "allow_encoded_slashes = {}", s.allow_encoded_slashes)?;
            let headers: Vec<String> = s
                .response_headers
                .iter()
                .map(|(name, value)| {
                    format!(
                        "{} = {}",
                        quote(name.as_str()),
                        quote(&String::from_utf8_lossy(value.as_bytes()))
                    )
                })
                .collect();
            writeln!(f, "response_headers = {{ {} }}", headers.join(", "))?;
            let upgrades: Vec<String> = s.upgrades.iter().map(|token| quote(token)).collect();
            writeln!(f, "upgrades = [{}]", upgrades.join(", "))?;
            writeln!(
                f,
                "upgrade_idle_timeout = \"{}\"",
                format_duration(s.upgrade_idle_timeout)
            )?;
            let codings: Vec<&str> = [("br", s.compress.br), ("gzip", s.compress.gzip)]
                .into_iter()
                .filter_map(|(name, on)| on.then_some(name))
                .collect();
            writeln!(f, "compress = {}", name_list(&codings))?;
            let client = [
                ("x-real-ip", s.client_headers.x_real_ip),
                ("forwarded", s.client_headers.forwarded),
            ];
            let client: Vec<&str> = client
                .into_iter()
                .filter_map(|(name, on)| on.then_some(name))
                .collect();
            writeln!(f, "client_headers = {}", name_list(&client))?;
        }
        Ok(())
    }
}
