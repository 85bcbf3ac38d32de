//! The one error type of the crate; every message says what failed and what to look at.

use std::io;
use std::path::PathBuf;

/// What can go wrong between a service and the broker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "invalid AMQP address {0:?}: expected host:port (as in AMQP_SERVER), or `localhost` for plain AMQP on port 5672"
    )]
    Address(String),

    #[error("cannot read {}: {source} (the secrets directory must hold ca.pem, amqp-client.pem and amqp-client.key)", path.display())]
    ReadFile { path: PathBuf, source: io::Error },

    #[error("{} holds no usable {what}", path.display())]
    Pem { path: PathBuf, what: &'static str },

    #[error("TLS client set-up failed: {0}")]
    Tls(String),

    #[error("cannot connect to the AMQP broker at {address}: {source}")]
    Connect { address: String, source: lapin::Error },

    #[error("the AMQP broker at {address} did not complete the connection within {millis} ms")]
    ConnectTimeout { address: String, millis: u64 },

    #[error(
        "queue {queue:?} exists with other arguments than the Cockpit ones ({source}); delete the queue, or find the client that declared it differently"
    )]
    ArgumentsMismatch { queue: String, source: lapin::Error },

    #[error("AMQP {operation} on queue {queue:?} failed: {source}")]
    Queue { operation: &'static str, queue: String, source: lapin::Error },

    #[error("the broker did not store a message published to {queue:?} (nacked)")]
    Nacked { queue: String },

    #[error(
        "no queue {queue:?} on the broker took a message published to it: the message was handed back; declare the queue first (the webhook and the workers declare theirs when they start)"
    )]
    Unroutable { queue: String },

    #[error("acknowledging a delivery failed: {0}")]
    Ack(lapin::Error),
}

impl retry::Transient for Error {
    /// Whether retrying later can help: the broker was unreachable or the connection broke.
    fn is_transient(&self) -> bool {
        match self {
            // A queue not declared yet is one a starting worker or webhook may declare soon.
            Error::Connect { .. } | Error::ConnectTimeout { .. } | Error::Nacked { .. } | Error::Unroutable { .. } => {
                true
            }
            Error::Queue { source, .. } | Error::Ack(source) => reply_code(source).is_none(),
            _ => false,
        }
    }
}

/// The AMQP reply code (e.g. 403 ACCESS_REFUSED, 406 PRECONDITION_FAILED) of a broker error.
pub(crate) fn reply_code(err: &lapin::Error) -> Option<u16> {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}
