//! `tests-scan`: Cockpit's scan of pull requests into statuses and jobs (cockpit-protocol.md 3),
//! driving the decisions of `scan` with GitHub and the broker. [`Scanner::scan`] takes a typed
//! [`Request`]; the `tasks tests-scan` command line is a thin shell that makes one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tracing::Instrument;

use amqp::JobMessage;
use anyhow::Context;
use events::PullRequest;
use github::GitHub;

use crate::scan::{self, Action, Existing, Pull, Scan};
use crate::status::{Commit, State};
use crate::testmap::TestMap;
use retry::Transient;

/// Organisations and users whose pull requests are tested without a manual trigger
/// (Cockpit's `lib/allowlist.py`, plus this project's own).
/// Where `@bots#N` contexts find pull request N.
const BOTS: &str = "cockpit-project/bots";
const ALLOWLIST: [&str; 4] = ["cockpit-project", "cockpituous", "github-actions[bot]", "workbench-ci"];

#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// The repository to scan, OWNER/NAME.
    #[arg(long)]
    pub repo: String,
    /// Only these contexts (repeatable).
    #[arg(short, long = "context")]
    pub contexts: Vec<String>,
    /// Only this pull request.
    #[arg(short, long, conflicts_with = "pull_data")]
    pub pull: Option<u64>,
    /// A pull_request event's JSON (as queued by the webhook, its `request`), instead of asking GitHub.
    #[arg(long)]
    pub pull_data: Option<String>,
    /// Only the pull request with this head (or the bare commit, when none has it).
    #[arg(short, long, conflicts_with = "pull_data")]
    pub sha: Option<String>,
    /// Publish the jobs to the broker (otherwise they are printed).
    #[arg(long = "publish")]
    pub publish: bool,
    /// Change nothing: no statuses, no jobs; only say what would be done.
    #[arg(short = 'n', long)]
    pub dry: bool,
    /// Print one line per job instead of the job JSON.
    #[arg(short = 'v', long)]
    pub human_readable: bool,
    #[command(flatten)]
    pub scan: ScanArgs,
}

/// Where the test map and GitHub are: shared by tests-scan and run-queue.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ScanArgs {
    /// The test map (TOML).
    #[arg(long, env = "WORKBENCH_TESTMAP")]
    pub test_map: PathBuf,
    /// The GitHub API (a mock's URL in tests).
    #[arg(long, env = "GITHUB_API", default_value = github::DEFAULT_API)]
    pub github_api: String,
    /// File holding the GitHub token [default: Cockpit's token files]
    #[arg(long, env = "COCKPIT_GITHUB_TOKEN_FILE")]
    pub github_token_file: Option<PathBuf>,
    /// BRANCH/CONTEXT: test this context too, for every repository (Cockpit's test hook).
    #[arg(long, env = "COCKPIT_TESTMAP_INJECT")]
    pub testmap_inject: Option<String>,
}

/// What to scan.
#[derive(Debug, Clone)]
pub struct Request {
    /// The repository, OWNER/NAME.
    pub repo: String,
    pub target: Target,
    /// Only these contexts (none: all the test map's).
    pub contexts: Vec<String>,
    /// What to do with the jobs.
    pub mode: Mode,
}

/// Which pull requests (or commit) a scan looks at.
#[derive(Debug, Clone)]
pub enum Target {
    /// This pull request, as an event brought it: GitHub is not asked for it.
    Pull(Box<PullRequest>),
    /// Pull request number N.
    Number(u64),
    /// The open pull request with this head, or the bare commit when none has it.
    Sha(String),
    /// Every open pull request (a rescan).
    Open,
}

/// What a scan does with what it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Post statuses, publish jobs ("Not yet tested").
    Queue,
    /// Post statuses, hand the jobs back (Cockpit's tests-scan without `--amqp`: "Not yet
    /// tested (direct trigger)").
    Print,
    /// Change nothing; hand the jobs back.
    Dry,
}

/// Why a scan failed, and whether trying later can help.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    GitHub(#[from] github::Error),
    #[error(transparent)]
    Broker(#[from] amqp::Error),
    #[error("Can't find pull request {0}")]
    NoPull(u64),
}

