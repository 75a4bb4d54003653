//! The answers ssegate makes itself instead of the app's: who caused each one ([`Fault`]), what
//! it is ([`ProxyError`]), and [`rescue`], the one place that turns it into its response and its
//! log line.

use std::error::Error as StdError;
use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode, Uri};

use crate::config::Upstream;

/// Boxed error with the standard bounds.
type BoxError = Box<dyn StdError + Send + Sync>;

/// Who caused an error: the `fault` field of its log line, written
/// `tracing::debug!(fault = %Fault::Client, ...)` where a line is not made by [`rescue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The client: a request ssegate cannot or will not serve, a body cut short, a slow or
    /// broken connection. A debug or info line; a warning only where it says more than one
    /// request did (a client held over its stream budget, once).
    Client,
    /// The app behind ssegate: unreachable, too slow, or not speaking HTTP. A warning.
    Upstream,
    /// ssegate itself: its own limits, its shutdown, or a bug.
    Internal,
}

impl Fault {
    /// The name written in logs: "client", "upstream" or "internal".
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Upstream => "upstream",
            Fault::Internal => "internal",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why ssegate answers a request itself. Each knows its [`Fault`] and status; [`rescue`] makes
/// the response and the log line.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// A CONNECT request: ssegate is no forward proxy. 405.
    #[error("CONNECT is not proxied")]
    Connect,
    /// A request target, Host or framing ssegate cannot judge (the reason says which). 400.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No route's prefix matches the path. 404.
    #[error("no route for this path")]
    NoRoute,
    /// The route is at its `max_clients`. 503, Retry-After.
    #[error("max_clients reached")]
    TooManyClients,
    /// A subscription needs a new stream and `max_streams` are alive. 503, Retry-After.
    #[error("max_streams reached")]
    TooManyStreams,
    /// ssegate is stopping and opens no new stream. 503, Retry-After.
    #[error("shutting down")]
    ShuttingDown,
    /// The request body is over the route's `max_request_body`, declared or as it streamed. 413.
    #[error("request body over max_request_body")]
    BodyTooLarge,
    /// The client's request body could not be read (cut short, badly framed). 400.
    #[error("the client's request body could not be read: {0}")]
    ClientBody(#[source] BoxError),
    /// The upstream could not be reached or broke (502), or did not answer in time (504).
    /// `crate::upstream` makes these from its `UpstreamError`.
    #[error("{source}")]
    Upstream {
        /// It did not answer in time.
        timed_out: bool,
        /// What happened.
        source: BoxError,
    },
}

impl ProxyError {
    /// Who caused it.
    pub(crate) fn fault(&self) -> Fault {
        match self {
            ProxyError::Connect
            | ProxyError::BadRequest(_)
            | ProxyError::NoRoute
            | ProxyError::BodyTooLarge
            | ProxyError::ClientBody(_) => Fault::Client,
            ProxyError::Upstream { .. } => Fault::Upstream,
            ProxyError::TooManyClients | ProxyError::TooManyStreams | ProxyError::ShuttingDown => {
                Fault::Internal
            }
        }
    }

    /// The status the client gets.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::Connect => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::TooManyClients | ProxyError::TooManyStreams | ProxyError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Upstream { timed_out: true, .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream { timed_out: false, .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The plain-text body the client gets: says what happened, never how (no upstream
    /// address, no error chain).
    fn body(&self) -> Bytes {
        let text: &'static str = match self {
            ProxyError::Connect => "ssegate: CONNECT is not proxied\n",
            ProxyError::BadRequest(why) => return Bytes::from(format!("ssegate: bad request: {why}\n")),
            ProxyError::NoRoute => "ssegate: no route for this path\n",
            ProxyError::TooManyClients => "ssegate: too many clients on this route\n",
            ProxyError::TooManyStreams => "ssegate: too many streams\n",
            ProxyError::ShuttingDown => "ssegate: shutting down\n",
            ProxyError::BodyTooLarge => "ssegate: request body too large\n",
            ProxyError::ClientBody(_) => "ssegate: the request body could not be read\n",
            ProxyError::Upstream { timed_out: true, .. } => "ssegate: the upstream did not answer in time\n",
            ProxyError::Upstream { timed_out: false, .. } => "ssegate: the upstream could not be reached\n",
        };
        Bytes::from_static(text.as_bytes())
    }
}

/// What the log line of a rescued request says about it, besides the error: whatever of it is
/// known where the error happened (a request refused before routing has no route).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Context<'a> {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// The request method.
    pub method: Option<&'a Method>,
    /// The request target as the client sent it, for a request refused before it was
    /// understood.
    pub target: Option<&'a Uri>,
    /// The normalised path.
    pub path: Option<&'a str>,
    /// The route's path prefix.
    pub route: Option<&'a str>,
    /// The route's upstream.
    pub upstream: Option<&'a Upstream>,
}

