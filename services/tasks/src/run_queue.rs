//! run-queue: the worker loop. Unlike Cockpit's one-message-per-process polling, it holds
//! consumers on `webhook`, `statistics` (when asked) and the job queues it may take, and runs
//! the work of their messages at the same time, each in a task of its own: an event becomes a
//! scan (`tests_scan`), a job runs in a process of its own (`job_runner`), so that a slow GitHub
//! under one scan delays nothing else. A message is settled only when its work is done: it is
//! acknowledged, or (its work having failed for a reason that may pass) put off on a delay
//! queue and tried again later, and after too many tries parked in the dead-letter queue.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

use amqp::{CommandMessage, Delivery, JobMessage, Session, WebhookMessage};
use anyhow::Context;
use events::Work;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::container;
use crate::job::{self, Outcome};
use crate::job_runner::{Ended, Report};
use crate::metrics::Metrics;
use crate::runner_config::{RunnerConfig, SandboxKind};
use crate::tests_scan::{Mode, Request, ScanArgs, Scanner, Target};
use retry::{MAX_RETRIES, Transient};

#[derive(clap::Args, Debug, Clone)]
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
    /// Where jobs get their scratch directories (made if missing) [default: the temporary
    /// directory].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// How many jobs to run at once.
    #[arg(long, default_value_t = 1)]
    pub jobs: u16,
    /// How many webhook events to scan at once.
    #[arg(long, default_value_t = 4)]
    pub scans: u16,
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
    /// often (0: never), so that events missed while nothing listened are made up for. A scan
    /// queues nothing already queued or running; it costs a request per repository and per open
    /// pull request, of GitHub's 5,000 an hour.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    pub rescan_interval: u64,
    /// Serve Prometheus metrics at http://ADDRESS/metrics (e.g. 127.0.0.1:9101).
    #[arg(long, value_name = "ADDRESS")]
    pub metrics_listen: Option<SocketAddr>,
    /// Write the address metrics are served at to FILE once serving: with port 0, the port it
    /// got.
    #[arg(long, value_name = "FILE", requires = "metrics_listen")]
    pub metrics_address_file: Option<PathBuf>,
    /// The `tasks` program whose `run-job` runs each job [default: this program].
    #[arg(long, hide = true)]
    pub job_program: Option<PathBuf>,
}

impl Default for Args {
    fn default() -> Args {
        Args {
            scan: ScanArgs::default(),
            job_runner_config: None,
            hostname: None,
            work_dir: None,
            jobs: 1,
            scans: 4,
            internal: false,
            statistics: false,
            grace: 600,
            rescan_interval: 3600,
            metrics_listen: None,
            metrics_address_file: None,
            job_program: None,
        }
    }
}

/// What the worker holds while connected to the broker; its tasks share it.
struct Worker {
    session: Session,
    scanner: Arc<Scanner>,
    runner: Option<Arc<RunnerConfig>>,
    /// The file `runner` was read from (none for Cockpit's defaults), for the job processes.
    runner_file: Option<PathBuf>,
    /// The program whose `run-job` runs a job.
    job_program: PathBuf,
    hostname: String,
    work_dir: PathBuf,
    metrics: Arc<Metrics>,
    /// Cancels the jobs and commands running (past the grace period on shutdown).
    cancel: CancellationToken,
    /// Abandons the jobs running: the session is lost, and the broker gives them to others.
    abandon: CancellationToken,
}

/// A queue this worker takes work from, besides `webhook`.
struct Queue {
    name: &'static str,
    consumer: amqp::Consumer,
}

/// How often a worker started before its broker tries to reach it, backing off to 5 s between
/// tries (about 2 minutes): the containers of a pod, or of a Kubernetes deployment, start in any
/// order.
const BROKER_ATTEMPTS: u32 = 30;

