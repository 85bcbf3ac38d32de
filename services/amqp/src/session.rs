//! A session with the broker: one connection, one channel in publisher-confirm mode. Publishing
//! returns only once the broker has confirmed the message is stored.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::tcp::{AMQPUriTcpExt, RustlsConnector};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use rustls::ClientConfig;

use crate::error::reply_code;
use crate::queue::{DEAD_LETTER, DELAYS, delay_queue};
use crate::{Address, Config, Error, Queue};

/// How long the TCP connect, the TLS and AMQP handshakes and opening the channel together may
/// take for a client that wants the connection (a slow network is not a dead one). A readiness
/// probe sets a much shorter deadline of its own ([`Session::connect_within`]).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// AMQP delivery mode 2: the broker writes the message to disk in a durable queue.
const PERSISTENT: u8 = 2;

/// The header in which workers count the tries of a message's work that did not come to an end
/// (a header of ours: Cockpit's tools ignore headers they do not know).
pub const ATTEMPTS_HEADER: &str = "x-workbench-attempts";
/// The header counting how often a message's work failed for a reason that may pass (GitHub or
/// S3 away) and was put off.
pub const RETRIES_HEADER: &str = "x-workbench-retries";
/// Why a message was put off or parked: the last error, shortened.
pub const ERROR_HEADER: &str = "x-workbench-error";
/// The queue a parked message came from.
pub const QUEUE_HEADER: &str = "x-workbench-queue";

/// An open connection and channel, with publisher confirms enabled.
pub struct Session {
    connection: Connection,
    channel: lapin::Channel,
}

/// A message taken from a queue, unacknowledged until [`Delivery::ack`].
pub struct Delivery {
    pub body: Vec<u8>,
    pub redelivered: bool,
    pub priority: Option<u8>,
    pub persistent: bool,
    pub content_type: Option<String>,
    /// When it was published (Unix seconds), if the publisher said.
    pub timestamp: Option<u64>,
    /// How many tries of its work did not come to an end before it was last published
    /// ([`ATTEMPTS_HEADER`]; 0 when absent). A redelivered message had one more.
    pub attempts: u32,
    /// How often its work was put off because GitHub or S3 was away ([`RETRIES_HEADER`]).
    pub retries: u32,
    /// Its properties, to publish it again unchanged but for the attempts.
    properties: BasicProperties,
    acker: lapin::Acker,
}

/// A queue as the broker reports it to a passive declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    /// Messages ready for delivery (not those delivered and unacknowledged).
    pub messages: u32,
    pub consumers: u32,
}

impl Session {
    /// Connects, authenticates and opens a confirm-mode channel, within [`CONNECT_TIMEOUT`].
    pub async fn connect(config: &Config) -> Result<Session, Error> {
        Session::connect_within(config, CONNECT_TIMEOUT).await
    }

    /// [`Session::connect`] with a deadline of the caller's for all of it: a broker that
    /// accepts the TCP connection while it boots can hold a handshake until the deadline.
    pub async fn connect_within(config: &Config, within: Duration) -> Result<Session, Error> {
        let address = config.address.to_string();
        let tls = match config.address {
            Address::Tls { .. } => Some(super::tls::client_config(&config.files, config.verification)?),
            Address::PlainLocalhost => None,
        };
        let connect = async {
            let connection = open_connection(&config.address, tls, config.heartbeat).await?;
            let channel = connection.create_channel().await?;
            channel.confirm_select(ConfirmSelectOptions::default()).await?;
            Ok(Session { connection, channel })
        };
        tokio::time::timeout(within, connect)
            .await
            .map_err(|_| Error::ConnectTimeout { address: address.clone(), millis: within.as_millis() as u64 })?
            .map_err(|source| Error::Connect { address, source })
    }

    /// Declares a durable queue with its Cockpit arguments; returns how many messages it holds.
    /// A queue that exists with other arguments is refused with [`Error::ArgumentsMismatch`],
    /// after which this session's channel is closed by the broker.
    pub async fn declare(&self, queue: Queue) -> Result<u32, Error> {
        let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        self.channel
            .queue_declare(queue.name.into(), options, queue.arguments())
            .await
            .map(|declared| declared.message_count())
            .map_err(|source| match reply_code(&source) {
                Some(406) => Error::ArgumentsMismatch { queue: queue.name.to_owned(), source },
                _ => Error::Queue { operation: "declare", queue: queue.name.to_owned(), source },
            })
    }

