//! The HTTP interface: one router, small handlers, and the mapping from refusal to HTTP status
//! in one place (`Refusal::status`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::metrics::Metrics;
use crate::publisher::{PublishError, Publisher};
use crate::recent::{self, Recent};
use crate::signature::{self, SignatureError};
use events::{Event, Publish};

/// GitHub caps deliveries at 25 MiB; a larger body is refused before it is read.
pub const MAX_BODY: usize = 25 * 1024 * 1024;
/// GitHub gives up on a delivery after 10 s: a client slower than that to send its body is not
/// GitHub, and only holds a connection.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The first bytes of every request's body may be held at once, however many requests come:
/// GitHub's deliveries of the events CI acts on are smaller, so they are always read...
pub const OWN_BODY_BYTES: usize = 256 * 1024;
/// ...while all the bytes beyond that, of the requests being read at once, share this much.
/// Bodies are held before their signature can be checked, so anyone can send them: with
/// [`crate::server::MAX_CONNECTIONS`], this bounds what strangers make the webhook hold (128 MiB),
/// and a flood of large bodies is answered 503 without keeping GitHub's small deliveries out.
pub const SHARED_BODY_BYTES: usize = 64 * 1024 * 1024;
/// GitHub's delivery ids are GUIDs (36 characters); a longer one is not GitHub's.
pub const MAX_DELIVERY_ID: usize = 100;
/// The headers a delivery is judged by: GitHub sends each once, and two would be ambiguous.
const SINGLE_HEADERS: [&str; 5] =
    ["x-hub-signature-256", "x-hub-signature", "x-github-event", "x-github-delivery", "content-type"];

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub publisher: Arc<Publisher>,
    pub secret: Arc<[u8]>,
    pub metrics: Arc<Metrics>,
    pub recent: Arc<Recent>,
    /// The last deliveries, for `/status`.
    pub deliveries: Arc<crate::status::Deliveries>,
    pub read_timeout: Duration,
    /// The Prometheus scraping the deployment, for `/status`.
    pub prometheus: Option<Arc<str>>,
    /// Bytes beyond [`OWN_BODY_BYTES`] of the bodies being read ([`SHARED_BODY_BYTES`]).
    pub body_bytes: Arc<Semaphore>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", post(deliver))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/inspect-queue", get(inspect_queue))
        .route("/status", get(status))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(state)
}

/// A delivery that was handled.
enum Accepted {
    Published,
    /// Stored before: the same body, under whatever delivery id.
    Replayed,
    Ping,
    Ignored(String),
}

/// A delivery that was refused, and why.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("missing X-Hub-Signature-256 header")]
    Unsigned,
    #[error("signature does not match the body")]
    BadSignature,
    #[error("body larger than GitHub's 25 MiB limit, or cut short")]
    TooLarge,
    #[error("body not sent within {} s", .0.as_secs())]
    Slow(Duration),
    #[error("more than one {0} header")]
    Repeated(&'static str),
    #[error("X-GitHub-Delivery longer than {MAX_DELIVERY_ID} bytes")]
    DeliveryId,
    #[error("too many large bodies being received; try again later")]
    Busy,
    #[error("content type is not application/json")]
    NotJsonType,
    #[error("missing X-GitHub-Event header")]
    NoEvent,
    #[error("body is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("body is not a {event} event: {source}")]
    NotAnEvent { event: String, source: serde_json::Error },
    #[error("body is not UTF-8, as GitHub's JSON always is")]
    NotUtf8,
    #[error("body has no repository")]
    NoRepository,
    #[error("delivery not stored, try again later: {0}")]
    Unavailable(PublishError),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::Unsigned => StatusCode::UNAUTHORIZED,
            Refusal::BadSignature => StatusCode::FORBIDDEN,
            Refusal::NoEvent
            | Refusal::NotJson(_)
            | Refusal::NotAnEvent { .. }
            | Refusal::NotUtf8
            | Refusal::NoRepository
            | Refusal::DeliveryId
            | Refusal::Repeated(_) => StatusCode::BAD_REQUEST,
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Slow(_) => StatusCode::REQUEST_TIMEOUT,
            Refusal::NotJsonType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::Unavailable(_) | Refusal::Busy => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `outcome` label of the deliveries metric.
    fn outcome(&self) -> &'static str {
        match self {
            Refusal::Unsigned | Refusal::BadSignature => "unauthorized",
            Refusal::NoEvent
            | Refusal::NotJson(_)
            | Refusal::NotAnEvent { .. }
            | Refusal::NotUtf8
            | Refusal::NoRepository
            | Refusal::TooLarge
            | Refusal::Slow(_)
            | Refusal::Repeated(_)
            | Refusal::DeliveryId
            | Refusal::NotJsonType => "bad_request",
            Refusal::Unavailable(_) => "unavailable",
            Refusal::Busy => "busy",
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = format!("{self}\n");
        match self.status() {
            StatusCode::SERVICE_UNAVAILABLE => {
                (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "5")], body).into_response()
            }
            status => (status, body).into_response(),
        }
    }
}

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        match self {
            Accepted::Published | Accepted::Ping => (StatusCode::OK, "OK\n").into_response(),
            Accepted::Replayed => (StatusCode::OK, "OK (stored before)\n").into_response(),
            Accepted::Ignored(reason) => (StatusCode::ACCEPTED, format!("ignored: {reason}\n")).into_response(),
        }
    }
}

