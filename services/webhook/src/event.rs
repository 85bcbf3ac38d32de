//! Which deliveries become queue messages: Cockpit's webhook filter.

use serde::Deserialize;
use serde::de::IgnoredAny;

/// The few fields of a delivery the filter reads; parsing into it also validates the JSON.
#[derive(Debug, Deserialize)]
pub struct Payload {
    repository: Option<IgnoredAny>,
    action: Option<String>,
    pull_request: Option<PullRequest>,
    state: Option<String>,
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PullRequest {
    merged: Option<bool>,
}

/// What to do with a delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Publish `{event, request}` to the `webhook` queue.
    Publish,
    /// GitHub's hello when a hook is created: answered, not published.
    Ping,
    /// Not something CI acts on; the reason is returned to the sender.
    Ignore(String),
}

impl Payload {
    pub fn has_repository(&self) -> bool {
        self.repository.is_some()
    }
}

/// Cockpit's rules: pull requests opened, synchronized, edited, or merged; statuses set to
/// pending by a direct trigger (tests-trigger); nothing else.
pub fn decide(event: &str, payload: &Payload) -> Decision {
    match event {
        "ping" => Decision::Ping,
        "pull_request" => {
            let action = payload.action.as_deref().unwrap_or("");
            let merged = payload.pull_request.as_ref().and_then(|pr| pr.merged).unwrap_or(false);
            match action {
                "opened" | "synchronize" | "edited" => Decision::Publish,
                "closed" if merged => Decision::Publish,
                "closed" => Decision::Ignore("pull_request closed without merge".into()),
                other => Decision::Ignore(format!("pull_request action {other:?} does not trigger tests")),
            }
        }
        "status" => {
            let description = payload.description.as_deref().unwrap_or("");
            if payload.state.as_deref() == Some("pending") && description.trim_end().ends_with("(direct trigger)") {
                Decision::Publish
            } else {
                Decision::Ignore("status is not a pending direct trigger".into())
            }
        }
        other => Decision::Ignore(format!("event {other:?} is not handled")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide_json(event: &str, json: &str) -> Decision {
        decide(event, &serde_json::from_str(json).unwrap())
    }

    #[test]
    fn pull_requests_that_trigger_tests() {
        for action in ["opened", "synchronize", "edited"] {
            let json = format!(r#"{{"action": "{action}", "pull_request": {{"merged": false}}}}"#);
            assert_eq!(decide_json("pull_request", &json), Decision::Publish, "{action}");
        }
        let merged = r#"{"action": "closed", "pull_request": {"merged": true}}"#;
        assert_eq!(decide_json("pull_request", merged), Decision::Publish);
    }

    #[test]
    fn pull_requests_that_do_not() {
        for json in [
            r#"{"action": "closed", "pull_request": {"merged": false}}"#,
            r#"{"action": "closed", "pull_request": {}}"#,
            r#"{"action": "labeled", "pull_request": {"merged": false}}"#,
            r#"{"action": "reopened"}"#,
            r#"{}"#,
        ] {
            assert!(matches!(decide_json("pull_request", json), Decision::Ignore(_)), "{json}");
        }
    }

    #[test]
    fn only_pending_direct_trigger_statuses() {
        let direct = r#"{"state": "pending", "description": "Not yet tested (direct trigger)  "}"#;
        assert_eq!(decide_json("status", direct), Decision::Publish);
        for json in [
            r#"{"state": "pending", "description": "Not yet tested"}"#,
            r#"{"state": "success", "description": "Not yet tested (direct trigger)"}"#,
            r#"{"state": "pending", "description": "(direct trigger) not at the end"}"#,
            r#"{"state": "pending"}"#,
        ] {
            assert!(matches!(decide_json("status", json), Decision::Ignore(_)), "{json}");
        }
    }

    #[test]
    fn ping_and_other_events() {
        assert_eq!(decide_json("ping", r#"{"zen": "Keep it logically awesome."}"#), Decision::Ping);
        assert_eq!(
            decide_json("issues", r#"{"action": "opened"}"#),
            Decision::Ignore(r#"event "issues" is not handled"#.into())
        );
    }
}
