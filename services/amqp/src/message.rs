//! The JSON bodies of the Cockpit queues: `{event, request}` in `webhook`, `{job, human}` in
//! `public`/`rhel`, `{command}` in `statistics` and for hand-published tasks.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// A GitHub delivery as the webhook publishes it. `request` is the delivery body exactly as
/// GitHub sent it (kept raw, so the queue holds GitHub's bytes, not a re-encoding).
#[derive(Debug, Serialize, Deserialize)]
pub struct WebhookMessage {
    pub event: String,
    pub request: Box<RawValue>,
}

impl WebhookMessage {
    /// Encodes `{"event": event, "request": request}` without re-parsing `request`, which the
    /// caller has checked is JSON.
    pub fn encode(event: &str, request: &[u8]) -> Vec<u8> {
        let event = serde_json::to_string(event).expect("a string encodes");
        [br#"{"event":"#, event.as_bytes(), br#","request":"#, request, b"}"].concat()
    }
}

/// A job for a tasks worker, with the one-line summary `inspect-queue --human` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMessage {
    pub job: Job,
    pub human: String,
}

/// A shell command (run with `sh -c`) or an argv (run directly).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandMessage {
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Command {
    Shell(String),
    Argv(Vec<String>),
}

impl CommandMessage {
    /// What Cockpit's run-queue queues on `statistics` for a merged pull request (cockpit-protocol.md
    /// 1.5): store the head's test results in the database `db`, prune it past 25 MB, publish the
    /// Prometheus statistics. The missing space before the last `./` is Cockpit's.
    pub fn statistics(db: &str, repo: &str, head_sha: &str) -> CommandMessage {
        CommandMessage {
            command: Command::Shell(format!(
                "./store-tests --db {db} --repo {repo} {head_sha} && \
                 if [ $(stat -c %s {db}) -gt 25000000 ]; then ./prometheus-stats --db {db} --prune 14; fi &&\
                 ./prometheus-stats --db {db} --s3 https://cockpit-ci-logs.s3.us-east-1.amazonaws.com/prometheus"
            )),
        }
    }
}

/// A job spec as Cockpit's tests-scan writes it and its job-runner reads it. The first nine
/// fields are always written, in tests-scan's order; the rest only when set. Build one with
/// [`Job::for_pull`] and struct update syntax for the rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub repo: String,
    #[serde(default)]
    pub sha: Option<String>,
    #[serde(default)]
    pub context: Option<String>,
    #[serde(default)]
    pub pull: Option<u64>,
    /// Issue to open when the job fails (SHA triggers), overlaid on the default issue.
    #[serde(default)]
    pub report: Option<Value>,
    /// The project whose tests run, when it is not `repo` (cross-project contexts).
    #[serde(default)]
    pub command_subject: Option<Subject>,
    #[serde(default)]
    pub slug: Option<String>,
    #[serde(default)]
    pub env: IndexMap<String, String>,
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forge: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Minutes; job-runner's default is 120, 0 means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

impl Job {
    /// A job testing `context` on pull request `pull` (0: a branch or commit, no pull request)
    /// at `sha` of `repo`, named as tests-scan names it; no environment, secrets or command.
    pub fn for_pull(repo: &str, sha: &str, pull: u64, context: &str, timestamp: &str) -> Job {
        Job {
            repo: repo.to_owned(),
            sha: Some(sha.to_owned()),
            context: Some(context.to_owned()),
            pull: (pull != 0).then_some(pull),
            slug: Some(Job::slug(pull, sha, timestamp, context)),
            ..Job::default()
        }
    }

    /// tests-scan's slug: `pull-<N>-<first 8 of the SHA>-<timestamp>-<context, / and @ as ->`
    /// (`timestamp` as `%Y%m%d-%H%M%S`), which names the job's log directory in S3.
    pub fn slug(pull: u64, sha: &str, timestamp: &str, context: &str) -> String {
        let suffix = context.replace(['/', '@'], "-");
        format!("pull-{pull}-{}-{timestamp}-{suffix}", &sha[..sha.len().min(8)])
    }

    /// This job with `pairs` added to its environment.
    pub fn with_env(mut self, pairs: &[(&str, &str)]) -> Job {
        self.env.extend(pairs.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())));
        self
    }

    /// This job with its `inspect-queue --human` summary.
    pub fn message(self, human: &str) -> JobMessage {
        JobMessage { job: self, human: human.to_owned() }
    }
}

