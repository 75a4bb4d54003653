//! The connector of one route's client: TCP, TLS over TCP (HTTP/2 or HTTP/1.1, as the app's
//! ALPN answer says), or a Unix socket.
//!
//! It connects to its route's upstream whatever the request's URL names (a request to a socket
//! says `localhost`). Over TLS it says whether the app chose HTTP/2, for hyper-util's pool (the
//! HTTP/1.1 client of an `https://` route offers only http/1.1) and for the route's own HTTP/2
//! connection (`http2.rs`).

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::tls::HandshakeError;
use super::BoxError;

/// Connects to one upstream (see the module's docs).
#[derive(Clone)]
pub(crate) struct Connector {
    target: Target,
    /// Bounds the whole connect: TCP and the TLS handshake, or the socket's connect.
    timeout: Duration,
}

#[derive(Clone)]
enum Target {
    /// Plain TCP to `uri`'s host and port.
    Tcp { http: HttpConnector, uri: Uri },
    /// TLS over TCP to `uri`'s host and port, checked for `name`.
    Tls {
        http: HttpConnector,
        uri: Uri,
        tls: TlsConnector,
        name: ServerName<'static>,
    },
    /// A Unix domain socket.
    Unix { path: Arc<Path> },
    /// No connection can be made (the TLS setup failed, which the build's crypto provider
    /// rules out, or an `https://` app came without its TLS settings): every connect fails with
    /// this.
    Unusable(Arc<str>),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = match &self.target {
            Target::Tcp { uri, .. } => format!("tcp {uri}"),
            Target::Tls { uri, name, .. } => format!("tls {uri} ({name:?})"),
            Target::Unix { path } => format!("unix {}", path.display()),
            Target::Unusable(why) => format!("unusable: {why}"),
        };
        f.debug_struct("Connector")
            .field("target", &target)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A TCP connector with the route's connect timeout and no Nagle delay (events are small and
/// must not wait).
fn tcp(timeout: Duration) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(timeout));
    http.set_nodelay(true);
    // `https://` URLs too: the TLS is ours, on top of the TCP stream it gives.
    http.enforce_http(false);
    http
}

impl Connector {
    /// Plain TCP to the host and port of `uri`.
    pub(crate) fn tcp(uri: Uri, timeout: Duration) -> Connector {
        Connector {
            target: Target::Tcp {
                http: tcp(timeout),
                uri,
            },
            timeout,
        }
    }

    /// TLS to the host and port of `uri` (an `https://` URL: port 443 when it names none),
    /// with `config`, checking the certificate for `name`.
    pub(crate) fn tls(
        uri: Uri,
        config: Result<Arc<rustls::ClientConfig>, rustls::Error>,
        name: ServerName<'static>,
        timeout: Duration,
    ) -> Connector {
        let target = match config {
            Ok(config) => Target::Tls {
                http: tcp(timeout),
                uri,
                tls: TlsConnector::from(config),
                name,
            },
            Err(error) => Target::Unusable(format!("TLS setup failed: {error}").into()),
        };
        Connector { target, timeout }
    }

    /// A connector that never connects, saying `why`.
    pub(crate) fn unusable(why: &str) -> Connector {
        Connector {
            target: Target::Unusable(why.into()),
            timeout: Duration::ZERO,
        }
    }

    /// The Unix socket at `path`.
    pub(crate) fn unix(path: &Path, timeout: Duration) -> Connector {
        Connector {
            target: Target::Unix { path: path.into() },
            timeout,
        }
    }
}

/// A Unix socket could not be connected to: the error names it.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to the socket {path}: {source}")]
pub(crate) struct SocketError {
    path: String,
    #[source]
    source: io::Error,
}

fn timed_out(what: String) -> BoxError {
    Box::new(io::Error::new(io::ErrorKind::TimedOut, what))
}

/// A connection being made.
pub(crate) type Connecting = Pin<Box<dyn Future<Output = Result<Io, BoxError>> + Send>>;

impl tower::Service<Uri> for Connector {
    type Response = Io;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    /// Connects to the route's app; the URL is not looked at (see the module's docs).
    fn call(&mut self, _: Uri) -> Connecting {
        self.connect()
    }
}

