//! What an upstream request says of its client: `X-Forwarded-*`, and on a route that asks for
//! them `X-Real-IP` and `Forwarded` (RFC 7239); the client's address through `trusted_proxies`.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::{Cidr, ClientHeaders};
use crate::peer::Peer;

/// What an upstream request says of its client: who sent it (the connection's peer), the peers
/// trusted to name the client behind them (`trusted_proxies`), and the route's
/// `client_headers`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forwarding<'a> {
    /// The connection the request came on.
    pub(crate) peer: Peer,
    /// Load balancers whose `X-Forwarded-For` (and `X-Real-IP`, `Forwarded`) are believed.
    pub(crate) trusted: &'a [Cidr],
    /// Which headers besides `X-Forwarded-*` the upstream gets.
    pub(crate) send: ClientHeaders,
}

/// Tells the upstream who the client is. Always: the peer's address appended to
/// `X-Forwarded-For` (after any addresses already there), `X-Forwarded-Proto`, and
/// `X-Forwarded-Host` (from `host`, the Host the client asked for). Per the route's
/// `client_headers`: `X-Real-IP`, the client as ssegate determined it ([`hops`]), and
/// `Forwarded` ([`forwarded`]). A client's own `X-Real-IP` and `Forwarded` pass only from a
/// trusted proxy: from anyone else they are removed, sent or not, since an app that reads them
/// would believe whatever the client wrote.
pub(crate) fn add_forwarded(headers: &mut HeaderMap, from: Forwarding<'_>, host: Option<HeaderValue>) {
    let peer = from.peer.addr.ip();
    let peer_trusted = is_trusted(peer, from.trusted);
    // Read before X-Forwarded-For gets the peer.
    let hops = hops(peer, headers, from.trusted);
    let proto = if from.peer.secure { "https" } else { "http" };
    let real_ip = HeaderName::from_static("x-real-ip");
    if from.send.x_real_ip {
        headers.insert(real_ip, address_value(hops[0]));
    } else if !peer_trusted {
        headers.remove(real_ip);
    }
    if from.send.forwarded {
        let value = forwarded(headers, &hops, peer_trusted, proto, host.as_ref());
        headers.insert(header::FORWARDED, value);
    } else if !peer_trusted {
        headers.remove(header::FORWARDED);
    }

    let xff = HeaderName::from_static("x-forwarded-for");
    let mut chain: Vec<u8> = Vec::new();
    for value in headers.get_all(&xff) {
        chain.extend_from_slice(value.as_bytes());
        chain.extend_from_slice(b", ");
    }
    chain.extend_from_slice(peer.to_string().as_bytes());
    match HeaderValue::from_bytes(&chain) {
        Ok(value) => {
            headers.insert(xff, value);
        }
        Err(_) => {
            // An earlier hop wrote bytes a header cannot hold; start the chain afresh.
            headers.insert(xff, address_value(peer));
        }
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(proto),
    );
    match host {
        Some(host) => headers.insert(HeaderName::from_static("x-forwarded-host"), host),
        None => headers.remove(HeaderName::from_static("x-forwarded-host")),
    };
}

/// An address as a header value (IPv6 without brackets, as Nginx's `$remote_addr`).
fn address_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

fn is_trusted(ip: IpAddr, trusted: &[Cidr]) -> bool {
    trusted.iter().any(|block| block.contains(ip))
}

/// The address of the client behind a request: its peer, or, when the peer is a trusted proxy
/// (a load balancer in front of ssegate), the nearest address in `X-Forwarded-For` that is not
/// one. Addresses left of it were written by the client and prove nothing.
pub(crate) fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    hops(peer, headers, trusted)[0]
}

/// The hops ssegate can vouch for, the client first and the peer last (never empty): the peer
/// alone, or, when the peer is a trusted proxy, also the addresses `X-Forwarded-For` names
/// from the right, as long as they are trusted proxies, and the first one that is not (the
/// client).
pub(crate) fn hops(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> Vec<IpAddr> {
    let mut hops = vec![peer];
    if !is_trusted(peer, trusted) {
        return hops;
    }
    let values: Vec<&HeaderValue> = headers.get_all("x-forwarded-for").iter().collect();
    'walk: for value in values.into_iter().rev() {
        // Hop by hop from the right, as bytes: a hop that is not an address (not even text)
        // ends the walk; only hops our proxies wrote are believed.
        for hop in value.as_bytes().rsplit(|&b| b == b',') {
            let hop = std::str::from_utf8(hop).map(str::trim).unwrap_or("");
            let ip = hop
                .parse::<IpAddr>()
                .or_else(|_| hop.parse::<SocketAddr>().map(|addr| addr.ip()));
            match ip {
                Ok(ip) => {
                    hops.push(ip);
                    if !is_trusted(ip, trusted) {
                        break 'walk;
                    }
                }
                // Garbage from a hop we trust: the last address we could read is the client.
                Err(_) => break 'walk,
            }
        }
    }
    hops.reverse();
    hops
}

