//! The app over HTTP: the stream's request (the template, with `Last-Event-ID` on reconnect)
//! sent on the route's pooled client, and its response body read chunk by chunk.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::header::{HeaderMap, ORIGIN};
use http::{Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{Answer, Source, Step};
use crate::route::RouteEntry;
use crate::upstream::headers::{header_bytes, is_event_stream};
use crate::upstream::{subscription_request, UpstreamError};

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

type Head = Pin<Box<dyn Future<Output = Result<Response<Incoming>, UpstreamError>> + Send>>;

/// The app's SSE endpoint, asked with the request of the subscription that opened the stream.
pub(crate) struct HttpSource {
    route: Arc<RouteEntry>,
    template: Template,
    exchange: Exchange,
}

/// Where the exchange with the app stands.
enum Exchange {
    Idle,
    Asking(Head),
    Reading(Incoming),
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
    fn answer(&mut self, response: Response<Incoming>) -> Answer {
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
            _ => Answer::Definitive(response.map(|body| body.map_err(Into::into).boxed_unsync())),
        }
    }
}

impl Source for HttpSource {
    fn open(&mut self, last_event_id: Option<&str>) {
        let request = subscription_request(&self.template.uri, &self.template.headers, last_event_id);
        let client = self.route.client.clone();
        // The connect timeout also bounds the wait for the response head: an SSE endpoint
        // answers at once, and a subscription must not hang on one that does not.
        let limit = self.route.config.settings.upstream_connect_timeout;
        self.exchange = Exchange::Asking(Box::pin(async move {
            match tokio::time::timeout(limit, client.send_stream(request)).await {
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
            Exchange::Reading(body) => loop {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            return Step::Chunk(data);
                        }
                    }
                    Some(Err(error)) => {
                        self.exchange = Exchange::Idle;
                        return Step::End(Some(error.into()));
                    }
                    None => {
                        self.exchange = Exchange::Idle;
                        return Step::End(None);
                    }
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