impl Accepted {
    fn outcome(&self) -> &'static str {
        match self {
            Accepted::Published => "published",
            Accepted::Replayed => "replayed",
            Accepted::Ping => "ping",
            Accepted::Ignored(_) => "ignored",
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

async fn deliver(State(state): State<AppState>, request: Request) -> Result<Accepted, Refusal> {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let event = header(headers, "x-github-event");
    let id = header(headers, "x-github-delivery").filter(|id| id.len() <= MAX_DELIVERY_ID).unwrap_or("-");
    // The delivery's trace: every service it reaches continues it (`traces`).
    let span = tracing::info_span!("delivery", delivery = id, event = event.unwrap_or("-"));
    deliver_in(&state, headers, body, event, id).instrument(span).await
}

async fn deliver_in(
    state: &AppState,
    headers: &HeaderMap,
    body: axum::body::Body,
    event: Option<&str>,
    id: &str,
) -> Result<Accepted, Refusal> {
    let (result, repository) = match read_body(headers, body, state.read_timeout, &state.body_bytes).await {
        // The shared bytes stay held until the delivery is handled.
        Ok((body, _held)) => {
            let result = accept(state, headers, event, &body).await;
            // Only a body that passed the signature check names a repository on the page.
            let signed = matches!(result, Ok(_) | Err(Refusal::Unavailable(_)));
            (result, signed.then(|| repository_of(&body)).flatten())
        }
        Err(refusal) => (Err(refusal), None),
    };
    let outcome = result.as_ref().map_or_else(Refusal::outcome, Accepted::outcome);
    state.metrics.delivery(event.unwrap_or(""), outcome);
    let event_label = crate::metrics::event_label(event.unwrap_or(""));
    let seen = crate::status::Seen { at: std::time::SystemTime::now(), event: event_label, repository, outcome };
    state.deliveries.record(seen);
    match &result {
        Ok(_) => tracing::info!(delivery = id, event, outcome, "delivery handled"),
        Err(Refusal::Busy) => tracing::warn!(delivery = id, event, "delivery refused: too many large bodies at once"),
        Err(Refusal::Unavailable(err)) => tracing::warn!(delivery = id, event, %err, "delivery not stored"),
        Err(refusal) => tracing::info!(delivery = id, event, reason = %refusal, "delivery refused"),
    }
    result
}

/// The whole body of a delivery with GitHub's headers, each once, read within `within`;
/// refusing one announced or found to exceed GitHub's limit without reading it, and one that
/// would take more of the `shared` bytes than are free. Returns the body and the shared bytes
/// it holds.
async fn read_body(
    headers: &HeaderMap,
    body: axum::body::Body,
    within: Duration,
    shared: &Arc<Semaphore>,
) -> Result<(Vec<u8>, Option<OwnedSemaphorePermit>), Refusal> {
    if let Some(name) = SINGLE_HEADERS.into_iter().find(|name| headers.get_all(*name).iter().count() > 1) {
        return Err(Refusal::Repeated(name));
    }
    if headers.get("x-github-delivery").is_some_and(|id| id.len() > MAX_DELIVERY_ID) {
        return Err(Refusal::DeliveryId);
    }
    let media_type = header(headers, "content-type").map(|value| value.split(';').next().unwrap_or("").trim());
    if !media_type.is_some_and(|media_type| media_type.eq_ignore_ascii_case("application/json")) {
        return Err(Refusal::NotJsonType);
    }
    let announced = header(headers, "content-length").and_then(|length| length.parse::<u64>().ok());
    if announced.is_some_and(|length| length > MAX_BODY as u64) {
        return Err(Refusal::TooLarge);
    }
    let read = async {
        let mut body = body;
        let mut bytes = Vec::new();
        let mut held: Option<OwnedSemaphorePermit> = None;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(|_| Refusal::TooLarge)?.into_data() else { continue };
            if bytes.len() + data.len() > MAX_BODY {
                return Err(Refusal::TooLarge);
            }
            let beyond = (bytes.len() + data.len()).saturating_sub(OWN_BODY_BYTES);
            let more = beyond - held.as_ref().map_or(0, |permit| permit.num_permits());
            if more > 0 {
                let permit = u32::try_from(more)
                    .ok()
                    .and_then(|more| shared.clone().try_acquire_many_owned(more).ok())
                    .ok_or(Refusal::Busy)?;
                match &mut held {
                    Some(held) => held.merge(permit),
                    None => held = Some(permit),
                }
            }
            bytes.extend_from_slice(&data);
        }
        Ok((bytes, held))
    };
    match tokio::time::timeout(within, read).await {
        Ok(read) => read,
        Err(_) => Err(Refusal::Slow(within)),
    }
}

/// What a delivery is judged by, once its body is read: its signature headers, its event
/// header and its body.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub sha256: Option<&'a [u8]>,
    pub sha1: Option<&'a [u8]>,
    pub event: Option<&'a str>,
    pub body: &'a [u8],
}

