//! HTTP/2 to an `https://` app that chooses it by ALPN: one connection per route, shared by
//! every plain request whatever its Host.
//!
//! Over HTTP/2 the app reads a request's host in `:authority`, taken from the request's URL, and
//! that must be the client's Host (RFC 9113 §8.3.1: a `Host` that names another is malformed).
//! hyper-util's pool keys connections by that URL, so it would keep a connection per Host a
//! client sends, and a client making up Hosts would make ssegate open (and keep) as many to the
//! app. Here one connection carries them all; the requests it cannot carry (the app said
//! HTTP/1.1) go back to the route's HTTP/1.1 client.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::header::HOST;
use http::uri::Authority;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::OnceCell;

use super::connect::Connector;
use super::{BoxError, SharedError, UpstreamBody};

/// How long the connection may be silent before ssegate pings the app.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is closed (its requests fail, the
/// next ones make a new one).
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The HTTP/2 side of an `https://` route's client.
pub(crate) struct Http2 {
    /// Offers h2 and http/1.1.
    connector: Connector,
    state: Mutex<State>,
}

enum State {
    /// No connection, or a closed one.
    Idle,
    /// A connection being made, which every request that finds none waits for: after the app
    /// restarts, its clients' requests make one connection, not one each.
    Connecting(Arc<Attempt>),
    /// The shared connection.
    Open(SendRequest<UpstreamBody>),
    /// The app chose HTTP/1.1: from now on (until a reload makes a new client) every request
    /// goes to the HTTP/1.1 client.
    Http1,
}

/// One attempt to connect, and its outcome once known: a connection, the app's choice of
/// HTTP/1.1 (`None`), or why it failed.
type Attempt = OnceCell<Result<Option<SendRequest<UpstreamBody>>, SharedError>>;

/// What [`Http2::send`] did with a request.
pub(crate) enum Sent {
    /// The app's answer over HTTP/2.
    Response(Response<Incoming>),
    /// The app speaks HTTP/1.1: the request, untouched, for the HTTP/1.1 client.
    Http1(Request<UpstreamBody>),
}

/// Why an exchange over HTTP/2 failed.
#[derive(Debug)]
pub(crate) enum Http2Error {
    /// No connection could be made (the connector's error, or HTTP/2's own handshake).
    Connect(BoxError),
    /// The exchange on the connection failed.
    Send(hyper::Error),
}

impl std::fmt::Debug for Http2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &*self.state.lock().unwrap_or_else(PoisonError::into_inner) {
            State::Idle => "idle",
            State::Connecting(_) => "connecting",
            State::Open(_) => "open",
            State::Http1 => "http/1.1",
        };
        f.debug_struct("Http2")
            .field("connector", &self.connector)
            .field("state", &state)
            .finish()
    }
}

impl Http2 {
    /// HTTP/2 over connections `connector` makes (it must offer h2 by ALPN).
    pub(crate) fn new(connector: Connector) -> Http2 {
        Http2 {
            connector,
            state: Mutex::new(State::Idle),
        }
    }

    /// Sends `request` on the shared connection (made first if there is none, or if it closed),
    /// with its Host as `:authority`. A request that a closing connection did not take is sent
    /// once more.
    pub(crate) async fn send(&self, mut request: Request<UpstreamBody>) -> Result<Sent, Http2Error> {
        let mut tries = 0;
        loop {
            tries += 1;
            let Some(mut sender) = self
                .sender()
                .await
                .map_err(|e| Http2Error::Connect(Box::new(e)))?
            else {
                return Ok(Sent::Http1(request));
            };
            // A connection closed since it was kept has not taken the request: another one.
            if let Err(error) = sender.ready().await {
                if tries < 2 {
                    continue;
                }
                return Err(Http2Error::Send(error));
            }
            let uri = request.uri().clone();
            match sender.try_send_request(with_host_as_authority(request)).await {
                Ok(response) => return Ok(Sent::Response(response)),
                Err(mut error) => match error.take_message() {
                    Some(mut unsent) if tries < 2 => {
                        *unsent.uri_mut() = uri;
                        request = unsent;
                    }
                    _ => return Err(Http2Error::Send(error.into_error())),
                },
            }
        }
    }

    /// The shared connection, made (once, whoever asks meanwhile) if there is none; `None`
    /// when the app chose HTTP/1.1. No lock is held while connecting.
    async fn sender(&self) -> Result<Option<SendRequest<UpstreamBody>>, SharedError> {
        let attempt = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            match &*state {
                State::Open(sender) if !sender.is_closed() => return Ok(Some(sender.clone())),
                State::Http1 => return Ok(None),
                State::Connecting(attempt) => attempt.clone(),
                State::Open(_) | State::Idle => {
                    let attempt = Arc::new(Attempt::new());
                    *state = State::Connecting(attempt.clone());
                    attempt
                }
            }
        };
        // Whichever waiter polls first connects; if it is dropped, another takes over.
        let outcome = attempt.get_or_init(|| self.connect()).await.clone();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(&*state, State::Connecting(current) if Arc::ptr_eq(current, &attempt)) {
            *state = match &outcome {
                Ok(Some(sender)) => State::Open(sender.clone()),
                Ok(None) => State::Http1,
                Err(_) => State::Idle,
            };
        }
        outcome
    }

    /// Connects; `None` when the app chose HTTP/1.1 (that connection is closed).
    async fn connect(&self) -> Result<Option<SendRequest<UpstreamBody>>, SharedError> {
        let io = self.connector.connect().await.map_err(SharedError::from)?;
        if !io.negotiated_h2() {
            return Ok(None);
        }
        // The one connection carries every request: one that died without a word (a network
        // cut) is found by its unanswered ping within a minute, not at the OS's leisure.
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake(io)
            .await
            .map_err(|e| SharedError::from(Box::new(e) as BoxError))?;
        // Drives the connection until the app closes it, or every sender is gone.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Some(sender))
    }
}

/// `request` with its URL's authority replaced by its Host (the client's), which HTTP/2 sends
/// as `:authority`; kept as it is without a Host, or with one that is no authority.
fn with_host_as_authority(mut request: Request<UpstreamBody>) -> Request<UpstreamBody> {
    let Some(authority) = request
        .headers()
        .get(HOST)
        .and_then(|host| Authority::try_from(host.as_bytes()).ok())
    else {
        return request;
    };
    let mut parts = request.uri().clone().into_parts();
    parts.authority = Some(authority);
    if let Ok(uri) = Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
    request
}
