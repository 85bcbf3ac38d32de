//! Webhook deliveries as GitHub sends them: the event, a delivery id, the JSON body, and the
//! headers with a valid signature for a given secret.

use std::sync::atomic::{AtomicU64, Ordering};

/// One delivery of a webhook event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub event: String,
    pub id: String,
    pub body: Vec<u8>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Delivery {
    /// A delivery of `event` with `body`, and a fresh delivery id.
    pub fn new(event: &str, body: &serde_json::Value) -> Delivery {
        let serial = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Delivery {
            event: event.to_owned(),
            id: format!("00000000-0000-4000-8000-{:012x}", u64::from(std::process::id()) << 20 | serial),
            body: serde_json::to_vec(body).expect("JSON values encode"),
        }
    }

    /// The HTTP headers GitHub sends with it, signed with `secret`.
    pub fn headers(&self, secret: &[u8]) -> Vec<(&'static str, String)> {
        vec![
            ("Content-Type", "application/json".to_owned()),
            ("User-Agent", "GitHub-Hookshot/workbench".to_owned()),
            ("X-GitHub-Event", self.event.clone()),
            ("X-GitHub-Delivery", self.id.clone()),
            ("X-Hub-Signature-256", webhook::sign_sha256(secret, &self.body)),
        ]
    }

    /// The message the webhook publishes for it (what Cockpit's `mock-github --print-pr-event`
    /// prints, ready for `publish-queue --queue webhook`).
    pub fn queue_message(&self) -> Vec<u8> {
        amqp::WebhookMessage::encode(&self.event, &self.body)
    }
}