impl Connector {
    /// A connection to the route's app.
    pub(crate) fn connect(&self) -> Connecting {
        let target = self.target.clone();
        let limit = self.timeout;
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + limit;
            match target {
                Target::Tcp { mut http, uri } => Ok(Io::Tcp(tower::Service::call(&mut http, uri).await?)),
                Target::Tls {
                    mut http,
                    uri,
                    tls,
                    name,
                } => {
                    let tcp = tower::Service::call(&mut http, uri).await?.into_inner();
                    let handshake = tls.connect(name.clone(), tcp);
                    let stream = match tokio::time::timeout_at(deadline, handshake).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => return Err(Box::new(HandshakeError::new(&name, error)) as BoxError),
                        Err(_) => {
                            return Err(timed_out(format!(
                                "TLS handshake with {} not done within {}",
                                name.to_str(),
                                crate::config::format_duration(limit)
                            )))
                        }
                    };
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                    Ok(Io::Tls {
                        io: Box::new(TokioIo::new(stream)),
                        h2,
                    })
                }
                Target::Unix { path } => {
                    let error = |source| SocketError {
                        path: path.display().to_string(),
                        source,
                    };
                    match tokio::time::timeout_at(deadline, connect_unix(&path)).await {
                        Ok(Ok(io)) => Ok(io),
                        Ok(Err(source)) => Err(Box::new(error(source)) as BoxError),
                        Err(_) => Err(Box::new(error(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("not connected within {}", crate::config::format_duration(limit)),
                        ))) as BoxError),
                    }
                }
                Target::Unusable(why) => Err(why.to_string().into()),
            }
        })
    }
}

#[cfg(unix)]
async fn connect_unix(path: &Path) -> io::Result<Io> {
    Ok(Io::Unix(TokioIo::new(
        tokio::net::UnixStream::connect(path).await?,
    )))
}

#[cfg(not(unix))]
async fn connect_unix(_: &Path) -> io::Result<Io> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "Unix sockets are not available on this system",
    ))
}

/// A connection to an app, of whichever transport.
#[derive(Debug)]
pub(crate) enum Io {
    /// Plain TCP.
    Tcp(TokioIo<TcpStream>),
    /// TLS over TCP (boxed: its buffers are a kilobyte); `h2`: the app chose HTTP/2 by ALPN.
    Tls {
        io: Box<TokioIo<TlsStream<TcpStream>>>,
        h2: bool,
    },
    /// A Unix domain socket.
    #[cfg(unix)]
    Unix(TokioIo<tokio::net::UnixStream>),
}

impl Io {
    /// Whether the app chose HTTP/2 (by ALPN, over TLS).
    pub(crate) fn negotiated_h2(&self) -> bool {
        matches!(self, Io::Tls { h2: true, .. })
    }
}

impl Connection for Io {
    fn connected(&self) -> Connected {
        match self {
            Io::Tcp(io) => io.connected(),
            Io::Tls { io, h2 } => {
                let connected = io.inner().get_ref().0.connected();
                if *h2 {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
            #[cfg(unix)]
            Io::Unix(_) => Connected::new(),
        }
    }
}

/// Calls `$method` on whichever stream `$io` (a `Pin<&mut Io>`) holds: each is `Unpin`.
macro_rules! each {
    ($io:expr, $stream:ident => $call:expr) => {
        match $io.get_mut() {
            Io::Tcp($stream) => $call,
            Io::Tls { io: $stream, .. } => $call,
            #[cfg(unix)]
            Io::Unix($stream) => $call,
        }
    };
}

impl Read for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        each!(self, io => Pin::new(io).poll_read(cx, buf))
    }
}

impl Write for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        each!(self, io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, io => Pin::new(io).poll_shutdown(cx))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(io) => io.is_write_vectored(),
            Io::Tls { io, .. } => io.is_write_vectored(),
            #[cfg(unix)]
            Io::Unix(io) => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, io => Pin::new(io).poll_write_vectored(cx, bufs))
    }
}

// tokio's traits too, for a stream's own exchange (`stream.rs`), which reads and writes the
// connection without hyper.

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, io => Pin::new(io.inner_mut()).poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        each!(self, io => Pin::new(io.inner_mut()).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, io => Pin::new(io.inner_mut()).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, io => Pin::new(io.inner_mut()).poll_shutdown(cx))
    }
}
