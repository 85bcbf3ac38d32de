//! job-runner: runs one job the way Cockpit's does (cockpit-protocol.md 4.3-4.7): resolve what
//! to test, post "In progress [host]", stream the log to S3, run the project's tests on a fresh
//! checkout, upload attachments, post the outcome.
//!
//! The test command runs in the configured sandbox (`sandbox.rs`).

use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::Instrument;

use amqp::Job;
use github::GitHub;
use tokio::task::JoinSet;
use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::log_store::{LogStore, StoreError};
use crate::log_stream::LogStream;
use crate::runner_config::{Forge, RunnerConfig, SandboxKind};
use crate::sandbox::{self, Ended, RunArgs};
use crate::status::{Commit, State};
use crate::{attachments, container, hold};
use retry::{Policy, Transient};

/// Cockpit polls a job's pull request this often, the first time at once.
const PULL_POLL: Duration = Duration::from_secs(60);
/// Cockpit's default job timeout, in minutes.
const DEFAULT_TIMEOUT_MINUTES: u64 = 120;

/// How a job ended, as reported on GitHub.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    Success,
    /// The test failed: the text of the failure status.
    Failure(String),
    /// The infrastructure failed, not the test.
    Error(String),
    /// The worker was told to stop before the job finished.
    Cancelled,
    /// The log could not be stored (the S3 error), whatever the test did: nobody could see why.
    LogNotStored(String),
    /// Another job of the same context runs this run (its log's URL): this one stopped without
    /// a status (`status::owner`).
    Superseded(String),
}

/// Logged by a job that stops because another job runs its context's tests (its twin).
pub const SUPERSEDED: &str = "another job runs this context's tests; not running them again";

/// The description of a job's final status when its log could not be stored.
pub const LOG_NOT_STORED: &str = "Internal error: the log could not be stored";

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job-runner: {0}")]
    Config(String),
    #[error(transparent)]
    GitHub(#[from] github::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("job-runner: cannot use the scratch directory {}: {source}", path.display())]
    Scratch { path: PathBuf, source: std::io::Error },
    #[error("job-runner: abandoned, its worker having lost the broker: the broker gives the job to another worker")]
    Abandoned,
}

impl Transient for JobError {
    /// Whether GitHub or S3 was away rather than the job wrong: trying later can help.
    fn is_transient(&self) -> bool {
        match self {
            JobError::Config(_) | JobError::Scratch { .. } | JobError::Abandoned => false,
            JobError::GitHub(err) => err.is_transient(),
            JobError::Store(err) => err.is_transient(),
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            JobError::GitHub(err) => err.retry_after(),
            _ => None,
        }
    }
}

/// What was resolved about the job before it runs.
struct Subject {
    repo: String,
    sha: String,
    rebase: Option<String>,
}

/// This try of a job: how it is told to stop before its end, and whether it is tried again.
#[derive(Debug, Clone, Default)]
pub struct Attempt {
    /// Stop the test, and end the job as cancelled (its log and status say so).
    pub cancel: CancellationToken,
    /// The worker lost its broker, which gives the job to another worker: write nothing more
    /// for it (no attachments, no end of log, no status), so that the job has one outcome, the
    /// other worker's. Cancelled together with `cancel`, which stops the test.
    pub abandon: CancellationToken,
    /// The job was tried before (the broker delivered it again: its worker died, or lost the
    /// broker; or it was published again): pending statuses linking to its log are its own
    /// earlier tries', whatever worker posted them.
    pub redelivered: bool,
}

impl From<CancellationToken> for Attempt {
    fn from(cancel: CancellationToken) -> Attempt {
        Attempt { cancel, ..Attempt::default() }
    }
}

/// Runs `job` on this host, called `hostname` in statuses and the log, until it ends or
/// `attempt` says to stop.
pub async fn run(
    config: &RunnerConfig,
    job: &Job,
    hostname: &str,
    scratch: &Path,
    attempt: impl Into<Attempt>,
) -> Result<Outcome, JobError> {
    // The job's containers, removed while its end is written: the job is over once they are.
    let mut removals = JoinSet::new();
    let ran = run_until_reported(config, job, hostname, scratch, attempt.into(), &mut removals).await;
    while removals.join_next().await.is_some() {}
    ran
}

