//! An SSE client for the tests: its own HTTP/1.1 connection, events parsed with ssegate's own
//! parser (itself proven against the spec in unit tests), raw bytes kept for wire checks.

use std::collections::VecDeque;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use ssegate::sse::{Event, Item, Parser};

use super::within;

pub struct SseClient {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
    parser: Parser,
    items: VecDeque<Item>,
    /// Every byte of the body read so far.
    pub raw: Vec<u8>,
    connection: JoinHandle<()>,
}

impl SseClient {
    /// Opens `url` (http://host:port/path) with `Accept: text/event-stream` and `headers`.
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> SseClient {
        let uri: http::Uri = url.parse().expect("url");
        let authority = uri.authority().expect("authority").to_string();
        let stream = within("connect", TcpStream::connect(&authority))
            .await
            .expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = Request::get(uri.path_and_query().map_or("/", |pq| pq.as_str()))
            .header("accept", "text/event-stream");
        // The test may name another Host (a tenant); one Host either way.
        if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
            request = request.header("host", &authority);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Empty::<Bytes>::new()).expect("request");
        let response = within("SSE response head", sender.send_request(request))
            .await
            .expect("response");
        let (parts, body) = response.into_parts();
        SseClient {
            status: parts.status,
            headers: parts.headers,
            body,
            parser: Parser::new(1 << 20),
            items: VecDeque::new(),
            raw: Vec::new(),
            connection,
        }
    }

    /// Reads one more chunk; false when the body ended (cleanly or not).
    async fn read_more(&mut self) -> Result<bool, String> {
        match self.body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    self.raw.extend_from_slice(&data);
                    let items = &mut self.items;
                    self.parser.feed(&data, |item| items.push_back(item));
                }
                Ok(true)
            }
            Some(Err(error)) => Err(error.to_string()),
            None => Ok(false),
        }
    }

    /// The next event, within the test timeout.
    pub async fn next_event(&mut self) -> Event {
        within("the next event", async {
            loop {
                while let Some(item) = self.items.pop_front() {
                    if let Item::Event(event) = item {
                        return event;
                    }
                }
                match self.read_more().await {
                    Ok(true) => {}
                    Ok(false) => panic!("stream ended while waiting for an event; read {:?}", self.text()),
                    Err(error) => panic!(
                        "stream broke while waiting for an event: {error}; read {:?}",
                        self.text()
                    ),
                }
            }
        })
        .await
    }

    /// The next event, or `None` when the stream ends (cleanly or not) before one comes.
    pub async fn next_event_or_end(&mut self) -> Option<Event> {
        within("the next event or the end", async {
            loop {
                while let Some(item) = self.items.pop_front() {
                    if let Item::Event(event) = item {
                        return Some(event);
                    }
                }
                match self.read_more().await {
                    Ok(true) => {}
                    Ok(false) | Err(_) => return None,
                }
            }
        })
        .await
    }

    /// The next `n` events.
    pub async fn events(&mut self, n: usize) -> Vec<Event> {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            events.push(self.next_event().await);
        }
        events
    }

    /// Reads until the raw bytes contain `needle` (anywhere), within the test timeout.
    pub async fn read_until(&mut self, needle: &str) {
        within(&format!("{needle:?} on the stream"), async {
            while !self.text().contains(needle) {
                match self.read_more().await {
                    Ok(true) => {}
                    other => panic!(
                        "stream over ({other:?}) before {needle:?}; read {:?}",
                        self.text()
                    ),
                }
            }
        })
        .await;
    }

    /// Reads until the response ends; returns whether it ended cleanly (not with an error).
    pub async fn until_end(&mut self) -> bool {
        within("the end of the stream", async {
            loop {
                match self.read_more().await {
                    Ok(true) => {}
                    Ok(false) => return true,
                    Err(_) => return false,
                }
            }
        })
        .await
    }

    /// Events already parsed but not yet taken, without reading more.
    pub fn buffered_events(&mut self) -> Vec<Event> {
        self.items
            .drain(..)
            .filter_map(|item| match item {
                Item::Event(event) => Some(event),
                _ => None,
            })
            .collect()
    }

    /// What a browser would send as Last-Event-ID now.
    pub fn last_event_id(&self) -> String {
        self.parser.last_event_id().to_owned()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Drop for SseClient {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Reads `body` (an SSE response read frame by frame) until its text contains `needle`;
/// returns everything read.
pub async fn read_until<B>(body: &mut B, needle: &str) -> String
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut text = String::new();
    while !text.contains(needle) {
        let frame = within(&format!("{needle:?} on the stream"), body.frame())
            .await
            .expect("a frame")
            .expect("a good frame");
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    text
}

/// `data` of each event.
pub fn data(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.data.clone()).collect()
}