/// The `Forwarded` header (RFC 7239) an upstream gets: the hops before ssegate, then ssegate's
/// own element, which names its peer (`for`, §5.2: "the node making the request to the
/// proxy"), the Host asked for and the protocol it was asked in.
///
/// The hops before are a trusted proxy's `Forwarded`, kept as it came if it is well formed
/// ([`is_well_formed`]); else (no such header, a malformed one, or a peer that is not
/// trusted) those `hops` vouch for, taken from `X-Forwarded-For`, so that an app reading
/// `Forwarded` alone finds the client behind a load balancer that writes only
/// `X-Forwarded-For`. What an untrusted client wrote never appears.
fn forwarded(
    headers: &HeaderMap,
    hops: &[IpAddr],
    peer_trusted: bool,
    proto: &str,
    host: Option<&HeaderValue>,
) -> HeaderValue {
    let mut value = String::new();
    let lines: Option<Vec<&str>> = headers
        .get_all(header::FORWARDED)
        .iter()
        .map(|line| line.to_str().ok())
        .collect();
    let kept = lines
        .filter(|lines| peer_trusted && lines.iter().all(|line| is_well_formed(line)))
        .map(|lines| {
            lines
                .iter()
                .map(|line| line.trim_matches([' ', '\t']))
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|kept| !kept.is_empty());
    match kept {
        Some(kept) => {
            value.push_str(&kept);
            value.push_str(", ");
        }
        None => {
            for hop in &hops[..hops.len() - 1] {
                value.push_str("for=");
                value.push_str(&node(*hop));
                value.push_str(", ");
            }
        }
    }
    let peer = hops[hops.len() - 1];
    value.push_str("for=");
    value.push_str(&node(peer));
    // A Host that would need escapes (or holds the list's separators) is left out rather than
    // written in a form some parser might read otherwise.
    if let Some(host) = host.and_then(|h| h.to_str().ok()) {
        if !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"\",;\\".contains(&b))
        {
            value.push_str(";host=");
            if host.bytes().all(is_tchar) {
                value.push_str(host);
            } else {
                value.push('"');
                value.push_str(host);
                value.push('"');
            }
        }
    }
    value.push_str(";proto=");
    value.push_str(proto);
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("for=unknown"))
}

/// A node of RFC 7239 §6 as a parameter value: an IPv4 address as a token, an IPv6 address
/// bracketed in a quoted string (`"[2001:db8::1]"`), since `:` and `[` are not token
/// characters.
fn node(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

/// RFC 9110 §5.6.2: `tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
/// "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether a `Forwarded` field line is one ssegate can append to without its element being
/// read otherwise by the app, per RFC 7239 §4:
///
/// ```text
/// Forwarded   = 1#forwarded-element
/// forwarded-element = [ forwarded-pair ] *( ";" [ forwarded-pair ] )
/// forwarded-pair = token "=" value
/// value          = token / quoted-string
/// ```
///
/// and stricter where parsers disagree: a quoted string may hold no `\`, `"`, `,` or `;` (no
/// node, host or protocol needs them, and a parser that ignores escapes or splits on commas
/// first would end the string, or the element, elsewhere); a parameter appears once per element
/// (§5: "Each parameter MUST NOT occur more than once per forwarded-element"); `for` and `by`
/// must be nodes (§6: an IPv4 address, a bracketed IPv6 address, `unknown` or an obfuscated
/// `_name`, with an optional port).
pub(crate) fn is_well_formed(line: &str) -> bool {
    line.split(',').all(|element| {
        let mut seen: Vec<String> = Vec::new();
        element.split(';').all(|pair| {
            let pair = pair.trim_matches([' ', '\t']);
            if pair.is_empty() {
                return true;
            }
            let Some((name, value)) = pair.split_once('=') else {
                return false;
            };
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return false;
            }
            let name = name.to_ascii_lowercase();
            if seen.contains(&name) {
                return false;
            }
            let text = match value.strip_prefix('"') {
                Some(quoted) => match quoted.strip_suffix('"') {
                    Some(inner)
                        if inner.bytes().all(|b| {
                            b == b' ' || b == b'\t' || (b.is_ascii_graphic() && !b"\"\\,;".contains(&b))
                        }) =>
                    {
                        inner
                    }
                    _ => return false,
                },
                None if !value.is_empty() && value.bytes().all(is_tchar) => value,
                None => return false,
            };
            if (name == "for" || name == "by") && !is_node(text) {
                return false;
            }
            seen.push(name);
            true
        })
    })
}

