//! Serving HTTP to the open internet: a bounded number of connections, one request each (as
//! Cockpit's HTTP/1.0 webhook: GitHub opens a connection per delivery), each with a deadline for
//! its request headers, and a graceful stop.
//! `axum::serve` offers neither bound nor header deadline, so this is the accept loop of
//! hyper-util around the same router.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::ServiceExt;

/// How many connections are served at once; more are closed as they come (GitHub delivers one
/// event per connection, and never many at once to one hook).
pub const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send a request's headers: GitHub sends them at once.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the requests in flight may take to finish once told to stop.
pub const DRAIN: Duration = Duration::from_secs(30);

/// Serves `router` on `listener`, each connection with `header_timeout`, until `shutdown`
/// resolves; then lets the requests in flight finish (for at most [`DRAIN`]), and closes the
/// connections still open.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors, say: the next accept may work.
                Err(err) => {
                    tracing::warn!(%err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many connections: closing a new one");
            continue;
        };
        // Answers are small and latency matters: do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let service = hyper::service::service_fn({
            let router = router.clone();
            move |request: hyper::Request<Incoming>| router.clone().oneshot(request.map(axum::body::Body::new))
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        // No connection is kept alive to wait, idle, for another request.
        http.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(false);
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tasks.spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in flight after {DRAIN:?}: stopping all the same");
    }
    tasks.shutdown().await;
    Ok(())
}
