//! Config errors that name the file, the line, the section and the key.

use std::ops::Range;

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path as given.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid config.
    #[error("{origin}:{line}:{column}: {message}")]
    Invalid {
        /// The file name (or another name for the text, such as "embedded demo config").
        origin: String,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, naming the key and section.
        message: String,
    },
}

/// The text being loaded, to turn byte spans into lines and sections.
pub(super) struct Source<'a> {
    pub origin: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    /// An error at `span` with `message` as given.
    pub(super) fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        ConfigError::Invalid {
            origin: self.origin.to_owned(),
            line,
            column: self.text[line_start..start].chars().count() + 1,
            message: message.into(),
        }
    }

    /// Turns a TOML or serde error into one that names the key and section it happened in.
    pub(super) fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
        let span = error.span().unwrap_or(0..0);
        let raw = error.message().trim();
        let section = self.section_at(span.start);
        let message = if let Some((unknown, hint)) = unknown_key_message(raw, &section) {
            format!("{unknown} in {section}{hint}")
        } else {
            let key = self.key_at(span.start);
            let plain = plain_words(raw, key, self.line_at(span.start));
            match key {
                Some(key) => format!("key `{key}` in {section}: {plain}"),
                None => format!("in {section}: {plain}"),
            }
        };
        self.error(span, message)
    }

    /// The line holding `offset`, without its line break.
    fn line_at(&self, offset: usize) -> &str {
        let offset = offset.min(self.text.len());
        let start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        self.text[start..].lines().next().unwrap_or("")
    }

    /// The key assigned on the line holding `offset`, if that line is a `key = value` line.
    fn key_at(&self, offset: usize) -> Option<&str> {
        let start = self.text[..offset.min(self.text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let line = self.text[start..].lines().next()?;
        let key = line.split_once('=')?.0.trim();
        let bare = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"' | '\'');
        (!key.is_empty() && key.chars().all(bare)).then_some(key)
    }

    /// The table header (`[defaults]`, `[[route]]`) in force at `offset`, or "the top level".
    fn section_at(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let line_end = self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |i| offset + i);
        self.text[..line_end]
            .lines()
            .rev()
            .map(str::trim)
            .find(|line| line.starts_with('['))
            .map(|header| header.split('#').next().unwrap_or(header).trim().to_owned())
            .unwrap_or_else(|| "the top level".to_owned())
    }
}

/// The keys of each place in the file, to tell a user who put a known key in the wrong place
/// where it belongs. A test checks them against the serde structs in `raw.rs`.
const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "admin_listen",
    "buffer_total_bytes",
    "shutdown_grace",
    "client_write_timeout",
    "max_connections",
    "max_streams",
    "header_read_timeout",
    "keepalive_timeout",
    "lean_http1",
    "trusted_proxies",
    "max_streams_per_client",
    "new_streams_per_client",
    "new_streams_burst",
    "shutdown_delay",
    "drain_spread",
];
/// The settings `[defaults]` and every `[[route]]` accept.
const ROUTE_SETTINGS: &[&str] = &[
    "retry",
    "heartbeat",
    "ids",
    "mode",
    "stream_key",
    "buffer_events",
    "buffer_bytes",
    "buffer_age",
    "on_gap",
    "linger",
    "coalesce",
    "max_event_bytes",
    "reconnect_initial",
    "reconnect_max",
    "upstream_connect_timeout",
    "upstream_down_grace",
    "max_clients",
    "upstream_response_timeout",
    "max_request_body",
    "merge_slashes",
    "allow_encoded_slashes",
    "response_headers",
    "upgrades",
    "upgrade_idle_timeout",
    "upstream_ca",
    "upstream_server_name",
    "compress",
    "client_headers",
];
/// The keys only a `[[route]]` has.
const ROUTE_ONLY_KEYS: &[&str] = &["path", "upstream", "sse"];
/// The keys of `[cluster]`.
const CLUSTER_KEYS: &[&str] = &["redis", "password_file", "node", "lease", "prefix", "secret_file"];
/// The keys of `[tls]`.
const TLS_KEYS: &[&str] = &["cert", "key", "min_version"];