/// How often the worker asks the broker whether it is still there, and how long it waits for
/// the answer. Cut off from its broker by a silent link (no FIN, no RST: a partition), a worker
/// notices within `PING_EVERY + PING_WITHIN` (7 s) and abandons its jobs, before the broker
/// gives them to another worker (RabbitMQ waits 2 to 3 heartbeat intervals without data: 30 to
/// 45 s with [`amqp::HEARTBEAT_SECONDS`]), so that no job runs on two workers at once
/// (docs/protocol.md).
const PING_EVERY: Duration = Duration::from_secs(2);
const PING_WITHIN: Duration = Duration::from_secs(5);

/// How many tries a job gets. A job that never comes to an end (it stops its job process or its
/// worker each time, as a job that eats all memory does) is given up after that many, with an
/// error status saying so. Its tries are counted in the message (`x-workbench-attempts`) when
/// its job process died, and on GitHub ("In progress" statuses linking to its log) when its
/// worker did: a message is also delivered again when somebody only looked at it
/// (`inspect-queue`), which is no try.
pub const MAX_TRIES: u32 = 5;

/// What to do with a message once its work is over.
#[derive(Debug, PartialEq, Eq)]
enum Done {
    /// Its work came to an end: acknowledge it.
    Ack,
    /// Its work did not come to an end (its job process stopped): publish it again at once,
    /// with this many failed tries recorded.
    Again(u32),
    /// Its work failed for a reason that may pass: try it again in `delay`, unless it failed
    /// so too often already.
    Later { delay: Duration, error: String },
    /// Its work failed for good: park it for an operator, with why.
    Park(String),
    /// Its work was abandoned with the lost session: leave it unacknowledged, for the broker to
    /// give to another worker.
    Abandoned,
}

/// The result of a task: the queue and message it worked on, and what became of it.
type Settled = (&'static str, Delivery, Done);

/// Why the worker stopped serving a session.
enum Served {
    /// Shutdown was requested: the work in hand was finished (or cancelled), with this result.
    Shutdown(anyhow::Result<()>),
    /// The session was lost (the broker went away, or stopped answering): the work in hand was
    /// abandoned, and the worker connects again.
    Lost(anyhow::Error),
}

/// Serves the queues until `shutdown` resolves, then finishes (or, past the grace period,
/// cancels) the work in hand and returns. A lost broker connection abandons the work in hand
/// and connects again.
pub async fn run(config: &amqp::Config, args: &Args, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let runner = match &args.job_runner_config {
        Some(path) => Some(Arc::new(RunnerConfig::load(Some(path))?)),
        None if std::path::Path::new("/dev/kvm").exists() => Some(Arc::new(RunnerConfig::load(None)?)),
        None => None,
    };
    let job_program = match &args.job_program {
        Some(program) => program.clone(),
        None => std::env::current_exe().context("cannot find this program, to run jobs with")?,
    };
    let hostname = args.hostname.clone().unwrap_or_else(crate::job_runner::host_name);
    let work_dir = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("cannot make the work directory {}", work_dir.display()))?;
    if let Some(runner) = runner.as_ref().filter(|r| r.container.sandbox == SandboxKind::Container) {
        match container::remove_leftovers(&runner.container.socket(), &hostname, &work_dir).await {
            Ok(0) => {}
            Ok(removed) => tracing::warn!(removed, "removed job containers left by an earlier run of this worker"),
            Err(err) => tracing::warn!(%err, "cannot look for job containers left by an earlier run"),
        }
    }
    let scanner = Arc::new(Scanner::load(&args.scan)?);
    let metrics = Arc::new(Metrics::default());
    let stop_serving = CancellationToken::new();
    let mut metrics_server = None;
    // Whether the worker served a session yet.
    let mut started = false;
    let mut rescan =
        (args.rescan_interval > 0).then(|| tokio::time::interval(Duration::from_secs(args.rescan_interval)));
    tokio::pin!(shutdown);
    let served = loop {
        let attached = tokio::select! {
            biased;
            () = &mut shutdown => break Ok(()),
            attached = attach(config, args, !started, runner.is_some()) => attached,
        };
        let (session, queues, events) = match attached {
            Ok(attached) => attached,
            // At start, a broker not reached in about 2 minutes is a configuration to fix.
            Err(err) if !started => return Err(err),
            Err(err) => {
                tracing::warn!(error = format!("{err:#}"), "cannot serve the queues again yet");
                tokio::select! {
                    () = &mut shutdown => break Ok(()),
                    () = tokio::time::sleep(PING_EVERY) => continue,
                }
            }
        };
        let worker = Arc::new(Worker {
            session,
            scanner: scanner.clone(),
            runner: runner.clone(),
            runner_file: args.job_runner_config.clone(),
            job_program: job_program.clone(),
            hostname: hostname.clone(),
            work_dir: work_dir.clone(),
            metrics: metrics.clone(),
            cancel: CancellationToken::new(),
            abandon: CancellationToken::new(),
        });
        // Serving metrics is also the sign that the worker is ready: its consumers are in place.
        if let (false, Some(address)) = (started, args.metrics_listen) {
            let file = args.metrics_address_file.as_deref();
            metrics_server = Some(serve_metrics(address, file, metrics.clone(), stop_serving.clone()).await?);
        }
        let queues_served: Vec<&str> = queues.iter().map(|q| q.name).collect();
        let (job_slots, scan_slots) = (args.jobs.max(1), args.scans.max(1));
        // The first line is what tools wait for (the containers test, say).
        match started {
            false => {
                tracing::info!(hostname = worker.hostname, queues = ?queues_served, job_slots, scan_slots, "run-queue started")
            }
            true => tracing::info!(hostname = worker.hostname, queues = ?queues_served, "run-queue serving again"),
        }
        started = true;
        match serve(&worker, queues, events, args, rescan.as_mut(), shutdown.as_mut()).await {
            Served::Shutdown(result) => {
                close(worker).await;
                break result;
            }
            Served::Lost(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "lost the broker: the jobs in hand were abandoned (the broker gives them to other workers); \
                     connecting again"
                );
                metrics.broker_lost();
                close(worker).await;
            }
        }
    };
    stop_serving.cancel();
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    served
}

