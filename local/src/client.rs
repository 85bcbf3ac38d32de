//! Talking to a running deployment as its users do, in one place: HTTP requests to our servers
//! (the webhook, a worker's metrics), signed GitHub deliveries, readiness probes that cannot
//! hang, and the one loop that waits for something to come true, with a deadline and what it
//! last saw.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::Delivery;

/// How long one exchange may take, connection included.
const EXCHANGE_WITHIN: Duration = Duration::from_secs(30);
/// How often [`wait_until`] looks again.
const LOOK_EVERY: Duration = Duration::from_millis(50);
/// How long one readiness probe may take. A ready server of ours answers on loopback within
/// milliseconds; one that accepted the connection while it is still starting (RabbitMQ does,
/// while it boots) must not hold the wait: the probe gives up and the next one is tried.
pub const PROBE_WITHIN: Duration = Duration::from_millis(500);
/// The longest a broker probe's deadline grows to (see [`BrokerProbe`]).
const PROBE_LONGEST: Duration = Duration::from_secs(8);

/// What a server answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{method} http://{address}{path}: {detail}")]
pub struct ClientError {
    pub method: String,
    pub address: SocketAddr,
    pub path: String,
    pub detail: String,
}

/// Sends `request` on a connection of its own to `address`; the answer, whatever its status.
pub async fn send(address: SocketAddr, request: hyper::Request<Full<Bytes>>) -> Result<Answer, ClientError> {
    send_within(address, request, EXCHANGE_WITHIN).await
}

/// [`send`], given up after `within`.
async fn send_within(
    address: SocketAddr,
    request: hyper::Request<Full<Bytes>>,
    within: Duration,
) -> Result<Answer, ClientError> {
    let (method, path) = (request.method().to_string(), request.uri().to_string());
    let failed = |detail: String| ClientError { method: method.clone(), address, path: path.clone(), detail };
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address).await.map_err(|e| e.to_string())?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        // Owned by this exchange: it ends with the answer, or is dropped with the future.
        let connection = async move { connection.await.map_err(|e| e.to_string()) };
        let answer = async {
            let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes().to_vec();
            Ok::<_, String>(Answer { status: parts.status.as_u16(), headers: parts.headers, body })
        };
        tokio::select! {
            answer = answer => answer,
            Err(err) = connection => Err(err),
        }
    };
    match tokio::time::timeout(within, exchange).await {
        Ok(answer) => answer.map_err(failed),
        Err(_) => Err(failed(format!("no answer within {} ms", within.as_millis()))),
    }
}

/// `request`, addressed to `address` (its `Host`).
fn request(method: &str, address: SocketAddr, path: &str) -> hyper::http::request::Builder {
    hyper::Request::builder().method(method).uri(path).header("host", address.to_string())
}

/// `GET path` from `address`.
pub async fn get(address: SocketAddr, path: &str) -> Result<Answer, ClientError> {
    send(address, request("GET", address, path).body(Full::new(Bytes::new())).expect("a valid request")).await
}

/// Whether `GET path` from `address` answers 200 within [`PROBE_WITHIN`]: a readiness probe.
pub async fn answers(address: SocketAddr, path: &str) -> bool {
    probe(address, path).await.is_some_and(|answer| answer.status == 200)
}

/// What `GET path` from `address` answers within [`PROBE_WITHIN`], if anything.
pub async fn probe(address: SocketAddr, path: &str) -> Option<Answer> {
    let probe = request("GET", address, path).body(Full::new(Bytes::new())).expect("a valid request");
    send_within(address, probe, PROBE_WITHIN).await.ok()
}

/// The counter `name` of the metrics a server of ours serves at `address` (`/metrics`).
pub async fn metric(address: SocketAddr, name: &str) -> Result<u64, ClientError> {
    Ok(metric_in(&get(address, "/metrics").await?.text(), name))
}

/// The counter `name` in Prometheus' text format: the sum over its label sets, unless `name`
/// gives them (`x_total{a="b"}`); 0 when absent.
pub fn metric_in(text: &str, name: &str) -> u64 {
    let value = |line: &str| {
        let rest = line.strip_prefix(name)?;
        let rest = match rest.strip_prefix('{') {
            Some(labels) if !name.contains('{') => &labels[labels.find('}')? + 1..],
            _ => rest,
        };
        rest.strip_prefix(' ')?.trim().parse::<u64>().ok()
    };
    text.lines().filter_map(value).sum()
}

/// Probes a broker as its clients use it: TLS, certificate login, a channel, within a deadline
/// of the probe's own ([`PROBE_WITHIN`] at first). A probe that ran out of it doubles it for the
/// next (up to 8 s), so that a handshake a loaded machine makes slow still gets through, while
/// one held by a booting broker is cut short and tried again at once.
pub struct BrokerProbe {
    config: amqp::Config,
    within_millis: std::sync::atomic::AtomicU64,
}

impl BrokerProbe {
    pub fn new(config: amqp::Config) -> BrokerProbe {
        BrokerProbe { config, within_millis: (PROBE_WITHIN.as_millis() as u64).into() }
    }