/// Where `key`, unknown in `section`, belongs instead, if it is a known key of another place.
fn placement(key: &str, section: &str) -> Option<String> {
    let in_route = section.starts_with("[[route");
    let in_defaults = section.starts_with("[defaults");
    if TOP_LEVEL_KEYS.contains(&key) {
        return Some(format!(
            "`{key}` is a top-level key: put it above the first [section] header (every key below a header belongs to that section)"
        ));
    }
    if ROUTE_SETTINGS.contains(&key) && !in_route && !in_defaults {
        return Some(format!(
            "`{key}` is a route setting: put it in [defaults] (for every route) or in a [[route]]"
        ));
    }
    if ROUTE_ONLY_KEYS.contains(&key) && !in_route {
        return Some(format!("`{key}` belongs in a [[route]]"));
    }
    if CLUSTER_KEYS.contains(&key) && !section.starts_with("[cluster") {
        return Some(format!("`{key}` belongs in [cluster]"));
    }
    if TLS_KEYS.contains(&key) && !section.starts_with("[tls") {
        return Some(format!("`{key}` belongs in [tls]"));
    }
    None
}

/// Rewrites serde's "unknown field `x`, expected one of `a`, `b`" into "unknown key `x`" and a
/// hint: where it belongs when it is a known key of another section, "did you mean" when a
/// known key is close, else the known keys.
fn unknown_key_message(raw: &str, section: &str) -> Option<(String, String)> {
    let rest = raw.strip_prefix("unknown field `")?;
    let (unknown, expected) = rest.split_once('`')?;
    if let Some(place) = placement(unknown, section) {
        return Some((format!("unknown key `{unknown}`"), format!(": {place}")));
    }
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let best = known
        .iter()
        .map(|k| (edit_distance(unknown, k), *k))
        .min()
        .filter(|(distance, k)| *distance <= 2.max(k.len() / 3));
    let hint = match best {
        Some((_, close)) => format!(" (did you mean `{close}`?)"),
        None if known.is_empty() => String::new(),
        None => format!("; known keys: {}", known.join(", ")),
    };
    Some((format!("unknown key `{unknown}`"), hint))
}

/// Puts the TOML parser's and serde's messages in plain words: ``expected newline, `#` `` after
/// `heartbeat = 15s` becomes "text values need quotes: write heartbeat = "15s"". `key` and `line`
/// are where the error is; unrecognised messages pass through, one line.
fn plain_words(raw: &str, key: Option<&str>, line: &str) -> String {
    let first = raw.lines().next().unwrap_or("").trim();
    let rest = raw.lines().skip(1).collect::<Vec<_>>().join("; ");
    // An unquoted text value: suggest the quoted form, written from the line itself.
    let quote_it = || {
        let value = line.split_once('=').map_or("", |(_, value)| value);
        let value = value.split(" #").next().unwrap_or(value).trim();
        match key {
            Some(key) if !value.is_empty() && !value.starts_with(['"', '\'', '[', '{']) => {
                format!("text values need quotes: write {key} = \"{value}\"")
            }
            _ => "unexpected text after the value (text values need quotes; a comment starts with #)"
                .to_owned(),
        }
    };
    if first.starts_with("expected newline") || (first == "invalid string" && rest.contains("expected `\"`"))
    {
        return quote_it();
    }
    if first == "invalid basic string" || first == "invalid literal string" {
        return "a quoted string is not closed: end it with its quote on the same line".to_owned();
    }
    if first == "invalid table header" {
        if let Some(name) = rest
            .strip_prefix("duplicate key `")
            .and_then(|r| r.split('`').next())
        {
            return format!("[{name}] appears twice: keep one and merge their keys (only [[route]] repeats)");
        }
        return "this section header is malformed: write [defaults], [tls], [cluster] or [[route]]"
            .to_owned();
    }
    if first.starts_with("expected `.`, `=`") {
        return "expected `key = value` or a [section] header on this line".to_owned();
    }
    if let Some(name) = first
        .strip_prefix("duplicate key `")
        .and_then(|r| r.split('`').next())
    {
        return format!("`{name}` is set twice here: keep one");
    }
    if first.starts_with("invalid number") || first.starts_with("invalid float") {
        return "not a valid number (a duration or size is a quoted string, like \"15s\" or \"8MiB\")"
            .to_owned();
    }
    if let Some((found, expected)) = first
        .strip_prefix("invalid type: ")
        .and_then(|r| r.split_once(", expected "))
    {
        let expected = match expected {
            "u64" | "u32" | "usize" | "i64" => "a whole number, without quotes",
            "a boolean" => "true or false, without quotes",
            "a string" => "a quoted string",
            "a sequence" => "a list in brackets, like [\"a\", \"b\"]",
            other => other,
        };
        return format!("expected {expected}, found {found}");
    }
    if let Some(name) = first
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        return format!("`{name}` is required here but missing");
    }
    if rest.is_empty() {
        first.to_owned()
    } else {
        format!("{first}; {rest}")
    }
}

