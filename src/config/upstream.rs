//! A route's `upstream`, and the keys of its TLS: the app over TCP (`http://`), over TLS
//! (`https://`, with `upstream_ca` and `upstream_server_name`) or over a Unix socket (`unix:`).
//! Files are looked at when the config loads, so `check` names the line of a CA file that is
//! not PEM or of a socket path that is not a socket.

use std::io::{self, Read};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use super::*;

/// How ssegate reaches a route's app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// `http://host:port`: HTTP/1.1 over TCP.
    Http(Authority),
    /// `https://host:port`: TLS over TCP, HTTP/2 or HTTP/1.1 as the app's ALPN answer says.
    Https(Authority),
    /// `unix:/path/to/app.sock`: HTTP/1.1 over a Unix domain socket.
    Unix(PathBuf),
}

/// An upstream base URL: where the app is, and the path put before every request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    transport: Transport,
    /// Path prefix put before every request path; empty or starting with `/`, no trailing `/`.
    base_path: String,
}

/// How an `https://` upstream is trusted: the route's `upstream_ca` and `upstream_server_name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The certificates of `upstream_ca`, which replace the system's roots; `None`: the system's.
    pub ca: Option<CaFile>,
    /// The name the app's certificate must be valid for, sent as SNI (an IP address is checked
    /// but not sent): `upstream_server_name`, else the host of the URL.
    pub server_name: ServerName<'static>,
    /// Whether `upstream_server_name` set it (`check` prints it then).
    pub(crate) named: bool,
}

/// An `upstream_ca` file, read and parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFile {
    /// Where it was read from (relative to the config file's directory, resolved).
    pub path: PathBuf,
    /// Its certificates, each checked to be one a trust anchor can be made of.
    pub certs: Vec<CertificateDer<'static>>,
}

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes on Linux, with the
/// terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The largest `upstream_ca` file: a system bundle of every public root is about 220 KiB.
const MAX_CA_BYTES: u64 = 1 << 20;

/// The authority of the URL of a request to a Unix socket upstream: the connection goes to the
/// socket whatever it says, and a request without a Host header gets this one.
const UNIX_AUTHORITY: &str = "localhost";

/// The forms `upstream` accepts, as errors name them.
const FORMS: &str =
    "\"http://127.0.0.1:3000\", \"https://app.internal:8443\" or \"unix:/run/app.sock\" (a base path after it: \"http://app:8000/api\", \"unix:/run/app.sock:/api\")";

impl Upstream {
    /// Parses a base URL such as `http://127.0.0.1:3000`, `https://app:8443/api` or
    /// `unix:/run/app.sock:/api`; a relative socket path is relative to the current directory.
    pub fn parse(text: &str) -> Result<Upstream, String> {
        Upstream::parse_in(text, Path::new(""))
    }

