//! The admin listener: metrics, health, readiness, live streams, reload. Separate from the
//! public port, so it can be firewalled apart and keeps answering while the public side drains.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::control::Control;

/// The content type of the metrics exposition (OpenMetrics text, which Prometheus reads).
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the admin endpoints on `listener` until `stop` resolves.
pub(crate) async fn serve(listener: TcpListener, control: Control, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop => return,
        };
        let control = control.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let control = control.clone();
                async move { Ok::<_, Infallible>(answer(&control, &request)) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(control: &Control, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            respond(StatusCode::OK, METRICS_CONTENT_TYPE, control.metrics().encode())
        }
        (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/readyz") => {
            // Without Redis the instance still serves (its streams read their own upstream):
            // ready, with the detail for whoever looks.
            let detail = match control.hub().cluster() {
                Some(cluster) if cluster.is_up() => {
                    format!("cluster: node {}, Redis up\n", cluster.config().node)
                }
                Some(cluster) => format!(
                    "cluster: node {}, Redis unavailable: streams are read locally\n",
                    cluster.config().node
                ),
                None => String::new(),
            };
            if control.is_ready() {
                respond(StatusCode::OK, "text/plain", format!("ready\n{detail}"))
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("draining\n{detail}"),
                )
            }
        }
        (&Method::GET, "/streams") => match serde_json::to_string_pretty(&control.hub().snapshot()) {
            Ok(json) => respond(StatusCode::OK, "application/json", json + "\n"),
            Err(error) => respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{error}\n"),
            ),
        },
        (&Method::POST, "/reload") => match control.reload() {
            Ok(()) => respond(StatusCode::OK, "text/plain", "reloaded\n".to_owned()),
            Err(error) => respond(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!("reload refused: {error}\n"),
            ),
        },
        (_, "/metrics" | "/healthz" | "/readyz" | "/streams" | "/reload") => respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".to_owned(),
        ),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "admin endpoints: GET /metrics /healthz /readyz /streams, POST /reload\n".to_owned(),
        ),
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
