//! job-runner as a process of its own: `tasks job-runner json '<JOB>'` runs one job to its final
//! status as Cockpit's job-runner runs it (cockpit-protocol.md 4.3, 4.4), and `tasks run-job` is
//! the process run-queue starts for each job it takes (as Cockpit's run-queue starts
//! job-runner), so that whatever a job does to its process (memory, a crash) cannot take the
//! worker and its other slots down. The worker hands it a [`Request`] on its standard input and
//! reads its [`Report`] from its standard output.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tracing::Instrument;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::job::{self, JobError, Outcome};
use crate::runner_config::{RunnerConfig, SandboxKind};
use retry::Transient;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(subcommand)]
    pub spec: Spec,
    /// job-runner configuration (TOML, or JSON ending in .json) [default: Cockpit's defaults].
    #[arg(long, env = "JOB_RUNNER_CONFIG", global = true)]
    pub job_runner_config: Option<PathBuf>,
    /// The name shown in statuses and logs [default: the host name].
    #[arg(long, global = true)]
    pub hostname: Option<String>,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Spec {
    /// The job as JSON, as tests-scan queues it (the `job` of a queue message).
    Json { job: String },
}

/// Runs the job until it ends or `cancel` resolves. Like Cockpit's job-runner, a failed test
/// is a normal end; an infrastructure failure or cancellation is an error.
pub async fn run(args: &Args, cancel: impl Future<Output = ()>) -> anyhow::Result<()> {
    let Spec::Json { job } = &args.spec;
    let job: amqp::Job = serde_json::from_str(job).context("Poorly formed job")?;
    let config = RunnerConfig::load(args.job_runner_config.as_deref())?;
    let hostname = args.hostname.clone().unwrap_or_else(host_name);
    let request = Request {
        job,
        hostname,
        config: args.job_runner_config.clone(),
        work_dir: std::env::temp_dir(),
        traceparent: None,
        redelivered: false,
    };
    match run_request(&config, &request, cancel, std::future::pending::<()>()).await? {
        Outcome::Success | Outcome::Failure(_) | Outcome::Superseded(_) => Ok(()),
        Outcome::Error(reason) | Outcome::LogNotStored(reason) => anyhow::bail!("Internal error: {reason}"),
        Outcome::Cancelled => anyhow::bail!("Job cancelled"),
    }
}

/// This machine's host name, the default name of a worker in statuses.
pub fn host_name() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// What the worker asks of the job process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub job: amqp::Job,
    /// The name shown in statuses and the log.
    pub hostname: String,
    /// The job-runner configuration file, if not Cockpit's defaults.
    pub config: Option<PathBuf>,
    /// Where the job's scratch directory is made.
    pub work_dir: PathBuf,
    /// The trace the job belongs to (W3C `traceparent`), continued by the job's process.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// The broker delivered the job again ([`job::Attempt::redelivered`]).
    #[serde(default)]
    pub redelivered: bool,
}

/// What the job process tells the worker when it is done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub ended: Ended,
    /// The most memory the job process held at once (its peak resident set), in bytes.
    pub peak_memory: u64,
    /// Refusals of GitHub limiting our rate the job met (`retry::RATE_LIMITED`).
    #[serde(default)]
    pub rate_limited: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Ended {
    /// The job ran to its final status.
    Reported(Outcome),
    /// GitHub or S3 was away for longer than the retries: trying later can help, at the
    /// earliest after `retry_after` seconds when GitHub said (a rate limit).
    Transient { error: String, retry_after: Option<u64> },
    /// It could not run and never will as it is (a configuration error, say).
    Failed(String),
    /// Its worker lost the broker and abandoned it ([`ABANDON`]): the broker gives it to
    /// another worker, and this try wrote nothing after that.
    Abandoned,
}

/// The signal by which the worker abandons a job: it lost the broker, which gives the job to
/// another worker. The job's test is stopped, and nothing more is written for it.
pub const ABANDON: rustix::process::Signal = rustix::process::Signal::USR1;

/// How long an abandoned job may take to stop its test before its process ends all the same.
pub const ABANDON_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The largest request the job process reads: a job is a few kilobytes.
const MAX_REQUEST: u64 = 16 << 20;