async fn run_until_reported(
    config: &RunnerConfig,
    job: &Job,
    hostname: &str,
    scratch: &Path,
    attempt: Attempt,
    removals: &mut JoinSet<()>,
) -> Result<Outcome, JobError> {
    let Attempt { cancel, abandon, redelivered } = attempt;
    let abandoned = || match abandon.is_cancelled() {
        true => Err(JobError::Abandoned),
        false => Ok(()),
    };
    let (forge, github) = forge(config, job)?;
    let subject = resolve(&github, job).await?;
    // Everything asked of GitHub before the job starts, so that GitHub being away puts the job
    // off (`JobError::is_transient`) before it says "In progress".
    let image = match config.container.sandbox {
        SandboxKind::Container => Some(image(config, &github, job, &subject).await?),
        SandboxKind::Process => None,
    };

    let context = job.context.clone();
    let (shown_context, short_sha) = (context.as_deref().unwrap_or("-"), &subject.sha[..12.min(subject.sha.len())]);
    let title = job.title.clone().unwrap_or_else(|| format!("{shown_context}@{}#{short_sha}", job.repo));
    let (store, log_url) = LogStore::for_job(config, &prefix(job, &subject.sha))?;
    let reporter =
        Reporter { forge, github: &github, subject: &subject, job, hostname, log_url: &log_url, redelivered };
    if let Some(owner) = reporter.other_owner().await {
        tracing::info!(owner = owner.target_url, "{SUPERSEDED}");
        return Ok(Outcome::Superseded(owner.target_url.unwrap_or_default()));
    }
    let header = format!(
        "{title}\n\nRunning on: {hostname}\n\nJob({})\n\n",
        serde_json::to_string_pretty(job).unwrap_or_default()
    );
    abandoned()?;
    let mut log = LogStream::start(store, &header, scratch, config.limits.log_size.0)
        .await
        .map_err(|source| JobError::Scratch { path: scratch.to_owned(), source })?;
    let post = |state: State, description: String, policy: Policy| reporter.post(state, description, policy);
    abandoned()?;
    // Unlike Cockpit's job-runner, a job whose "In progress" GitHub would not take still runs:
    // its outcome is what must arrive.
    if let Err(err) = post(State::Pending, "In progress".into(), retry::COCKPIT).await {
        tracing::warn!(%err, "cannot post the job's \"In progress\" status; running it all the same");
    }

    let outcome = match (reporter.other_owner().await, log.failure()) {
        // Two jobs started at once: the one GitHub lists first runs.
        (Some(owner), _) => {
            if owner.state != State::Pending.as_str() {
                // The owner ended before this job said "In progress": its outcome is the latest
                // status again.
                if let Err(err) = reporter.repost(&owner).await {
                    tracing::warn!(%err, "cannot post the outcome of the job that ran these tests again");
                }
            }
            Outcome::Superseded(owner.target_url.unwrap_or_default())
        }
        (None, Some(err)) => Outcome::LogNotStored(err.to_string()),
        (None, None) => {
            let run_context = Run {
                config,
                github: &github,
                image: image.as_deref(),
                job,
                subject: &subject,
                clone_url: &forge.clone_url,
                log_url: &log_url,
                hostname,
            };
            watched(&run_context, scratch, &mut log, &cancel, removals).await
        }
    };
    abandoned()?;
    let (dir, limits) = (scratch.join("attachments"), config.limits.attachments());
    attachments::upload(&dir, &limits, &mut log).instrument(tracing::info_span!("attachments")).await;
    if log.dropped() > 0 {
        log.note(&format!("\n*** {} bytes of output were not kept in this log\n", log.dropped())).await;
    }
    log.note(&ending(&outcome)).await;
    // The log is complete before the status that links to it, and a log that could not be
    // stored is reported as such, whatever the test's outcome.
    let outcome = match log.close().instrument(tracing::info_span!("log-close")).await {
        Err(err) if !matches!(outcome, Outcome::LogNotStored(_)) => Outcome::LogNotStored(err.to_string()),
        _ => outcome,
    };
    if let Outcome::LogNotStored(err) = &outcome {
        tracing::error!(%err, "the job's log could not be stored");
    }
    if let Some((state, description)) = status(&outcome) {
        abandoned()?;
        // Abandoned while GitHub is being asked (through a partition, say): given up at once.
        // The connector discards what the connection had not delivered: it never arrives late.
        tokio::select! {
            // A status posted counts, even if the abandon came at the same moment.
            biased;
            posted = post(state, description, retry::FINAL_STATUS) => posted?,
            () = abandon.cancelled() => return Err(JobError::Abandoned),
        }
    }
    Ok(outcome)
}