/// Turns an error ssegate answers with into the response, and writes its one log line at the
/// level its fault deserves: a client's at debug, or info where an operator may want to see it
/// (a malformed request, a body over its limit or unreadable); the upstream's at warn;
/// ssegate's own limits at warn (a sizing matter, not a bug) and its stopping at debug.
pub(crate) fn rescue<B: From<Bytes>>(error: ProxyError, context: &Context<'_>) -> Response<B> {
    let status = error.status();
    log(&error, status, context);
    let body = error.body();
    match status {
        StatusCode::SERVICE_UNAVAILABLE => unavailable(body),
        _ => error_response(status, body),
    }
}

/// The rescue log line. Fields not known in `context` are left out; `reason` (why a request
/// is malformed) and `error` (what failed under a client's body) only where they apply.
fn log(error: &ProxyError, status: StatusCode, context: &Context<'_>) {
    use tracing::field::display;
    let fault = error.fault();
    let remote = context.remote.map(display);
    let method = context.method.map(display);
    let target = context.target.map(display);
    let path = context.path;
    let route = context.route;
    let upstream = context.upstream.map(display);
    let status = status.as_u16();
    let reason = match error {
        ProxyError::BadRequest(why) => Some(display(why)),
        _ => None,
    };
    let cause = match error {
        ProxyError::ClientBody(cause) => Some(display(cause)),
        _ => None,
    };
    macro_rules! line {
        ($level:ident, $($message:tt)+) => {
            tracing::$level!(
                remote, method, target, path, route, upstream,
                fault = %fault, status, reason, error = cause,
                $($message)+
            )
        };
    }
    match error {
        ProxyError::Connect => line!(debug, "CONNECT is not proxied; answering 405"),
        ProxyError::BadRequest(_) => line!(info, "bad request; answering 400"),
        ProxyError::NoRoute => line!(debug, "no route for this path; answering 404"),
        ProxyError::TooManyClients => line!(warn, "max_clients reached; answering 503"),
        ProxyError::TooManyStreams => {
            line!(
                warn,
                "max_streams reached; a subscription that needs a new stream gets 503"
            )
        }
        ProxyError::ShuttingDown => line!(debug, "shutting down; answering 503"),
        ProxyError::BodyTooLarge => line!(info, "request body over max_request_body; answering 413"),
        ProxyError::ClientBody(_) => {
            line!(info, "the client's request body could not be read; answering 400")
        }
        ProxyError::Upstream { source, .. } => line!(warn, "{source}"),
    }
}

/// A short plain-text response from ssegate itself, with any body type that holds bytes (the
/// proxy's [`ProxyBody`](crate::proxy::ProxyBody), or `Full<Bytes>`).
pub(crate) fn error_response<B: From<Bytes>>(status: StatusCode, body: impl Into<Bytes>) -> Response<B> {
    let mut response = Response::new(B::from(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A 503 that asks the client to come back in a second: ssegate is at one of its limits (or
/// stopping), which lasts about that long for any one client, and an EventSource retries after
/// its own delay anyway.
pub(crate) fn unavailable<B: From<Bytes>>(body: impl Into<Bytes>) -> Response<B> {
    let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, body);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// An error and its sources, joined by ": ", for one log line. A source whose text its error
/// already holds (many wrap with "{source}") is not repeated.
pub(crate) fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn answer(error: ProxyError) -> Response<Full<Bytes>> {
        rescue(error, &Context::default())
    }

    #[test]
    fn each_error_has_its_status_fault_and_body() {
        let upstream = |timed_out| ProxyError::Upstream {
            timed_out,
            source: "connection refused".into(),
        };
        let cases = [
            (ProxyError::Connect, 405, Fault::Client),
            (ProxyError::BadRequest("no Host".to_owned()), 400, Fault::Client),
            (ProxyError::NoRoute, 404, Fault::Client),
            (ProxyError::BodyTooLarge, 413, Fault::Client),
            (ProxyError::TooManyClients, 503, Fault::Internal),
            (ProxyError::TooManyStreams, 503, Fault::Internal),
            (ProxyError::ShuttingDown, 503, Fault::Internal),
            (ProxyError::ClientBody("cut short".into()), 400, Fault::Client),
            (upstream(true), 504, Fault::Upstream),
            (upstream(false), 502, Fault::Upstream),
        ];
        for (error, status, fault) in cases {
            let name = format!("{error:?}");
            assert_eq!(error.fault(), fault, "{name}");
            let response = answer(error);
            assert_eq!(response.status().as_u16(), status, "{name}");
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "text/plain; charset=utf-8",
                "{name}"
            );
            assert_eq!(
                response.headers().contains_key(header::RETRY_AFTER),
                status == 503,
                "{name}: Retry-After goes with every 503 and nothing else"
            );
        }
    }

    #[test]
    fn faults_are_named_for_the_log() {
        assert_eq!(Fault::Client.to_string(), "client");
        assert_eq!(Fault::Upstream.to_string(), "upstream");
        assert_eq!(Fault::Internal.to_string(), "internal");
    }

    #[test]
    fn a_chain_names_each_source_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Says(#[source] std::io::Error);
        let error = Outer(std::io::Error::other("inner"));
        assert_eq!(chain(&error), "outer: inner");
        let error = Says(std::io::Error::other("inner"));
        assert_eq!(
            chain(&error),
            "outer: inner",
            "a source its error names is not repeated"
        );
    }
}