/// Connects to the broker (at start, `BROKER_ATTEMPTS` times; later, until it answers) and
/// declares the queues and consumers this worker serves (the job queues if it `runs_jobs`).
async fn attach(
    config: &amqp::Config,
    args: &Args,
    first: bool,
    runs_jobs: bool,
) -> anyhow::Result<(Session, Vec<Queue>, amqp::Consumer)> {
    let session = amqp::connect_with_backoff(config, if first { BROKER_ATTEMPTS } else { u32::MAX }).await?;
    for queue in amqp::ALL_QUEUES.into_iter().chain([amqp::DEAD_LETTER]) {
        session.declare(queue).await?;
    }
    let events = session.consume(amqp::WEBHOOK.name, args.scans.max(1)).await?;
    // In order of precedence. The broker hands each consumer at most `job_slots` unacknowledged
    // messages; the loop runs at most `job_slots` at once.
    let mut names = Vec::new();
    if args.statistics {
        names.push(amqp::STATISTICS.name);
    }
    if runs_jobs {
        names.push(amqp::PUBLIC.name);
        if args.internal {
            names.push(amqp::RHEL.name);
        }
    }
    let mut queues = Vec::new();
    for name in names {
        queues.push(Queue { name, consumer: session.consume(name, args.jobs.max(1)).await? });
    }
    Ok((session, queues, events))
}

/// Closes the session of a worker whose tasks are all over, within a second: a lost one may
/// not answer.
async fn close(worker: Arc<Worker>) {
    match Arc::try_unwrap(worker) {
        Ok(worker) => {
            if tokio::time::timeout(Duration::from_secs(1), worker.session.close()).await.is_err() {
                tracing::warn!("the broker did not answer the close of the session");
            }
        }
        Err(_) => tracing::warn!("the broker session is still in use; leaving it to close with the process"),
    }
}