    /// Publishes a persistent JSON message through the default exchange and waits for the
    /// broker's confirm; a message no queue takes is [`Error::Unroutable`], never dropped in
    /// silence.
    pub async fn publish(&self, queue: &str, body: &[u8], priority: Option<u8>) -> Result<(), Error> {
        self.publish_with_headers(queue, body, priority, &[]).await
    }

    /// [`Session::publish`] with text `headers` (the trace's `traceparent`, say: Cockpit's
    /// tools ignore headers they do not know).
    pub async fn publish_with_headers(
        &self,
        queue: &str,
        body: &[u8],
        priority: Option<u8>,
        headers: &[(&str, &str)],
    ) -> Result<(), Error> {
        // The timestamp lets consumers tell how long a message waited in the queue.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/json".into())
            .with_timestamp(now);
        if let Some(priority) = priority {
            properties = properties.with_priority(priority);
        }
        if !headers.is_empty() {
            let mut table = FieldTable::default();
            for (name, value) in headers {
                table.insert(ShortString::from(*name), text(value));
            }
            properties = properties.with_headers(table);
        }
        self.publish_with(queue, body, properties).await
    }

    /// Publishes what `delivery` holds to `queue` again, persistent, with its properties (its
    /// original timestamp included) and `attempts` recorded; waits for the broker's confirm.
    pub async fn republish(&self, queue: &str, delivery: &Delivery, attempts: u32) -> Result<(), Error> {
        self.copy(queue, delivery, &[(ATTEMPTS_HEADER, count(attempts))]).await
    }

    /// Puts `delivery` of `queue` off for `delay` at least (to the next of [`DELAYS`]; the
    /// longest for longer): published to the delay queue that hands it back to `queue` then,
    /// with `retries` and `error` recorded. Waits for the broker's confirm.
    pub async fn retry_later(
        &self,
        queue: &str,
        delivery: &Delivery,
        delay: Duration,
        retries: u32,
        error: &str,
    ) -> Result<(), Error> {
        let seconds = DELAYS.into_iter().find(|seconds| Duration::from_secs(*seconds) >= delay).unwrap_or(DELAYS[7]);
        let (name, arguments) = delay_queue(queue, seconds);
        let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        self.channel.queue_declare(name.as_str().into(), options, arguments).await.map_err(|source| Error::Queue {
            operation: "declare",
            queue: name.clone(),
            source,
        })?;
        self.copy(&name, delivery, &[(RETRIES_HEADER, count(retries)), (ERROR_HEADER, text(error))]).await
    }

    /// Parks `delivery` of `queue` in [`DEAD_LETTER`], with where it came from and `error`.
    pub async fn park(&self, queue: &str, delivery: &Delivery, error: &str) -> Result<(), Error> {
        self.declare(DEAD_LETTER).await?;
        self.copy(DEAD_LETTER.name, delivery, &[(QUEUE_HEADER, text(queue)), (ERROR_HEADER, text(error))]).await
    }