/// Ends a job that was tried `tries` times without coming to an end (each try stopped its job
/// process or its worker, as a job that eats all memory does): its log and final status say so.
/// The output of the last try stays in the range objects it streamed, which the log names.
pub async fn give_up(config: &RunnerConfig, job: &Job, hostname: &str, tries: u32) -> Result<(), JobError> {
    let (forge, github) = forge(config, job)?;
    let subject = resolve(&github, job).await?;
    let (store, log_url) = LogStore::for_job(config, &prefix(job, &subject.sha))?;
    let reason = format!("gave up after {tries} tries");
    let mut note = format!(
        "*** Internal error: {reason}: each one stopped before the job ended, \
         taking its job process or its worker with it.\n"
    );
    let list = store.get("log.chunks").await.ok().flatten();
    if let Some(chunks) = list.and_then(|list| serde_json::from_slice::<Vec<u64>>(&list).ok()) {
        let mut start = 0;
        let ranges: Vec<String> = chunks
            .iter()
            .map(|size| {
                let name = format!("log.{start}-{}", start + size);
                start += size;
                name
            })
            .collect();
        note.push_str(&format!("The output of the last try is in {}, next to this log.\n", ranges.join(", ")));
    }
    use crate::log_stream::Sink;
    Sink::put(&store, "log", s3::Body::from(note.into_bytes()), "text/plain; charset=utf-8").await?;
    // Without a chunk list, the viewer reads `log`: the log is over.
    Sink::delete(&store, "log.chunks").await?;
    let reporter =
        Reporter { forge, github: &github, subject: &subject, job, hostname, log_url: &log_url, redelivered: true };
    Ok(reporter.post(State::Error, format!("Internal error: {reason}"), retry::FINAL_STATUS).await?)
}

/// Where a job's statuses go, and what they link to.
struct Reporter<'a> {
    forge: &'a Forge,
    github: &'a GitHub,
    subject: &'a Subject,
    job: &'a Job,
    hostname: &'a str,
    log_url: &'a str,
    /// [`Attempt::redelivered`].
    redelivered: bool,
}

impl Reporter<'_> {
    /// Posts `state` with `description [host]` for the job's context, if it has one and the
    /// forge takes posts, tried as `policy` says.
    async fn post(&self, state: State, description: String, policy: Policy) -> Result<(), github::Error> {
        let (Some(context), true) = (&self.job.context, self.forge.post) else { return Ok(()) };
        let commit = Commit { github: self.github, repo: &self.subject.repo, sha: &self.subject.sha };
        let description = format!("{description} [{}]", self.hostname);
        let span = tracing::info_span!("status", state = state.as_str(), description);
        commit.post(context, state, &description, Some(self.log_url), policy).instrument(span).await
    }

    /// The status of the job that owns this run of the context when it is another job's (its
    /// log is elsewhere). None when GitHub cannot say: two final statuses beat none.
    async fn other_owner(&self) -> Option<github::Status> {
        let (Some(context), true) = (&self.job.context, self.forge.post) else { return None };
        let (repo, sha) = (&self.subject.repo, &self.subject.sha);
        let history = match retry::transient("statuses", retry::COCKPIT, || self.github.status_history(repo, sha)).await
        {
            Ok(history) => history,
            Err(err) => {
                tracing::warn!(%err, "cannot tell whether another job runs these tests; running them");
                return None;
            }
        };
        // Another job's: another log, or (should two workers have given one slug to two jobs)
        // another worker's host name, unless this job was tried before and that try is still
        // pending: then it is an earlier try's, whose worker died or lost the broker (and
        // abandoned it). An earlier try's final status stays another's: the job is reported.
        let own_host = format!("[{}]", self.hostname);
        let earlier_try = |owner: &github::Status| self.redelivered && owner.state == State::Pending.as_str();
        let mine = |owner: &github::Status| {
            owner.target_url.as_deref() == Some(self.log_url)
                && (earlier_try(owner) || owner.description.as_deref().is_some_and(|d| d.ends_with(&own_host)))
        };
        crate::status::owner(&history, context).filter(|owner| !mine(owner)).cloned()
    }

    /// Posts `status` again, as it was.
    async fn repost(&self, status: &github::Status) -> Result<(), github::Error> {
        let state = State::parse(&status.state).unwrap_or(State::Error);
        let commit = Commit { github: self.github, repo: &self.subject.repo, sha: &self.subject.sha };
        let description = status.description.as_deref().unwrap_or_default();
        commit.post(&status.context, state, description, status.target_url.as_deref(), retry::FINAL_STATUS).await
    }
}