/// RFC 7239 §6: `node = nodename [ ":" node-port ]`, `nodename = IPv4address / "[" IPv6address
/// "]" / "unknown" / obfnode`, `obfnode = "_" 1*( ALPHA / DIGIT / "." / "_" / "-")`,
/// `node-port = port / obfport` (1 to 5 digits, or obfuscated like a name).
fn is_node(text: &str) -> bool {
    let obfuscated = |s: &str| {
        s.strip_prefix('_').is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
    };
    let (name_ok, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let Some((v6, after)) = rest.split_once(']') else {
                return false;
            };
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => return false,
                },
            };
            (v6.parse::<std::net::Ipv6Addr>().is_ok(), port)
        }
        None => {
            let (name, port) = match text.split_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (text, None),
            };
            let known = name.parse::<std::net::Ipv4Addr>().is_ok() || name.eq_ignore_ascii_case("unknown");
            (known || obfuscated(name), port)
        }
    };
    name_ok
        && port.is_none_or(|port| {
            (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit()) || obfuscated(port)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::headers::tests::map;

    #[test]
    fn the_client_is_the_nearest_untrusted_hop() {
        let trusted = [Cidr::parse("10.0.0.0/8").expect("cidr")];
        let ip = |text: &str| text.parse::<IpAddr>().expect("ip");
        let xff = |value: &str| map(&[("x-forwarded-for", value)]);
        let peer = ip("10.0.0.5");
        assert_eq!(
            client_address(ip("203.0.113.9"), &xff("1.2.3.4"), &trusted),
            ip("203.0.113.9"),
            "an untrusted peer is the client, whatever it claims"
        );
        assert_eq!(
            client_address(peer, &xff("198.51.100.7"), &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_address(peer, &xff("1.1.1.1, 198.51.100.7, 10.0.0.9"), &trusted),
            ip("198.51.100.7"),
            "the spoofable left part is ignored"
        );
        assert_eq!(
            client_address(
                peer,
                &map(&[
                    ("x-forwarded-for", "1.1.1.1"),
                    ("x-forwarded-for", "198.51.100.7")
                ]),
                &trusted
            ),
            ip("198.51.100.7"),
            "repeated headers are one list"
        );
        assert_eq!(client_address(peer, &xff("10.0.0.9"), &trusted), ip("10.0.0.9"));
        assert_eq!(client_address(peer, &map(&[]), &trusted), peer);
        assert_eq!(
            client_address(peer, &xff("junk, 10.0.0.7"), &trusted),
            ip("10.0.0.7")
        );
        assert_eq!(
            client_address(peer, &xff("198.51.100.7:4431"), &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_address(peer, &xff("[2001:db8::1]:443"), &trusted),
            ip("2001:db8::1")
        );
    }

    /// `headers` as an upstream gets them from a client at `peer` (`secure`: over TLS), with
    /// 10.0.0.0/8 trusted, asking for `app.test`.
    fn forwarded_from(peer: &str, secure: bool, send: ClientHeaders, headers: &[(&str, &str)]) -> HeaderMap {
        let mut headers = map(headers);
        let trusted = [Cidr::parse("10.0.0.0/8").expect("cidr")];
        let from = Forwarding {
            peer: Peer {
                addr: SocketAddr::new(peer.parse().expect("ip"), 4000),
                secure,
            },
            trusted: &trusted,
            send,
        };
        add_forwarded(&mut headers, from, Some(HeaderValue::from_static("app.test")));
        headers
    }

    const BOTH: ClientHeaders = ClientHeaders {
        x_real_ip: true,
        forwarded: true,
    };

    #[test]
    fn forwarded_for_is_appended() {
        let headers = forwarded_from(
            "127.0.0.9",
            false,
            ClientHeaders::default(),
            &[("x-forwarded-for", "10.0.0.1"), ("x-forwarded-for", "10.0.0.2")],
        );
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 127.0.0.9");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "app.test");
        assert!(!headers.contains_key("x-real-ip"));
        assert!(!headers.contains_key("forwarded"));
    }

    #[test]
    fn a_clients_own_real_ip_and_forwarded_never_pass_unless_it_is_a_trusted_proxy() {
        let spoof = [("x-real-ip", "1.2.3.4"), ("forwarded", "for=1.2.3.4;proto=https")];
        // Not asked for: removed from a client, kept from a trusted proxy.
        let off = ClientHeaders::default();
        let headers = forwarded_from("203.0.113.9", false, off, &spoof);
        assert!(!headers.contains_key("x-real-ip"));
        assert!(!headers.contains_key("forwarded"));
        let headers = forwarded_from("10.0.0.5", false, off, &spoof);
        assert_eq!(headers["x-real-ip"], "1.2.3.4");
        assert_eq!(headers["forwarded"], "for=1.2.3.4;proto=https");
        // Asked for: replaced by what ssegate saw.
        let headers = forwarded_from("203.0.113.9", true, BOTH, &spoof);
        assert_eq!(headers["x-real-ip"], "203.0.113.9");
        assert_eq!(headers["forwarded"], "for=203.0.113.9;host=app.test;proto=https");
        assert_eq!(headers.get_all("forwarded").iter().count(), 1);
    }

    #[test]
    fn behind_a_trusted_proxy_the_client_is_named_and_the_trusted_chain_kept() {
        // The balancer wrote X-Forwarded-For only: Forwarded is built from the hops it vouches
        // for (never the client's own claims further left).
        let headers = forwarded_from(
            "10.0.0.5",
            false,
            BOTH,
            &[
                ("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.4"),
                ("x-real-ip", "6.6.6.6"),
            ],
        );
        assert_eq!(headers["x-real-ip"], "198.51.100.7");
        assert_eq!(
            headers["forwarded"],
            "for=198.51.100.7, for=10.0.0.4, for=10.0.0.5;host=app.test;proto=http"
        );
        assert_eq!(
            headers["x-forwarded-for"],
            "6.6.6.6, 198.51.100.7, 10.0.0.4, 10.0.0.5"
        );
        // The balancer wrote Forwarded: ssegate's element follows its lines.
        let headers = forwarded_from(
            "10.0.0.5",
            false,
            BOTH,
            &[
                ("forwarded", "for=198.51.100.7;proto=https"),
                ("forwarded", "for=\"[2001:db8::1]:4711\";by=_lb1"),
                ("x-forwarded-for", "198.51.100.7"),
            ],
        );
        assert_eq!(
            headers["forwarded"],
            "for=198.51.100.7;proto=https, for=\"[2001:db8::1]:4711\";by=_lb1, for=10.0.0.5;host=app.test;proto=http"
        );
        // IPv6 is bracketed and quoted; X-Real-IP is bare, as Nginx's $remote_addr.
        let headers = forwarded_from("2001:db8::9", false, BOTH, &[]);
        assert_eq!(headers["x-real-ip"], "2001:db8::9");
        assert_eq!(
            headers["forwarded"],
            "for=\"[2001:db8::9]\";host=app.test;proto=http"
        );
    }

    #[test]
    fn a_malformed_forwarded_from_a_trusted_proxy_is_replaced() {
        // Each of these would let an element be read where ssegate's is, or another client
        // hide in it, by some parser: ssegate starts afresh from X-Forwarded-For.
        for bad in [
            "for=\"1.2.3.4",                // a quote left open would swallow ours
            "for=\"1.2.3.4, for=6.6.6.6\"", // a comma inside quotes
            "for=\"a\\\"b\"",               // an escaped quote
            "for=1.2.3.4;for=6.6.6.6",      // a parameter twice
            "for=1.2.3.4;proto=https;x",    // a pair without a value
            "for=[2001:db8::1]",            // IPv6 unquoted
            "for=\"<script>\"",             // not a node
            "for=1.2.3.4 ;by=\"evil;x\"",   // a semicolon inside quotes
            "for=",                         // no value
            "f r=1",                        // not a token
        ] {
            assert!(!is_well_formed(bad), "{bad}");
            let headers = forwarded_from(
                "10.0.0.5",
                false,
                BOTH,
                &[("forwarded", bad), ("x-forwarded-for", "198.51.100.7")],
            );
            assert_eq!(
                headers["forwarded"], "for=198.51.100.7, for=10.0.0.5;host=app.test;proto=http",
                "{bad}"
            );
        }
        for good in [
            "for=192.0.2.43",
            "For=\"[2001:db8:cafe::17]:4711\"",
            "for=192.0.2.60;proto=http;by=203.0.113.43",
            "for=192.0.2.43, for=198.51.100.17",
            "for=unknown, for=\"_hidden:_port\", for=_gazonk",
            "for=192.0.2.43 , ;, host=\"example.com:8080\"",
            "for=\"192.0.2.43:80\";secret=\"x y\"",
        ] {
            assert!(is_well_formed(good), "{good}");
        }
    }
}
