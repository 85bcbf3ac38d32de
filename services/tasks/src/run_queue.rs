//! run-queue: the worker loop. Unlike Cockpit's one-message-per-process polling, it holds
//! consumers on `webhook` and on the job queue, gives webhook events precedence, and
//! acknowledges a message only once its work is done (for a job: once its final status is
//! posted), so a worker killed in the middle leaves the message to be redelivered.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use amqp::{Delivery, JobMessage, PUBLIC, Session, WEBHOOK, WebhookMessage};
use serde::Deserialize;
use tokio::task::JoinSet;

use crate::job;
use crate::runner_config::RunnerConfig;
use crate::tests_scan::{self, ScanArgs};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// How tests-scan runs for webhook events (test map, GitHub).
    #[command(flatten)]
    pub scan: ScanArgs,
    /// job-runner configuration (TOML); without it (and without /dev/kvm) this worker runs no jobs.
    #[arg(long, env = "JOB_RUNNER_CONFIG")]
    pub job_runner_config: Option<PathBuf>,
    /// The name shown in statuses and logs ("In progress [HOSTNAME]") [default: the host name].
    #[arg(long)]
    pub hostname: Option<String>,
    /// Where jobs get their scratch directories [default: the temporary directory].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// How many jobs to run at once.
    #[arg(long, default_value_t = 1)]
    pub jobs: u16,
}

/// The fields of a queued GitHub event that decide what to do with it.
#[derive(Deserialize)]
struct Request {
    action: Option<String>,
    pull_request: Option<PullRequest>,
    repository: Option<Repository>,
    sha: Option<String>,
    context: Option<String>,
}

#[derive(Deserialize)]
struct PullRequest {
    base: Base,
}

#[derive(Deserialize)]
struct Base {
    repo: Repository,
}

#[derive(Deserialize)]
struct Repository {
    full_name: String,
}

/// Serves the queues until `shutdown` resolves, then finishes the work in hand and returns.
pub async fn run(config: &amqp::Config, args: &Args, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let runner = match &args.job_runner_config {
        Some(path) => Some(Arc::new(RunnerConfig::load(Some(path))?)),
        None if std::path::Path::new("/dev/kvm").exists() => Some(Arc::new(RunnerConfig::load(None)?)),
        None => None,
    };
    let hostname = match &args.hostname {
        Some(name) => name.clone(),
        None => rustix::system::uname().nodename().to_string_lossy().into_owned(),
    };
    let session = Session::connect(config).await?;
    for queue in amqp::ALL_QUEUES {
        session.declare(queue).await?;
    }
    let mut events = session.consume(WEBHOOK.name, 1).await?;
    // The broker hands out at most `jobs` unacknowledged jobs: one per job slot.
    let mut jobs = match &runner {
        Some(_) => Some(session.consume(PUBLIC.name, args.jobs.max(1)).await?),
        None => None,
    };
    tracing::info!(hostname, runs_jobs = jobs.is_some(), slots = args.jobs, "run-queue started");
    let mut running = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            event = events.next() => {
                let delivery = event.ok_or_else(|| anyhow::anyhow!("the broker closed the webhook consumer"))??;
                handle_event(config, &args.scan, &delivery).await;
                delivery.ack().await?;
            }
            Some(done) = running.join_next(), if !running.is_empty() => finish(done).await?,
            job = async { jobs.as_mut().expect("guarded").next().await }, if jobs.is_some() => {
                let delivery = job.ok_or_else(|| anyhow::anyhow!("the broker closed the job consumer"))??;
                let runner = runner.clone().expect("jobs are consumed only with a runner configuration");
                let (hostname, work_dir) = (hostname.clone(), args.work_dir.clone());
                running.spawn(async move {
                    let result = handle_job(&runner, &hostname, work_dir, &delivery).await;
                    (delivery, result)
                });
            }
        }
    }
    // Take no more work; finish what is in hand.
    while let Some(done) = running.join_next().await {
        finish(done).await?;
    }
    session.close().await;
    Ok(())
}

/// Acknowledges a job once it has run to its final status.
async fn finish(done: Result<(Delivery, anyhow::Result<()>), tokio::task::JoinError>) -> anyhow::Result<()> {
    let (delivery, result) = done?;
    result?;
    delivery.ack().await?;
    Ok(())
}

/// A webhook event becomes a tests-scan, as in Cockpit's run-queue; anything else is logged.
async fn handle_event(config: &amqp::Config, scan: &ScanArgs, delivery: &Delivery) {
    let parsed = serde_json::from_slice::<WebhookMessage>(&delivery.body)
        .map_err(|e| e.to_string())
        .and_then(|m| serde_json::from_str::<Request>(m.request.get()).map(|r| (m, r)).map_err(|e| e.to_string()));
    let (message, request) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => return tracing::error!(%err, "dropping a webhook message that is not a GitHub event"),
    };
    let event = message.event.as_str();
    let mut args = tests_scan::Args { publish: true, scan: scan.clone(), ..tests_scan::Args::default() };
    match (event, request.action.as_deref(), &request.pull_request) {
        ("pull_request", Some("opened" | "synchronize"), Some(pull)) => {
            args.repo = pull.base.repo.full_name.clone();
            args.pull_data = Some(message.request.get().to_owned());
        }
        ("status", _, _) => {
            let (Some(repository), Some(sha), Some(context)) = (&request.repository, &request.sha, &request.context)
            else {
                return tracing::error!("dropping a status event without repository, sha or context");
            };
            args.repo = repository.full_name.clone();
            args.sha = Some(sha.clone());
            args.contexts = vec![context.clone()];
        }
        _ => {
            return tracing::info!(
                event,
                action = request.action,
                "Webhook message interpretation generated no command"
            );
        }
    }
    if let Err(err) = tests_scan::run(config, &args).await {
        tracing::error!(err = format!("{err:#}"), repo = args.repo, "tests-scan failed");
    }
}

/// Runs a job to its final status. A message that is not a job is logged and dropped.
async fn handle_job(
    runner: &RunnerConfig,
    hostname: &str,
    work_dir: Option<PathBuf>,
    delivery: &Delivery,
) -> anyhow::Result<()> {
    let message: JobMessage = match serde_json::from_slice(&delivery.body) {
        Ok(message) => message,
        Err(err) => {
            tracing::error!(%err, "dropping a message of the job queue that is not a job");
            return Ok(());
        }
    };
    let scratch = tempfile::Builder::new().prefix("job-").tempdir_in(work_dir.unwrap_or_else(std::env::temp_dir))?;
    let outcome = job::run(runner, &message.job, hostname, scratch.path()).await?;
    tracing::info!(job = message.human, ?outcome, "job finished");
    Ok(())
}
