//! The operational HTTP endpoint: `/metrics` (OpenMetrics or the Prometheus
//! text format, as the scraper asks),
//! `/healthz` (the process is alive) and `/readyz` (ingest is running and
//! nothing the service depends on has failed; the body says what is not
//! ready).
//!
//! It serves no data and takes no input beyond the path, so it never sees
//! an identifier.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::{Stream, StreamExt};

use super::metrics::Metrics;
use super::shutdown::Shutdown;

/// Whether the service is ready (with what it reports then: its role, the
/// partitions it owns), or why not.
pub type Readiness = Arc<dyn Fn() -> Result<String, &'static str> + Send + Sync>;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    ready: Readiness,
}

/// Binds the listener and serves until `shutdown`. Returns the bound
/// address (useful with port 0) and the server task.
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Readiness,
    shutdown: Shutdown,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, ready });
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let address = listener.local_addr()?;
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::warn!(%error, "could not turn Nagle's algorithm off on a metrics connection");
        }
    });
    let task = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.wait().await }).await
    });
    Ok((address, task))
}

/// OpenMetrics to a scraper that asks for it (Prometheus does), the
/// Prometheus text format to anyone else.
async fn metrics_text(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|accept| accept.contains("application/openmetrics-text"));
    if openmetrics {
        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
    } else {
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.encode_prometheus_text())
    }
}

/// The connections `listener` accepts, with Nagle's algorithm off: a
/// server's last small frame (gRPC's end of stream, a short HTTP response)
/// then leaves at once instead of waiting for the client's delayed
/// acknowledgement (about 40 ms on Linux). Every listener of the service
/// accepts through this or sets the same option.
pub fn accepted_without_delay(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        let tcp = accepted?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    })
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match (state.ready)() {
        Ok(status) => (StatusCode::OK, format!("ready\n{status}")),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_send_small_frames_without_delay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut incoming = std::pin::pin!(accepted_without_delay(listener));
        let client = TcpStream::connect(address).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap(), "the server's side of the connection");
        assert!(!client.nodelay().unwrap(), "a plain connection keeps the default");
    }
}
