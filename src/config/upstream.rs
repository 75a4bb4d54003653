//! A route's `upstream`: the app's base URL.

use super::*;

/// An upstream base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    /// Path prefix put before every request path; empty or starting with `/`, no trailing `/`.
    base_path: String,
}

impl Upstream {
    /// Parses a base URL such as `http://127.0.0.1:3000` or `http://app:8000/api`.
    pub fn parse(text: &str) -> Result<Upstream, String> {
        let uri: Uri = text.parse().map_err(|e| format!("{text:?} is not a URL ({e})"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("{text:?} has no scheme; write it like \"http://127.0.0.1:3000\""))?;
        if scheme != Scheme::HTTP {
            return Err(format!(
                "{text:?}: only http:// upstreams are supported; ssegate speaks plain HTTP to an app on loopback or a private network"
            ));
        }
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
            scheme,
            authority,
            base_path,
        })
    }

    /// The upstream URL for a request: the base path, then the request's path and query. An
    /// asterisk-form target (`OPTIONS *`) stays `*`: it names the server, not a path.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        if path_and_query == "*" {
            return Uri::builder()
                .scheme(self.scheme.clone())
                .authority(self.authority.clone())
                .path_and_query("*")
                .build();
        }
        let mut joined = String::with_capacity(self.base_path.len() + path_and_query.len());
        joined.push_str(&self.base_path);
        joined.push_str(path_and_query);
        if !joined.starts_with('/') {
            joined.insert(0, '/');
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(joined)
            .build()
    }

    /// `host:port` of the upstream.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}