/// Serves one session's queues until `shutdown` resolves or the session is lost.
async fn serve(
    worker: &Arc<Worker>,
    mut queues: Vec<Queue>,
    mut events: amqp::Consumer,
    args: &Args,
    mut rescan: Option<&mut tokio::time::Interval>,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Served {
    let (scan_slots, job_slots) = (args.scans.max(1), args.jobs.max(1));
    let (mut scans, mut jobs, mut rescans) = (JoinSet::new(), JoinSet::new(), JoinSet::new());
    let watchdog = watch_broker(&worker.session);
    tokio::pin!(watchdog);
    // None: shutdown; Some: the session is lost.
    let lost: Option<anyhow::Error> = loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break None,
            err = watchdog.as_mut() => break Some(err),
            Some(done) = scans.join_next(), if !scans.is_empty() => {
                if let Err(err) = settle_within(worker, done).await { break Some(err) }
            }
            Some(done) = jobs.join_next(), if !jobs.is_empty() => {
                if let Err(err) = settle_within(worker, done).await { break Some(err) }
            }
            Some(_) = rescans.join_next(), if !rescans.is_empty() => {}
            event = events.next(), if scans.len() < usize::from(scan_slots) => {
                let delivery = match event {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(err)) => break Some(err.into()),
                    None => break Some(anyhow::anyhow!("the broker closed the webhook consumer")),
                };
                worker.metrics.taken(amqp::WEBHOOK.name, delivery.timestamp, delivery.redelivered);
                let worker = worker.clone();
                scans.spawn(async move {
                    let done = unbroken(handle_event(&worker, &delivery)).await;
                    (amqp::WEBHOOK.name, delivery, done)
                });
            }
            _ = async { rescan.as_mut().expect("guarded").tick().await }, if rescan.is_some() && rescans.is_empty() => {
                let worker = worker.clone();
                rescans.spawn(async move { rescan_all(&worker).await });
            }
            (queue, taken) = next_work(&mut queues), if jobs.len() < usize::from(job_slots) && !queues.is_empty() => {
                let delivery = match taken {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(err)) => break Some(err.into()),
                    None => break Some(anyhow::anyhow!("the broker closed the {queue} consumer")),
                };
                worker.metrics.taken(queue, delivery.timestamp, delivery.redelivered);
                let worker = worker.clone();
                jobs.spawn(async move {
                    let done = unbroken(handle_work(&worker, queue, &delivery)).await;
                    (queue, delivery, done)
                });
            }
        }
    };
    // Take no more work.
    drop((queues, events));
    // A rescan cut short (the rescan at start, say) is made again as soon as the worker serves
    // again, not an interval later.
    if !rescans.is_empty()
        && let Some(rescan) = rescan.as_mut()
    {
        rescan.reset_immediately();
    }
    rescans.shutdown().await;
    match lost {
        Some(err) => {
            abandon(worker, scans, jobs).await;
            Served::Lost(err)
        }
        None => Served::Shutdown(finish(worker, scans, jobs, Duration::from_secs(args.grace), watchdog).await),
    }
}

/// Settles a message as [`settle`] does, within `PING_WITHIN`: a broker that does not answer
/// meanwhile (a confirm of a republish, say) is lost, as when it does not answer a ping.
async fn settle_within(worker: &Worker, done: Result<Settled, tokio::task::JoinError>) -> anyhow::Result<()> {
    match tokio::time::timeout(PING_WITHIN, settle(worker, done)).await {
        Ok(settled) => settled,
        Err(_) => {
            Err(anyhow::anyhow!("the broker did not settle a message within {PING_WITHIN:?}: the link is silent"))
        }
    }
}