/// `tasks run-job`: reads a [`Request`] from standard input, runs the job until it ends,
/// `cancel` resolves (the worker's SIGTERM) or the worker abandons it ([`ABANDON`]), and writes
/// the [`Report`] to standard output.
pub async fn serve(cancel: impl Future<Output = ()>) -> anyhow::Result<()> {
    // Processes the job leaves behind (even those that left its process group) become this
    // process's children, and are stopped with the job.
    crate::sandbox::adopt_orphans().context("cannot become the subreaper of the job's processes")?;
    let kind = tokio::signal::unix::SignalKind::from_raw(ABANDON.as_raw());
    let mut abandon = tokio::signal::unix::signal(kind).context("cannot listen for the worker's signals")?;
    let mut text = String::new();
    std::io::stdin().take(MAX_REQUEST).read_to_string(&mut text).context("reading the job request")?;
    let request: Request = serde_json::from_str(&text).context("a malformed job request")?;
    let span = tracing::info_span!("job-runner", slug = request.job.slug.as_deref().unwrap_or("-"));
    traces::continue_trace(&span, request.traceparent.as_deref());
    let ended = match RunnerConfig::load(request.config.as_deref()) {
        Ok(config) => match run_request(&config, &request, cancel, abandon.recv()).instrument(span).await {
            Ok(outcome) => Ended::Reported(outcome),
            Err(JobError::Abandoned) => Ended::Abandoned,
            Err(err) if err.is_transient() => Ended::Transient {
                error: err.to_string(),
                retry_after: err.retry_after().map(|wait| wait.as_secs() + 1),
            },
            Err(err) => Ended::Failed(err.to_string()),
        },
        Err(err) => Ended::Failed(err.to_string()),
    };
    let report = Report { ended, peak_memory: peak_memory().unwrap_or(0), rate_limited: retry::RATE_LIMITED.get() };
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &report).context("writing the job report")?;
    stdout.write_all(b"\n").and_then(|()| stdout.flush()).context("writing the job report")
}

/// Runs the request's job in a scratch directory of its own until it ends, `cancel`
/// resolves and the job has ended as cancelled, or `abandon` resolves and the job stopped
/// (within [`ABANDON_WITHIN`]) writing nothing more.
async fn run_request<T>(
    config: &RunnerConfig,
    request: &Request,
    cancel: impl Future<Output = ()>,
    abandon: impl Future<Output = T>,
) -> Result<Outcome, JobError> {
    let scratch = scratch_dir(&request.work_dir)?;
    let stop = job::Attempt { redelivered: request.redelivered, ..job::Attempt::default() };
    let outcome = {
        let run = job::run(config, &request.job, &request.hostname, scratch.path(), stop.clone());
        tokio::pin!(run, cancel, abandon);
        tokio::select! {
            outcome = &mut run => outcome,
            () = &mut cancel => {
                stop.cancel.cancel();
                run.await
            }
            _ = &mut abandon => {
                stop.abandon.cancel();
                stop.cancel.cancel();
                match tokio::time::timeout(ABANDON_WITHIN, run).await {
                    Ok(outcome) => outcome,
                    // Dropped past its time: what it started is stopped with this process, and
                    // its container (whose removal the drop may have cut short) removed here.
                    Err(_) => {
                        if matches!(config.container.sandbox, SandboxKind::Container) {
                            let (socket, host) = (config.container.socket(), &request.hostname);
                            let _ = crate::container::remove_leftovers(&socket, host, scratch.path()).await;
                        }
                        Err(JobError::Abandoned)
                    }
                }
            }
        }
    };
    // A held job's directory stays for whoever set `hold-failed` to release.
    if crate::hold::read(&request.work_dir).is_some_and(|held| held.scratch == scratch.path()) {
        let _ = scratch.keep();
    }
    outcome
}

fn scratch_dir(work_dir: &Path) -> Result<tempfile::TempDir, JobError> {
    tempfile::Builder::new()
        .prefix("job-")
        .tempdir_in(work_dir)
        .map_err(|source| JobError::Scratch { path: work_dir.to_owned(), source })
}

/// The peak resident set of this process (`VmHWM`), in bytes.
fn peak_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}