/// Runs the job until it ends, the worker cancels it, or its pull request is closed or changes
/// (a failure, as in Cockpit).
async fn watched(
    run: &Run<'_>,
    scratch: &Path,
    log: &mut LogStream<LogStore>,
    cancel: &CancellationToken,
    removals: &mut JoinSet<()>,
) -> Outcome {
    // Cancelled with the job, or by the pull request's change.
    let stop = cancel.child_token();
    let mut reason = None;
    let watch = async {
        if let Some(why) = stop.run_until_cancelled(watch_pull(run.github, run.job, &run.subject.sha)).await {
            reason = Some(why);
            stop.cancel();
        }
        std::future::pending::<()>().await
    };
    let executed = tokio::select! {
        executed = execute(run, scratch, log, &stop, removals) => executed,
        () = watch => unreachable!("watching never ends"),
    };
    match (executed, reason) {
        (Ok(Outcome::Cancelled), Some(why)) => Outcome::Failure(why),
        (executed, _) => executed.unwrap_or_else(Outcome::Error),
    }
}

/// The last line of the job's log, as Cockpit writes it.
fn ending(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Success => "\n\nJob ran successfully.  :)\n".into(),
        Outcome::Failure(message) => format!("\n*** Failure: {message}\n"),
        Outcome::Error(message) | Outcome::LogNotStored(message) => format!("\n*** Internal error: {message}\n"),
        Outcome::Cancelled => "*** Job cancelled\n".into(),
        Outcome::Superseded(owner) => format!("\n*** Not run: {owner} runs these tests\n"),
    }
}

/// The final status of the job: its state and description (before " [host]"); none when
/// another job reports.
fn status(outcome: &Outcome) -> Option<(State, String)> {
    Some(match outcome {
        Outcome::Success => (State::Success, "Success".into()),
        Outcome::Failure(message) => (State::Failure, message.clone()),
        Outcome::Error(_) => (State::Error, "Internal error".into()),
        Outcome::LogNotStored(_) => (State::Error, LOG_NOT_STORED.into()),
        Outcome::Cancelled => (State::Error, "Cancelled".into()),
        Outcome::Superseded(_) => return None,
    })
}

/// What GitHub says of this very job's earlier tries, for a message delivered again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Earlier {
    /// The job has its final status already: the latest status of its context at its commit
    /// is not pending and links to this job's log (the slug tests-scan gives each queued job is
    /// unique). That happens when a worker posted it and was stopped before it acknowledged
    /// the message; running such a job again would post a second one.
    pub reported: bool,
    /// How often the job was started: its "In progress" statuses that link to its log. A job
    /// started again and again without an end takes its worker down each time.
    pub starts: u32,
}

/// Asks GitHub about this job's earlier tries (its context's statuses at its commit).
pub async fn earlier(config: &RunnerConfig, job: &Job) -> Result<Earlier, JobError> {
    let Some(context) = &job.context else { return Ok(Earlier { reported: false, starts: 0 }) };
    let (_, github) = forge(config, job)?;
    let subject = resolve(&github, job).await?;
    let (_, log_url) = LogStore::for_job(config, &prefix(job, &subject.sha))?;
    let history =
        retry::transient("statuses", retry::COCKPIT, || github.status_history(&subject.repo, &subject.sha)).await?;
    let own: Vec<&github::Status> = history.iter().filter(|s| &s.context == context).collect();
    let ours = |status: &github::Status| status.target_url.as_deref() == Some(log_url.as_str());
    let reported = own.first().is_some_and(|latest| latest.state != "pending" && ours(latest));
    let started =
        |s: &&&github::Status| ours(s) && s.description.as_deref().is_some_and(|d| d.starts_with("In progress"));
    let starts = own.iter().filter(started).count();
    Ok(Earlier { reported, starts: u32::try_from(starts).unwrap_or(u32::MAX) })
}