/// Lets the work in hand finish, or cancels it past the `grace` period, settling each message;
/// the session lost meanwhile (`watchdog`), abandons what is left.
async fn finish(
    worker: &Worker,
    mut scans: JoinSet<Settled>,
    mut jobs: JoinSet<Settled>,
    grace: Duration,
    mut watchdog: std::pin::Pin<&mut impl Future<Output = anyhow::Error>>,
) -> anyhow::Result<()> {
    let grace = tokio::time::sleep(grace);
    tokio::pin!(grace);
    while !scans.is_empty() || !jobs.is_empty() {
        let settled = tokio::select! {
            err = &mut watchdog => Err(err),
            Some(done) = scans.join_next(), if !scans.is_empty() => settle_within(worker, done).await,
            Some(done) = jobs.join_next(), if !jobs.is_empty() => settle_within(worker, done).await,
            () = &mut grace, if !worker.cancel.is_cancelled() => {
                tracing::warn!(jobs = jobs.len(), "grace period over: cancelling the running jobs");
                worker.cancel.cancel();
                Ok(())
            }
        };
        if let Err(err) = settled {
            tracing::warn!(error = format!("{err:#}"), "lost the broker while stopping: abandoning the jobs in hand");
            abandon(worker, scans, jobs).await;
            return Ok(());
        }
    }
    Ok(())
}

/// Abandons the work in hand of a lost session, settling nothing: the broker gives its
/// messages to other workers. Scans stop at once (a scan done again queues nothing twice);
/// jobs are told to stop writing (`job_runner::ABANDON`), and are killed past their time.
async fn abandon(worker: &Worker, mut scans: JoinSet<Settled>, mut jobs: JoinSet<Settled>) {
    worker.abandon.cancel();
    worker.metrics.abandoned(jobs.len());
    scans.shutdown().await;
    let ended = async { while jobs.join_next().await.is_some() {} };
    if tokio::time::timeout(crate::job_runner::ABANDON_WITHIN + Duration::from_secs(1), ended).await.is_err() {
        tracing::warn!(jobs = jobs.len(), "abandoned jobs still running: killing their processes");
    }
    jobs.shutdown().await;
}

/// Asks the broker every `PING_EVERY` whether it is there; returns why once it did not answer
/// within `PING_WITHIN`.
async fn watch_broker(session: &Session) -> anyhow::Error {
    loop {
        tokio::time::sleep(PING_EVERY).await;
        match tokio::time::timeout(PING_WITHIN, session.inspect(&[amqp::WEBHOOK.name])).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return anyhow::Error::new(err).context("the broker refused a question"),
            Err(_) => return anyhow::anyhow!("the broker did not answer within {PING_WITHIN:?}: the link is silent"),
        }
    }
}
/// The next message of the first work queue that has one.
async fn next_work(queues: &mut [Queue]) -> (&'static str, Option<Result<Delivery, amqp::Error>>) {
    std::future::poll_fn(|cx| {
        queues
            .iter_mut()
            .find_map(|q| match q.consumer.poll_next(cx) {
                std::task::Poll::Ready(taken) => Some((q.name, taken)),
                std::task::Poll::Pending => None,
            })
            .map_or(std::task::Poll::Pending, std::task::Poll::Ready)
    })
    .await
}

/// The work of a message, a panic in it parking the message rather than losing it.
async fn unbroken(work: impl Future<Output = Done>) -> Done {
    use futures_util::FutureExt;
    std::panic::AssertUnwindSafe(work).catch_unwind().await.unwrap_or_else(|panic| {
        let what =
            panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
        Done::Park(format!("the work panicked: {}", what.unwrap_or_default()))
    })
}

