//! The GitHub webhook receiver: verifies each delivery's signature, filters it like Cockpit's
//! webhook (`events::decide`), and publishes `{event, request}` to the durable `webhook` queue, answering 200 only
//! once the broker confirmed it stored the message.

mod metrics;
mod publisher;
mod recent;
mod routes;
mod server;
mod signature;
mod status;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

pub use events::Publish;
pub use publisher::PublishError;
pub use routes::{
    MAX_BODY, MAX_DELIVERY_ID, OWN_BODY_BYTES, READ_TIMEOUT, Received, Refusal, SHARED_BODY_BYTES, judge,
};
pub use server::{HEADER_TIMEOUT, MAX_CONNECTIONS};
pub use signature::{SignatureError, sign_sha256, verify};

/// What the webhook needs to run.
pub struct Config {
    pub amqp: amqp::Config,
    /// The HMAC secret GitHub signs deliveries with.
    pub secret: Vec<u8>,
    /// How long a client may take to send a delivery's body ([`READ_TIMEOUT`]).
    pub read_timeout: std::time::Duration,
    /// How long a client may take to send a request's headers ([`HEADER_TIMEOUT`]).
    pub header_timeout: std::time::Duration,
    /// The Prometheus that scrapes the deployment, linked from `/status`.
    pub prometheus: Option<String>,
}

impl Config {
    /// GitHub's timings: [`READ_TIMEOUT`] and [`HEADER_TIMEOUT`].
    pub fn new(amqp: amqp::Config, secret: Vec<u8>) -> Config {
        Config { amqp, secret, read_timeout: READ_TIMEOUT, header_timeout: HEADER_TIMEOUT, prometheus: None }
    }
}

/// Reads a webhook secret file as Cockpit does: its content, surrounding whitespace stripped.
pub fn read_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    Ok(std::fs::read_to_string(path)?.trim().as_bytes().to_vec())
}

/// Writes `address` to `file` whole (a temporary file renamed over it), for whoever started
/// the server with port 0 and waits to learn the port.
pub fn write_address(file: &std::path::Path, address: std::net::SocketAddr) -> std::io::Result<()> {
    let partial = file.with_extension("partial");
    std::fs::write(&partial, address.to_string())?;
    std::fs::rename(&partial, file)
}

/// Serves deliveries on `listener` until `shutdown` resolves, then finishes the requests in
/// flight. The broker connection is made in the background: until it is up, deliveries get 503.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = routes::AppState {
        publisher: Arc::new(publisher::Publisher::start(config.amqp)),
        secret: config.secret.into(),
        metrics: Arc::default(),
        recent: Arc::default(),
        deliveries: Arc::default(),
        read_timeout: config.read_timeout,
        prometheus: config.prometheus.map(Arc::from),
        body_bytes: Arc::new(tokio::sync::Semaphore::new(SHARED_BODY_BYTES)),
    };
    server::serve(listener, routes::router(state), config.header_timeout, shutdown).await
}
