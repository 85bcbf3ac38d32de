//! `tasks`: the worker's command line, named like Cockpit's tools. Each subcommand lives in its
//! own module; this file parses and dispatches.

use tasks::{job_runner, queue_tools, run_queue, tests_scan};

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Cockpit CI tasks: scan pull requests into jobs, and inspect or feed the AMQP queues.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Broker address: host:port (TLS with a client certificate), or `localhost` for plain AMQP.
    #[arg(long, global = true, env = "AMQP_SERVER", default_value = "localhost:5671")]
    amqp: String,
    /// Directory with ca.pem, amqp-client.pem and amqp-client.key
    /// [default: /run/secrets/webhook, or $XDG_RUNTIME_DIR/secrets/webhook if only that exists]
    #[arg(long, global = true, env = "WORKBENCH_SECRETS_DIR")]
    secrets_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the queues: webhook events become tests-scans, jobs are run to their final status.
    RunQueue(run_queue::Args),
    /// Decide which contexts of pull requests to test; post "Not yet tested" and queue jobs.
    TestsScan(tests_scan::Args),
    /// Run one job to its final status: statuses, log and attachments in S3.
    JobRunner(job_runner::Args),
    /// The process run-queue starts for each job: a request on standard input, a report on
    /// standard output.
    #[command(hide = true)]
    RunJob,
    /// Publish standard input (a JSON message) to a queue, with priority 9.
    PublishQueue(queue_tools::PublishArgs),
    /// Show each queue's messages without taking them.
    InspectQueue(queue_tools::InspectArgs),
}

impl Cli {
    fn amqp_config(&self) -> anyhow::Result<amqp::Config> {
        let address = self.amqp.parse()?;
        let secrets = self.secrets_dir.clone().unwrap_or_else(amqp::default_secrets_dir);
        Ok(amqp::Config::new(address, &secrets))
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The worker and a job's own process are two services of a trace.
    let service = match cli.command {
        Command::RunQueue(_) => "run-queue",
        Command::JobRunner(_) | Command::RunJob => "job-runner",
        _ => "tasks",
    };
    let _traces = traces::init(service, "warn");
    match run(&cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    let config = cli.amqp_config()?;
    match &cli.command {
        // SIGTERM or SIGINT: take no more work, finish (run-queue) or cancel (job-runner) what
        // is in hand, exit.
        Command::RunQueue(args) => run_queue::run(&config, args, shutdown::requested()).await,
        Command::TestsScan(args) => tests_scan::run(&config, args).await,
        Command::JobRunner(args) => {
            tasks::sandbox::adopt_orphans()?;
            job_runner::run(args, shutdown::requested()).await
        }
        Command::RunJob => job_runner::serve(shutdown::requested()).await,
        Command::PublishQueue(args) => queue_tools::publish(&config, args).await,
        Command::InspectQueue(args) => queue_tools::inspect(&config, args, &mut std::io::stdout()).await,
    }
}
