//! GitHub's webhook events, as CI reads them, parsed once from a delivery's body, and what each
//! becomes (cockpit-protocol.md 1.5, 2.2): [`decide`] says, in one place, both whether Cockpit's
//! webhook publishes an event and what Cockpit's run-queue makes of it, so that the webhook and
//! the worker cannot disagree. The pull request is GitHub's pull request object, the same in
//! an event and in the REST API.

use serde::Deserialize;
use serde::de::IgnoredAny;

/// A pull request, as GitHub's events and API describe it (the fields CI reads).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullRequest {
    pub number: u64,
    pub title: String,
    /// `open` or `closed` (absent from Cockpit's mock events: open).
    #[serde(default = "open")]
    pub state: String,
    /// Closed by a merge (absent from Cockpit's mock events: not merged).
    #[serde(default, deserialize_with = "null_is_false")]
    pub merged: bool,
    pub head: Head,
    pub base: Base,
    #[serde(default)]
    pub labels: Vec<Label>,
}

fn open() -> String {
    "open".into()
}

/// GitHub sends `"merged": null` on pull requests that are still open.
fn null_is_false<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(deserializer)?.unwrap_or(false))
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Head {
    pub sha: String,
    pub user: User,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Base {
    /// The branch the pull request goes into.
    #[serde(rename = "ref")]
    pub branch: String,
    pub repo: Repository,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Repository {
    pub full_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct User {
    pub login: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Label {
    pub name: String,
}

/// A webhook event: its `X-GitHub-Event` name and the payload fields CI reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Ping,
    PullRequest(PullRequestEvent),
    Status(StatusEvent),
    /// An event CI does not handle, and whether its payload names a repository.
    Other {
        name: String,
        has_repository: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullRequestEvent {
    pub action: String,
    pub pull_request: PullRequest,
    /// Absent from Cockpit's mock events, which the worker must take all the same.
    #[serde(default)]
    pub repository: Option<Repository>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusEvent {
    pub sha: String,
    pub context: String,
    pub state: String,
    #[serde(default)]
    pub description: Option<String>,
    pub repository: Repository,
}

/// The payload of an event CI does not read: only whether it names a repository.
#[derive(Deserialize)]
struct Unread {
    repository: Option<IgnoredAny>,
}

impl Event {
    /// Parses the payload `body` of the event `name`. The whole body is checked to be JSON.
    pub fn parse(name: &str, body: &str) -> Result<Event, serde_json::Error> {
        Ok(match name {
            "ping" => {
                serde_json::from_str::<IgnoredAny>(body)?;
                Event::Ping
            }
            "pull_request" => Event::PullRequest(serde_json::from_str(body)?),
            "status" => Event::Status(serde_json::from_str(body)?),
            other => {
                let unread: Unread = serde_json::from_str(body)?;
                Event::Other { name: other.to_owned(), has_repository: unread.repository.is_some() }
            }
        })
    }

    /// Whether the payload names the repository it happened in, as every delivery GitHub sends
    /// but a ping does.
    pub fn has_repository(&self) -> bool {
        match self {
            Event::Ping => false,
            Event::PullRequest(event) => event.repository.is_some(),
            Event::Status(_) => true,
            Event::Other { has_repository, .. } => *has_repository,
        }
    }
}

/// What Cockpit's webhook does with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publish {
    /// Publish `{event, request}` to the `webhook` queue.
    Yes,
    /// GitHub's hello when a hook is created: answered, not published.
    Ping,
    /// Not something CI acts on; the reason is returned to the sender.
    No(String),
}

/// What Cockpit's run-queue makes of an event taken from the `webhook` queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// Scan this pull request of `repo` (its base repository) for the contexts to test.
    ScanPull { repo: String, pull: PullRequest },
    /// Scan commit `sha` of `repo` for `context` (a direct trigger).
    ScanSha { repo: String, sha: String, context: String },
    /// Store the test results of a merged pull request: Cockpit's statistics command.
    Statistics { repo: String, head: String },
    /// Nothing, for this reason.
    Nothing(String),
}

/// What an event becomes, at the webhook and at the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub publish: Publish,
    pub work: Work,
}

/// Cockpit's rules, in one place. The webhook publishes pull requests opened, synchronized,
/// edited or merged, and statuses set to pending by a direct trigger; the worker scans pull
/// requests opened or synchronized, and every status it is given, and queues the statistics
/// of merged ones; everything else is nothing.
pub fn decide(event: &Event) -> Decision {
    let nothing = |reason: String| Work::Nothing(reason);
    match event {
        Event::Ping => Decision { publish: Publish::Ping, work: nothing("a ping".into()) },
        Event::PullRequest(PullRequestEvent { action, pull_request: pull, .. }) => {
            let repo = pull.base.repo.full_name.clone();
            let ignored = |why: String| Decision { publish: Publish::No(why.clone()), work: Work::Nothing(why) };
            match action.as_str() {
                "opened" | "synchronize" => {
                    Decision { publish: Publish::Yes, work: Work::ScanPull { repo, pull: pull.clone() } }
                }
                // Published as Cockpit's webhook does; its run-queue makes nothing of it.
                "edited" => Decision {
                    publish: Publish::Yes,
                    work: nothing("pull_request action \"edited\" generates no command".into()),
                },
                "closed" if pull.merged => {
                    Decision { publish: Publish::Yes, work: Work::Statistics { repo, head: pull.head.sha.clone() } }
                }
                "closed" => ignored("pull_request closed without merge".into()),
                other => ignored(format!("pull_request action {other:?} does not trigger tests")),
            }
        }
        Event::Status(status) => {
            let description = status.description.as_deref().unwrap_or("");
            let publish = match status.state == "pending" && description.trim_end().ends_with("(direct trigger)") {
                true => Publish::Yes,
                false => Publish::No("status is not a pending direct trigger".into()),
            };
            let work = Work::ScanSha {
                repo: status.repository.full_name.clone(),
                sha: status.sha.clone(),
                context: status.context.clone(),
            };
            Decision { publish, work }
        }
        Event::Other { name, .. } => {
            let why = format!("event {name:?} is not handled");
            Decision { publish: Publish::No(why.clone()), work: Work::Nothing(why) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PULL: &str = r#"{"number": 1, "title": "t", "state": "open", "merged": null,
        "head": {"sha": "abc", "user": {"login": "me"}},
        "base": {"ref": "main", "repo": {"full_name": "o/r"}}, "labels": [{"name": "no-test"}]}"#;

    fn pull_event(action: &str, merged: bool) -> Event {
        let pull = PULL.replace("\"merged\": null", &format!("\"merged\": {merged}"));
        Event::parse("pull_request", &format!(r#"{{"action": "{action}", "pull_request": {pull}}}"#)).unwrap()
    }

    fn status_event(state: &str, description: &str) -> Event {
        let body = format!(
            r#"{{"sha": "abc", "context": "unit-tests", "state": "{state}", "description": "{description}",
                "repository": {{"full_name": "o/r"}}}}"#
        );
        Event::parse("status", &body).unwrap()
    }

    #[test]
    fn pull_requests() {
        let Event::PullRequest(event) = pull_event("opened", false) else { panic!() };
        let pull = event.pull_request;
        assert_eq!((pull.number, pull.base.branch.as_str(), pull.labels[0].name.as_str()), (1, "main", "no-test"));
        for action in ["opened", "synchronize"] {
            let Decision { publish, work } = decide(&pull_event(action, false));
            assert_eq!(publish, Publish::Yes, "{action}");
            assert!(matches!(work, Work::ScanPull { ref repo, .. } if repo == "o/r"), "{action}: {work:?}");
        }
        let edited = decide(&pull_event("edited", false));
        assert_eq!(edited.publish, Publish::Yes);
        assert_eq!(edited.work, Work::Nothing("pull_request action \"edited\" generates no command".into()));
        let merged = decide(&pull_event("closed", true));
        assert_eq!(
            merged,
            Decision { publish: Publish::Yes, work: Work::Statistics { repo: "o/r".into(), head: "abc".into() } }
        );
        for (action, why) in [
            ("closed", "pull_request closed without merge"),
            ("labeled", "pull_request action \"labeled\" does not trigger tests"),
        ] {
            assert_eq!(
                decide(&pull_event(action, false)),
                Decision { publish: Publish::No(why.into()), work: Work::Nothing(why.into()) }
            );
        }
    }

    /// Cockpit's mock event: no `merged`, no top-level repository; taken all the same.
    #[test]
    fn cockpits_mock_event() {
        let body = r#"{"action":"opened","pull_request":{"title":"mock PR","number":1,"state":"open","body":"This is the body",
            "base":{"repo":{"full_name":"cockpit-project/bots"},"ref":"main"},"head":{"sha":"abc","user":{"login":"cockpit-project"}},
            "labels":[],"updated_at":0}}"#;
        let event = Event::parse("pull_request", body).unwrap();
        assert!(!event.has_repository());
        assert!(
            matches!(decide(&event).work, Work::ScanPull { ref repo, ref pull } if repo == "cockpit-project/bots" && !pull.merged)
        );
    }

    #[test]
    fn statuses() {
        let direct = decide(&status_event("pending", "Not yet tested (direct trigger)  "));
        assert_eq!(direct.publish, Publish::Yes);
        assert_eq!(direct.work, Work::ScanSha { repo: "o/r".into(), sha: "abc".into(), context: "unit-tests".into() });
        for (state, description) in [("pending", "Not yet tested"), ("success", "Not yet tested (direct trigger)")] {
            let decision = decide(&status_event(state, description));
            assert_eq!(decision.publish, Publish::No("status is not a pending direct trigger".into()));
            // A status the worker is given (by hand) is scanned, as Cockpit's run-queue does.
            assert!(matches!(decision.work, Work::ScanSha { .. }));
        }
    }

    #[test]
    fn ping_other_events_and_malformed_ones() {
        assert_eq!(
            decide(&Event::parse("ping", r#"{"zen": "Keep it logically awesome."}"#).unwrap()).publish,
            Publish::Ping
        );
        let issues = Event::parse("issues", r#"{"action": "opened", "repository": {}}"#).unwrap();
        assert!(issues.has_repository());
        assert_eq!(decide(&issues).publish, Publish::No(r#"event "issues" is not handled"#.into()));
        assert!(Event::parse("issues", "{not json").is_err());
        assert!(
            Event::parse("pull_request", r#"{"action": "opened"}"#).is_err(),
            "a pull_request event without its pull request"
        );
        assert!(Event::parse("status", r#"{"sha": "abc"}"#).is_err());
    }
}