impl Transient for ScanError {
    fn is_transient(&self) -> bool {
        match self {
            ScanError::GitHub(err) => err.is_transient(),
            ScanError::Broker(err) => err.is_transient(),
            ScanError::NoPull(_) => false,
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            ScanError::GitHub(err) => err.retry_after(),
            _ => None,
        }
    }
}

/// `tasks tests-scan`: scans as `args` say; prints jobs (or their summaries) unless publishing.
pub async fn run(config: &amqp::Config, args: &Args) -> anyhow::Result<()> {
    let scanner = Scanner::load(&args.scan)?;
    let target = match (&args.pull_data, args.pull, &args.sha) {
        (Some(data), _, _) => {
            let event: events::PullRequestEvent =
                serde_json::from_str(data).context("--pull-data is not a pull_request event")?;
            Target::Pull(Box::new(event.pull_request))
        }
        (None, Some(number), _) => Target::Number(number),
        (None, None, Some(sha)) => Target::Sha(sha.clone()),
        (None, None, None) => Target::Open,
    };
    let mode = match (args.dry, args.publish) {
        (true, _) => Mode::Dry,
        (false, true) => Mode::Queue,
        (false, false) => Mode::Print,
    };
    let request = Request { repo: args.repo.clone(), target, contexts: args.contexts.clone(), mode };
    let session = match mode {
        Mode::Queue => {
            let session = amqp::Session::connect(config).await?;
            // The queues jobs go to, declared once, as Cockpit's tests-scan does.
            for queue in [amqp::RHEL, amqp::PUBLIC] {
                session.declare(queue).await?;
            }
            Some(session)
        }
        Mode::Print | Mode::Dry => None,
    };
    let scanned = scanner.scan(&request, session.as_ref()).await;
    if let Some(session) = session {
        session.close().await;
    }
    let jobs = scanned?;
    if args.human_readable {
        let mut human: Vec<&String> = jobs.iter().map(|message| &message.human).collect();
        human.sort();
        human.into_iter().for_each(|line| println!("{line}"));
    } else if mode != Mode::Queue {
        for message in &jobs {
            println!("{}", serde_json::to_string_pretty(&message.job)?);
        }
    }
    Ok(())
}

/// The test map and a GitHub client, loaded once for any number of scans.
pub struct Scanner {
    map: TestMap,
    github: GitHub,
}

/// The time in the slugs of a scan's jobs (tests-scan's `%Y%m%d-%H%M%S`, UTC), `now` in Unix
/// seconds, or one second past the last one this process gave out: two scans of one pull
/// request in the same second (an event's and a rescan's) would otherwise queue two jobs with
/// one slug, one log URL, and each would take the other's "In progress" for its own.
fn scan_timestamp(now: i64) -> String {
    static LAST: std::sync::Mutex<i64> = std::sync::Mutex::new(i64::MIN);
    let mut last = LAST.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    *last = now.max(last.saturating_add(1));
    let format = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    let at = time::OffsetDateTime::from_unix_timestamp(*last).expect("a time of this era");
    at.format(&format).expect("a formattable time")
}

impl Scanner {
    pub fn load(args: &ScanArgs) -> anyhow::Result<Scanner> {
        let mut map = TestMap::load(&args.test_map)?;
        if let Some(inject) = &args.testmap_inject {
            map = map.inject(inject)?;
        }
        let token = match &args.github_token_file {
            Some(path) => github::read_token(path)?,
            None => github::cockpit_token()?,
        };
        Ok(Scanner { map, github: GitHub::new(&args.github_api, &token)? })
    }

    /// The repositories of the test map.
    pub fn projects(&self) -> Vec<String> {
        self.map.projects().into_iter().map(str::to_owned).collect()
    }

