//! The request target and Host of a client request, checked and normalised once, before
//! routing: the path that picks the route is the path the stream key sees and the upstream
//! receives, so no spelling of a path can route one way and reach the app another.
//!
//! - Request target forms (RFC 9112 §3.2): origin-form (`/path?query`) for every method;
//!   absolute-form (`http://host/path`), whose authority replaces the Host header (§3.2.2);
//!   authority-form only for CONNECT; asterisk-form (`*`) only for OPTIONS.
//! - Host (RFC 9112 §3.2): "A server MUST respond with a 400 (Bad Request) status code to any
//!   HTTP/1.1 request message that lacks a Host header field and to any request message that
//!   contains more than one Host header field line or a Host header field with an invalid field
//!   value." Over HTTP/2, `:authority` is the Host, and a `host` field that names another entity
//!   is malformed (RFC 9113 §8.3.1). Userinfo is never accepted (RFC 9110 §4.2.4).
//! - The path (RFC 3986 §6.2.2): percent-encoded unreserved characters are decoded (and the hex
//!   of every other escape upper-cased), then dot-segments are removed (§5.2.4), `%2e` included.
//!   Repeated slashes are merged for routing; the route says whether its upstream gets them
//!   merged too (`merge_slashes`). An encoded slash or a backslash, which apps and frameworks
//!   read in different ways, is refused unless the route allows it (`allow_encoded_slashes`).

use std::fmt;

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Uri, Version};

use crate::config::Settings;

/// Why a request was refused before routing. Always the client's doing: 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// An HTTP/1.1 request without Host.
    MissingHost,
    /// More than one Host field.
    DuplicateHost,
    /// A Host value that is not `host[:port]`.
    InvalidHost,
    /// An HTTP/2 `host` field that names another entity than `:authority`.
    HostMismatch,
    /// `user@` in the target or Host.
    Userinfo,
    /// A target form the method may not use, or a target that is no URI ssegate serves.
    TargetForm(&'static str),
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// A dot-segment with parameters (`..;`), which some servers read as `..`.
    DotParameters,
    /// An encoded slash (`%2F`), encoded backslash (`%5C`) or backslash, on a route that does not
    /// allow them.
    EncodedSlash,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::MissingHost => f.write_str("HTTP/1.1 request without Host"),
            Refused::DuplicateHost => f.write_str("more than one Host header"),
            Refused::InvalidHost => f.write_str("Host is not a valid host[:port]"),
            Refused::HostMismatch => f.write_str("host header differs from :authority"),
            Refused::Userinfo => f.write_str("userinfo (user@) in the request target or Host"),
            Refused::TargetForm(why) => f.write_str(why),
            Refused::BadEscape => f.write_str("a % in the path not followed by two hex digits"),
            Refused::DotParameters => f.write_str("a dot-segment with parameters (..;) in the path"),
            Refused::EncodedSlash => {
                f.write_str("an encoded slash or a backslash in the path (the route does not allow them)")
            }
        }
    }
}

impl std::error::Error for Refused {}

/// A request's checked target: the normalised path, in the two spellings routing and the
/// upstream may use, and the Host it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The normalised path with repeated slashes kept.
    pub path: String,
    /// The normalised path with repeated slashes merged: what routing uses.
    pub merged: String,
    /// `OPTIONS *`: forwarded as `*`, routed as `/`.
    pub asterisk: bool,
    /// The Host the request names (from an absolute-form target or `:authority` first).
    pub host: Option<HeaderValue>,
}