/// The forge the job is reported to, and a client of its API.
fn forge<'c>(config: &'c RunnerConfig, job: &Job) -> Result<(&'c Forge, GitHub), JobError> {
    let name = job.forge.as_ref().unwrap_or(&config.forge.default);
    let forge = config.forge.forges.get(name).ok_or_else(|| JobError::Config(format!("no forge {name:?}")))?;
    let token = forge.token.clone().unwrap_or_default();
    Ok((forge, GitHub::new(forge.api_url.trim_end_matches('/'), token.trim())?))
}

/// Where a job's objects go in its log store: Cockpit's slug (tests-scan's, else
/// `<repo>/<context or ->/<sha[:12]>`) made an object prefix (cockpit-protocol.md 4.4).
fn prefix(job: &Job, sha: &str) -> String {
    let context = job.context.as_deref().unwrap_or("-");
    let slug = job.slug.clone().unwrap_or_else(|| format!("{}/{context}/{}", job.repo, &sha[..12.min(sha.len())]));
    slug.replace("//", "--").replace(':', "-")
}

/// Returns, as Cockpit's job-runner's poller, `<repo>#<pull> is closed` or `<repo>#<pull>
/// changed` once the job's pull request is closed or has another head; never for a job without
/// one. Errors asking GitHub are ignored.
async fn watch_pull(github: &GitHub, job: &Job, sha: &str) -> String {
    let Some(number) = job.pull else { return std::future::pending().await };
    loop {
        if let Ok(Some(pull)) = github.pull(&job.repo, number).await {
            if pull.state != "open" {
                return format!("{}#{number} is closed", job.repo);
            }
            if pull.head.sha != sha {
                return format!("{}#{number} changed", job.repo);
            }
        }
        tokio::time::sleep(PULL_POLL).await;
    }
}

/// What the job tests, asking GitHub (with Cockpit's retries) where the job does not say.
async fn resolve(github: &GitHub, job: &Job) -> Result<Subject, JobError> {
    if let Some(number) = job.pull {
        let pull = retry::transient("pull", retry::COCKPIT, || github.pull(&job.repo, number))
            .await?
            .ok_or_else(|| JobError::Config(format!("{}#{number} does not exist", job.repo)))?;
        let sha = job.sha.clone().unwrap_or(pull.head.sha);
        let rebase = job.target.clone().or(Some(pull.base.branch));
        return Ok(Subject { repo: job.repo.clone(), sha, rebase });
    }
    if let Some(sha) = &job.sha {
        return Ok(Subject { repo: job.repo.clone(), sha: sha.clone(), rebase: job.target.clone() });
    }
    let branch = match &job.branch {
        Some(branch) => branch.clone(),
        None => retry::transient("repository", retry::COCKPIT, || github.default_branch(&job.repo)).await?,
    };
    let sha = retry::transient("branch", retry::COCKPIT, || github.branch_sha(&job.repo, &branch)).await?;
    Ok(Subject { repo: job.repo.clone(), sha, rebase: None })
}

/// The job being run, and where it is reported.
#[derive(Clone, Copy)]
struct Run<'a> {
    config: &'a RunnerConfig,
    github: &'a GitHub,
    /// The container image, in the container sandbox.
    image: Option<&'a str>,
    job: &'a Job,
    subject: &'a Subject,
    clone_url: &'a str,
    log_url: &'a str,
    hostname: &'a str,
}

