//! Webhook deliveries as GitHub sends them: the event, a delivery id, the JSON body, and the
//! headers with a valid signature for a given secret.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

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

/// What a pull request looks like from outside, for its JSON.
pub struct PullView<'a> {
    pub repo: &'a str,
    pub clone_url: &'a str,
    pub number: u64,
    pub title: &'a str,
    pub head_sha: &'a str,
    pub base_sha: &'a str,
    pub author: &'a str,
    pub state: &'a str,
    pub merged: bool,
}

/// A repository in GitHub's shape (the fields CI reads, and a few more).
pub fn repository_json(name: &str, clone_url: &str) -> Value {
    let (owner, short) = name.split_once('/').unwrap_or((name, name));
    json!({
        "name": short,
        "full_name": name,
        "owner": {"login": owner},
        "private": false,
        "default_branch": "main",
        "clone_url": format!("{clone_url}{name}"),
        "html_url": format!("https://github.com/{name}"),
    })
}

/// A pull request in GitHub's shape, against `main`.
pub fn pull_json(pull: &PullView) -> Value {
    json!({
        "number": pull.number,
        "title": pull.title,
        "state": pull.state,
        "merged": pull.merged,
        "body": "Opened by the Workbench mock GitHub",
        "user": {"login": pull.author},
        "labels": [],
        "head": {
            "ref": format!("pull-{}", pull.number),
            "sha": pull.head_sha,
            "user": {"login": pull.author},
            "repo": repository_json(pull.repo, pull.clone_url),
        },
        "base": {"ref": "main", "sha": pull.base_sha, "repo": repository_json(pull.repo, pull.clone_url)},
        "updated_at": "2026-01-01T00:00:00Z",
    })
}

/// The `pull_request` delivery GitHub sends when `action` happens to `pull` (its JSON).
pub fn pull_request(action: &str, pull: &Value, repo: &str, clone_url: &str) -> Delivery {
    let body = json!({
        "action": action,
        "number": pull["number"],
        "pull_request": pull,
        "repository": repository_json(repo, clone_url),
        "sender": pull["user"],
    });
    Delivery::new("pull_request", &body)
}