    /// Publishes `delivery`'s message to `queue`, persistent, with its properties and headers
    /// and `headers` set.
    async fn copy(&self, queue: &str, delivery: &Delivery, set: &[(&str, AMQPValue)]) -> Result<(), Error> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        for (name, value) in set {
            headers.insert(ShortString::from(*name), value.clone());
        }
        let properties = delivery.properties.clone().with_delivery_mode(PERSISTENT).with_headers(headers);
        self.publish_with(queue, &delivery.body, properties).await
    }

    async fn publish_with(&self, queue: &str, body: &[u8], properties: BasicProperties) -> Result<(), Error> {
        let failed = |source| Error::Queue { operation: "publish", queue: queue.to_owned(), source };
        let confirm = self
            .channel
            // Mandatory: a message no queue takes comes back instead of vanishing.
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                body,
                properties,
            )
            .await
            .map_err(failed)?
            .await
            .map_err(failed)?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            // Acknowledged, yet handed back: no queue of that name took it.
            Confirmation::Ack(Some(_)) => Err(Error::Unroutable { queue: queue.to_owned() }),
            Confirmation::Nack(_) | Confirmation::NotRequested => Err(Error::Nacked { queue: queue.to_owned() }),
        }
    }

    /// Takes one message without acknowledging it, or `None` when the queue is empty.
    pub async fn get(&self, queue: &str) -> Result<Option<Delivery>, Error> {
        let message = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|source| Error::Queue { operation: "get", queue: queue.to_owned(), source })?;
        Ok(message.map(|message| Delivery::from(message.delivery)))
    }

    /// Starts consuming `queue`, with at most `prefetch` unacknowledged deliveries at a time.
    pub async fn consume(&self, queue: &str, prefetch: u16) -> Result<Consumer, Error> {
        let failed = |source| Error::Queue { operation: "consume", queue: queue.to_owned(), source };
        self.channel.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(failed)?;
        let inner = self
            .channel
            .basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), Default::default())
            .await
            .map_err(failed)?;
        Ok(Consumer { queue: queue.to_owned(), inner })
    }

    /// How many messages each of `queues` holds and how many consumers it has, `None` for one
    /// that does not exist. Uses a channel of its own (the broker closes the channel of a
    /// failed passive declare), opened again only after a queue that does not exist.
    pub async fn inspect(&self, queues: &[&str]) -> Result<Vec<Option<QueueState>>, Error> {
        let mut depths = Vec::new();
        let mut channel = None;
        for queue in queues {
            let failed = |source| Error::Queue { operation: "inspect", queue: queue.to_string(), source };
            let open = match channel.take() {
                Some(open) => open,
                None => self.connection.create_channel().await.map_err(failed)?,
            };
            let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
            match open.queue_declare((*queue).into(), options, Default::default()).await {
                Ok(declared) => {
                    depths.push(Some(QueueState {
                        messages: declared.message_count(),
                        consumers: declared.consumer_count(),
                    }));
                    channel = Some(open);
                }
                Err(source) if reply_code(&source) == Some(404) => depths.push(None),
                Err(source) => return Err(failed(source)),
            }
        }
        if let Some(open) = channel {
            let _ = open.close(200, "inspected".into()).await;
        }
        Ok(depths)
    }

    /// How many messages `queue` holds, or `None` when it does not exist.
    pub async fn depth(&self, queue: &str) -> Result<Option<u32>, Error> {
        Ok(self.inspect(&[queue]).await?.pop().flatten().map(|state| state.messages))
    }

    /// Deletes every message in `queue`; returns how many there were.
    pub async fn purge(&self, queue: &str) -> Result<u32, Error> {
        self.channel.queue_purge(queue.into(), QueuePurgeOptions::default()).await.map_err(|source| Error::Queue {
            operation: "purge",
            queue: queue.to_owned(),
            source,
        })
    }

    /// Deletes `queue` and whatever it holds.
    pub async fn delete(&self, queue: &str) -> Result<u32, Error> {
        self.channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await.map_err(|source| Error::Queue {
            operation: "delete",
            queue: queue.to_owned(),
            source,
        })
    }

    /// The heartbeat agreed with the broker, in seconds.
    pub fn heartbeat(&self) -> u16 {
        self.connection.configuration().heartbeat()
    }

    /// Whether the connection is still usable.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Closes the connection politely; unacknowledged deliveries go back to their queues.
    pub async fn close(self) {
        let _ = self.connection.close(200, "bye".into()).await;
    }
}

/// Deliveries of one queue, as the broker pushes them.
pub struct Consumer {
    queue: String,
    inner: lapin::Consumer,
}

impl Consumer {
    /// The next delivery; `None` once the consumer is cancelled or the connection closed.
    pub async fn next(&mut self) -> Option<Result<Delivery, Error>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// [`Consumer::next`] for code that polls several consumers at once.
    pub fn poll_next(&mut self, cx: &mut std::task::Context) -> std::task::Poll<Option<Result<Delivery, Error>>> {
        use futures_core::Stream;
        std::pin::Pin::new(&mut self.inner).poll_next(cx).map(|item| {
            item.map(|item| {
                item.map(Delivery::from).map_err(|source| Error::Queue {
                    operation: "consume",
                    queue: self.queue.clone(),
                    source,
                })
            })
        })
    }
}