/// Checks out the code under test and runs its tests in the configured sandbox, streaming
/// their output into the log; a container is removed by a task put in `removals`. `Err` is an
/// infrastructure failure.
async fn execute(
    run: &Run<'_>,
    scratch: &Path,
    log: &mut LogStream<LogStore>,
    cancel: &CancellationToken,
    removals: &mut JoinSet<()>,
) -> Result<Outcome, String> {
    let Run { config, job, subject, clone_url, log_url, hostname, .. } = *run;
    let (checkout, attachments) = (scratch.join("checkout"), scratch.join("attachments"));
    std::fs::create_dir_all(&attachments).map_err(|e| format!("cannot create {}: {e}", attachments.display()))?;
    // A cross-project context runs the other project's tests, at its branch, unrebased.
    let (repo, revision, rebase) = match &job.command_subject {
        Some(other) => (other.repo.clone(), other.branch.clone().unwrap_or_else(|| "main".into()), None),
        None => (subject.repo.clone(), subject.sha.clone(), subject.rebase.clone()),
    };
    let git = |args: &[&str]| -> Vec<String> { ["git"].iter().chain(args).map(|arg| arg.to_string()).collect() };
    let url = format!("{clone_url}{repo}");
    let target = checkout.display().to_string();
    // Each step runs in a directory: the clone in the scratch directory, the rest in the checkout.
    // Cockpit's checkout-and-run, in fewer git processes: the clone checks nothing out (the
    // revision is checked out next), and the rebase target is the branch the clone fetched
    // rather than fetched again.
    let mut steps = vec![
        (scratch, git(&["clone", "--quiet", "--no-checkout", "--", &url, &target])),
        (&checkout, git(&["fetch", "--quiet", "--", "origin", &revision])),
        (&checkout, git(&["checkout", "--quiet", "--detach", "FETCH_HEAD"])),
    ];
    if let Some(base) = rebase {
        steps.push((&checkout, git(&["rebase", "--quiet", &format!("refs/remotes/origin/{base}")])));
    }
    // The checkout's files are the pull request's: git reads no configuration of the user's
    // (`HOME` is where the command runs, the checkout), or a `.gitconfig` of the project's
    // would run its hooks and fsmonitor here, on the worker, outside the job's sandbox.
    // The checkout is thrown away after the job: git's housekeeping after a fetch or a rebase
    // (`git maintenance run --auto`, a process each time) would be wasted on it. A rebase that
    // replays the pull request's commits writes new ones, whose committer git will not guess on
    // a machine without a mail domain; their authors stay the pull request's.
    let (committer, home) = (format!("job-runner@{hostname}"), scratch.display().to_string());
    let git_env = [
        ("HOME", home.as_str()),
        ("GIT_CONFIG_GLOBAL", "/dev/null"),
        ("GIT_CONFIG_COUNT", "1"),
        ("GIT_CONFIG_KEY_0", "maintenance.auto"),
        ("GIT_CONFIG_VALUE_0", "false"),
        ("GIT_COMMITTER_NAME", "job-runner"),
        ("GIT_COMMITTER_EMAIL", &committer),
    ]
    .map(|(name, value)| (name.to_owned(), value.to_owned()));
    for (dir, step) in steps {
        log.write(format!("\n+ {}\n", step.join(" ")).as_bytes()).await;
        let span = tracing::info_span!("git", step = step[1]);
        match sandbox::process(&step, dir, &git_env, log, None, cancel).instrument(span).await? {
            Ended::Exited(0) => {}
            Ended::Cancelled => return Ok(Outcome::Cancelled),
            _ => return Err(format!("{} failed", step[..2].join(" "))),
        }
    }
    let command = match &job.command {
        Some(command) => command.clone(),
        None => {
            let entry = [".cockpit-ci/run", "test/run"].into_iter().find(|entry| checkout.join(entry).exists());
            let Some(entry) = entry else {
                // Cockpit's checkout-and-run says so and exits 1: a failure of the project.
                log.write(b"*** Failed to execute entry point.\n").await;
                return Ok(Outcome::Failure("Container exited with code 1".into()));
            };
            vec![format!("./{entry}")]
        }
    };
    // The secrets the job asks for, as far as the configuration provides them, and no other.
    let asked: Vec<&Vec<String>> =
        config.container.secrets.iter().filter(|(name, _)| job.secrets.contains(name)).map(|(_, args)| args).collect();
    let wanted = asked.iter().flat_map(|args| args.iter().flat_map(|arg| sandbox::referenced(arg)));
    let wanted = wanted.map(str::to_owned).collect();
    let secrets = config.secrets.paths(&scratch.join("secrets"), &wanted).map_err(|e| e.to_string())?;
    let mut args = RunArgs::default();
    args.add(&config.container.run_args)?;
    for extra in asked {
        args.add(&extra.iter().map(|arg| sandbox::expand(arg, &secrets)).collect::<Vec<_>>())?;
    }
    let mut env: Vec<(String, String)> = job.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    env.push(("COCKPIT_CI_LOG_URL".into(), log_url.to_owned()));
    let minutes = job.timeout.unwrap_or(DEFAULT_TIMEOUT_MINUTES);
    let deadline = (minutes > 0).then(|| Instant::now() + Duration::from_secs(minutes * 60));
    let test = tracing::info_span!("test", command = command.join(" "));
    let ended = match config.container.sandbox {
        SandboxKind::Process => {
            env.push(("TEST_ATTACHMENTS".into(), attachments.display().to_string()));
            env.extend(args.env.iter().cloned());
            log.write(format!("\n+ {}\n", command.join(" ")).as_bytes()).await;
            let ended = sandbox::process(&command, &checkout, &env, log, deadline, cancel).instrument(test).await?;
            if holds(config, &ended, scratch) {
                record_held(scratch, job, &checkout, sandbox::environment(&checkout, &env), None);
            }
            ended
        }
        SandboxKind::Container => {
            let image = run.image.ok_or("no container image")?;
            env.push(("TEST_ATTACHMENTS".into(), container::ATTACHMENTS.to_owned()));
            log.write(format!("Using container image: {image}\n\n+ {}\n", command.join(" ")).as_bytes()).await;
            let slug = job.slug.as_deref().unwrap_or_default();
            let spec = container::Spec {
                worker: hostname,
                image,
                argv: &command,
                checkout: &checkout,
                attachments: &attachments,
                env: &env,
                args: &args,
                slug,
            };
            let socket = config.container.socket();
            let ended = container::run(&socket, &spec, log, deadline, cancel, removals).instrument(test).await?;
            if holds(config, &ended, scratch) {
                match container::hold(&socket, &spec).await {
                    Ok(name) => {
                        let dir = Path::new(container::CHECKOUT);
                        if !record_held(scratch, job, dir, env, Some(name.clone())) {
                            container::remove(&socket, &name).await;
                        }
                    }
                    Err(err) => tracing::warn!(%err, "cannot hold the failed job"),
                }
            }
            ended
        }
    };
    Ok(match ended {
        Ended::Exited(0) => Outcome::Success,
        Ended::Exited(code) => Outcome::Failure(format!("Container exited with code {code}")),
        Ended::TimedOut => Outcome::Failure(format!("Timeout after {minutes} minutes")),
        Ended::Cancelled => Outcome::Cancelled,
    })
}

