//! `[cluster]` resolved into a [`ClusterConfig`]: the Redis URL checked, the password and the
//! shared secret read from their files, the node name made up when the file gives none. Every
//! error names the key and the line; none repeats a password.

use std::io::{self, Read};
use std::sync::OnceLock;

use redis::IntoConnectionInfo;

use super::raw::RawCluster;
use super::*;

/// The schemes `redis` accepts, as the errors name them.
const SCHEMES: &str = "redis://host:port, rediss://host:port (TLS) or unix:///path/to/redis.sock";

/// Where `[cluster]`'s secrets came from, as resolved (relative to the config file's
/// directory): what `check` prints in their place, so that its output loads again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterFiles {
    /// `secret_file`.
    pub(crate) secret: PathBuf,
    /// `password_file`, if the password came from one.
    pub(crate) password: Option<PathBuf>,
}

/// The largest `secret_file` or `password_file`: each holds one short value, and a path such as
/// `/dev/zero` must not be read forever.
const MAX_FILE_BYTES: u64 = 64 << 10;

pub(super) fn resolve_cluster(
    source: &Source<'_>,
    cluster: &Spanned<RawCluster>,
    dir: &Path,
) -> Result<(ClusterConfig, ClusterFiles), ConfigError> {
    let section = cluster.span();
    let raw = cluster.get_ref();
    let fail = |span: std::ops::Range<usize>, key: &str, why: String| {
        source.error(span, format!("key `{key}` in [cluster]: {why}"))
    };
    let Some(redis) = &raw.redis else {
        return Err(fail(
            section,
            "redis",
            format!("missing: the Redis server the instances share streams through, as {SCHEMES}"),
        ));
    };
    let url_password = redis_password(redis.get_ref()).map_err(|why| fail(redis.span(), "redis", why))?;
    let password = match (&raw.password_file, url_password) {
        (Some(file), Some(_)) => {
            let line = source.text[..redis.span().start.min(source.text.len())]
                .matches('\n')
                .count()
                + 1;
            return Err(fail(
                file.span(),
                "password_file",
                format!("the `redis` URL on line {line} carries a password too; drop one of them (password_file keeps the password out of the config file)"),
            ));
        }
        (Some(file), None) => {
            let bytes = read_file(dir, file).map_err(|why| fail(file.span(), "password_file", why))?;
            let text = String::from_utf8(bytes).map_err(|_| {
                fail(
                    file.span(),
                    "password_file",
                    format!("{} is not UTF-8 text", dir.join(file.get_ref()).display()),
                )
            })?;
            let password = text.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                return Err(fail(
                    file.span(),
                    "password_file",
                    format!(
                        "{} is empty; it should hold the Redis password",
                        dir.join(file.get_ref()).display()
                    ),
                ));
            }
            Some(password.to_owned())
        }
        (None, password) => password,
    };
    let node = match &raw.node {
        Some(node) => {
            check_name(node.get_ref(), "", 64).map_err(|why| fail(node.span(), "node", why))?;
            node.get_ref().clone()
        }
        None => default_node(),
    };
    let lease = match &raw.lease {
        Some(lease) => {
            let duration = lease.get_ref().0;
            if duration < MIN_LEASE || duration > MAX_LEASE {
                return Err(fail(
                    lease.span(),
                    "lease",
                    format!(
                        "{} is outside {} to {}: renewals need time to reach Redis, and a dead leader's streams stay unread for the whole lease",
                        format_duration(duration),
                        format_duration(MIN_LEASE),
                        format_duration(MAX_LEASE)
                    ),
                ));
            }
            duration
        }
        None => DEFAULT_LEASE,
    };
    let prefix = match &raw.prefix {
        Some(prefix) => {
            check_name(prefix.get_ref(), ":", 64).map_err(|why| fail(prefix.span(), "prefix", why))?;
            prefix.get_ref().clone()
        }
        None => DEFAULT_PREFIX.to_owned(),
    };
    let Some(secret_file) = &raw.secret_file else {
        return Err(fail(
            section,
            "secret_file",
            format!("missing: a file holding a shared secret (at least {MIN_SECRET_BYTES} bytes) that keys the digests naming streams in Redis; the same file on every instance (e.g. `head -c 32 /dev/urandom | base64 > secret`)"),
        ));
    };
    let mut secret =
        read_file(dir, secret_file).map_err(|why| fail(secret_file.span(), "secret_file", why))?;
    while secret.last().is_some_and(u8::is_ascii_whitespace) {
        secret.pop();
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(fail(
            secret_file.span(),
            "secret_file",
            format!(
                "{} holds {} bytes (trailing whitespace aside); the shared secret needs at least {MIN_SECRET_BYTES}",
                dir.join(secret_file.get_ref()).display(),
                secret.len()
            ),
        ));
    }
    let files = ClusterFiles {
        secret: dir.join(secret_file.get_ref()),
        password: raw.password_file.as_ref().map(|file| dir.join(file.get_ref())),
    };
    let cluster = ClusterConfig {
        redis: redis.get_ref().clone(),
        password,
        node,
        lease,
        prefix,
        secret,
    };
    Ok((cluster, files))
}