/// A repository on a forge, at a branch (`""` forge means the default one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    #[serde(default)]
    pub forge: String,
    pub repo: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tests-scan's names: the pull request (0 for none), 8 hex digits, the time, the context
    /// with `/` and `@` as `-`.
    #[test]
    fn job_slugs_are_tests_scans() {
        let job = Job::for_pull("o/r", "a4d25bb9d1d2e0a0", 7, "fedora-40/devel@bots#12", "20240315-135902");
        assert_eq!(job.slug.as_deref(), Some("pull-7-a4d25bb9-20240315-135902-fedora-40-devel-bots#12"));
        assert_eq!(job.pull, Some(7));
        assert_eq!(Job::for_pull("o/r", "abc", 0, "c", "t").slug.as_deref(), Some("pull-0-abc-t-c"));
        assert_eq!(Job::for_pull("o/r", "abc", 0, "c", "t").pull, None);
    }

    /// The job of Cockpit's own mock PR test as our tests-scan publishes it: Cockpit's keys, order
    /// and values, in compact JSON (Cockpit's has a space after each `,` and `:`).
    const COCKPIT_JOB: &str = r#"{"job":{"repo":"cockpit-project/bots","sha":"a4d25bb9d1d2e0a0b3c4d5e6f708192a3b4c5d6e","context":"unit-tests","pull":1,"report":null,"command_subject":null,"slug":"pull-1-a4d25bb9-20240315-135902-unit-tests","env":{"TEST_OS":"unit-tests","TEST_REVISION":"a4d25bb9d1d2e0a0b3c4d5e6f708192a3b4c5d6e","COCKPIT_BOTS_REF":"main","BASE_BRANCH":"main","TEST_PULL":"1"},"secrets":["github-token","image-download"]},"human":"pull-1      unit-tests                a4d25bb      (cockpit-project/bots) [bots@main]   {main}"}"#;

    #[test]
    fn job_message_round_trips_unchanged() {
        let message: JobMessage = serde_json::from_str(COCKPIT_JOB).unwrap();
        assert_eq!(message.job.pull, Some(1));
        assert_eq!(message.job.env.keys().next().map(String::as_str), Some("TEST_OS"));
        assert_eq!(serde_json::to_string(&message).unwrap(), COCKPIT_JOB);
    }

    #[test]
    fn cross_project_subject_keeps_cockpit_shape() {
        let subject =
            Subject { forge: String::new(), repo: "cockpit-project/cockpituous".into(), branch: Some("main".into()) };
        assert_eq!(
            serde_json::to_string(&subject).unwrap(),
            r#"{"forge":"","repo":"cockpit-project/cockpituous","branch":"main"}"#
        );
    }

    #[test]
    fn webhook_message_keeps_the_request_bytes() {
        let request = "{ \"zeta\": 1,\n  \"action\": \"opened\" }";
        let message =
            WebhookMessage { event: "pull_request".into(), request: RawValue::from_string(request.into()).unwrap() };
        assert_eq!(
            serde_json::to_string(&message).unwrap(),
            format!(r#"{{"event":"pull_request","request":{request}}}"#)
        );
    }

    #[test]
    fn encodes_webhook_messages_around_the_raw_request() {
        let request = b"{\"action\": \"opened\",\n \"number\": 1}";
        let encoded = WebhookMessage::encode("pull_request", request);
        assert_eq!(encoded, [&br#"{"event":"pull_request","request":"#[..], request, b"}"].concat());
        let decoded: WebhookMessage = serde_json::from_slice(&encoded).unwrap();
        assert_eq!(decoded.event, "pull_request");
        assert_eq!(decoded.request.get().as_bytes(), request);
        assert_eq!(WebhookMessage::encode("a\"b", b"{}"), br#"{"event":"a\"b","request":{}}"#);
    }

    #[test]
    fn commands_are_shell_strings_or_argv() {
        let shell: CommandMessage = serde_json::from_str(r#"{"command": "./store-tests"}"#).unwrap();
        assert_eq!(shell.command, Command::Shell("./store-tests".into()));
        let argv: CommandMessage = serde_json::from_str(r#"{"command": ["ls", "-l"]}"#).unwrap();
        assert_eq!(argv.command, Command::Argv(vec!["ls".into(), "-l".into()]));
    }

    /// A number anywhere in a job (its `report`, which we pass on untouched) encodes again to
    /// the same number, however long it was written: found by the `job_message` fuzz target,
    /// a 111-digit integer parsed to one float and its encoding to the next (serde_json's
    /// default parser is not exact; `float_roundtrip` is).
    #[test]
    fn numbers_survive_a_round_trip() {
        let long = "2".to_owned() + &"7".repeat(110);
        let text = format!(r#"{{"job": {{"repo": "o/r", "report": {{"n": {long}, "z": -0}}}}, "human": "h"}}"#);
        let message: JobMessage = serde_json::from_str(&text).unwrap();
        let encoded = serde_json::to_string(&message).unwrap();
        let again: JobMessage = serde_json::from_str(&encoded).unwrap();
        assert_eq!(serde_json::to_string(&again).unwrap(), encoded);
        assert_eq!(again, message);
    }

    /// The shell string is Cockpit's, character for character (its missing space included).
    #[test]
    fn statistics_command_is_cockpits_string() {
        let message = CommandMessage::statistics("/cache/images/test-results.db", "cockpit-project/cockpit", "abc123");
        assert_eq!(
            serde_json::to_string(&message).unwrap(),
            r#"{"command":"./store-tests --db /cache/images/test-results.db --repo cockpit-project/cockpit abc123 && if [ $(stat -c %s /cache/images/test-results.db) -gt 25000000 ]; then ./prometheus-stats --db /cache/images/test-results.db --prune 14; fi &&./prometheus-stats --db /cache/images/test-results.db --s3 https://cockpit-ci-logs.s3.us-east-1.amazonaws.com/prometheus"}"#
        );
    }
}
