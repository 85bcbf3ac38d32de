//! run-queue: the worker loop. Unlike Cockpit's one-message-per-process polling, it holds
//! consumers on `webhook`, `statistics` (when asked) and the job queues it may take, gives
//! webhook events precedence, and acknowledges a message only once its work is done (for a
//! job: once its final status is posted), so a worker killed in the middle leaves the message
//! to be redelivered.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amqp::{CommandMessage, Delivery, JobMessage, Session, WebhookMessage};
use anyhow::Context;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::container;
use crate::job::{self, Outcome};
use crate::job_runner::{Ended, Report};
use crate::metrics::Metrics;
use crate::runner_config::{RunnerConfig, SandboxKind};
use crate::sandbox::Cancel;
use crate::tests_scan::{self, ScanArgs, Scanner};

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
    /// Also take jobs from the `rhel` queue (workers inside the internal network).
    #[arg(long)]
    pub internal: bool,
    /// Also run the `statistics` queue's commands (Cockpit's RUN_STATISTICS_QUEUE).
    #[arg(long, env = "RUN_STATISTICS_QUEUE", value_parser = clap::builder::FalseyValueParser::new())]
    pub statistics: bool,
    /// On SIGTERM, how long running jobs may take to finish before they are cancelled.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub grace: u64,
    /// Scan every open pull request of the test map's repositories at start and then this
    /// often, so that events missed while nothing listened are made up for.
    #[arg(long, value_name = "SECONDS")]
    pub rescan_interval: Option<u64>,
    /// Serve Prometheus metrics at http://ADDRESS/metrics (e.g. 127.0.0.1:9101).
    #[arg(long, value_name = "ADDRESS")]
    pub metrics_listen: Option<SocketAddr>,
    /// The `tasks` program whose `run-job` runs each job [default: this program].
    #[arg(long, hide = true)]
    pub job_program: Option<PathBuf>,
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
    base: Branch,
    head: Head,
    #[serde(default)]
    merged: bool,
}

#[derive(Deserialize)]
struct Branch {
    repo: Repository,
}

#[derive(Deserialize)]
struct Head {
    sha: String,
}

#[derive(Deserialize)]
struct Repository {
    full_name: String,
}

/// What the worker holds while it runs.
struct Worker {
    runner: Option<Arc<RunnerConfig>>,
    /// The file `runner` was read from (none for Cockpit's defaults), for the job processes.
    runner_file: Option<PathBuf>,
    /// The program whose `run-job` runs a job.
    job_program: PathBuf,
    hostname: String,
    work_dir: PathBuf,
    metrics: Arc<Metrics>,
    cancel: Cancel,
}

/// A queue this worker takes work from, besides `webhook`.
struct Work {
    queue: &'static str,
    consumer: amqp::Consumer,
}

/// How often a worker started before its broker tries to reach it, backing off to 5 s between
/// tries (about 2 minutes): the containers of a pod, or of a Kubernetes deployment, start in any
/// order.
const BROKER_ATTEMPTS: u32 = 30;