/// Levenshtein distance, with an adjacent swap counted as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let raw = "unknown field `hearbeat`, expected one of `retry`, `heartbeat`, `ids`";
        let (head, hint) = unknown_key_message(raw, "[defaults]").expect("recognised");
        assert_eq!(head, "unknown key `hearbeat`");
        assert_eq!(hint, " (did you mean `heartbeat`?)");
        let raw = "unknown field `zzz`, expected `path` or `upstream`";
        let (_, hint) = unknown_key_message(raw, "[[route]]").expect("recognised");
        assert_eq!(hint, "; known keys: path, upstream");
        assert_eq!(edit_distance("retyr", "retry"), 1);
    }

    /// The keys serde expects in the section `header` opens, from its unknown-field message.
    fn keys_of(header: &str) -> Vec<String> {
        let text = format!("{header}\nzzz = 1\n");
        let error = toml::from_str::<super::super::raw::RawConfig>(&text).expect_err("zzz is unknown");
        let message = error.message().to_owned();
        let expected = message.split_once("expected").map_or("", |(_, rest)| rest);
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_key_lists_match_the_config_structs() {
        let tables = ["tls", "cluster", "defaults", "route"];
        let top: Vec<String> = keys_of("")
            .into_iter()
            .filter(|k| !tables.contains(&k.as_str()))
            .collect();
        assert_eq!(top, TOP_LEVEL_KEYS);
        assert_eq!(keys_of("[defaults]"), ROUTE_SETTINGS);
        let route: Vec<String> = ROUTE_ONLY_KEYS
            .iter()
            .chain(ROUTE_SETTINGS)
            .map(|k| k.to_string())
            .collect();
        assert_eq!(keys_of("[[route]]"), route);
        assert_eq!(keys_of("[cluster]"), CLUSTER_KEYS);
        assert_eq!(keys_of("[tls]"), TLS_KEYS);
    }

    #[test]
    fn a_known_key_in_the_wrong_place_says_where_it_belongs() {
        let unknown = |key: &str| format!("unknown field `{key}`, expected `x`");
        let hint =
            |key: &str, section: &str| unknown_key_message(&unknown(key), section).expect("recognised").1;
        assert!(
            hint("heartbeat", "the top level").contains("in [defaults] (for every route) or in a [[route]]")
        );
        assert!(hint("listen", "[[route]]").contains("top-level key: put it above the first [section]"));
        assert!(hint("heartbeat", "[cluster]").contains("route setting"));
        assert!(hint("redis", "[defaults]").contains("belongs in [cluster]"));
        assert!(hint("upstream", "[defaults]").contains("belongs in a [[route]]"));
        assert!(hint("cert", "the top level").contains("belongs in [tls]"));
    }

    #[test]
    fn toml_syntax_errors_in_plain_words() {
        let cases = [
            (
                "expected newline, `#`",
                Some("heartbeat"),
                "heartbeat = 15s",
                "write heartbeat = \"15s\"",
            ),
            (
                "invalid string\nexpected `\"`, `'`",
                Some("path"),
                "path = /events # x",
                "write path = \"/events\"",
            ),
            (
                "invalid basic string",
                Some("listen"),
                "listen = \"127.0.0.1:80",
                "not closed",
            ),
            (
                "invalid table header\nexpected `.`, `]]`",
                None,
                "[[route]",
                "section header is malformed",
            ),
            (
                "invalid table header\nduplicate key `defaults` in document root",
                None,
                "[defaults]",
                "[defaults] appears twice",
            ),
            (
                "duplicate key `listen` in document root",
                Some("listen"),
                "listen = \"a\"",
                "`listen` is set twice",
            ),
            ("expected `.`, `=`", None, "x", "expected `key = value`"),
            (
                "invalid type: string \"100\", expected u64",
                Some("buffer_events"),
                "",
                "a whole number, without quotes",
            ),
        ];
        for (raw, key, line, expected) in cases {
            let plain = plain_words(raw, key, line);
            assert!(
                plain.contains(expected),
                "{raw:?} on {line:?}: {plain:?} lacks {expected:?}"
            );
            assert!(
                !plain.contains("expected newline") && !plain.contains("`#`"),
                "{plain:?}"
            );
        }
    }
}
