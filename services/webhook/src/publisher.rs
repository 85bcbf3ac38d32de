//! The webhook's one long-lived broker session, kept connected in the background. Requests never
//! open connections: they publish on the current session, or are told the broker is away.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use amqp::{Session, WEBHOOK};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How long a publish may wait for the broker's confirm before the delivery is refused.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the queue depths asked of the broker are shown before it is asked again.
pub const DEPTHS_FOR: Duration = Duration::from_secs(2);

/// The depths of Cockpit's queues, in run-queue's order, then of our dead-letter queue
/// (`None` for one that does not exist).
pub type Depths = Vec<(&'static str, Option<amqp::QueueState>)>;

type Slot = Arc<RwLock<Option<Arc<Session>>>>;

/// Publishes to the `webhook` queue over a session that reconnects by itself.
pub struct Publisher {
    session: Slot,
    broken: Arc<Notify>,
    keeper: JoinHandle<()>,
    /// The last depths read, and when: one reader at a time, the others wait for its answer.
    depths: tokio::sync::Mutex<Option<(Instant, Depths)>>,
}

/// Why a delivery could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to the broker")]
    Disconnected,
    #[error("the broker did not confirm within {} s", CONFIRM_TIMEOUT.as_secs())]
    Timeout,
    #[error(transparent)]
    Amqp(#[from] amqp::Error),
}

impl Publisher {
    /// Starts connecting in the background; until connected, publishing fails fast.
    pub fn start(config: amqp::Config) -> Publisher {
        let session = Slot::default();
        let broken = Arc::new(Notify::new());
        let keeper = tokio::spawn(keep_connected(config, session.clone(), broken.clone()));
        Publisher { session, broken, keeper, depths: tokio::sync::Mutex::default() }
    }

    pub fn is_connected(&self) -> bool {
        self.current().is_some_and(|session| session.is_connected())
    }

    /// Publishes a persistent message, with the delivery's trace when it has one, and returns
    /// once the broker confirmed storing it.
    pub async fn publish(&self, body: &[u8], traceparent: Option<&str>) -> Result<(), PublishError> {
        let session = self.current().ok_or(PublishError::Disconnected)?;
        let headers: Vec<(&str, &str)> = traceparent.map(|value| (traces::TRACEPARENT, value)).into_iter().collect();
        let publish = session.publish_with_headers(WEBHOOK.name, body, None, &headers);
        let result = match tokio::time::timeout(CONFIRM_TIMEOUT, publish).await {
            Ok(result) => result.map_err(PublishError::from),
            Err(_) => Err(PublishError::Timeout),
        };
        if result.is_err() && !session.is_connected() {
            self.broken.notify_one();
        }
        result
    }

    /// Depths of the Cockpit queues, read from the broker at most every [`DEPTHS_FOR`]
    /// whoever asks how often.
    pub async fn queue_depths(&self) -> Result<Depths, PublishError> {
        let mut cached = self.depths.lock().await;
        if let Some((read, depths)) = &*cached
            && read.elapsed() < DEPTHS_FOR
        {
            return Ok(depths.clone());
        }
        let session = self.current().ok_or(PublishError::Disconnected)?;
        let names: Vec<&str> = amqp::ALL_QUEUES.iter().chain([&amqp::DEAD_LETTER]).map(|queue| queue.name).collect();
        let depths: Depths = names.iter().copied().zip(session.inspect(&names).await?).collect();
        *cached = Some((Instant::now(), depths.clone()));
        Ok(depths)
    }

    fn current(&self) -> Option<Arc<Session>> {
        self.session.read().expect("session lock").clone()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Connects, declares the `webhook` queue, and watches the connection; reconnects when it
/// breaks, with backoff while the broker is away.
async fn keep_connected(config: amqp::Config, slot: Slot, broken: Arc<Notify>) {
    loop {
        let connected = async {
            let session = amqp::connect_with_backoff(&config, u32::MAX).await?;
            session.declare(WEBHOOK).await?;
            Ok::<_, amqp::Error>(session)
        };
        let session = match connected.await {
            Ok(session) => Arc::new(session),
            // Refused for good (a certificate the broker does not take): said, and tried again
            // at the policy's slowest pace, as an operator may fix it meanwhile.
            Err(err) => {
                let pause = retry::BROKER.longest;
                tracing::error!(%err, ?pause, "cannot connect to the broker; trying again");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        tracing::info!(address = %config.address, "connected to the broker");
        *slot.write().expect("session lock") = Some(session.clone());
        while session.is_connected() {
            tokio::select! {
                () = broken.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
        *slot.write().expect("session lock") = None;
        tracing::warn!("lost the broker connection; reconnecting");
    }
}
