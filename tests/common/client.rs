//! Clients for the tests: plain requests through hyper, and raw TCP for exact wire checks.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::within;

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends a GET to `url` with `headers` and reads the whole response.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(
        request
            .body(Empty::<Bytes>::new().boxed_unsync())
            .expect("request"),
    )
    .await
}

/// Sends any request over HTTP/1.1 and reads the whole response, trailers included.
pub async fn send<B>(request: Request<B>) -> Reply
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let client = Client::builder(TokioExecutor::new()).build_http::<B>();
    let response = within("response head", client.request(request))
        .await
        .expect("request failed");
    let (parts, body) = response.into_parts();
    let collected = within("response body", body.collect()).await.expect("body");
    let trailers = collected.trailers().cloned();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// Writes `raw` bytes on a fresh TCP connection and reads until the peer closes it or `limit`
/// passes; returns everything read.
pub async fn raw_exchange(addr: std::net::SocketAddr, raw: &[u8], limit: Duration) -> String {
    let mut stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    stream.write_all(raw).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A TCP connection to `addr` from the local address `from` (any of 127.0.0.0/8 works on
/// loopback): a client at another address.
pub async fn tcp_from(from: std::net::IpAddr, addr: std::net::SocketAddr) -> TcpStream {
    let socket = match from {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .expect("socket");
    socket.bind((from, 0).into()).expect("bind the client's address");
    within("connect", socket.connect(addr)).await.expect("connect")
}

/// Reads from `stream` until a whole response head has arrived (or the peer closed); returns
/// what was read, the head and whatever came with it.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    within("a response head", async {
        loop {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
            if out.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads from `stream` until the peer closes it (or resets it); returns everything read. Fails
/// the test, naming `what`, if that takes longer than the test timeout.
pub async fn until_closed<R>(stream: &mut R, what: &str) -> Vec<u8>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut out = Vec::new();
    within(what, async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    out
}

/// Writes `raw` on a fresh connection and returns the response head (and what came with it).
pub async fn raw_head(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    stream.write_all(raw).await.expect("write");
    read_head(&mut stream).await
}

/// The status code of a raw response head, 0 if there is none.
pub fn status_of(head: &str) -> u16 {
    head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// An HTTP/2 client (the `h2` crate, so requests go out exactly as built) on `io`.
pub async fn h2_client<IO>(io: IO) -> h2::client::SendRequest<Bytes>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = within("h2 handshake", h2::client::handshake(io))
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Sends `request` (no body) over h2 and returns the response status, or the reason the stream
/// was reset.
pub async fn h2_status(
    client: &mut h2::client::SendRequest<Bytes>,
    request: Request<()>,
    end: bool,
) -> Result<StatusCode, String> {
    let mut ready = within("h2 ready", client.clone().ready())
        .await
        .map_err(|e| e.to_string())?;
    let (response, _body) = ready.send_request(request, end).map_err(|e| e.to_string())?;
    match within("h2 response", response).await {
        Ok(response) => Ok(response.status()),
        Err(error) => Err(error.to_string()),
    }
}