/// Settles a message whose work is over, as its task decided: acknowledged, published again,
/// put off, or parked. The broker failing here loses the session: the message stays
/// unacknowledged, and comes back when the connection closes.
async fn settle(worker: &Worker, done: Result<Settled, tokio::task::JoinError>) -> anyhow::Result<()> {
    let (queue, delivery, done) = done?;
    let session = &worker.session;
    match done {
        Done::Abandoned => return Ok(()),
        Done::Ack => {}
        Done::Again(tries) => session.republish(queue, &delivery, tries).await?,
        Done::Later { error, .. } if delivery.retries >= MAX_RETRIES => {
            let why = format!("tried {} times, each failing for a while: {error}", delivery.retries + 1);
            tracing::error!(queue, why, "parking a message in {}", amqp::DEAD_LETTER.name);
            worker.metrics.parked(queue);
            session.park(queue, &delivery, &why).await?;
        }
        Done::Later { delay, error } => {
            tracing::warn!(queue, retries = delivery.retries, ?delay, error, "putting a message off");
            worker.metrics.put_off(queue);
            session.retry_later(queue, &delivery, delay, delivery.retries + 1, &error).await?;
        }
        Done::Park(why) => {
            tracing::error!(queue, why, "parking a message in {}", amqp::DEAD_LETTER.name);
            worker.metrics.parked(queue);
            session.park(queue, &delivery, &why).await?;
        }
    }
    delivery.ack().await?;
    Ok(())
}

/// What becomes of work that failed with `err`: put off when it may pass (until a rate limit's
/// end, at least), parked when it will not.
fn failed(err: &(impl Transient + ?Sized), retries: u32) -> Done {
    match err.is_transient() {
        true => Done::Later { delay: retry::put_off(retries, err.retry_after()), error: err.to_string() },
        false => Done::Park(err.to_string()),
    }
}

/// A webhook event becomes what `events::decide` says (as in Cockpit's run-queue): a scan, a
/// statistics command, or nothing.
async fn handle_event(worker: &Worker, delivery: &Delivery) -> Done {
    // The delivery's trace goes on here, and on in the jobs the scan queues.
    let span = tracing::info_span!("scan", repo = tracing::field::Empty);
    traces::continue_trace(&span, delivery.header(traces::TRACEPARENT).as_deref());
    handle_event_in(worker, delivery).instrument(span).await
}