impl Target {
    /// Checks the target and Host of `request` and normalises its path. Changes nothing.
    pub fn of<B>(request: &Request<B>) -> Result<Target, Refused> {
        let headers = request.headers();
        let mut hosts = headers.get_all(header::HOST).iter();
        let host_field = hosts.next();
        if hosts.next().is_some() {
            return Err(Refused::DuplicateHost);
        }
        if let Some(value) = host_field {
            check_host(value)?;
        }
        let uri = request.uri();
        let h2 = request.version() >= Version::HTTP_2;
        // Over HTTP/2 the URI is made of pseudo-fields: `:authority` is the Host.
        let authority = uri.authority();
        if authority.is_some_and(|a| a.as_str().contains('@')) {
            return Err(Refused::Userinfo);
        }
        let host = if h2 {
            match (authority, host_field) {
                (Some(authority), Some(field))
                    if !authority
                        .as_str()
                        .eq_ignore_ascii_case(&String::from_utf8_lossy(field.as_bytes())) =>
                {
                    return Err(Refused::HostMismatch);
                }
                (Some(authority), _) => Some(header_value(authority)?),
                (None, field) => field.cloned(),
            }
        } else {
            if request.version() == Version::HTTP_11 && host_field.is_none() {
                return Err(Refused::MissingHost);
            }
            match (uri.scheme(), authority) {
                // absolute-form: "the proxy MUST ignore the received Host header field (if any)
                // and instead replace it with the host information of the request-target".
                (Some(scheme), Some(authority)) => {
                    if *scheme != Scheme::HTTP && *scheme != Scheme::HTTPS {
                        return Err(Refused::TargetForm(
                            "absolute-form target with a scheme other than http or https",
                        ));
                    }
                    Some(header_value(authority)?)
                }
                (None, Some(_)) if request.method() != Method::CONNECT => {
                    return Err(Refused::TargetForm(
                        "authority-form target on a method other than CONNECT",
                    ));
                }
                _ => host_field.cloned(),
            }
        };
        let raw = uri.path();
        if raw == "*" {
            if request.method() != Method::OPTIONS {
                return Err(Refused::TargetForm(
                    "asterisk-form target on a method other than OPTIONS",
                ));
            }
            return Ok(Target {
                path: "*".to_owned(),
                merged: "/".to_owned(),
                asterisk: true,
                host,
            });
        }
        if request.method() == Method::CONNECT && request.extensions().get::<hyper::ext::Protocol>().is_none()
        {
            // Answered by ssegate itself (not proxied); nothing to route.
            return Ok(Target {
                path: "/".to_owned(),
                merged: "/".to_owned(),
                asterisk: false,
                host,
            });
        }
        if !raw.starts_with('/') {
            return Err(Refused::TargetForm("request target is not a path"));
        }
        let path = normalise_path(raw)?;
        let merged = merge_slashes(&path);
        Ok(Target {
            path,
            merged,
            asterisk: false,
            host,
        })
    }

    /// The path the route's upstream gets, under the route's rules: merged unless the route
    /// keeps repeated slashes; refused when it holds an encoded slash the route does not allow.
    pub fn path_for(&self, settings: &Settings) -> Result<&str, Refused> {
        if !settings.allow_encoded_slashes && has_encoded_slash(&self.path) {
            return Err(Refused::EncodedSlash);
        }
        Ok(if settings.merge_slashes || self.asterisk {
            &self.merged
        } else {
            &self.path
        })
    }

    /// Rewrites `request` to `path` (origin-form, the query kept; `*` for asterisk-form) and
    /// its Host field to the one the target named. HTTP/2 `cookie` crumbs become one `Cookie`
    /// header for the HTTP/1.1 upstream (RFC 9113 §8.2.3).
    pub fn apply<B>(&self, request: &mut Request<B>, path: &str) -> Result<(), Refused> {
        let target = if self.asterisk {
            "*".to_owned()
        } else {
            match request.uri().query() {
                Some(query) => format!("{path}?{query}"),
                None => path.to_owned(),
            }
        };
        let path_and_query = PathAndQuery::try_from(target)
            .map_err(|_| Refused::TargetForm("request target is not a valid URI path"))?;
        *request.uri_mut() = Uri::from(path_and_query);
        let headers = request.headers_mut();
        match &self.host {
            Some(host) => {
                headers.insert(header::HOST, host.clone());
            }
            None => {
                headers.remove(header::HOST);
            }
        }
        if request.version() >= Version::HTTP_2 {
            join_cookie_crumbs(request.headers_mut());
        }
        Ok(())
    }
}

/// A Host field value must be `uri-host [ ":" port ]` (or empty, for a target without
/// authority), without userinfo.
fn check_host(value: &HeaderValue) -> Result<(), Refused> {
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return Ok(());
    }
    if bytes.contains(&b'@') {
        return Err(Refused::Userinfo);
    }
    let authority = Authority::try_from(bytes).map_err(|_| Refused::InvalidHost)?;
    if authority.as_str().len() != bytes.len() || authority.host().is_empty() {
        return Err(Refused::InvalidHost);
    }
    // `host [":" port]`, the port digits up to 65535 (the `http` crate takes `a:b` as well).
    let rest = &authority.as_str()[authority.host().len()..];
    match rest.strip_prefix(':') {
        None if rest.is_empty() => Ok(()),
        Some(port)
            if port.is_empty() || port.parse::<u16>().is_ok() && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Ok(())
        }
        _ => Err(Refused::InvalidHost),
    }
}

fn header_value(authority: &Authority) -> Result<HeaderValue, Refused> {
    let value = HeaderValue::from_str(authority.as_str()).map_err(|_| Refused::InvalidHost)?;
    check_host(&value)?;
    Ok(value)
}

