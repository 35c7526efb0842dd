//! The HTTP endpoint of a node (and of `twinsan serve --http`): `GET /metrics` in the OpenMetrics text format,
//! and at `/` either the web console (a node daemon, [`crate::console`]) or a page that says what is served.
//!
//! A scrape reads the node's state on the blocking pool (a volume's status or the cluster view may wait for
//! a lock that disk I/O holds), never on a runtime worker.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::warn;

use crate::console::ConsoleSource;
use crate::metrics::Format;

/// What a scrape reports: called on the blocking pool.
pub trait MetricsSource: Send + Sync + 'static {
    /// Everything the node knows now.
    fn snapshot(&self) -> crate::metrics::Snapshot;
    /// A line naming the process for the page at `/` (e.g. "node node1 of cluster demo").
    fn describe(&self) -> String;
}

/// Binds the endpoint's socket.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves on `listener` until `stop` becomes true; with `console`, the web console at `/`.
pub async fn serve(
    listener: TcpListener,
    source: Arc<dyn MetricsSource>,
    console: Option<Arc<dyn ConsoleSource>>,
    mut stop: watch::Receiver<bool>,
) {
    let metrics = Router::new()
        .route("/metrics", get(metrics))
        .with_state(source.clone());
    let front = match console {
        Some(console) => crate::console::router(console, stop.clone()),
        None => Router::new().route("/", get(index)).with_state(source),
    };
    let app = metrics.merge(front).fallback(not_found);
    let stopped = async move {
        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        warn!("the HTTP endpoint stopped: {e}");
    }
}

async fn metrics(State(source): State<Arc<dyn MetricsSource>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::for_accept(accept);
    match tokio::task::spawn_blocking(move || source.snapshot().encode(format)).await {
        Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("collecting the metrics failed: {e}\n"),
        )
            .into_response(),
    }
}

async fn index(State(source): State<Arc<dyn MetricsSource>>) -> Html<String> {
    let what = escape(&source.describe());
    Html(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>twinsan</title></head>\n\
         <body><h1>twinsan</h1><p>{what}</p><p><a href=\"/metrics\">/metrics</a>: Prometheus metrics \
         (docs/monitoring.md)</p></body></html>\n"
    ))
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "not found: this endpoint serves / (the console), /events, /metrics and the console's /api/\n",
    )
}

/// Text made safe inside HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