async fn handle_event_in(worker: &Worker, delivery: &Delivery) -> Done {
    let parsed = serde_json::from_slice::<WebhookMessage>(&delivery.body)
        .map_err(|e| e.to_string())
        .and_then(|message| events::Event::parse(&message.event, message.request.get()).map_err(|e| e.to_string()));
    let event = match parsed {
        Ok(event) => event,
        Err(err) => return Done::Park(format!("not a GitHub event: {err}")),
    };
    let request = match events::decide(&event).work {
        Work::ScanPull { repo, pull } => {
            Request { repo, target: Target::Pull(Box::new(pull)), contexts: vec![], mode: Mode::Queue }
        }
        Work::ScanSha { repo, sha, context } => {
            Request { repo, target: Target::Sha(sha), contexts: vec![context], mode: Mode::Queue }
        }
        Work::Statistics { repo, head } => {
            let command = CommandMessage::statistics(&statistics_db(), &repo, &head);
            let body = serde_json::to_vec(&command).expect("a command encodes");
            return match worker.session.publish(amqp::STATISTICS.name, &body, Some(amqp::MAX_PRIORITY)).await {
                Ok(()) => Done::Ack,
                Err(err) => Done::Later { delay: retry::put_off(delivery.retries, None), error: err.to_string() },
            };
        }
        Work::Nothing(reason) => {
            tracing::info!(reason, "Webhook message interpretation generated no command");
            return Done::Ack;
        }
    };
    tracing::Span::current().record("repo", &request.repo);
    match worker.scanner.scan(&request, Some(&worker.session)).await {
        Ok(_) => Done::Ack,
        Err(err) => {
            tracing::warn!(repo = request.repo, %err, "tests-scan failed");
            failed(&err, delivery.retries)
        }
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
async fn rescan_all(worker: &Worker) {
    let mut failed = false;
    for repo in worker.scanner.projects() {
        let request = Request { repo, target: Target::Open, contexts: vec![], mode: Mode::Queue };
        if let Err(err) = worker.scanner.scan(&request, Some(&worker.session)).await {
            tracing::error!(%err, repo = request.repo, "rescan failed");
            failed = true;
        }
    }
    worker.metrics.rescanned(failed);
}

/// Logged when a redelivered job is not run again because its final status is posted already.
pub const ALREADY_REPORTED: &str = "redelivered job already has its final status: not running it again";

/// Runs a job to its final status, or a command to its end. A message that is neither is
/// parked.
async fn handle_work(worker: &Worker, queue: &'static str, delivery: &Delivery) -> Done {
    // The trace of the delivery whose scan queued the job, passed on to the job's process.
    let span = tracing::info_span!("job", queue);
    traces::continue_trace(&span, delivery.header(traces::TRACEPARENT).as_deref());
    handle_work_in(worker, queue, delivery).instrument(span).await
}

async fn handle_work_in(worker: &Worker, queue: &'static str, delivery: &Delivery) -> Done {
    let Ok(message) = serde_json::from_slice::<JobMessage>(&delivery.body) else {
        return match serde_json::from_slice::<CommandMessage>(&delivery.body) {
            Ok(message) => run_command(worker, &message.command).await,
            Err(err) => Done::Park(format!("neither a job nor a command: {err}")),
        };
    };
    let Some(runner) = worker.runner.as_ref() else {
        return Done::Park("a job arrived at a worker that runs no jobs".into());
    };
    let mut tries = delivery.attempts;
    if delivery.redelivered {
        // When GitHub cannot say, the job runs again: two final statuses beat none.
        match job::earlier(runner, &message.job).await {
            Ok(earlier) if earlier.reported => {
                tracing::warn!(job = message.human, "{ALREADY_REPORTED}");
                worker.metrics.already_reported();
                return Done::Ack;
            }
            Ok(earlier) => tries = tries.max(earlier.starts),
            Err(err) => tracing::warn!(job = message.human, %err, "cannot tell whether a redelivered job ended"),
        }
    }
    if tries >= MAX_TRIES {
        return give_up(worker, runner, queue, &message, tries, delivery.retries).await;
    }
    let started = Instant::now();
    // Tried before, by this worker or another: its earlier tries' statuses are its own.
    let retried = delivery.redelivered || delivery.attempts > 0 || delivery.retries > 0;
    match run_job(worker, &message.job, retried).await {
        Ok(Ok(Report { ended, peak_memory, rate_limited })) => {
            worker.metrics.job_memory(peak_memory);
            worker.metrics.rate_limited(rate_limited);
            match ended {
                Ended::Reported(outcome) => {
                    worker.metrics.job(&outcome, started.elapsed());
                    tracing::info!(job = message.human, ?outcome, peak_memory, "job finished");
                    if outcome == Outcome::Cancelled {
                        tracing::warn!(job = message.human, "cancelled; a rescan queues it again");
                    }
                    Done::Ack
                }
                Ended::Transient { error, retry_after } => {
                    tracing::warn!(job = message.human, error, "GitHub or S3 is away; the job is put off");
                    let not_before = retry_after.map(Duration::from_secs);
                    Done::Later { delay: retry::put_off(delivery.retries, not_before), error }
                }
                Ended::Failed(err) => Done::Park(format!("job {}: {err}", message.human)),
                // Abandoned by another than its worker (a stray signal): it did not run; again.
                Ended::Abandoned if !worker.abandon.is_cancelled() => Done::Again(tries + 1),
                Ended::Abandoned => Done::Abandoned,
            }
        }
        Ok(Err(_)) if worker.abandon.is_cancelled() => Done::Abandoned,
        Ok(Err(died)) if tries + 1 >= MAX_TRIES => {
            tracing::error!(job = message.human, died, "the job process died");
            give_up(worker, runner, queue, &message, tries + 1, delivery.retries).await
        }
        Ok(Err(died)) => {
            tracing::warn!(job = message.human, died, tries = tries + 1, "the job process died; queued again");
            Done::Again(tries + 1)
        }
        Err(err) => Done::Park(format!("job {}: {err:#}", message.human)),
    }
}

/// Ends a job tried too often with an error status saying so.
async fn give_up(
    worker: &Worker,
    runner: &RunnerConfig,
    queue: &str,
    message: &JobMessage,
    tries: u32,
    retries: u32,
) -> Done {
    tracing::error!(job = message.human, tries, "giving up a job whose work never came to an end");
    worker.metrics.given_up(queue);
    match job::give_up(runner, &message.job, &worker.hostname, tries).await {
        Ok(()) => Done::Ack,
        // Its end must be reported: later, when GitHub or S3 is back.
        Err(err) => failed(&err, retries),
    }
}

/// Runs a job in a process of its own (`run-job`), cancelled with SIGTERM when the worker
/// cancels its jobs, abandoned with `job_runner::ABANDON` when it lost the broker (and killed
/// if it does not end in time). `Ok(Err(why))` when the process died without a report: the job
/// took it down (or someone killed it).
async fn run_job(worker: &Worker, job: &amqp::Job, redelivered: bool) -> anyhow::Result<Result<Report, String>> {
    use tokio::io::AsyncWriteExt;
    let request = crate::job_runner::Request {
        job: job.clone(),
        hostname: worker.hostname.clone(),
        config: worker.runner_file.clone(),
        work_dir: worker.work_dir.clone(),
        traceparent: traces::traceparent(&tracing::Span::current()),
        redelivered,
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
    let signal = |signal| {
        if let Some(pid) = pid.and_then(|pid| rustix::process::Pid::from_raw(pid as i32)) {
            let _ = rustix::process::kill_process(pid, signal);
        }
    };
    let output = tokio::select! {
        output = &mut output => output?,
        () = worker.cancel.cancelled() => {
            signal(rustix::process::Signal::TERM);
            output.await?
        }
        () = worker.abandon.cancelled() => {
            signal(crate::job_runner::ABANDON);
            // Past its time, dropping the process kills it.
            match tokio::time::timeout(crate::job_runner::ABANDON_WITHIN + Duration::from_millis(500), output).await {
                Ok(output) => output?,
                Err(_) => return Ok(Err("abandoned, and killed for not ending in time".into())),
            }
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
async fn run_command(worker: &Worker, command: &amqp::Command) -> Done {
    let argv: Vec<String> = match command {
        amqp::Command::Shell(line) => vec!["sh".into(), "-c".into(), line.clone()],
        amqp::Command::Argv(argv) => argv.clone(),
    };
    let Some((program, rest)) = argv.split_first() else { return Done::Ack };
    let spawned =
        tokio::process::Command::new(program).args(rest).current_dir(&worker.work_dir).kill_on_drop(true).spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => return Done::Park(format!("cannot start {program}: {err}")),
    };
    tokio::select! {
        status = child.wait() => match status {
            Ok(status) if !status.success() => tracing::error!(?argv, %status, "queued command failed"),
            Ok(_) => {}
            Err(err) => tracing::error!(?argv, %err, "cannot wait for a queued command"),
        },
        () = worker.cancel.cancelled() => tracing::warn!(?argv, "queued command cancelled"),
    }
    Done::Ack
}

/// Serves `GET /metrics` on `address` until `stop` is cancelled; the handle ends with it. The
/// address served at is written to `address_file` (whole: a temporary file renamed over it).
async fn serve_metrics(
    address: SocketAddr,
    address_file: Option<&std::path::Path>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} for metrics"))?;
    if let Some(file) = address_file {
        let serving = listener.local_addr()?;
        let partial = file.with_extension("partial");
        std::fs::write(&partial, serving.to_string())
            .and_then(|()| std::fs::rename(&partial, file))
            .with_context(|| format!("cannot write {}", file.display()))?;
    }
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move { ([("content-type", crate::metrics::CONTENT_TYPE)], metrics.render()) }
        }),
    );
    Ok(tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
            tracing::error!(%err, "the metrics server stopped");
        }
    }))
}