/// Judges a delivery as the webhook does before it publishes anything: its signature under
/// `secret`, its event, its body as UTF-8 JSON of that event, and Cockpit's filter
/// (`events::decide`). Touches nothing else (the fuzz target drives it).
pub fn judge(secret: &[u8], received: &Received) -> Result<Publish, Refusal> {
    signature::verify(secret, received.sha256, received.sha1, received.body).map_err(|err| match err {
        SignatureError::Missing => Refusal::Unsigned,
        SignatureError::Mismatch => Refusal::BadSignature,
    })?;
    let name = received.event.ok_or(Refusal::NoEvent)?;
    // Checked whole: the parser does not look inside the values CI skips.
    let text = std::str::from_utf8(received.body).map_err(|_| Refusal::NotUtf8)?;
    let event = Event::parse(name, text).map_err(|source| match source.classify() {
        serde_json::error::Category::Data => Refusal::NotAnEvent { event: name.to_owned(), source },
        _ => Refusal::NotJson(source),
    })?;
    let publish = events::decide(&event).publish;
    if publish != Publish::Ping && !event.has_repository() {
        return Err(Refusal::NoRepository);
    }
    Ok(publish)
}

async fn accept(state: &AppState, headers: &HeaderMap, event: Option<&str>, body: &[u8]) -> Result<Accepted, Refusal> {
    let received = Received {
        sha256: headers.get("x-hub-signature-256").map(|value| value.as_bytes()),
        sha1: headers.get("x-hub-signature").map(|value| value.as_bytes()),
        event,
        body,
    };
    let publish = judge(&state.secret, &received)?;
    let event = event.expect("judged to have an event");
    match publish {
        Publish::Ping => Ok(Accepted::Ping),
        Publish::No(reason) => Ok(Accepted::Ignored(reason)),
        Publish::Yes => {
            let fingerprint = recent::fingerprint(body);
            if !state.recent.claim(fingerprint) {
                return Ok(Accepted::Replayed);
            }
            let started = Instant::now();
            let message = amqp::WebhookMessage::encode(event, body);
            // The delivery's span is the trace's root and the scan's parent: one span a delivery
            // keeps tracing's cost to the webhook low (docs/benchmarks.md).
            let traceparent = traces::traceparent(&tracing::Span::current());
            if let Err(err) = state.publisher.publish(&message, traceparent.as_deref()).await {
                state.recent.release(fingerprint);
                return Err(Refusal::Unavailable(err));
            }
            state.metrics.publish_latency(started.elapsed());
            tracing::info!(queue = amqp::WEBHOOK.name, "published");
            Ok(Accepted::Published)
        }
    }
}

async fn healthz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.publisher.is_connected() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not connected to the broker\n")
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let text = state.metrics.render(state.publisher.is_connected());
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text)
}

/// The `repository.full_name` of a delivery's body, if it has one.
fn repository_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Body {
        repository: Option<Repository>,
    }
    #[derive(serde::Deserialize)]
    struct Repository {
        full_name: String,
    }
    serde_json::from_slice::<Body>(body).ok()?.repository.map(|repository| repository.full_name)
}

/// The status page (`crate::status`).
async fn status(State(state): State<AppState>) -> Response {
    let depths = state.publisher.queue_depths().await.map_err(|err| err.to_string());
    let page = crate::status::render(
        depths.as_ref().map_err(Clone::clone),
        &state.deliveries.list(),
        std::time::SystemTime::now(),
        state.prometheus.as_deref(),
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

/// Cockpit's `inspect-queue` summary: each queue and how many messages it holds, as the
/// broker said at most a few seconds ago (anyone may ask; the broker is asked at that pace).
async fn inspect_queue(State(state): State<AppState>) -> Response {
    match state.publisher.queue_depths().await {
        Ok(depths) => depths
            .iter()
            .map(|(queue, depth)| match depth {
                Some(state) => format!("{queue} queue: {} messages\n", state.messages),
                None => format!("queue {queue} does not exist\n"),
            })
            .collect::<String>()
            .into_response(),
        Err(err) => Refusal::Unavailable(err).into_response(),
    }
}
