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