    /// [`Upstream::parse`], with a relative socket path relative to `dir` (the config file's).
    pub(super) fn parse_in(text: &str, dir: &Path) -> Result<Upstream, String> {
        if let Some(rest) = text.strip_prefix("unix:") {
            return Upstream::parse_unix(text, rest, dir);
        }
        if text.starts_with("http://unix:") || text.starts_with("https://unix:") {
            let rest = text.split_once("unix:").map_or("", |(_, rest)| rest);
            return Err(format!(
                "{text:?}: a Unix socket upstream is written \"unix:{rest}\" (Nginx's http://unix: form is not used)"
            ));
        }
        let uri: Uri = text
            .parse()
            .map_err(|e| format!("{text:?} is not a URL ({e}); write it like {FORMS}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("{text:?} has no scheme; write it like {FORMS}"))?;
        let https = if scheme == Scheme::HTTP {
            false
        } else if scheme == Scheme::HTTPS {
            true
        } else {
            return Err(format!(
                "{text:?}: the scheme {scheme} is not one ssegate speaks; write it like {FORMS}"
            ));
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{text:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{text:?}: credentials in the URL are not supported"));
        }
        if uri.query().is_some() {
            return Err(format!("{text:?}: an upstream base URL cannot have a query"));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(Upstream {
            transport: if https {
                Transport::Https(authority)
            } else {
                Transport::Http(authority)
            },
            base_path,
        })
    }

    /// `unix:PATH` or `unix:PATH:BASE`: the socket's path ends at the first `:`, so what
    /// follows one is always the base path, which starts with `/`; a socket path cannot hold a
    /// `:`.
    fn parse_unix(text: &str, rest: &str, dir: &Path) -> Result<Upstream, String> {
        let example = "\"unix:/run/app.sock\", or with a base path \"unix:/run/app.sock:/api\"";
        if rest.starts_with("//") {
            return Err(format!(
                "{text:?}: the socket's path follows \"unix:\" directly, without \"//\": write {example}"
            ));
        }
        let (path, base) = match rest.split_once(':') {
            Some((path, base)) => (path, Some(base)),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(format!("{text:?}: the socket's path is missing; write {example}"));
        }
        if path.contains('\0') {
            return Err(format!("{text:?}: the socket's path holds a NUL byte"));
        }
        let base_path = match base {
            None => String::new(),
            Some(base) if base.starts_with('/') => {
                let parsed: http::uri::PathAndQuery = base
                    .parse()
                    .map_err(|_| format!("{text:?}: {base:?} is not a URL path"))?;
                if parsed.query().is_some() || base.contains('#') {
                    return Err(format!("{text:?}: an upstream base path cannot have a query"));
                }
                parsed.path().trim_end_matches('/').to_owned()
            }
            Some(base) => {
                return Err(format!(
                    "{text:?}: after the socket's path, a \":\" starts the base path, which begins with \"/\" (so a socket path cannot hold a \":\"); write {example}, not {base:?} after the colon"
                ));
            }
        };
        let path = dir.join(path);
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!(
                "{text:?}: the socket's path {} is {} bytes long; a Unix socket address holds at most {MAX_SOCKET_PATH}",
                path.display(),
                path.as_os_str().len()
            ));
        }
        if !cfg!(unix) {
            return Err(format!("{text:?}: Unix sockets are not available on this system"));
        }
        check_socket_path(&path, base.is_none()).map_err(|why| format!("{text:?}: {why}"))?;
        Ok(Upstream {
            transport: Transport::Unix(path),
            base_path,
        })
    }

    /// The upstream URL for a request: the base path, then the request's path and query. An
    /// asterisk-form target (`OPTIONS *`) stays `*`: it names the server, not a path. For a
    /// Unix socket the URL's authority is `localhost`: the connection goes to the socket.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let (scheme, authority) = match &self.transport {
            Transport::Http(authority) => (Scheme::HTTP, authority.clone()),
            Transport::Https(authority) => (Scheme::HTTPS, authority.clone()),
            Transport::Unix(_) => (Scheme::HTTP, Authority::from_static(UNIX_AUTHORITY)),
        };
        let builder = Uri::builder().scheme(scheme).authority(authority);
        if path_and_query == "*" {
            return builder.path_and_query("*").build();
        }
        let mut joined = String::with_capacity(self.base_path.len() + path_and_query.len());
        joined.push_str(&self.base_path);
        joined.push_str(path_and_query);
        if !joined.starts_with('/') {
            joined.insert(0, '/');
        }
        builder.path_and_query(joined).build()
    }

    /// How the app is reached.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// What is likely a mistake but may be right later: a socket that does not exist yet (the
    /// app may start after ssegate), or one whose path cannot be looked at.
    pub(super) fn warning(&self) -> Option<String> {
        let Transport::Unix(path) = &self.transport else {
            return None;
        };
        match std::fs::metadata(path) {
            Ok(_) => None,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some(format!(
                "the socket {} does not exist (yet): requests get 502 until the app creates it",
                path.display()
            )),
            Err(e) => Some(format!("the socket {} cannot be looked at: {e}", path.display())),
        }
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.transport {
            Transport::Http(authority) => write!(f, "http://{authority}{}", self.base_path),
            Transport::Https(authority) => write!(f, "https://{authority}{}", self.base_path),
            Transport::Unix(path) if self.base_path.is_empty() => write!(f, "unix:{}", path.display()),
            Transport::Unix(path) => write!(f, "unix:{}:{}", path.display(), self.base_path),
        }
    }
}

