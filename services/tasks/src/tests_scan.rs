//! `tests-scan`: Cockpit's scan of pull requests into statuses and jobs (cockpit-protocol.md 3),
//! driving the decisions of `scan` with GitHub and the broker.

use std::path::PathBuf;

use crate::retry;
use crate::scan::{self, Action, Existing, Pull, Scan};
use crate::testmap::TestMap;
use anyhow::{Context, bail};
use github::{GitHub, StatusUpdate};

/// Organisations and users whose pull requests are tested without a manual trigger
/// (Cockpit's `lib/allowlist.py`, plus this project's own).
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

/// Scans as `args` say; prints jobs (or their summaries) unless publishing them.
pub async fn run(config: &amqp::Config, args: &Args) -> anyhow::Result<()> {
    let scanner = Scanner::load(&args.scan)?;
    let session = match args.publish && !args.dry {
        true => {
            let session = amqp::Session::connect(config).await?;
            // The queues jobs go to, declared once, as Cockpit's tests-scan does.
            for queue in [amqp::RHEL, amqp::PUBLIC] {
                session.declare(queue).await?;
            }
            Some(session)
        }
        false => None,
    };
    let printed = scanner.scan(args, session.as_ref()).await;
    if let Some(session) = session {
        session.close().await;
    }
    for line in printed? {
        println!("{line}");
    }
    Ok(())
}

/// The test map and a GitHub client, loaded once for any number of scans.
pub struct Scanner {
    map: TestMap,
    github: GitHub,
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

    /// Posts statuses and publishes jobs to `session` (if any) as `args` say; returns what
    /// tests-scan prints: the sorted summaries, or the jobs when not publishing.
    pub async fn scan(&self, args: &Args, session: Option<&amqp::Session>) -> anyhow::Result<Vec<String>> {
        let github = &self.github;
        let pulls = pulls(github, args).await?;
        let format = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
        let timestamp = time::OffsetDateTime::now_utc().format(&format)?;
        let allowlist: Vec<String> = ALLOWLIST.map(String::from).to_vec();
        let scan = Scan {
            map: &self.map,
            repo: &args.repo,
            allowlist: &allowlist,
            amqp: args.publish,
            bots_pr_head: &|_| None,
            timestamp: &timestamp,
            requeue_pending: args.pull.is_some() || args.pull_data.is_some() || args.sha.is_some(),
        };
        let (mut human, mut jobs) = (Vec::new(), Vec::new());
        for pull in &pulls {
            let existing: Vec<Existing> = github
                .statuses(&args.repo, &pull.sha)
                .await?
                .into_iter()
                .map(|s| Existing { context: s.context, state: s.state, description: s.description })
                .collect();
            for action in scan::plan(&scan, pull, &existing, &args.contexts) {
                let (context, description) = match &action {
                    Action::Refuse { context, description } => (context.clone(), Some(*description)),
                    Action::Queue { description, message, .. } => {
                        (message.job.context.clone().unwrap_or_default(), *description)
                    }
                };
                if let (Some(description), false) = (description, args.dry) {
                    let status = StatusUpdate {
                        context,
                        state: "pending".into(),
                        description: description.into(),
                        target_url: None,
                    };
                    retry::transient("status", retry::COCKPIT, github::Error::is_transient, || {
                        github.post_status(&args.repo, &pull.sha, &status)
                    })
                    .await?;
                }
                let Action::Queue { queue, priority, message, .. } = action else { continue };
                if let Some(session) = session {
                    session.publish(queue.name, &serde_json::to_vec(&*message)?, Some(priority)).await?;
                }
                if args.human_readable {
                    human.push(message.human.clone());
                } else if session.is_none() {
                    jobs.push(serde_json::to_string_pretty(&message.job)?);
                }
            }
        }
        human.sort();
        Ok(if args.human_readable { human } else { jobs })
    }
}

async fn pulls(github: &GitHub, args: &Args) -> anyhow::Result<Vec<Pull>> {
    let convert = |pull: github::Pull| Pull {
        number: pull.number,
        title: pull.title,
        sha: pull.head.sha,
        login: pull.head.user.login,
        base: Some(pull.base.branch),
        labels: pull.labels.into_iter().map(|label| label.name).collect(),
    };
    if let Some(data) = &args.pull_data {
        #[derive(serde::Deserialize)]
        struct Event {
            pull_request: github::Pull,
        }
        let event: Event = serde_json::from_str(data).context("--pull-data is not a pull_request event")?;
        return Ok(vec![convert(event.pull_request)]);
    }
    if let Some(number) = args.pull {
        let Some(pull) = github.pull(&args.repo, number).await? else { bail!("Can't find pull request {number}") };
        return Ok(vec![convert(pull)]);
    }
    let open: Vec<Pull> = github.open_pulls(&args.repo).await?.into_iter().map(convert).collect();
    match &args.sha {
        None => Ok(open),
        Some(sha) => {
            Ok(vec![open.into_iter().find(|pull| pull.sha.starts_with(sha.as_str())).unwrap_or_else(|| Pull {
                number: 0,
                title: sha.clone(),
                sha: sha.clone(),
                login: "cockpit-project".into(),
                base: None,
                labels: Vec::new(),
            })])
        }
    }
}