/// Whether the job whose tests `ended` so is to be held: `hold-failed` is set, the tests failed
/// (not cancelled), and no job is held in its work directory yet.
fn holds(config: &RunnerConfig, ended: &Ended, scratch: &Path) -> bool {
    let failed = matches!(ended, Ended::TimedOut) || matches!(ended, Ended::Exited(code) if *code != 0);
    config.hold_failed && failed && !hold::holding(work_dir(scratch))
}

/// The worker's work directory: the scratch directory's parent (`job_runner`).
fn work_dir(scratch: &Path) -> &Path {
    scratch.parent().unwrap_or(scratch)
}

/// Records the failed job in `scratch` as held ([`crate::hold`]); false when it is not (another
/// job was held meanwhile, or the record could not be written).
fn record_held(scratch: &Path, job: &Job, dir: &Path, env: Vec<(String, String)>, container: Option<String>) -> bool {
    let slug = job.slug.clone().unwrap_or_default();
    let held = hold::Held { slug, scratch: scratch.to_owned(), dir: dir.to_owned(), env, container };
    match hold::record(work_dir(scratch), &held) {
        Ok(true) => {
            tracing::info!(slug = held.slug, scratch = %scratch.display(), "holding the failed job");
            true
        }
        Ok(false) => false,
        Err(err) => {
            tracing::warn!(%err, "cannot record the held job");
            false
        }
    }
}

/// The job's image, else the one `.cockpit-ci/container` names in the tested project at the
/// tested revision, else the configured default (cockpit-protocol.md 4.5).
async fn image(config: &RunnerConfig, github: &GitHub, job: &Job, subject: &Subject) -> Result<String, JobError> {
    if let Some(image) = &job.container {
        return Ok(image.trim().to_owned());
    }
    let (repo, revision) = match &job.command_subject {
        Some(other) => (other.repo.as_str(), other.branch.as_deref().unwrap_or("main")),
        None => (subject.repo.as_str(), subject.sha.as_str()),
    };
    let named =
        retry::transient("file", retry::COCKPIT, || github.file(repo, ".cockpit-ci/container", revision)).await?;
    let named = named.map(|text| text.trim().to_owned()).filter(|image| !image.is_empty());
    Ok(named.unwrap_or_else(|| config.container.default_image.trim().to_owned()))
}