    /// Whether the broker took a connection; why not when it did not.
    pub async fn answers(&self) -> Result<(), amqp::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let within = Duration::from_millis(self.within_millis.load(Relaxed));
        match amqp::Session::connect_within(&self.config, within).await {
            Ok(session) => {
                session.close().await;
                Ok(())
            }
            Err(err) => {
                if matches!(err, amqp::Error::ConnectTimeout { .. }) {
                    self.within_millis.store((within * 2).min(PROBE_LONGEST).as_millis() as u64, Relaxed);
                }
                Err(err)
            }
        }
    }
}

/// POSTs `delivery`, signed with `secret`, to the webhook at `address`, as GitHub does; the
/// HTTP status.
pub async fn deliver(address: SocketAddr, delivery: &Delivery, secret: &[u8]) -> Result<u16, ClientError> {
    let mut post = request("POST", address, "/");
    for (name, value) in delivery.headers(secret) {
        post = post.header(name, value);
    }
    let post = post.body(Full::new(Bytes::from(delivery.body.clone()))).expect("a valid request");
    Ok(send(address, post).await?.status)
}

/// What a look of [`wait_until`] saw.
pub enum Check<T> {
    Done(T),
    /// Not yet, and what there is instead.
    NotYet(String),
}

#[derive(Debug, thiserror::Error)]
#[error("{what}: not within {} s (last seen: {last})", within.as_secs())]
pub struct TimedOut {
    pub what: String,
    pub within: Duration,
    pub last: String,
}

/// Looks with `check` until it is done, fails, or `within` passed (then [`TimedOut`] says
/// `what` was awaited and what `check` saw last).
pub async fn wait_until<T, E, F, Fut>(what: &str, within: Duration, check: F) -> Result<T, E>
where
    E: From<TimedOut>,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Check<T>, E>>,
{
    wait_until_every(what, within, LOOK_EVERY, check).await
}

/// [`wait_until`], looking `every` so often (a server of someone else's, asked gently).
pub async fn wait_until_every<T, E, F, Fut>(what: &str, within: Duration, every: Duration, mut check: F) -> Result<T, E>
where
    E: From<TimedOut>,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Check<T>, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        let last = match check().await? {
            Check::Done(value) => return Ok(value),
            Check::NotYet(last) => last,
        };
        if Instant::now() >= deadline {
            return Err(TimedOut { what: what.to_owned(), within, last }.into());
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_is_read_whole_by_its_name_and_labels() {
        let text = "# HELP x_total X.\nx_total{a=\"1\"} 2\nx_total{a=\"2\"} 3\nx_totals 100\ny_total 7\n# EOF\n";
        assert_eq!(metric_in(text, "x_total"), 5);
        assert_eq!(metric_in(text, "x_total{a=\"2\"}"), 3);
        assert_eq!(metric_in(text, "y_total"), 7);
        assert_eq!(metric_in(text, "z_total"), 0);
    }

    #[tokio::test]
    async fn a_wait_ends_when_done_or_says_what_it_last_saw() {
        let mut looks = 0;
        let done: Result<u32, TimedOut> = wait_until("three looks", Duration::from_secs(5), || {
            looks += 1;
            let looked = looks;
            async move { Ok(if looked == 3 { Check::Done(looked) } else { Check::NotYet(format!("look {looked}")) }) }
        })
        .await;
        assert_eq!(done.unwrap(), 3);
        let never: Result<(), TimedOut> =
            wait_until("nothing", Duration::ZERO, || async { Ok(Check::NotYet("still nothing".into())) }).await;
        assert_eq!(never.unwrap_err().to_string(), "nothing: not within 0 s (last seen: still nothing)");
    }

    #[tokio::test]
    async fn nobody_listening_is_an_error_naming_the_request() {
        let address = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let err = get(address, "/healthz").await.unwrap_err().to_string();
        assert!(err.starts_with(&format!("GET http://{address}/healthz: ")), "{err}");
        assert!(!answers(address, "/healthz").await);
    }

    /// A listener whose backlog takes connections that nobody ever answers: what a server that
    /// is still starting looks like to a probe.
    fn silent_listener() -> (std::net::TcpListener, SocketAddr) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        (listener, address)
    }

    #[tokio::test]
    async fn a_probe_of_a_server_that_never_answers_gives_up_on_its_own() {
        let (_listener, address) = silent_listener();
        let probed = tokio::time::timeout(Duration::from_secs(20), answers(address, "/healthz")).await;
        assert_eq!(probed.ok(), Some(false), "the probe returned, saying no");

        let dir = tempfile::tempdir().unwrap();
        let (secrets, _) = crate::secrets::generate(dir.path(), false).unwrap();
        let address = amqp::Address::Tls { host: "127.0.0.1".into(), port: address.port() };
        let probe = BrokerProbe::new(amqp::Config::new(address, &secrets.webhook_dir()));
        for within in ["500 ms", "1000 ms"] {
            let probed = tokio::time::timeout(Duration::from_secs(20), probe.answers()).await;
            let err = probed.expect("the probe returned").unwrap_err().to_string();
            assert!(err.ends_with(&format!("did not complete the connection within {within}")), "{err}");
        }
    }
}
