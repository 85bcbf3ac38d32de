//! AMQP wiring shared by every service: how the broker is reached (Cockpit's `AMQP_SERVER` and
//! secrets layout), the four Cockpit queues with their exact declare arguments, and the message
//! bodies that travel through them. Only this crate knows lapin.

mod config;
mod error;
mod message;
mod queue;
mod session;
mod tls;

pub use config::{Address, ClientFiles, Config, HEARTBEAT_SECONDS, ServerVerification, default_secrets_dir};
pub use error::Error;
pub use message::{Command, CommandMessage, Job, JobMessage, Subject, WebhookMessage};
pub use queue::{
    ALL_QUEUES, BASELINE_PRIORITY, DEAD_LETTER, DELAYS, MAX_PRIORITY, PUBLIC, Queue, RHEL, STATISTICS, WEBHOOK,
    delay_queue_name,
};
pub use session::{
    ATTEMPTS_HEADER, Consumer, Delivery, ERROR_HEADER, QUEUE_HEADER, QueueState, RETRIES_HEADER, Session,
    connect_with_backoff,
};
