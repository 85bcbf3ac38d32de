//! Faults injected into the real services, each a bounded run on 127.0.0.1 that stops by itself
//! and reports what it did and what was lost. `cargo xtask chaos` runs the full forms and
//! prints the figures of docs/reliability.md; the tests run shorter ones.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::Check;
use crate::{Broker, secrets};

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error(transparent)]
    Secrets(#[from] crate::SecretsError),
    #[error(transparent)]
    Broker(#[from] crate::BrokerError),
    #[error(transparent)]
    Amqp(#[from] amqp::Error),
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
    #[error(transparent)]
    Mock(#[from] crate::github::MockError),
    #[error(transparent)]
    S3(#[from] crate::s3_server::S3ServerError),
    #[error(transparent)]
    GitHub(#[from] github::Error),
    #[error(transparent)]
    Hosts(#[from] crate::hosts::HostsError),
    #[error("cannot {what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Lost(String),
}

/// A wait that timed out: what was awaited was lost.
impl From<crate::client::TimedOut> for ChaosError {
    fn from(timed_out: crate::client::TimedOut) -> ChaosError {
        ChaosError::Lost(timed_out.to_string())
    }
}

/// What [`broker_restart_under_load`] saw.
#[derive(Debug, Clone)]
pub struct BrokerRestart {
    pub sent: usize,
    /// Sent after the broker was back.
    pub sent_after: usize,
    /// Answered 200: stored, the webhook says.
    pub accepted: usize,
    /// Answered 503: not stored, try again, the webhook says.
    pub refused: usize,
    /// Found in the `webhook` queue after the restart: every delivery answered 200, and those
    /// the broker stored but could not confirm before it went away (answered 503: GitHub's
    /// retry of one of them is a duplicate, which the worker's scan takes in its stride).
    pub stored: usize,
    pub seconds: f64,
}

/// Sends signed deliveries, `rate` per second, to a webhook whose broker is stopped and started
/// again after `before` of them went out, sending on all along, until `after` more were
/// answered 200 once the broker was back (within a minute's deliveries for the restart and ten
/// times as many after, or it fails).
/// Every delivery answered 200 must be in the `webhook` queue afterwards, and only those;
/// every other one must have been answered 503.
pub async fn broker_restart_under_load(
    dir: &Path,
    before: usize,
    after: usize,
    rate: u32,
) -> Result<BrokerRestart, ChaosError> {
    let started = Instant::now();
    let mut rig = Rig::start(dir).await?;
    let mut load = Load::new(&rig, rate);
    let mut restart = None;
    // The first delivery sent once the broker was back.
    let mut back_from = None;
    // Room for a minute of restart, then ten deliveries sent for each one that must be stored.
    let most = before + 60 * rate as usize + 10 * after.max(1);
    loop {
        let n = load.sent();
        if n == before {
            // The broker goes away under load, and comes back with its data.
            let mut restarting = rig.broker.take().expect("restarted once");
            restart = Some(tokio::spawn(async move { restarting.restart().await.map(|()| restarting) }));
        }
        if back_from.is_none() && restart.as_ref().is_some_and(|task| task.is_finished()) {
            rig.broker = Some(restart.take().expect("checked").await.expect("a restart does not panic")?);
            back_from = Some(n);
        }
        if back_from.is_some_and(|from| load.accepted_from(from) >= after) {
            break;
        }
        if n == most {
            return Err(ChaosError::Lost(match back_from {
                Some(from) => format!(
                    "the webhook took fewer than {after} deliveries of {} sent once the broker was back",
                    n - from
                ),
                None => format!("the broker was not back after {n} deliveries"),
            }));
        }
        load.send().await;
    }
    let answers = load.finish().await;
    rig.stop_webhook().await;
    if let Some((n, status)) = answers.iter().find(|(_, status)| ![200, 503].contains(status)) {
        return Err(ChaosError::Lost(format!("delivery {n} was answered {status}, neither stored (200) nor 503")));
    }
    let (accepted, stored) = rig.check(&answers).await?;
    let back_from = back_from.expect("the loop ends after the broker is back");
    Ok(BrokerRestart {
        sent: answers.len(),
        sent_after: answers.len() - back_from,
        accepted,
        refused: answers.iter().filter(|(_, status)| *status == 503).count(),
        stored,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What [`webhook_partition`] saw.
#[derive(Debug, Clone)]
pub struct WebhookPartition {
    pub sent: usize,
    /// Sent while the link was cut: each answered 503 unless confirmed once it was back.
    pub sent_during_cut: usize,
    /// Answers 503, during the cut and until the webhook had the broker again.
    pub refused: usize,
    /// Deliveries never answered 200, even sent again: lost.
    pub lost: usize,
    /// Deliveries found in the `webhook` queue (some twice: a publish the broker stored but
    /// whose confirm was cut off, sent again, counts once).
    pub stored: usize,
    pub seconds: f64,
}

/// Where the webhook partition run's webhook runs, and so what its cut cuts.
#[derive(Debug, Clone, Copy)]
pub enum WebhookOver<'a> {
    /// In this process, reaching the broker through a relay (`crate::link`), which is cut.
    Relay,
    /// As a process (this binary) on a host of its own (`crate::hosts`); the broker host's link
    /// is cut.
    Hosts(&'a Path),
}

/// How long the webhook waits for the broker's confirm of a publish before it answers 503.
const CONFIRM_WAIT: Duration = Duration::from_secs(6);

/// Sends signed deliveries, `rate` per second, to a webhook whose link to the broker
/// (`crate::link`) is cut silently (no FIN, no RST) after `before` of them, for `cut_for`,
/// sending on all along, then `after` more once it is back; then sends each delivery not
/// answered 200 again until it is (a redelivery, by hand: GitHub does not retry; ten tries each). Every delivery
/// answered while the link was cut must be answered 503, none 200 (those sent in the cut's
/// last [`CONFIRM_WAIT`] may be confirmed once it is back); every delivery must end up stored.
pub async fn webhook_partition(
    dir: &Path,
    over: WebhookOver<'_>,
    before: usize,
    cut_for: Duration,
    after: usize,
    rate: u32,
) -> Result<WebhookPartition, ChaosError> {
    let started = Instant::now();
    let mut rig = match over {
        WebhookOver::Relay => Rig::start_linked(dir).await?,
        WebhookOver::Hosts(binary) => Rig::start_on_hosts(dir, binary).await?,
    };
    let mut load = Load::new(&rig, rate);
    for _ in 0..before {
        load.send().await;
    }
    rig.cut(true)?;
    let cut_at = Instant::now();
    let cut_from = load.sent();
    // Those sent later may be confirmed once the link is back, within the webhook's 5 s wait.
    let mut refused_until = cut_from;
    while cut_at.elapsed() < cut_for {
        if cut_at.elapsed() + CONFIRM_WAIT < cut_for {
            refused_until = load.sent() + 1;
        }
        load.send().await;
    }
    let cut_until = load.sent();
    rig.cut(false)?;
    for _ in 0..after {
        load.send().await;
    }
    let mut answers = load.finish().await;
    let during: Vec<&(usize, u16)> = answers.iter().filter(|(n, _)| (cut_from..refused_until).contains(n)).collect();
    if let Some((n, status)) = during.iter().find(|(_, status)| *status != 503) {
        return Err(ChaosError::Lost(format!(
            "delivery {n}, sent while the link was cut and answered before it was back, was answered {status}"
        )));
    }
    let refused = answers.iter().filter(|(_, status)| *status != 200).count();
    // Redelivered (GitHub's Redeliver): each delivery not answered 200, again, until it is.
    for _ in 0..10 {
        let accepted: BTreeSet<usize> = answers.iter().filter(|(_, s)| *s == 200).map(|(n, _)| *n).collect();
        let missing: Vec<usize> = (0..load_sent(&answers)).filter(|n| !accepted.contains(n)).collect();
        if missing.is_empty() {
            break;
        }
        let mut again = Load::new(&rig, rate);
        for n in missing {
            again.send_number(n).await;
        }
        answers.extend(again.finish().await);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    rig.stop_webhook().await;
    let sent = load_sent(&answers);
    let accepted: BTreeSet<usize> = answers.iter().filter(|(_, s)| *s == 200).map(|(n, _)| *n).collect();
    let (_, stored) = rig.check(&answers).await?;
    Ok(WebhookPartition {
        sent,
        sent_during_cut: cut_until - cut_from,
        refused,
        lost: sent - accepted.len(),
        stored,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// How many deliveries were numbered among `answers`.
fn load_sent(answers: &[(usize, u16)]) -> usize {
    answers.iter().map(|(n, _)| n + 1).max().unwrap_or(0)
}

/// What [`webhook_shutdown_under_load`] saw.
#[derive(Debug, Clone)]
pub struct WebhookShutdown {
    pub sent: usize,
    /// Answered 200: stored, the webhook says.
    pub accepted: usize,
    /// Found in the `webhook` queue afterwards.
    pub stored: usize,
    /// Not answered: sent after the webhook stopped listening (GitHub delivers them again).
    pub unanswered: usize,
    pub seconds: f64,
}

/// Sends `deliveries` signed deliveries, `rate` per second, to a webhook told to stop (as on
/// SIGTERM) halfway: it finishes what it took, and every delivery answered 200 must be in the
/// `webhook` queue; the others must get no answer at all, or 503.
pub async fn webhook_shutdown_under_load(
    dir: &Path,
    deliveries: usize,
    rate: u32,
) -> Result<WebhookShutdown, ChaosError> {
    let started = Instant::now();
    let mut rig = Rig::start(dir).await?;
    let mut load = Load::new(&rig, rate);
    while load.sent() < deliveries {
        if load.sent() == deliveries / 2 {
            let _ = rig.stop.take().map(|stop| stop.send(()));
        }
        load.send().await;
    }
    let answers = load.finish().await;
    rig.stop_webhook().await;
    if let Some((n, status)) = answers.iter().find(|(_, status)| ![200, 503, 0].contains(status)) {
        return Err(ChaosError::Lost(format!("delivery {n} was answered {status}, neither stored (200) nor refused")));
    }
    let (accepted, stored) = rig.check(&answers).await?;
    Ok(WebhookShutdown {
        sent: answers.len(),
        accepted,
        stored,
        unanswered: answers.iter().filter(|(_, status)| *status == 0).count(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What [`worker_crashes`] saw.
#[derive(Debug, Clone)]
pub struct WorkerCrashes {
    pub jobs: usize,
    pub kills: usize,
    /// Jobs started again on another worker (or the same one restarted) after a kill.
    pub reruns: usize,
    /// Redelivered jobs not run again because their final status was posted before the kill.
    pub already_reported: usize,
    /// What made the kills' moments, to run the same again.
    pub seed: u64,
    pub seconds: f64,
}

/// Queues `jobs` jobs (each sleeping up to 1.9 s) for two `tasks run-queue` workers of two
/// slots each, GitHub answering statuses 0.3 s late, and kills a random one with SIGKILL at random moments, `kills` times,
/// restarting it each time. Every job must end with exactly one final status on the mock
/// GitHub, and the `public` queue must end empty with nothing unacknowledged.
pub async fn worker_crashes(
    dir: &Path,
    tasks: &Path,
    jobs: usize,
    kills: usize,
    seed: Option<u64>,
) -> Result<WorkerCrashes, ChaosError> {
    const REPO: &str = "workbench-ci/chaos";
    let started = Instant::now();
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |since| since.as_nanos() as u64)
    });
    let mut random = Random(seed | 1);
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| ChaosError::Io { what, source }
    };
    let JobsRig { secrets, broker, mock, s3, fixtures, head, .. } = JobsRig::start(dir, REPO).await?;
    let forge = crate::worker::Forge::mock(&mock, &secrets);
    let runner_config = crate::worker::RunnerConfig::local(&forge, &s3, &secrets, crate::worker::Sandbox::Process)
        .write(dir)
        .map_err(io("write the job-runner configuration"))?;
    // GitHub answering slowly widens the window between a final status and its acknowledgement.
    mock.set_status_faults(crate::github::StatusFaults { delay: Duration::from_millis(300), ..Default::default() });
    let work_dir = dir.join("work");
    std::fs::create_dir_all(&work_dir).map_err(io("create the work directory"))?;

    let session = amqp::Session::connect(&broker.client_config()).await?;
    session.declare(amqp::PUBLIC).await?;
    let contexts: Vec<String> = (0..jobs).map(|n| format!("chaos/{n}")).collect();
    for context in &contexts {
        let pause = format!("sleep {}.{}", random.below(2), random.below(10));
        let job = amqp::Job {
            command: Some(vec!["sh".into(), "-c".into(), pause]),
            ..amqp::Job::for_pull(REPO, &head, 1, context, "20261124-000000")
        };
        let message =
            serde_json::to_vec(&job.with_env(&[("TEST_OS", "unit-tests")]).message(context)).expect("a job encodes");
        session.publish(amqp::PUBLIC.name, &message, Some(5)).await?;
    }
    session.close().await;

    let config = crate::service::WorkerConfig {
        broker: &broker,
        secrets: &secrets,
        test_map: &fixtures.join("testmap.toml"),
        forge: &forge,
        runner_config: &runner_config,
        work_dir: &work_dir,
        jobs: 2,
        rescan_interval: None,
        ready_after_rescan: false,
    };
    let start = |name: &'static str| crate::service::Worker::start(tasks, dir, name, &config);
    let names = ["worker-a", "worker-b"];
    let mut workers = vec![start(names[0]).await?, start(names[1]).await?];
    let finals = || {
        mock.statuses(REPO, &head).into_iter().filter(|status| status.state != "pending").map(|status| status.context)
    };
    // What each worker counted, read before it is killed or stopped.
    let mut already_reported = 0;
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(300 + 100 * random.below(25))).await;
        let victim = random.below(2) as usize;
        already_reported += metric(workers[victim].metrics, ALREADY_REPORTED).await;
        workers[victim].service.kill();
        workers[victim] = start(names[victim]).await?;
    }
    let within = Duration::from_secs(60 + 5 * jobs as u64);
    crate::client::wait_until(&format!("a final status of every job after {kills} kills"), within, || async {
        let done = finals().collect::<BTreeSet<_>>();
        let missing: Vec<&String> = contexts.iter().filter(|c| !done.contains(*c)).collect();
        Ok::<_, ChaosError>(match missing.is_empty() {
            true => Check::Done(()),
            false => Check::NotYet(format!("jobs without one: {missing:?}")),
        })
    })
    .await?;
    for worker in &mut workers {
        already_reported += metric(worker.metrics, ALREADY_REPORTED).await;
        worker.service.stop().await;
    }
    let statuses = mock.statuses(REPO, &head);
    let twice: Vec<&String> = contexts
        .iter()
        .filter(|c| statuses.iter().filter(|s| &s.context == *c && s.state != "pending").count() > 1)
        .collect();
    if !twice.is_empty() {
        return Err(ChaosError::Lost(format!("jobs with more than one final status (seed {seed}): {twice:?}")));
    }
    let left = broker.messages(amqp::PUBLIC.name)?;
    if left != Some((0, 0)) {
        return Err(ChaosError::Lost(format!("messages left in public (ready, unacknowledged): {left:?}")));
    }
    let in_progress = statuses.iter().filter(|s| s.description.starts_with("In progress")).count();
    Ok(WorkerCrashes {
        jobs,
        kills,
        reruns: in_progress - jobs,
        already_reported: usize::try_from(already_reported).unwrap_or(usize::MAX),
        seed,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What a partition run cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// Each worker on this machine reaches the broker through a relay of its own
    /// (`crate::link`): a cut silences its broker connection only.
    Relays,
    /// Each worker on a host of its own (`crate::hosts`): a cut takes its host off the network
    /// (the broker, GitHub and S3 all out of reach).
    Hosts,
}

/// What [`partition`] saw.
#[derive(Debug, Clone)]
pub struct Partition {
    pub hosts: usize,
    pub jobs: usize,
    pub final_statuses: usize,
    /// Jobs without a final status.
    pub lost: usize,
    /// Jobs with more than one.
    pub duplicated: usize,
    /// Jobs the broker delivered again, to a worker that ran them or found them reported.
    pub redelivered: u64,
    /// Jobs the cut workers abandoned.
    pub abandoned: u64,
    pub seconds: f64,
}

impl std::fmt::Display for Partition {
    /// The run's machine-readable line.
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "partition: {} hosts, {} jobs, {} final statuses, {} lost, {} duplicated, {} redelivered, {:.1} s",
            self.hosts, self.jobs, self.final_statuses, self.lost, self.duplicated, self.redelivered, self.seconds
        )
    }
}

/// How long after its link is cut a worker may still post statuses: it notices the silence
/// within 7 s (run-queue's ping), and its jobs stop within 5 s more.
const NOTICED_WITHIN: Duration = Duration::from_secs(14);

/// Queues `jobs` jobs (each sleeping 8 to 9 s, longer than a worker takes to notice a cut, with
/// the "Not yet tested" status tests-scan posts) for `hosts` workers of two slots, each reaching
/// the broker through a link of its own, `over` relays or hosts. Once the first two workers run jobs,
/// both their links are cut (silent: no FIN, no RST), the first for `cut_for`, the second for
/// good. Once the first is back, `hosts` times two jobs more (of 2 s) are queued, some of which
/// it must run. Every job must end with exactly one final status; a cut worker must post
/// nothing from [`NOTICED_WITHIN`] after the cut until its link is back; the queue must end
/// empty (once the broker noticed the host cut for good).
pub async fn partition(
    dir: &Path,
    tasks: &Path,
    over: Over,
    hosts: usize,
    jobs: usize,
    cut_for: Duration,
) -> Result<Partition, ChaosError> {
    const REPO: &str = "workbench-ci/partition";
    if hosts < 3 {
        return Err(ChaosError::Lost(format!("a partition run needs 3 hosts or more (two are cut), not {hosts}")));
    }
    let started = Instant::now();
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| ChaosError::Io { what, source }
    };
    let JobsRig { secrets, broker, mock, s3, fixtures, head, token } = JobsRig::start(dir, REPO).await?;
    let github = github::GitHub::new(&mock.api_url(), token.trim())?;
    let names: Vec<String> = (1..=hosts).map(|n| format!("host-{n}")).collect();
    let network = match over {
        Over::Hosts => {
            let id = dir.file_name().unwrap_or_default().to_string_lossy().replace('.', "");
            let urls = [s3.url(), mock.api_url()];
            Some(crate::hosts::deployment(dir, &id, &names, broker.socket_address(), &urls).await?)
        }
        Over::Relays => None,
    };
    let (forge, s3_hosts) = match over {
        Over::Hosts => (crate::worker::Forge::mock_on_hosts(&mock, &secrets), Default::default()),
        Over::Relays => (crate::worker::Forge::mock(&mock, &secrets), s3.hosts()),
    };
    let runner_config = crate::worker::RunnerConfig {
        s3_hosts,
        ..crate::worker::RunnerConfig::local(&forge, &s3, &secrets, crate::worker::Sandbox::Process)
    }
    .write(dir)
    .map_err(io("write the job-runner configuration"))?;
    let work_dir = dir.join("work");
    std::fs::create_dir_all(&work_dir).map_err(io("create the work directory"))?;

    let session = amqp::Session::connect(&broker.client_config()).await?;
    session.declare(amqp::PUBLIC).await?;
    let mut contexts = Vec::new();
    let mut random = Random(started.elapsed().as_nanos() as u64 | 1);
    // Jobs sleeping `seconds` and up to a second more each.
    let mut queue = |batch: &str, count: usize, seconds: u64, contexts: &mut Vec<String>| {
        let queued: Vec<(String, Vec<u8>)> = (0..count)
            .map(|n| {
                let context = format!("partition/{batch}-{n}");
                let pause = format!("sleep {seconds}.{}", random.below(10));
                let job = amqp::Job {
                    command: Some(vec!["sh".into(), "-c".into(), pause]),
                    ..amqp::Job::for_pull(REPO, &head, 1, &context, "20261201-000000")
                };
                let message = job.with_env(&[("TEST_OS", "unit-tests")]).message(&context);
                (context, serde_json::to_vec(&message).expect("a job encodes"))
            })
            .collect();
        contexts.extend(queued.iter().map(|(context, _)| context.clone()));
        queued
    };
    let publish = async |queued: Vec<(String, Vec<u8>)>| -> Result<(), ChaosError> {
        for (context, message) in queued {
            let status = github::StatusUpdate {
                context,
                state: "pending".into(),
                description: tasks::scan::NOT_TESTED.into(),
                target_url: None,
            };
            github.post_status(REPO, &head, &status).await?;
            session.publish(amqp::PUBLIC.name, &message, Some(5)).await?;
        }
        Ok(())
    };
    // Longer than a worker takes to notice the cut, so that the cut workers have jobs to abandon.
    publish(queue("first", jobs, 8, &mut contexts)).await?;

    let config = crate::service::WorkerConfig {
        broker: &broker,
        secrets: &secrets,
        test_map: &fixtures.join("testmap.toml"),
        forge: &forge,
        runner_config: &runner_config,
        work_dir: &work_dir,
        jobs: 2,
        rescan_interval: None,
        ready_after_rescan: false,
    };
    let mut links = Vec::new();
    let mut workers = Vec::new();
    for name in &names {
        let place = match &network {
            Some(network) => crate::service::Place::Host(network, name),
            None => {
                let link = crate::link::Link::start(broker.socket_address())
                    .await
                    .map_err(io("start a link to the broker"))?;
                let via = amqp::Address::Tls { host: "127.0.0.1".into(), port: link.address().port() };
                links.push(link);
                crate::service::Place::Here(via)
            }
        };
        workers.push(crate::service::Worker::start_at(tasks, dir, name, &config, &place).await?);
    }
    // Cuts (or restores) host `n`'s link.
    let cut = |n: usize, cut: bool| -> Result<(), ChaosError> {
        match (&network, cut) {
            (Some(network), true) => network.cut(&names[n])?,
            (Some(network), false) => network.restore(&names[n])?,
            (None, true) => links[n].cut(),
            (None, false) => links[n].restore(),
        }
        Ok(())
    };
    let by = |name: &str| format!("[{name}]");
    let statuses = || mock.statuses(REPO, &head);
    let running_on = |name: &str| statuses().iter().any(|s| s.description == format!("In progress {}", by(name)));
    crate::client::wait_until("jobs running on the first two hosts", Duration::from_secs(60), || async {
        Ok::<_, ChaosError>(match running_on(&names[0]) && running_on(&names[1]) {
            true => Check::Done(()),
            false => Check::NotYet("no \"In progress\" of both yet".into()),
        })
    })
    .await?;
    cut(0, true)?;
    cut(1, true)?;
    tokio::time::sleep(NOTICED_WITHIN).await;
    let quiet_from = statuses().len();
    tokio::time::sleep(cut_for.saturating_sub(NOTICED_WITHIN)).await;
    let back_at = statuses().len();
    cut(0, false)?;
    let posted_by = |name: &str, range: std::ops::Range<usize>| {
        statuses()[range].iter().filter(|s| s.description.ends_with(&by(name))).count()
    };
    if posted_by(&names[0], quiet_from..back_at) > 0 {
        return Err(ChaosError::Lost(format!("{} posted statuses while cut off", names[0])));
    }

    // Back, the first host takes work again: once it consumes `public` anew (the one cut for
    // good does not), more jobs come.
    let expected = hosts - 1;
    crate::client::wait_until("the host whose link came back consuming again", Duration::from_secs(60), || async {
        let consumers = session.inspect(&[amqp::PUBLIC.name]).await?.pop().flatten().map(|state| state.consumers);
        Ok::<_, ChaosError>(match consumers == Some(expected as u32) {
            true => Check::Done(()),
            false => Check::NotYet(format!("{consumers:?} consumers of public, not {expected}")),
        })
    })
    .await?;
    let second_from = statuses().len();
    publish(queue("second", hosts * 2, 2, &mut contexts)).await?;
    let finals = |statuses: &[github::StatusUpdate], context: &str| {
        statuses.iter().filter(|s| s.context == context && s.state != "pending").count()
    };
    let within = Duration::from_secs(60 + 5 * contexts.len() as u64);
    crate::client::wait_until("a final status of every job", within, || async {
        let statuses = statuses();
        let missing: Vec<&String> = contexts.iter().filter(|c| finals(&statuses, c) == 0).collect();
        Ok::<_, ChaosError>(match missing.is_empty() {
            true => Check::Done(()),
            false => Check::NotYet(format!("jobs without one: {missing:?}")),
        })
    })
    .await?;
    // The broker gives the jobs of the host cut for good to others once it noticed the silence
    // (2 to 3 heartbeat intervals: up to 45 s), which find them reported.
    crate::client::wait_until("the queue empty", Duration::from_secs(90), || async {
        let left = broker.messages(amqp::PUBLIC.name)?;
        Ok::<_, ChaosError>(match left {
            Some((0, 0)) => Check::Done(()),
            left => Check::NotYet(format!("messages in public (ready, unacknowledged): {left:?}")),
        })
    })
    .await?;
    let all = statuses();
    if posted_by(&names[1], quiet_from..all.len()) > 0 {
        return Err(ChaosError::Lost(format!("{} posted statuses while cut off for good", names[1])));
    }
    let ran_again = all[second_from..].iter().any(|s| s.state != "pending" && s.description.ends_with(&by(&names[0])));
    if !ran_again {
        return Err(ChaosError::Lost(format!("{} took no work once its link was back", names[0])));
    }
    let (mut redelivered, mut abandoned) = (0, 0);
    for worker in &workers {
        redelivered += metric(worker.metrics, "tasks_messages_redelivered_total").await;
        abandoned += metric(worker.metrics, "tasks_jobs_abandoned_total").await;
    }
    for worker in &mut workers {
        worker.service.stop().await;
    }
    session.close().await;
    let left = broker.messages(amqp::PUBLIC.name)?;
    let run = Partition {
        hosts,
        jobs: contexts.len(),
        final_statuses: contexts.iter().map(|c| finals(&all, c)).sum(),
        lost: contexts.iter().filter(|c| finals(&all, c) == 0).count(),
        duplicated: contexts.iter().filter(|c| finals(&all, c) > 1).count(),
        redelivered,
        abandoned,
        seconds: started.elapsed().as_secs_f64(),
    };
    if run.lost > 0 || run.duplicated > 0 || left != Some((0, 0)) {
        return Err(ChaosError::Lost(format!("{run}; messages left in public (ready, unacknowledged): {left:?}")));
    }
    Ok(run)
}

/// What [`github_outage`] saw.
#[derive(Debug, Clone)]
pub struct GitHubOutage {
    pub pulls: usize,
    /// Final statuses posted, one per context of each pull request.
    pub final_statuses: usize,
    /// Contexts without a final status (zero, or the run fails).
    pub lost: usize,
    /// Contexts with more than one final status (zero, or the run fails).
    pub duplicated: usize,
    /// Messages put off (and tried again later) by the workers.
    pub put_off: u64,
    /// Jobs queued twice for one run (an event's scan and a rescan's) that found the other
    /// running and stopped without a status.
    pub superseded: u64,
    /// Requests GitHub refused to limit the rate, as the workers counted them.
    pub rate_limited: u64,
    pub seconds: f64,
}

/// Opens `pulls` pull requests through the webhook while GitHub refuses every request with
/// 502 for `refused`, then limits the rate (403, `x-ratelimit-remaining: 0`, its reset at the
/// end) for `limited`; two `tasks run-queue` workers take them. Once GitHub is back, every pull
/// request must end with exactly one final status per context of the test map, the queues
/// (Cockpit's, the delay queues and the dead-letter queue) empty.
pub async fn github_outage(
    dir: &Path,
    tasks: &Path,
    pulls: usize,
    refused: Duration,
    limited: Duration,
) -> Result<GitHubOutage, ChaosError> {
    const REPO: &str = "workbench-ci/demo";
    let started = Instant::now();
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| ChaosError::Io { what, source }
    };
    let mut rig = Rig::start(dir).await?;
    let broker = rig.broker.as_ref().expect("the broker runs");
    let secrets = crate::Secrets::at(dir.join("secrets"));
    let token = std::fs::read_to_string(secrets.github_token()).map_err(io("read the GitHub token"))?;
    let mock = crate::MockGitHub::start(&dir.join("github"), &token).await?;
    let s3 = crate::S3Server::start(&dir.join("s3"), &secrets, false).await?;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    mock.add_repo(REPO, &fixtures.join("repos/passing"))?;
    let heads: Vec<String> = (1..=pulls as u64)
        .map(|n| mock.open_pull(REPO, n, &format!("Change {n}"), "workbench-ci"))
        .collect::<Result<_, _>>()?;
    let test_map = fixtures.join("testmap.toml");
    let contexts =
        tasks::testmap::TestMap::load(&test_map).map_err(|e| ChaosError::Lost(e.to_string()))?.contexts(REPO, "main");
    let forge = crate::worker::Forge::mock(&mock, &secrets);
    let runner_config = crate::worker::RunnerConfig::local(&forge, &s3, &secrets, crate::worker::Sandbox::Process)
        .write(dir)
        .map_err(io("write the job-runner configuration"))?;
    let work_dir = dir.join("work");
    std::fs::create_dir_all(&work_dir).map_err(io("create the work directory"))?;
    let config = crate::service::WorkerConfig {
        broker,
        secrets: &secrets,
        test_map: &test_map,
        forge: &forge,
        runner_config: &runner_config,
        work_dir: &work_dir,
        jobs: 2,
        rescan_interval: None,
        ready_after_rescan: false,
    };
    let mut workers = Vec::new();
    for name in ["worker-a", "worker-b"] {
        workers.push(crate::service::Worker::start(tasks, dir, name, &config).await?);
    }

    use crate::github::{ApiFaults, Outage};
    mock.set_api_faults(ApiFaults::outage(&[(refused, Outage::Status(502)), (limited, Outage::RateLimit)]));
    for n in 1..=pulls as u64 {
        let delivery = mock.pull_request_event(REPO, n, "opened")?;
        let status = crate::client::deliver(rig.address, &delivery, &rig.secret).await.unwrap_or(0);
        if status != 200 {
            return Err(ChaosError::Lost(format!("the webhook answered delivery {n} with {status}")));
        }
    }
    // Jobs that ended, by the logs their outcomes link to: an outcome posted again by a job
    // that found another had run (`tasks::status::owner`) is no second job.
    let finals = |head: &str, context: &str| {
        let statuses = mock.statuses(REPO, head);
        let ended = statuses.iter().filter(|s| s.context == context && s.state != "pending");
        ended.map(|s| s.target_url.clone()).collect::<std::collections::BTreeSet<_>>().len()
    };
    let within = refused + limited + Duration::from_secs(300);
    // Until the deadline; what is missing then is counted below as lost.
    let _ = crate::client::wait_until("a final status of every pull request", within, || async {
        let waiting = heads.iter().filter(|head| contexts.iter().any(|context| finals(head, context) == 0)).count();
        Ok::<_, crate::client::TimedOut>(match waiting {
            0 => Check::Done(()),
            waiting => Check::NotYet(format!("{waiting} pull requests without")),
        })
    })
    .await;
    let (mut put_off, mut superseded, mut rate_limited) = (0, 0, 0);
    for worker in &workers {
        put_off += metric(worker.metrics, "tasks_messages_put_off_total").await;
        superseded += metric(worker.metrics, "tasks_jobs_total{outcome=\"superseded\"}").await;
        rate_limited += metric(worker.metrics, "tasks_github_rate_limited_total").await;
    }
    // Every queue drained: nothing waiting, nothing parked, nothing unacknowledged.
    let queues_done = || -> Result<Vec<String>, ChaosError> {
        let listing = broker.ctl(&["list_queues", "--quiet", "--no-table-headers", "name", "messages"])?;
        Ok(listing
            .lines()
            .filter(|line| line.split_whitespace().nth(1).is_some_and(|count| count != "0"))
            .map(str::to_owned)
            .collect())
    };
    let drained = crate::client::wait_until("every queue empty", Duration::from_secs(60), || async {
        let left = queues_done()?;
        Ok::<_, ChaosError>(if left.is_empty() { Check::Done(left) } else { Check::NotYet(format!("{left:?}")) })
    })
    .await;
    let left = match drained {
        Ok(left) => left,
        Err(ChaosError::Lost(_)) => queues_done()?,
        Err(err) => return Err(err),
    };
    for worker in &mut workers {
        worker.service.stop().await;
    }
    // Before the broker, so that the webhook's leaving is not a lost connection.
    rig.stop_webhook().await;
    let counts: Vec<usize> = heads
        .iter()
        .flat_map(|head| contexts.iter().map(move |context| (head, context)))
        .map(|(h, c)| finals(h, c))
        .collect();
    let run = GitHubOutage {
        pulls,
        final_statuses: counts.iter().sum(),
        lost: counts.iter().filter(|n| **n == 0).count(),
        duplicated: counts.iter().filter(|n| **n > 1).count(),
        put_off,
        superseded,
        rate_limited,
        seconds: started.elapsed().as_secs_f64(),
    };
    if run.lost > 0 || run.duplicated > 0 || !left.is_empty() {
        return Err(ChaosError::Lost(format!(
            "github-outage: {} lost, {} duplicated, messages left in {left:?} ({run:?})",
            run.lost, run.duplicated
        )));
    }
    Ok(run)
}

/// A counter of the worker whose metrics are at `address`; 0 when it cannot be read.
async fn metric(address: SocketAddr, name: &str) -> u64 {
    crate::client::metric(address, name).await.unwrap_or(0)
}

/// The counter of redelivered jobs a worker did not run again (their final status was there).
const ALREADY_REPORTED: &str = "tasks_jobs_already_reported_total";

/// A small random number generator (xorshift64), enough to pick moments and victims.
struct Random(u64);

impl Random {
    /// A number below `n`.
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What the job runs need: fresh secrets, a broker, the mock GitHub with `repo` (the passing
/// fixture) and a pull request open on it (`head`), the S3 store.
struct JobsRig {
    secrets: crate::Secrets,
    broker: Broker,
    mock: crate::MockGitHub,
    s3: crate::S3Server,
    fixtures: std::path::PathBuf,
    head: String,
    token: String,
}

impl JobsRig {
    async fn start(dir: &Path, repo: &str) -> Result<JobsRig, ChaosError> {
        let (secrets, _) = secrets::generate(&dir.join("secrets"), false)?;
        let broker = Broker::start(&dir.join("broker"), &secrets).await?;
        let token = std::fs::read_to_string(secrets.github_token())
            .map_err(|source| ChaosError::Io { what: "read the GitHub token".into(), source })?;
        let mock = crate::MockGitHub::start(&dir.join("github"), &token).await?;
        let s3 = crate::S3Server::start(&dir.join("s3"), &secrets, false).await?;
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
        mock.add_repo(repo, &fixtures.join("repos/passing"))?;
        let head = mock.open_pull(repo, 1, "A change", "workbench-ci")?;
        Ok(JobsRig { secrets, broker, mock, s3, fixtures, head, token })
    }
}

/// A broker and a webhook serving on 127.0.0.1, in this process.
struct Rig {
    /// Away while it restarts.
    broker: Option<Broker>,
    /// Between the webhook and the broker, with [`Rig::start_linked`].
    link: Option<crate::link::Link>,
    amqp: amqp::Config,
    secret: Vec<u8>,
    address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The webhook in this process, or its process on a host ([`Rig::start_on_hosts`]).
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    on_host: Option<crate::service::Webhook>,
    /// The hosts, with [`Rig::start_on_hosts`]; last, after the webhook's process.
    network: Option<crate::hosts::Network>,
}

impl Rig {
    async fn start(dir: &Path) -> Result<Rig, ChaosError> {
        Rig::start_with(dir, false).await
    }

    /// A rig whose webhook reaches the broker through a link that can be cut.
    async fn start_linked(dir: &Path) -> Result<Rig, ChaosError> {
        Rig::start_with(dir, true).await
    }

    async fn start_with(dir: &Path, linked: bool) -> Result<Rig, ChaosError> {
        let (secrets, _) = secrets::generate(&dir.join("secrets"), false)?;
        let broker = Broker::start(&dir.join("broker"), &secrets).await?;
        let amqp = broker.client_config();
        let link = match linked {
            true => Some(
                crate::link::Link::start(broker.socket_address())
                    .await
                    .map_err(|source| ChaosError::Io { what: "start a link to the broker".into(), source })?,
            ),
            false => None,
        };
        let webhook_amqp = match &link {
            Some(link) => amqp::Config {
                address: amqp::Address::Tls { host: "127.0.0.1".into(), port: link.address().port() },
                ..amqp.clone()
            },
            None => amqp.clone(),
        };
        let secret = webhook::read_secret(&secrets.webhook_token())
            .map_err(|source| ChaosError::Io { what: "read the webhook secret".into(), source })?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|source| ChaosError::Io { what: "listen on 127.0.0.1".into(), source })?;
        let address =
            listener.local_addr().map_err(|source| ChaosError::Io { what: "read the address".into(), source })?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = webhook::Config::new(webhook_amqp, secret.clone());
        let server = tokio::spawn(webhook::serve(listener, config, async {
            let _ = stopped.await;
        }));
        crate::client::wait_until("the webhook connected to the broker", Duration::from_secs(30), || async {
            Ok::<_, ChaosError>(match crate::client::answers(address, "/healthz").await {
                true => Check::Done(()),
                false => Check::NotYet("/healthz is not 200".into()),
            })
        })
        .await?;
        let (server, on_host, network) = (Some(server), None, None);
        Ok(Rig { broker: Some(broker), link, amqp, secret, address, stop: Some(stop), server, on_host, network })
    }

    /// A rig whose webhook runs (from `binary`) on a host of its own, reaching the broker on
    /// the broker's host, whose link can be cut ([`crate::hosts`]).
    async fn start_on_hosts(dir: &Path, binary: &Path) -> Result<Rig, ChaosError> {
        let (secrets, _) = secrets::generate(&dir.join("secrets"), false)?;
        let broker = Broker::start(&dir.join("broker"), &secrets).await?;
        let id = dir.file_name().unwrap_or_default().to_string_lossy().replace('.', "");
        let network = crate::hosts::deployment(dir, &id, &[], broker.socket_address(), &[]).await?;
        let webhook = crate::service::Webhook::start_on_host(binary, dir, &secrets, &network, None).await?;
        let secret = webhook::read_secret(&secrets.webhook_token())
            .map_err(|source| ChaosError::Io { what: "read the webhook secret".into(), source })?;
        Ok(Rig {
            amqp: broker.client_config(),
            broker: Some(broker),
            link: None,
            secret,
            address: webhook.address,
            stop: None,
            server: None,
            on_host: Some(webhook),
            network: Some(network),
        })
    }

    /// Cuts (or restores) the webhook's link to the broker: the link of the relay, or the
    /// broker host's (GitHub, here, still reaches the webhook through the switch).
    fn cut(&self, cut: bool) -> Result<(), ChaosError> {
        match (&self.link, &self.network, cut) {
            (Some(link), _, true) => link.cut(),
            (Some(link), _, false) => link.restore(),
            (None, Some(network), true) => network.cut(crate::hosts::BROKER_HOST)?,
            (None, Some(network), false) => network.restore(crate::hosts::BROKER_HOST)?,
            (None, None, _) => return Err(ChaosError::Lost("this rig has no link to cut".into())),
        }
        Ok(())
    }

    /// Stops the webhook (if not yet) and waits until it finished what it took.
    async fn stop_webhook(&mut self) {
        let _ = self.stop.take().map(|stop| stop.send(()));
        if let Some(server) = &mut self.server {
            let _ = server.await;
        }
        if let Some(webhook) = &mut self.on_host {
            webhook.service.stop().await;
        }
    }

    /// Takes every message out of the `webhook` queue and checks that each delivery answered 200
    /// is among them; returns how many were answered 200 and how many were stored.
    async fn check(&self, answers: &[(usize, u16)]) -> Result<(usize, usize), ChaosError> {
        let accepted: BTreeSet<usize> = answers.iter().filter(|(_, status)| *status == 200).map(|(n, _)| *n).collect();
        let session = amqp::Session::connect(&self.amqp).await?;
        let mut stored = BTreeSet::new();
        while let Some(delivery) = session.get(amqp::WEBHOOK.name).await? {
            let message: serde_json::Value = serde_json::from_slice(&delivery.body).unwrap_or_default();
            if let Some(n) = message["request"]["workbench_probe"].as_u64() {
                stored.insert(n as usize);
            }
            delivery.ack().await?;
        }
        session.close().await;
        let lost: Vec<&usize> = accepted.difference(&stored).collect();
        if !lost.is_empty() {
            return Err(ChaosError::Lost(format!("answered 200 but not stored: {lost:?}")));
        }
        Ok((accepted.len(), stored.len()))
    }
}

/// Numbered signed deliveries (`workbench_probe` in the body, `chaos-N` the id) sent to the
/// webhook at a steady rate, each on a connection of its own; their answers collected.
struct Load {
    address: SocketAddr,
    secret: Vec<u8>,
    template: serde_json::Value,
    ticks: tokio::time::Interval,
    sending: tokio::task::JoinSet<(usize, u16)>,
    answers: Vec<(usize, u16)>,
    sent: usize,
}

impl Load {
    fn new(rig: &Rig, rate: u32) -> Load {
        Load {
            address: rig.address,
            secret: rig.secret.clone(),
            template: serde_json::from_str(include_str!("../../fixtures/payloads/pull_request-opened.json"))
                .expect("the fixture is JSON"),
            ticks: tokio::time::interval(Duration::from_secs(1) / rate.max(1)),
            sending: tokio::task::JoinSet::new(),
            answers: Vec::new(),
            sent: 0,
        }
    }

    fn sent(&self) -> usize {
        self.sent
    }

    /// Deliveries from number `from` on answered 200 so far.
    fn accepted_from(&self, from: usize) -> usize {
        self.answers.iter().filter(|(n, status)| *n >= from && *status == 200).count()
    }

    /// Sends the next delivery at its time.
    async fn send(&mut self) {
        let n = self.sent;
        self.send_number(n).await;
        self.sent += 1;
    }

    /// Sends delivery `n` (again, as a redelivery of one not answered 2xx) at its time.
    async fn send_number(&mut self, n: usize) {
        self.ticks.tick().await;
        let mut body = self.template.clone();
        body["workbench_probe"] = serde_json::json!(n);
        let body = serde_json::to_vec(&body).expect("JSON values encode");
        let signature = webhook::sign_sha256(&self.secret, &body);
        let address = self.address;
        self.sending.spawn(async move { (n, post(address, n, &signature, &body).await) });
        while let Some(done) = self.sending.try_join_next() {
            self.answers.push(done.expect("a sender does not panic"));
        }
    }

    /// Every delivery's number and answer, once all were answered.
    async fn finish(mut self) -> Vec<(usize, u16)> {
        while let Some(done) = self.sending.join_next().await {
            self.answers.push(done.expect("a sender does not panic"));
        }
        self.answers
    }
}

/// POSTs delivery `n` on a fresh connection; the HTTP status, or 0 when there was no answer.
async fn post(address: SocketAddr, n: usize, signature: &str, body: &[u8]) -> u16 {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        let head = format!(
            "POST / HTTP/1.0\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             X-GitHub-Event: pull_request\r\nX-GitHub-Delivery: chaos-{n}\r\nX-Hub-Signature-256: {signature}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    match tokio::time::timeout(Duration::from_secs(30), exchange).await {
        Ok(Ok(answer)) => String::from_utf8_lossy(&answer)
            .split_whitespace()
            .nth(1)
            .and_then(|status| status.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}