    /// Scans as `request` says: posts statuses and, queueing, publishes jobs to `session`.
    /// Returns the jobs decided, in order.
    pub async fn scan(&self, request: &Request, session: Option<&amqp::Session>) -> Result<Vec<JobMessage>, ScanError> {
        let github = &self.github;
        let pulls = self.pulls(request).await?;
        let timestamp = scan_timestamp(time::OffsetDateTime::now_utc().unix_timestamp());
        let allowlist: Vec<String> = ALLOWLIST.map(String::from).to_vec();
        let no_heads = BTreeMap::new();
        let base = Scan {
            map: &self.map,
            repo: &request.repo,
            allowlist: &allowlist,
            amqp: request.mode == Mode::Queue,
            bots_heads: &no_heads,
            timestamp: &timestamp,
            requeue_pending: !matches!(request.target, Target::Open),
        };
        let mut jobs = Vec::new();
        for pull in &pulls {
            let existing: Vec<Existing> =
                retry::transient("statuses", retry::COCKPIT, || github.statuses(&request.repo, &pull.sha))
                    .await?
                    .into_iter()
                    .map(|s| Existing { context: s.context, state: s.state, description: s.description })
                    .collect();
            let commit = Commit { github, repo: &request.repo, sha: &pull.sha };
            let mut bots_heads = BTreeMap::new();
            for number in scan::bots_pulls(&base, pull, &existing, &request.contexts) {
                let bots = retry::transient("pull", retry::COCKPIT, || github.pull(BOTS, number)).await?;
                if let Some(bots) = bots {
                    bots_heads.insert(number, bots.head.sha);
                }
            }
            let scan = Scan { bots_heads: &bots_heads, ..base };
            for action in scan::plan(&scan, pull, &existing, &request.contexts) {
                let (context, description) = match &action {
                    Action::Refuse { context, description } => (context.clone(), Some(*description)),
                    Action::Queue { description, message, .. } => {
                        (message.job.context.clone().unwrap_or_default(), *description)
                    }
                };
                if let (Some(description), false) = (description, request.mode == Mode::Dry) {
                    commit.post(&context, State::Pending, description, None, retry::COCKPIT).await?;
                }
                let Action::Queue { queue, priority, message, .. } = action else { continue };
                if let (Some(session), Mode::Queue) = (session, request.mode) {
                    let body = serde_json::to_vec(&*message).expect("a job message encodes");
                    let span = tracing::info_span!("queue-job", queue = queue.name, context);
                    let traceparent = traces::traceparent(&span);
                    let headers: Vec<(&str, &str)> =
                        traceparent.as_deref().map(|value| (traces::TRACEPARENT, value)).into_iter().collect();
                    session.publish_with_headers(queue.name, &body, Some(priority), &headers).instrument(span).await?;
                }
                jobs.push(*message);
            }
        }
        Ok(jobs)
    }

    /// The pull requests (or bare commit) `request` is about, with Cockpit's retries.
    async fn pulls(&self, request: &Request) -> Result<Vec<Pull>, ScanError> {
        let (github, repo) = (&self.github, request.repo.as_str());
        let convert = |pull: PullRequest| Pull {
            number: pull.number,
            title: pull.title,
            sha: pull.head.sha,
            login: pull.head.user.login,
            base: Some(pull.base.branch),
            labels: pull.labels.into_iter().map(|label| label.name).collect(),
        };
        Ok(match &request.target {
            Target::Pull(pull) => vec![convert((**pull).clone())],
            Target::Number(number) => {
                let pull = retry::transient("pull", retry::COCKPIT, || github.pull(repo, *number)).await?;
                vec![convert(pull.ok_or(ScanError::NoPull(*number))?)]
            }
            Target::Open => retry::transient("pulls", retry::COCKPIT, || github.open_pulls(repo))
                .await?
                .into_iter()
                .map(convert)
                .collect(),
            Target::Sha(sha) => {
                let open = retry::transient("pulls", retry::COCKPIT, || github.open_pulls(repo)).await?;
                let found = open.into_iter().map(convert).find(|pull| pull.sha.starts_with(sha.as_str()));
                vec![found.unwrap_or_else(|| Pull {
                    number: 0,
                    title: sha.clone(),
                    sha: sha.clone(),
                    login: "cockpit-project".into(),
                    base: None,
                    labels: Vec::new(),
                })]
            }
        })
    }
}

#[cfg(test)]
mod tests {
    /// Two scans in one second name their jobs with two times, each in tests-scan's format.
    #[test]
    fn two_scans_in_one_second_get_two_times() {
        let year_2100 = 4_102_444_800;
        assert_eq!(super::scan_timestamp(year_2100), "21000101-000000");
        assert_eq!(super::scan_timestamp(year_2100), "21000101-000001");
    }
}