/// Checks a Redis URL the way the client will read it; returns its password, if it has one.
/// The errors never quote the URL: it may hold a password.
fn redis_password(text: &str) -> Result<Option<String>, String> {
    let Some((scheme, _)) = text.split_once("://") else {
        return Err(format!("not a URL; write {SCHEMES}"));
    };
    if !matches!(scheme.to_ascii_lowercase().as_str(), "redis" | "rediss" | "unix") {
        return Err(format!(
            "the scheme {scheme:?} is not one ssegate connects with; write {SCHEMES}"
        ));
    }
    let url =
        redis::parse_redis_url(text).ok_or_else(|| format!("not a URL ssegate can read; write {SCHEMES}"))?;
    let info = url
        .into_connection_info()
        .map_err(|e| format!("not a Redis URL ssegate can use ({e}); write {SCHEMES}"))?;
    Ok(info.redis_settings().password().map(str::to_owned))
}

/// `text` with any password in it (`user:password@`, or `pass=` of a unix URL) written `***`.
fn mask_password(text: &str) -> String {
    let Some(mut url) = redis::parse_redis_url(text) else {
        return "<not a URL>".to_owned();
    };
    let mut masked = false;
    if url.password().is_some() {
        masked = url.set_password(Some("***")).is_ok();
        if !masked {
            return "<a URL with a password>".to_owned();
        }
    }
    if url.query_pairs().any(|(key, _)| key == "pass") {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(key, value)| {
                let value = if key == "pass" {
                    "***".into()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(&pairs);
        masked = true;
    }
    if masked {
        url.to_string()
    } else {
        text.to_owned()
    }
}

impl ClusterConfig {
    /// The `redis` URL with its password, if it holds one, written `***`: for logs and `check`.
    pub fn redis_masked(&self) -> String {
        mask_password(&self.redis)
    }
}

/// Reads a file named in `[cluster]`, relative to the config file's directory.
fn read_file(dir: &Path, file: &Spanned<String>) -> Result<Vec<u8>, String> {
    if file.get_ref().trim().is_empty() {
        return Err("a file path is needed".to_owned());
    }
    let path = dir.join(file.get_ref());
    let cannot = |e: io::Error| format!("cannot read {}: {e}", path.display());
    let opened = std::fs::File::open(&path).map_err(cannot)?;
    if !opened.metadata().map_err(cannot)?.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let mut bytes = Vec::new();
    opened
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "{} is larger than {}; it should hold one short value",
            path.display(),
            format_size(MAX_FILE_BYTES)
        ));
    }
    Ok(bytes)
}

/// Checks a node name or key prefix: 1 to `max` bytes of ASCII letters, digits, `.`, `_`, `-`
/// and the characters in `also`.
fn check_name(text: &str, also: &str, max: usize) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || also.contains(c);
    let listed = if also.is_empty() {
        "letters, digits, `.`, `_` and `-`".to_owned()
    } else {
        format!("letters, digits, `.`, `_`, `-` and `{also}`")
    };
    if text.is_empty() || text.len() > max {
        return Err(format!("{text:?} must be 1 to {max} bytes long"));
    }
    if let Some(bad) = text.chars().find(|c| !allowed(*c)) {
        let why = if matches!(bad, '{' | '}') {
            " (braces would make a Redis Cluster hash tag of their own)"
        } else {
            ""
        };
        return Err(format!("{text:?} holds {bad:?}{why}; only {listed} are allowed"));
    }
    Ok(())
}

/// This host's name and a random suffix: unique per process, and the same for every reload of
/// it (a reload must not make the instance a stranger to its own leases).
fn default_node() -> String {
    static NODE: OnceLock<String> = OnceLock::new();
    NODE.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .or_else(|| {
                std::env::var("HOSTNAME")
                    .ok()
                    .filter(|name| !name.trim().is_empty())
            })
            .unwrap_or_else(|| "ssegate".to_owned());
        node_name(&host, &random_suffix())
    })
    .clone()
}

/// `host` made a valid node name (characters outside the allowed set become `-`, cut to leave
/// room for the suffix), then `-` and `suffix`.
fn node_name(host: &str, suffix: &str) -> String {
    let room = 64 - 1 - suffix.len();
    let mut name: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(room)
        .collect();
    if name.is_empty() {
        name.push_str("ssegate");
    }
    name.push('-');
    name.push_str(suffix);
    name
}

/// Six random base-36 characters.
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..6)
        .map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_password("redis://user:hunter2@127.0.0.1:6379/2"),
            "redis://user:***@127.0.0.1:6379/2"
        );
        assert_eq!(mask_password("redis://:hunter2@h"), "redis://:***@h");
        assert_eq!(mask_password("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        let unix = mask_password("unix:///run/redis.sock?db=3&pass=hunter2");
        assert!(
            !unix.contains("hunter2") && unix.contains("pass=***") && unix.contains("db=3"),
            "{unix}"
        );
    }

    #[test]
    fn node_names_from_host_names() {
        assert_eq!(node_name("web-1.example", "abc123"), "web-1.example-abc123");
        assert_eq!(node_name("bad host!", "abc123"), "bad-host--abc123");
        assert_eq!(node_name("", "abc123"), "ssegate-abc123");
        let long = node_name(&"h".repeat(100), "abc123");
        assert_eq!(long.len(), 64);
        assert!(check_name(&long, "", 64).is_ok());
        let node = default_node();
        assert!(check_name(&node, "", 64).is_ok(), "{node}");
        assert_eq!(default_node(), node, "one name per process");
    }
}