/// RFC 3986 §2.3: the characters that mean the same whether percent-encoded or not.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Decodes percent-encoded unreserved characters, upper-cases the hex of the other escapes
/// (RFC 3986 §6.2.2.1–2), then removes dot-segments (§5.2.4). `raw` starts with `/`.
pub fn normalise_path(raw: &str) -> Result<String, Refused> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte != b'%' {
            decoded.push(byte);
            i += 1;
            continue;
        }
        let (Some(high), Some(low)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(Refused::BadEscape);
        };
        let value = high << 4 | low;
        if is_unreserved(value) {
            decoded.push(value);
        } else {
            decoded.push(b'%');
            decoded.extend_from_slice(format!("{value:02X}").as_bytes());
        }
        i += 3;
    }
    // Only unreserved ASCII was decoded, into a string that was valid UTF-8 around it.
    let decoded = String::from_utf8(decoded).map_err(|_| Refused::BadEscape)?;
    remove_dot_segments(&decoded)
}

/// RFC 3986 §5.2.4, on an absolute path. A `..` above the root is dropped, as the RFC says.
/// Segments such as `..;x`, which servers that strip path parameters read as `..`, are
/// refused rather than guessed at.
fn remove_dot_segments(path: &str) -> Result<String, Refused> {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (index, segment) in segments.iter().enumerate() {
        // `..;x` (and `..%3Bx`, for a server that decodes before it strips parameters).
        let end = [segment.find(';'), segment.find("%3B")]
            .into_iter()
            .flatten()
            .min();
        if let Some(end) = end {
            if matches!(&segment[..end], "." | "..") {
                return Err(Refused::DotParameters);
            }
        }
        match *segment {
            "." => {
                if index == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if index == last {
                    out.push("");
                }
            }
            other => out.push(other),
        }
    }
    let mut normal = String::with_capacity(path.len());
    for segment in &out {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() {
        normal.push('/');
    }
    Ok(normal)
}

/// The path with every run of slashes made one (Nginx's `merge_slashes on`).
pub(crate) fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut previous = '\0';
    for c in path.chars() {
        if !(c == '/' && previous == '/') {
            out.push(c);
        }
        previous = c;
    }
    out
}

/// An encoded slash or backslash, or a raw backslash: read as a separator by some apps only.
fn has_encoded_slash(path: &str) -> bool {
    path.contains('\\') || path.contains("%2F") || path.contains("%5C")
}