/// Serves the queues until `shutdown` resolves, then finishes (or, past the grace period,
/// cancels) the work in hand and returns.
pub async fn run(config: &amqp::Config, args: &Args, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let runner = match &args.job_runner_config {
        Some(path) => Some(Arc::new(RunnerConfig::load(Some(path))?)),
        None if std::path::Path::new("/dev/kvm").exists() => Some(Arc::new(RunnerConfig::load(None)?)),
        None => None,
    };
    let scanner = Scanner::load(&args.scan)?;
    let metrics = Arc::new(Metrics::default());
    let (cancel_all, cancel) = watch::channel(false);
    let job_program = match &args.job_program {
        Some(program) => program.clone(),
        None => std::env::current_exe().context("cannot find this program, to run jobs with")?,
    };
    let worker = Arc::new(Worker {
        runner,
        runner_file: args.job_runner_config.clone(),
        job_program,
        hostname: args.hostname.clone().unwrap_or_else(crate::job_runner::host_name),
        work_dir: args.work_dir.clone().unwrap_or_else(std::env::temp_dir),
        metrics,
        cancel,
    });
    if let Some(runner) = worker.runner.as_ref().filter(|r| r.container.sandbox == SandboxKind::Container) {
        match container::remove_leftovers(&runner.container.socket(), &worker.hostname).await {
            Ok(0) => {}
            Ok(removed) => tracing::warn!(removed, "removed job containers left by an earlier run of this worker"),
            Err(err) => tracing::warn!(%err, "cannot look for job containers left by an earlier run"),
        }
    }
    let session = Arc::new(amqp::connect_with_backoff(config, BROKER_ATTEMPTS).await?);
    for queue in amqp::ALL_QUEUES {
        session.declare(queue).await?;
    }
    let mut events = session.consume(amqp::WEBHOOK.name, 1).await?;
    let slots = args.jobs.max(1);
    // In order of precedence after `webhook`. The broker hands each consumer at most `slots`
    // unacknowledged messages; the loop runs at most `slots` at once.
    let mut queues = Vec::new();
    if args.statistics {
        queues.push(amqp::STATISTICS.name);
    }
    if worker.runner.is_some() {
        queues.push(amqp::PUBLIC.name);
        if args.internal {
            queues.push(amqp::RHEL.name);
        }
    }
    let mut work = Vec::new();
    for queue in queues {
        work.push(Work { queue, consumer: session.consume(queue, slots).await? });
    }
    // Serving metrics is also the sign that the worker is ready: its consumers are in place.
    if let Some(address) = args.metrics_listen {
        serve_metrics(address, worker.metrics.clone()).await?;
    }
    tracing::info!(hostname = worker.hostname, queues = ?work.iter().map(|w| w.queue).collect::<Vec<_>>(), slots, "run-queue started");

    let mut rescan = args.rescan_interval.map(|seconds| tokio::time::interval(Duration::from_secs(seconds.max(1))));
    let mut running = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            event = events.next() => {
                let delivery = event.context("the broker closed the webhook consumer")??;
                worker.metrics.taken(amqp::WEBHOOK.name, delivery.timestamp, delivery.redelivered);
                handle_event(&session, &scanner, &delivery).await;
                delivery.ack().await?;
            }
            Some(done) = running.join_next(), if !running.is_empty() => finish(&session, &worker, done).await?,
            _ = async { rescan.as_mut().expect("guarded").tick().await }, if rescan.is_some() => {
                rescan_all(&session, &scanner).await;
            }
            (queue, taken) = next_work(&mut work), if running.len() < usize::from(slots) && !work.is_empty() => {
                let delivery = taken.with_context(|| format!("the broker closed the {queue} consumer"))??;
                worker.metrics.taken(queue, delivery.timestamp, delivery.redelivered);
                let worker = worker.clone();
                running.spawn(async move {
                    let result = handle_work(&worker, queue, &delivery).await;
                    (queue, delivery, result)
                });
            }
        }
    }
    // Take no more work; let what is in hand finish, or cancel it past the grace period.
    drop(work);
    let grace = tokio::time::sleep(Duration::from_secs(args.grace));
    tokio::pin!(grace);
    loop {
        tokio::select! {
            done = running.join_next() => match done {
                Some(done) => finish(&session, &worker, done).await?,
                None => break,
            },
            () = &mut grace, if !*cancel_all.borrow() => {
                tracing::warn!(jobs = running.len(), "grace period over: cancelling the running jobs");
                cancel_all.send_replace(true);
            }
        }
    }
    drop(events);
    match Arc::try_unwrap(session) {
        Ok(session) => session.close().await,
        Err(_) => tracing::warn!("the broker session is still in use; leaving it to close with the process"),
    }
    Ok(())
}

/// The next message of the first work queue that has one.
async fn next_work(work: &mut [Work]) -> (&'static str, Option<Result<Delivery, amqp::Error>>) {
    std::future::poll_fn(|cx| {
        work.iter_mut()
            .find_map(|w| match w.consumer.poll_next(cx) {
                std::task::Poll::Ready(taken) => Some((w.queue, taken)),
                std::task::Poll::Pending => None,
            })
            .map_or(std::task::Poll::Pending, std::task::Poll::Ready)
    })
    .await
}

/// How many tries the work of one message gets. A message whose work never comes to an end
/// (it stops its job process or its worker each time, as a job that eats all memory does) is
/// given up after that many: a job ends with an error status saying so.
pub const MAX_TRIES: u32 = 5;

/// What to do with a message once its work is over.
#[derive(Debug, PartialEq, Eq)]
enum Done {
    /// Its work came to an end (or never will): acknowledge it.
    Ack,
    /// Try again later: publish it again, recording this many failed tries, then acknowledge
    /// the delivery.
    Again(u32),
}

