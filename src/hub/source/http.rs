//! The app over HTTP: the stream's request (the template, with `Last-Event-ID` on reconnect)
//! sent on a connection of its own ([`crate::upstream::stream`]: HTTP/1.1 without hyper), and
//! its response body read chunk by chunk by the stream's task itself.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::header::{HeaderMap, ORIGIN};
use http::{Response, StatusCode, Uri};
use http_body_util::BodyExt;

use super::{Answer, Source, Step};
use crate::route::RouteEntry;
use crate::upstream::headers::{header_bytes, is_event_stream};
use crate::upstream::stream::{request_head, StreamBody};
use crate::upstream::UpstreamError;

/// The request a stream sends upstream (and again on every reconnect).
#[derive(Debug, Clone)]
pub struct Template {
    /// Upstream URL.
    pub uri: Uri,
    /// Headers of the subscription that opened the stream, ready for the upstream.
    pub headers: HeaderMap,
}

impl Template {
    /// About the bytes this request head holds, for `buffer_total_bytes`.
    pub fn size(&self) -> usize {
        let target = self.uri.path_and_query().map_or(1, |pq| pq.as_str().len());
        let authority = self.uri.authority().map_or(0, |a| a.as_str().len());
        target + authority + header_bytes(&self.headers) + 64
    }
}

type Head = Pin<Box<dyn Future<Output = Result<Response<StreamBody>, UpstreamError>> + Send>>;

/// The app's SSE endpoint, asked with the request of the subscription that opened the stream.
pub(crate) struct HttpSource {
    route: Arc<RouteEntry>,
    template: Template,
    exchange: Exchange,
}

/// Where the exchange with the app stands. Reading (an idle stream, most of the time), it holds
/// the connection and a body decoder, no buffer.
enum Exchange {
    Idle,
    /// Connecting, sending the request, reading the response head.
    Asking(Head),
    /// Reading the event stream.
    Reading(StreamBody),
}

impl HttpSource {
    /// A source asking `route`'s upstream with `template`.
    pub(crate) fn new(route: Arc<RouteEntry>, template: Template) -> HttpSource {
        HttpSource {
            route,
            template,
            exchange: Exchange::Idle,
        }
    }

    /// The answer to a response head: a stream is read on, anything else ends the request.
    fn answer(&mut self, response: Response<StreamBody>) -> Answer {
        match response.status() {
            StatusCode::OK if is_event_stream(response.headers()) => {
                let (head, body) = response.into_parts();
                self.route
                    .remember_cors(self.template.headers.get(ORIGIN), &head.headers);
                self.exchange = Exchange::Reading(body);
                Answer::Stream(head.headers)
            }
            status @ (StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT) => Answer::Transient(format!("upstream answered {status}")),
            // Its body streams from the app to the subscription that asked.
            _ => Answer::Definitive(response.map(|body| body.boxed_unsync())),
        }
    }
}

impl Source for HttpSource {
    fn open(&mut self, last_event_id: Option<&str>) {
        let head = request_head(&self.template.uri, &self.template.headers, last_event_id);
        let asking = self.route.client.send_stream(head);
        // The connect timeout also bounds the wait for the response head: an SSE endpoint
        // answers at once, and a subscription must not hang on one that does not.
        let limit = self.route.config.settings.upstream_connect_timeout;
        self.exchange = Exchange::Asking(Box::pin(async move {
            match tokio::time::timeout(limit, asking).await {
                Ok(result) => result,
                Err(_) => Err(UpstreamError::ResponseTimeout(limit)),
            }
        }));
    }

    fn close(&mut self) {
        self.exchange = Exchange::Idle;
    }

    async fn next(&mut self) -> Step {
        match &mut self.exchange {
            Exchange::Idle => std::future::pending().await,
            Exchange::Asking(head) => {
                let result = head.as_mut().await;
                self.exchange = Exchange::Idle;
                Step::Answer(match result {
                    Ok(response) => self.answer(response),
                    Err(error) => Answer::Transient(error.to_string()),
                })
            }
            // A poll reads and decodes what the connection has, whole: dropped between polls,
            // nothing is lost.
            Exchange::Reading(body) => match std::future::poll_fn(|cx| body.poll_data(cx)).await {
                Some(Ok(data)) => Step::Chunk(data),
                Some(Err(error)) => {
                    self.exchange = Exchange::Idle;
                    Step::End(Some(error))
                }
                None => {
                    self.exchange = Exchange::Idle;
                    Step::End(None)
                }
            },
        }
    }

    fn reconfigure(&mut self, route: &Arc<RouteEntry>) {
        self.route = route.clone();
    }

    fn origin(&self) -> &dyn fmt::Display {
        self.route.client.upstream()
    }
}
