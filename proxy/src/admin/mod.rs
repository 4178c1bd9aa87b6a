//! The admin HTTP server (default `127.0.0.1:9901`):
//!
//! | endpoint | answers |
//! |---|---|
//! | `GET /` | the status page: listeners, upstreams and endpoints, certificates, config generation, drain state (HTML, reloads itself) |
//! | `GET /live` | 200 while the process runs |
//! | `GET /startup` | 200 once every listener is bound, 503 before |
//! | `GET /ready` | 200 when started and not draining, 503 otherwise; never depends on upstream health |
//! | `GET /metrics` | Prometheus metrics: OpenMetrics text when the scraper's `Accept` asks for it, Prometheus text 0.0.4 otherwise |
//! | `GET /upstreams` | JSON: every upstream's slots and queue, and per endpoint its breaker, health, active connections and warm pool |
//! | `GET /config` | JSON: the active config with its defaults (secrets redacted), its SHA-256, generation and file |
//! | `POST /shutdown` | starts the drain, as SIGTERM does; 404 unless enabled, 403 for non-loopback callers |

mod status_page;

pub(crate) use status_page::{Bound, Rates};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::generation::Generation;
use crate::lifecycle::Lifecycle;
use crate::telemetry::metrics::Metrics;

/// Limit on reading a request's headers (slow clients hold no task for long).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the admin handlers read.
pub(crate) struct AdminState {
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) shutdown_endpoint: bool,
    /// The generation in service; `/upstreams` and `/config` answer 503
    /// until the first is built.
    pub(crate) active: Arc<arc_swap::ArcSwapOption<Generation>>,
    /// Where each listener is bound (the status page).
    pub(crate) bound: Arc<arc_swap::ArcSwap<status_page::Bound>>,
    /// Accepted counts at the last render, for the page's rates.
    pub(crate) rates: status_page::Rates,
}

/// Serves admin requests on `socket` until the process exits.
pub(crate) async fn serve(socket: TcpListener, state: Arc<AdminState>) {
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&state, peer, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, client = %peer, "admin connection ended with an error");
            }
        });
    }
}

fn respond<B>(state: &AdminState, peer: SocketAddr, request: &Request<B>) -> Response<Full<Bytes>> {
    let lifecycle = &state.lifecycle;
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET, "/startup") if lifecycle.is_started() => text(StatusCode::OK, "started\n"),
        (&Method::GET, "/startup") => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        (&Method::GET, "/ready") if lifecycle.is_ready() => text(StatusCode::OK, "ready\n"),
        (&Method::GET, "/ready") if !lifecycle.is_started() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
        }
        (&Method::GET, "/ready") => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        (&Method::GET, "/metrics") => metrics(state, request),
        (&Method::GET, "/") => status(state),
        (&Method::GET, "/upstreams") => upstreams(state),
        (&Method::GET, "/config") => active_config(state),
        (&Method::GET, "/cache") => caches(state),
        (&Method::POST, "/shutdown") if !state.shutdown_endpoint => text(
            StatusCode::NOT_FOUND,
            "shutdown endpoint disabled (admin.shutdown_endpoint: true enables it)\n",
        ),
        (&Method::POST, "/shutdown") if !peer.ip().is_loopback() => text(
            StatusCode::FORBIDDEN,
            "shutdown is for loopback callers only\n",
        ),
        (&Method::POST, "/shutdown") => {
            tracing::info!(client = %peer, "shutdown requested on the admin port");
            lifecycle.request_shutdown();
            text(StatusCode::ACCEPTED, "draining\n")
        }
        (
            _,
            "/" | "/live" | "/startup" | "/ready" | "/metrics" | "/upstreams" | "/config"
            | "/cache" | "/shutdown",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: / /live /startup /ready /metrics /upstreams /config /cache /shutdown\n",
        ),
    }
}

/// The metrics in the format the scraper asked for: OpenMetrics when its
/// `Accept` names it (Prometheus does), text 0.0.4 otherwise (curl, older
/// scrapers).
fn metrics<B>(state: &AdminState, request: &Request<B>) -> Response<Full<Bytes>> {
    let openmetrics = request
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|accept| accept.contains("application/openmetrics-text"));
    let (content_type, body) = if openmetrics {
        (OPENMETRICS_CONTENT_TYPE, state.metrics.encode())
    } else {
        (
            PROMETHEUS_TEXT_CONTENT_TYPE,
            state.metrics.encode_prometheus_text(),
        )
    };
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n"))
}

fn upstreams(state: &AdminState) -> Response<Full<Bytes>> {
    let Some(active) = state.active.load_full() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "starting\n");
    };
    let statuses: Vec<_> = active
        .upstreams
        .iter()
        .map(|upstream| upstream.status())
        .collect();
    json(&serde_json::json!({
        "upstreams": statuses,
        "postgres_pools": active.postgres_pools(),
        "mysql_pools": active.mysql_pools(),
    }))
}

fn status(state: &AdminState) -> Response<Full<Bytes>> {
    let Some(active) = state.active.load_full() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "starting\n");
    };
    let page = status_page::render(&state.lifecycle, &active, &state.bound.load(), &state.rates);
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(Full::new(Bytes::from(page)))
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "cannot render\n"))
}

fn active_config(state: &AdminState) -> Response<Full<Bytes>> {
    let Some(active) = state.active.load_full() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "starting\n");
    };
    json(&active.describe())
}

/// Each Redis listener's cache: state, size, hit ratio.
fn caches(state: &AdminState) -> Response<Full<Bytes>> {
    let Some(active) = state.active.load_full() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "starting\n");
    };
    json(&serde_json::json!({ "caches": active.caches() }))
}

fn json(body: &serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode JSON\n"))
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: &AdminState, method: Method, path: &str, peer: &str) -> StatusCode {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        respond(state, peer.parse().unwrap(), &request).status()
    }

    fn state(shutdown_endpoint: bool) -> AdminState {
        AdminState {
            lifecycle: Arc::new(Lifecycle::new()),
            metrics: Arc::new(Metrics::new()),
            shutdown_endpoint,
            active: Arc::default(),
            bound: Arc::default(),
            rates: status_page::Rates::default(),
        }
    }

    #[test]
    fn startup_and_ready_fail_until_listeners_are_bound() {
        let state = state(false);
        let local = "127.0.0.1:50000";
        assert_eq!(status(&state, Method::GET, "/live", local), StatusCode::OK);
        assert_eq!(
            status(&state, Method::GET, "/startup", local),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(&state, Method::GET, "/ready", local),
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.lifecycle.mark_started();
        assert_eq!(
            status(&state, Method::GET, "/startup", local),
            StatusCode::OK
        );
        assert_eq!(status(&state, Method::GET, "/ready", local), StatusCode::OK);
    }

    #[test]
    fn shutdown_is_opt_in_and_loopback_only() {
        assert_eq!(
            status(&state(false), Method::POST, "/shutdown", "127.0.0.1:1"),
            StatusCode::NOT_FOUND
        );
        let enabled = state(true);
        assert_eq!(
            status(&enabled, Method::POST, "/shutdown", "10.1.2.3:1"),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status(&enabled, Method::GET, "/shutdown", "127.0.0.1:1"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(&enabled, Method::POST, "/shutdown", "[::1]:1"),
            StatusCode::ACCEPTED
        );
    }
}