/// Refuses a socket path that names something other than a socket, or that goes on past one
/// (`unix:/run/app.sock/api`, with `/api` meant as the base path: `single` says the text had no
/// base path, so the hint applies). A path that does not exist is fine: the app may create it
/// later (`check` warns).
fn check_socket_path(path: &Path, single: bool) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        match std::fs::metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => Ok(()),
            Ok(meta) => {
                let what = if meta.is_dir() {
                    "a directory"
                } else if meta.is_file() {
                    "a regular file"
                } else {
                    "not a socket"
                };
                Err(format!("{} is {what}, not a Unix socket", path.display()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                let socket = path
                    .ancestors()
                    .skip(1)
                    .find(|prefix| std::fs::metadata(prefix).is_ok_and(|meta| meta.file_type().is_socket()));
                match socket {
                    Some(socket) if single => {
                        let base = path
                            .strip_prefix(socket)
                            .map_or_else(|_| PathBuf::new(), Path::to_path_buf);
                        Err(format!(
                            "{} is a socket, and a socket's path cannot go on past it; for a base path write \"unix:{}:/{}\"",
                            socket.display(),
                            socket.display(),
                            base.display()
                        ))
                    }
                    _ => Err(format!(
                        "{}: a part of the path is not a directory",
                        path.display()
                    )),
                }
            }
            Err(_) => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, single);
        Ok(())
    }
}

/// The TLS of an `https://` route to `authority` (written in `url`), from its (or `[defaults]`') `upstream_ca` and
/// `upstream_server_name`; `fail` makes an error at a value's span, naming the key.
pub(super) fn resolve_tls(
    (authority, url): (&Authority, &Spanned<String>),
    ca: Option<&Spanned<String>>,
    name: Option<&Spanned<String>>,
    dir: &Path,
    fail: &dyn Fn(std::ops::Range<usize>, &str, String) -> ConfigError,
) -> Result<UpstreamTls, ConfigError> {
    let ca = ca
        .map(|file| read_ca(dir, file.get_ref()).map_err(|why| fail(file.span(), "upstream_ca", why)))
        .transpose()?;
    let (server_name, named) = match name {
        Some(name) => {
            let parsed = ServerName::try_from(name.get_ref().as_str())
                .map(|n| n.to_owned())
                .map_err(|_| {
                    fail(
                        name.span(),
                        "upstream_server_name",
                        format!(
                            "{:?} is not a host name or an IP address (no scheme, no port)",
                            name.get_ref()
                        ),
                    )
                })?;
            (parsed, true)
        }
        None => {
            // An IPv6 literal is bracketed in a URL, not in a server name.
            let host = authority.host().trim_start_matches('[').trim_end_matches(']');
            let parsed = ServerName::try_from(host).map(|n| n.to_owned()).map_err(|_| {
                fail(
                    url.span(),
                    "upstream",
                    format!("the host {host:?} is not a name a TLS certificate can be checked for; set upstream_server_name"),
                )
            })?;
            (parsed, false)
        }
    };
    Ok(UpstreamTls {
        ca,
        server_name,
        named,
    })
}

/// Reads an `upstream_ca` file: PEM text holding at least one certificate, each one a trust
/// anchor can be made of.
fn read_ca(dir: &Path, file: &str) -> Result<CaFile, String> {
    if file.trim().is_empty() {
        return Err("a file path is needed".to_owned());
    }
    let path = dir.join(file);
    let cannot = |e: io::Error| format!("cannot read {}: {e}", path.display());
    let opened = std::fs::File::open(&path).map_err(cannot)?;
    let meta = opened.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let too_large = || {
        format!(
            "{} is larger than {}; a CA file holds a few certificates",
            path.display(),
            format_size(MAX_CA_BYTES)
        )
    };
    if meta.len() > MAX_CA_BYTES {
        return Err(too_large());
    }
    // Read up to one byte past the bound: a file may say it is smaller than it is (/proc).
    let mut pem = Vec::new();
    opened
        .take(MAX_CA_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(cannot)?;
    if pem.len() as u64 > MAX_CA_BYTES {
        return Err(too_large());
    }
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\"); a DER file converts with `openssl x509 -inform der -in ca.der -out ca.pem`",
            path.display()
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (n, cert) in certs.iter().enumerate() {
        roots.add(cert.clone()).map_err(|e| {
            format!(
                "certificate {} of {} cannot be used as a trusted root: {e}",
                n + 1,
                path.display()
            )
        })?;
    }
    Ok(CaFile { path, certs })
}

#[cfg(test)]
mod tests;