/// Settles a message once its work has run to the end (a job: its final status). Work that
/// failed is acknowledged too, as Cockpit's run-queue does whatever the exit status: a message
/// that fails every worker must not go round forever, and the worker keeps serving. Work that
/// is to be tried again goes back to the queue first.
async fn finish(
    session: &Session,
    worker: &Worker,
    done: Result<(&'static str, Delivery, anyhow::Result<Done>), tokio::task::JoinError>,
) -> anyhow::Result<()> {
    let (queue, delivery, result) = done?;
    match result {
        Ok(Done::Ack) => delivery.ack().await?,
        Ok(Done::Again(tries)) => {
            session.republish(queue, &delivery, tries).await?;
            delivery.ack().await?;
        }
        Err(err) => {
            tracing::error!(err = format!("{err:#}"), "the work of a message failed; acknowledging it all the same");
            worker.metrics.given_up(queue);
            delivery.ack().await?;
        }
    }
    Ok(())
}

/// A webhook event becomes a tests-scan or a statistics command, as in Cockpit's run-queue;
/// anything else is logged.
async fn handle_event(session: &Session, scanner: &Scanner, delivery: &Delivery) {
    let parsed = serde_json::from_slice::<WebhookMessage>(&delivery.body)
        .map_err(|e| e.to_string())
        .and_then(|m| serde_json::from_str::<Request>(m.request.get()).map(|r| (m, r)).map_err(|e| e.to_string()));
    let (message, request) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => return tracing::error!(%err, "dropping a webhook message that is not a GitHub event"),
    };
    let event = message.event.as_str();
    let mut args = tests_scan::Args { publish: true, ..tests_scan::Args::default() };
    match (event, request.action.as_deref(), &request.pull_request) {
        ("pull_request", Some("opened" | "synchronize"), Some(pull)) => {
            args.repo = pull.base.repo.full_name.clone();
            args.pull_data = Some(message.request.get().to_owned());
        }
        ("pull_request", Some("closed"), Some(pull)) if pull.merged => {
            let command = CommandMessage::statistics(&statistics_db(), &pull.base.repo.full_name, &pull.head.sha);
            let body = serde_json::to_vec(&command).expect("a command encodes");
            if let Err(err) = session.publish(amqp::STATISTICS.name, &body, Some(amqp::MAX_PRIORITY)).await {
                tracing::error!(%err, "cannot queue the statistics of a merged pull request");
            }
            return;
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
    if let Err(err) = scanner.scan(&args, Some(session)).await {
        tracing::error!(err = format!("{err:#}"), repo = args.repo, "tests-scan failed");
    }
}

/// Cockpit's test results database: `$COCKPIT_IMAGES_DATA_DIR/test-results.db`.
fn statistics_db() -> String {
    let dir = std::env::var("COCKPIT_IMAGES_DATA_DIR").unwrap_or_else(|_| {
        format!("{}/.cache/cockpit-images", std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
    });
    format!("{dir}/test-results.db")
}

/// Scans every open pull request of every repository of the test map.
async fn rescan_all(session: &Session, scanner: &Scanner) {
    for repo in scanner.projects() {
        let args = tests_scan::Args { repo, publish: true, ..tests_scan::Args::default() };
        if let Err(err) = scanner.scan(&args, Some(session)).await {
            tracing::error!(err = format!("{err:#}"), repo = args.repo, "rescan failed");
        }
    }
}

/// Logged when a redelivered job is not run again because its final status is posted already.
pub const ALREADY_REPORTED: &str = "redelivered job already has its final status: not running it again";

/// Runs a job to its final status, or a command to its end. A message that is neither is
/// logged and dropped.
async fn handle_work(worker: &Worker, queue: &'static str, delivery: &Delivery) -> anyhow::Result<Done> {
    let tries = delivery.failed_tries();
    if let Ok(message) = serde_json::from_slice::<JobMessage>(&delivery.body) {
        let runner = worker.runner.as_ref().context("a job arrived at a worker that runs no jobs")?;
        if delivery.redelivered {
            // When GitHub cannot say, the job runs again: two final statuses beat none.
            match job::already_reported(runner, &message.job).await {
                Ok(true) => {
                    tracing::warn!(job = message.human, "{ALREADY_REPORTED}");
                    return Ok(Done::Ack);
                }
                Ok(false) => {}
                Err(err) => tracing::warn!(job = message.human, %err, "cannot tell whether a redelivered job ended"),
            }
        }
        if tries >= MAX_TRIES {
            return give_up(worker, runner, queue, &message, tries).await;
        }
        if delivery.redelivered {
            // The try that was lost is recorded in the message before the job runs again.
            tracing::warn!(job = message.human, tries, "a job whose work did not come to an end: queued again");
            return Ok(Done::Again(tries));
        }
        let started = Instant::now();
        return match run_job(worker, &message.job).await? {
            Ok(Report { ended, peak_memory }) => {
                worker.metrics.job_memory(peak_memory);
                match ended {
                    Ended::Reported(outcome) => {
                        worker.metrics.job(&outcome, started.elapsed());
                        tracing::info!(job = message.human, ?outcome, peak_memory, "job finished");
                        if outcome == Outcome::Cancelled {
                            tracing::warn!(job = message.human, "cancelled; a rescan queues it again");
                        }
                        Ok(Done::Ack)
                    }
                    Ended::Transient(err) => {
                        tracing::warn!(
                            job = message.human,
                            err,
                            "GitHub or S3 is away; the job goes back to the queue"
                        );
                        Ok(Done::Again(tries))
                    }
                    Ended::Failed(err) => anyhow::bail!("job {}: {err}", message.human),
                }
            }
            Err(died) if tries + 1 >= MAX_TRIES => {
                tracing::error!(job = message.human, died, "the job process died");
                give_up(worker, runner, queue, &message, tries + 1).await
            }
            Err(died) => {
                tracing::warn!(job = message.human, died, tries = tries + 1, "the job process died; queued again");
                Ok(Done::Again(tries + 1))
            }
        };
    }
    if tries >= MAX_TRIES {
        worker.metrics.given_up(queue);
        tracing::error!(queue, tries, "giving up a message whose work never came to an end");
        return Ok(Done::Ack);
    }
    match serde_json::from_slice::<CommandMessage>(&delivery.body) {
        Ok(message) => run_command(worker, &message.command).await.map(|()| Done::Ack),
        Err(err) => {
            tracing::error!(%err, "dropping a message that is neither a job nor a command");
            Ok(Done::Ack)
        }
    }
}

/// Ends a job tried too often with an error status saying so.
async fn give_up(
    worker: &Worker,
    runner: &RunnerConfig,
    queue: &str,
    message: &JobMessage,
    tries: u32,
) -> anyhow::Result<Done> {
    tracing::error!(job = message.human, tries, "giving up a job whose work never came to an end");
    worker.metrics.given_up(queue);
    match job::give_up(runner, &message.job, &worker.hostname, tries).await {
        Ok(()) => Ok(Done::Ack),
        // Its end must be reported: later, when GitHub or S3 is back.
        Err(err) if err.is_transient() => Ok(Done::Again(tries)),
        Err(err) => Err(err).context("cannot report a job that was given up"),
    }
}

/// Runs a job in a process of its own (`run-job`), cancelled with SIGTERM when the worker
/// cancels its jobs. `Ok(Err(why))` when the process died without a report: the job took it
/// down (or someone killed it).
async fn run_job(worker: &Worker, job: &amqp::Job) -> anyhow::Result<Result<Report, String>> {
    use tokio::io::AsyncWriteExt;
    let request = crate::job_runner::Request {
        job: job.clone(),
        hostname: worker.hostname.clone(),
        config: worker.runner_file.clone(),
        work_dir: worker.work_dir.clone(),
    };
    let mut command = tokio::process::Command::new(&worker.job_program);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        // A worker killed hard takes its jobs with it; the broker redelivers them.
        command.pre_exec(|| Ok(rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?));
    }
    let mut child = command
        .arg("run-job")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {} run-job", worker.job_program.display()))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(&serde_json::to_vec(&request)?).await.context("handing the job to its process")?;
    drop(stdin);
    let pid = child.id();
    let output = child.wait_with_output();
    tokio::pin!(output);
    let mut cancel = worker.cancel.clone();
    let output = tokio::select! {
        output = &mut output => output?,
        () = crate::sandbox::cancelled(&mut cancel) => {
            if let Some(pid) = pid.and_then(|pid| rustix::process::Pid::from_raw(pid as i32)) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            output.await?
        }
    };
    let report = serde_json::from_slice::<Report>(&output.stdout);
    Ok(match (output.status.success(), report) {
        (true, Ok(report)) => Ok(report),
        (_, _) => Err(format!("the job process ended without a report ({})", output.status)),
    })
}

/// Runs a queued command (Cockpit: a string through `sh -c`, a list directly) in the work
/// directory; its exit status is logged, as Cockpit's run-queue does.
async fn run_command(worker: &Worker, command: &amqp::Command) -> anyhow::Result<()> {
    let argv: Vec<String> = match command {
        amqp::Command::Shell(line) => vec!["sh".into(), "-c".into(), line.clone()],
        amqp::Command::Argv(argv) => argv.clone(),
    };
    let Some((program, rest)) = argv.split_first() else { return Ok(()) };
    let mut child = tokio::process::Command::new(program)
        .args(rest)
        .current_dir(&worker.work_dir)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    let mut cancel = worker.cancel.clone();
    tokio::select! {
        status = child.wait() => {
            let status = status?;
            if !status.success() {
                tracing::error!(?argv, %status, "queued command failed");
            }
        }
        () = crate::sandbox::cancelled(&mut cancel) => tracing::warn!(?argv, "queued command cancelled"),
    }
    Ok(())
}

/// Serves `GET /metrics` on `address` for as long as the process lives.
async fn serve_metrics(address: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} for metrics"))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move { ([("content-type", "text/plain; version=0.0.4")], metrics.render()) }
        }),
    );
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(%err, "the metrics server stopped");
        }
    });
    Ok(())
}