/// Joins every `cookie` field into one, separated by `; ` (RFC 9113 §8.2.3: "If there are
/// multiple cookie header fields after decompression, these MUST be concatenated into a single
/// octet string using the two-octet delimiter of 0x3b, 0x20 (the ASCII string "; ") before being
/// passed into a non-HTTP/2 context").
fn join_cookie_crumbs(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (crumbs.next(), crumbs.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for crumb in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(crumb.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, version: Version, target: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).version(version).uri(target);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request")
    }

    fn get(target: &str) -> Result<Target, Refused> {
        Target::of(&request(
            Method::GET,
            Version::HTTP_11,
            target,
            &[("host", "app.test")],
        ))
    }

    #[test]
    fn paths_are_normalised_once() {
        let cases = [
            ("/events", "/events", "/events"),
            ("/events/../admin/x", "/admin/x", "/admin/x"),
            ("/events/%2e%2e/admin/x", "/admin/x", "/admin/x"),
            ("/events/%2E%2e/admin/x", "/admin/x", "/admin/x"),
            ("/events/.%2e/admin", "/admin", "/admin"),
            ("//admin/x", "//admin/x", "/admin/x"),
            ("/a//b///c", "/a//b///c", "/a/b/c"),
            ("/ev%65nts/%7Euser", "/events/~user", "/events/~user"),
            ("/a/%2f/b", "/a/%2F/b", "/a/%2F/b"),
            ("/a%20b", "/a%20b", "/a%20b"),
            ("/a/./b/.", "/a/b/", "/a/b/"),
            ("/a/b/..", "/a/", "/a/"),
            ("/../../x", "/x", "/x"),
            ("/..", "/", "/"),
            ("/.", "/", "/"),
            ("/", "/", "/"),
            ("/a..b/...", "/a..b/...", "/a..b/..."),
            ("/é", "/é", "/é"),
        ];
        for (raw, path, merged) in cases {
            let target = get(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(
                (target.path.as_str(), target.merged.as_str()),
                (path, merged),
                "{raw}"
            );
            // Normal form is a fixed point: normalising again changes nothing.
            assert_eq!(normalise_path(&target.path).as_deref(), Ok(path), "{raw} twice");
        }
        for (raw, why) in [
            ("/a%2", Refused::BadEscape),
            ("/a%zz", Refused::BadEscape),
            ("/a%", Refused::BadEscape),
            ("/a/..;/admin", Refused::DotParameters),
            ("/a/.;x/b", Refused::DotParameters),
            ("/a/%2e%2e;/admin", Refused::DotParameters),
            ("/a/%2e%2e%3b/admin", Refused::DotParameters),
        ] {
            assert_eq!(get(raw), Err(why), "{raw}");
        }
        assert_eq!(get("/a;x/b").map(|t| t.path), Ok("/a;x/b".to_owned()));
    }

    #[test]
    fn encoded_slashes_follow_the_route() {
        let mut settings = crate::config::Config::from_toml(
            "[[route]]\npath = \"/\"\nupstream = \"http://127.0.0.1:1\"\n",
            "t",
        )
        .expect("config")
        .routes[0]
            .settings
            .clone();
        for raw in ["/admin%2Fx", "/admin%2fx", "/a%5Cb", "/a\\..\\b"] {
            assert_eq!(
                get(raw).expect(raw).path_for(&settings),
                Err(Refused::EncodedSlash),
                "{raw}"
            );
        }
        assert_eq!(get("//a//b").expect("ok").path_for(&settings), Ok("/a/b"));
        settings.allow_encoded_slashes = true;
        settings.merge_slashes = false;
        assert_eq!(
            get("/admin%2fx").expect("ok").path_for(&settings),
            Ok("/admin%2Fx")
        );
        assert_eq!(get("//a//b").expect("ok").path_for(&settings), Ok("//a//b"));
    }

    #[test]
    fn host_and_target_forms() {
        let h11 = |method: Method, target: &str, headers: &[(&str, &str)]| {
            Target::of(&request(method, Version::HTTP_11, target, headers))
        };
        assert_eq!(h11(Method::GET, "/", &[]), Err(Refused::MissingHost));
        assert_eq!(
            h11(Method::GET, "/", &[("host", "a"), ("host", "b")]),
            Err(Refused::DuplicateHost)
        );
        assert_eq!(
            h11(Method::GET, "/", &[("host", "a b")]),
            Err(Refused::InvalidHost)
        );
        assert_eq!(h11(Method::GET, "/", &[("host", "u@a")]), Err(Refused::Userinfo));
        assert_eq!(
            h11(Method::GET, "/", &[("host", "a/x")]),
            Err(Refused::InvalidHost)
        );
        assert!(
            h11(Method::GET, "/", &[("host", "")]).is_ok(),
            "empty Host is allowed"
        );
        assert!(h11(Method::GET, "/", &[("host", "[::1]:8080")]).is_ok());
        let absolute = h11(Method::GET, "http://app.test:81/x/../y?q", &[("host", "evil")]).expect("ok");
        assert_eq!(absolute.host, Some(HeaderValue::from_static("app.test:81")));
        assert_eq!(absolute.path, "/y");
        assert_eq!(
            h11(Method::GET, "http://user:pw@app.test/", &[("host", "app.test")]),
            Err(Refused::Userinfo)
        );
        assert!(matches!(
            h11(Method::GET, "ftp://app.test/", &[("host", "app.test")]),
            Err(Refused::TargetForm(_))
        ));
        assert!(matches!(
            h11(Method::GET, "app.test:443", &[("host", "app.test")]),
            Err(Refused::TargetForm(_))
        ));
        assert!(h11(Method::CONNECT, "app.test:443", &[("host", "app.test")]).is_ok());
        assert!(matches!(
            h11(Method::GET, "*", &[("host", "a")]),
            Err(Refused::TargetForm(_))
        ));
        let star = h11(Method::OPTIONS, "*", &[("host", "a")]).expect("ok");
        assert!(star.asterisk);
        assert_eq!(star.merged, "/");
        // HTTP/1.0 may omit Host.
        assert!(Target::of(&request(Method::GET, Version::HTTP_10, "/", &[])).is_ok());
    }

    #[test]
    fn http2_authority_is_the_host_and_cookies_are_joined() {
        let h2 = |headers: &[(&str, &str)]| {
            Target::of(&request(
                Method::GET,
                Version::HTTP_2,
                "https://app.test/x",
                headers,
            ))
        };
        assert_eq!(
            h2(&[]).expect("ok").host,
            Some(HeaderValue::from_static("app.test"))
        );
        assert!(h2(&[("host", "APP.test")]).is_ok());
        assert_eq!(h2(&[("host", "other.test")]), Err(Refused::HostMismatch));
        let mut req = request(
            Method::GET,
            Version::HTTP_2,
            "https://app.test/x?q=1",
            &[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")],
        );
        let target = Target::of(&req).expect("ok");
        target.apply(&mut req, "/x").expect("apply");
        assert_eq!(req.uri().to_string(), "/x?q=1");
        assert_eq!(req.headers()["host"], "app.test");
        let cookies: Vec<_> = req.headers().get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);
    }
}