impl From<lapin::message::Delivery> for Delivery {
    fn from(delivery: lapin::message::Delivery) -> Delivery {
        let properties = &delivery.properties;
        Delivery {
            redelivered: delivery.redelivered,
            priority: *properties.priority(),
            persistent: *properties.delivery_mode() == Some(PERSISTENT),
            content_type: properties.content_type().as_ref().map(ToString::to_string),
            timestamp: *properties.timestamp(),
            attempts: properties.headers().as_ref().map_or(0, |headers| number(headers, ATTEMPTS_HEADER)),
            retries: properties.headers().as_ref().map_or(0, |headers| number(headers, RETRIES_HEADER)),
            properties: delivery.properties,
            body: delivery.data,
            acker: delivery.acker,
        }
    }
}

/// A count in a header, as pika writes integers (`I`).
fn count(n: u32) -> AMQPValue {
    AMQPValue::LongInt(i32::try_from(n).unwrap_or(i32::MAX))
}

/// A text in a header, at most 500 characters of it.
fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.chars().take(500).collect::<String>().into())
}

/// The count a message's header `name` records, whatever integer type the publisher used.
fn number(headers: &FieldTable, name: &str) -> u32 {
    let value = headers.inner().get(&ShortString::from(name));
    let number = match value {
        Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::LongLongInt(n)) => *n,
        _ => 0,
    };
    u32::try_from(number).unwrap_or(0)
}

impl Delivery {
    /// A text header of the message ([`ERROR_HEADER`], [`QUEUE_HEADER`], ...), if it has it.
    pub fn header(&self, name: &str) -> Option<String> {
        match self.properties.headers().as_ref()?.inner().get(&ShortString::from(name))? {
            AMQPValue::LongString(text) => Some(text.to_string()),
            AMQPValue::ShortString(text) => Some(text.to_string()),
            _ => None,
        }
    }

    /// Tells the broker the message is handled and may be deleted.
    pub async fn ack(self) -> Result<(), Error> {
        self.acker.ack(BasicAckOptions::default()).await.map(drop).map_err(Error::Ack)
    }

    /// Gives the message back to the broker (`requeue`) or drops it.
    pub async fn reject(self, requeue: bool) -> Result<(), Error> {
        self.acker.reject(BasicRejectOptions { requeue }).await.map(drop).map_err(Error::Ack)
    }
}

/// Connects, retrying transient failures as [`retry::BROKER`] says, at most `attempts` times.
pub async fn connect_with_backoff(config: &Config, attempts: u32) -> Result<Session, Error> {
    retry::transient("connecting to the broker", retry::BROKER.attempts(attempts), || Session::connect(config)).await
}

async fn open_connection(address: &Address, tls: Option<ClientConfig>, heartbeat: u16) -> lapin::Result<Connection> {
    let runtime = lapin::runtime::default_runtime()?;
    let properties = ConnectionProperties::default();
    let (Address::Tls { host, port }, Some(tls)) = (address, tls) else {
        let uri = format!("amqp://guest:guest@localhost:5672/%2f?heartbeat={heartbeat}");
        return Connection::connect_with_runtime(&uri, properties, runtime).await;
    };
    let (host, port) = (host.clone(), *port);
    let connector = Arc::new(RustlsConnector::from(tls));
    let mut uri: AMQPUri = "amqps://localhost/%2f?auth_mechanism=external"
        .parse()
        .map_err(|e: String| lapin::Error::from(std::io::Error::other(e)))?;
    uri.authority.host = host.clone();
    uri.authority.port = port;
    uri.query.heartbeat = Some(heartbeat);
    Connection::connector(
        uri,
        runtime,
        async move |uri, runtime| {
            // TCP through lapin's runtime, then the TLS handshake with our own rustls config.
            let plain = AMQPUri { scheme: AMQPScheme::AMQP, ..uri };
            let stream = plain.connect_async(&runtime).await?;
            Ok(stream.into_rustls(&connector, &host).await?)
        },
        properties,
    )
    .await
}
