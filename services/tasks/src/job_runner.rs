//! `tasks job-runner json '<JOB>'`: one job run to its final status, as Cockpit's job-runner
//! runs it (cockpit-protocol.md 4.3, 4.4). run-queue runs the same code in its own process.

use std::path::PathBuf;

use anyhow::Context;

use crate::job::{self, Outcome};
use crate::runner_config::RunnerConfig;

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
    let hostname = match &args.hostname {
        Some(name) => name.clone(),
        None => rustix::system::uname().nodename().to_string_lossy().into_owned(),
    };
    let scratch = tempfile::Builder::new().prefix("job-").tempdir()?;
    let (cancel_job, cancelled) = tokio::sync::watch::channel(false);
    let run = job::run(&config, &job, &hostname, scratch.path(), cancelled);
    tokio::pin!(run, cancel);
    let outcome = tokio::select! {
        outcome = &mut run => outcome?,
        () = &mut cancel => {
            cancel_job.send_replace(true);
            run.await?
        }
    };
    match outcome {
        Outcome::Success | Outcome::Failure(_) => Ok(()),
        Outcome::Error(reason) | Outcome::LogNotStored(reason) => anyhow::bail!("Internal error: {reason}"),
        Outcome::Cancelled => anyhow::bail!("Job cancelled"),
    }
}
