//! The worker loop against the real broker, mock GitHub and S3: a pull_request event queued in
//! `webhook` ends, through tests-scan and job-runner, in Cockpit's three statuses with its log,
//! viewer and attachment in S3, and rescans
//! meanwhile queue nothing twice; two workers share a queue of jobs and run each exactly once;
//! a worker killed with SIGKILL leaves its job to another, which does not run it again if its
//! final status was posted; a stopping worker cancels what
//! outlives its grace period; a job that cannot run is acknowledged, not looped; a merged pull
//! request becomes a statistics command.

use std::path::PathBuf;
use std::time::Duration;

use amqp::{Job, PUBLIC, STATISTICS, Session, WEBHOOK};
use local::client::{Check, TimedOut, wait_until};
use local::github::StatusFaults;
use local::{Broker, MockGitHub, S3Server, Secrets, secrets};
use tasks::run_queue::{self, Args};
use tasks::tests_scan::ScanArgs;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const REPO: &str = "workbench-ci/demo";

fn workspace(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

struct World {
    broker: Broker,
    mock: MockGitHub,
    s3: S3Server,
    head: String,
    args: Args,
    secrets: Secrets,
    _dir: TempDir,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let (secrets, _) = secrets::generate(&dir.path().join("secrets"), false).unwrap();
    let token = std::fs::read_to_string(secrets.github_token()).unwrap();
    let broker = Broker::start(&dir.path().join("broker"), &secrets).await.unwrap();
    let mock = MockGitHub::start(&dir.path().join("github"), &token).await.unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"), &secrets, false).await.unwrap();
    mock.add_repo(REPO, &workspace("fixtures/repos/passing")).unwrap();
    let head = mock.open_pull(REPO, 1, "Make the frobnicator faster", "workbench-ci").unwrap();
    let forge = local::worker::Forge::mock(&mock, &secrets);
    let runner_config = local::worker::RunnerConfig::local(&forge, &s3, &secrets, local::worker::Sandbox::Process)
        .write(dir.path())
        .unwrap();
    let args = Args {
        scan: ScanArgs {
            test_map: workspace("fixtures/testmap.toml"),
            github_api: mock.api_url(),
            github_token_file: Some(secrets.github_token()),
            testmap_inject: None,
        },
        job_runner_config: Some(runner_config),
        work_dir: Some(dir.path().to_owned()),
        jobs: 1,
        grace: 600,
        job_program: Some(tasks_binary()),
        // Each test decides whether its workers rescan.
        rescan_interval: 0,
        ..Args::default()
    };
    World { broker, mock, s3, head, args, secrets, _dir: dir }
}

impl World {
    /// Starts a worker called `hostname` running `jobs` jobs at once; send to stop it.
    fn worker(&self, hostname: &str, jobs: u16) -> (oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>) {
        self.worker_with(Args { hostname: Some(hostname.into()), jobs, ..self.args.clone() })
    }

    fn worker_with(&self, args: Args) -> (oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>) {
        let config = self.broker.client_config();
        let (stop, stopped) = oneshot::channel::<()>();
        let worker = tokio::spawn(async move {
            run_queue::run(&config, &args, async {
                let _ = stopped.await;
            })
            .await
        });
        (stop, worker)
    }

    /// Arguments of worker-1 rescanning every `rescan_interval` seconds and serving its metrics
    /// on a free port of loopback, which it names in the file returned.
    fn serving_metrics(&self, rescan_interval: u64) -> (Args, PathBuf) {
        let address_file = self.args.work_dir.as_ref().unwrap().join("metrics.address");
        let args = Args {
            hostname: Some("worker-1".into()),
            rescan_interval,
            metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
            metrics_address_file: Some(address_file.clone()),
            ..self.args.clone()
        };
        (args, address_file)
    }

    async fn wait_for_statuses(&self, count: usize) {
        self.wait_until(|statuses| statuses.len() >= count).await;
    }

    async fn wait_until(&self, done: impl Fn(&[github::StatusUpdate]) -> bool) {
        let waited = wait_until("the statuses awaited", Duration::from_secs(120), || async {
            let statuses = self.mock.statuses(REPO, &self.head);
            Ok::<_, TimedOut>(if done(&statuses) { Check::Done(()) } else { Check::NotYet(format!("{statuses:?}")) })
        });
        waited.await.unwrap();
    }

    /// Starts a worker called `hostname` as a process of its own, to be killed.
    fn worker_process(&self, hostname: &str) -> std::process::Child {
        let address = self.broker.address().to_string();
        let launch = local::launch::Worker {
            broker: local::launch::Broker { address: Some(&address), secrets_dir: Some(&self.secrets.webhook_dir()) },
            hostname,
            jobs: 1,
            test_map: &self.args.scan.test_map,
            github_api: &self.args.scan.github_api,
            github_token_file: self.args.scan.github_token_file.as_ref().unwrap(),
            runner_config: self.args.job_runner_config.as_deref(),
            work_dir: self.args.work_dir.as_deref(),
            metrics: None,
            rescan_interval: Some(0),
            log: "info",
            traces: None,
        }
        .launch();
        launch.command(&tasks_binary()).spawn().unwrap()
    }

    /// Every status posted to the pull request's head, as (state, description).
    fn posted(&self) -> Vec<(String, String)> {
        self.mock.statuses(REPO, &self.head).into_iter().map(|s| (s.state, s.description)).collect()
    }

    /// Waits until `queue` holds no message, neither ready nor unacknowledged, per the broker.
    async fn wait_until_done(&self, queue: &str) {
        let what = format!("every message of {queue} done");
        let waited = wait_until(&what, Duration::from_secs(60), || async {
            Ok::<_, TimedOut>(match self.broker.messages(queue).unwrap() {
                Some((0, 0)) => Check::Done(()),
                left => Check::NotYet(format!("(ready, unacknowledged): {left:?}")),
            })
        });
        waited.await.unwrap();
    }

    /// Publishes a job for `context` whose command is `command`.
    async fn publish_job(&self, session: &Session, context: &str, command: Option<&[&str]>) {
        let job = Job {
            command: command.map(|argv| argv.iter().map(|arg| (*arg).to_owned()).collect()),
            ..Job::for_pull(REPO, &self.head, 1, context, "20261123-000000")
        };
        let message = job.with_env(&[("TEST_OS", "unit-tests")]).message(&format!("job {context}"));
        session.publish(PUBLIC.name, &serde_json::to_vec(&message).unwrap(), Some(5)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_pull_request_event_is_tested_to_a_final_status() {
    let world = world().await;
    let session = Session::connect(&world.broker.client_config()).await.unwrap();
    session.declare(WEBHOOK).await.unwrap();
    let event = world.mock.pull_request_event(REPO, 1, "opened").unwrap();
    // As our webhook publishes it, with its trace's header: the work is the same.
    let traced = [(traces::TRACEPARENT, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")];
    session.publish_with_headers(WEBHOOK.name, &event.queue_message(), None, &traced).await.unwrap();

    // Rescans while the job is queued and running must not queue it again.
    let (args, address_file) = world.serving_metrics(1);
    let (stop, worker) = world.worker_with(args);
    world.wait_for_statuses(3).await;
    // Every job done (a twin included), its figures counted.
    world.wait_until_done(WEBHOOK.name).await;
    world.wait_until_done(PUBLIC.name).await;
    let metrics: std::net::SocketAddr = std::fs::read_to_string(&address_file).unwrap().parse().unwrap();
    let counted = wait_until("the job counted", Duration::from_secs(30), || async {
        let scraped = local::client::get(metrics, "/metrics").await.unwrap().text();
        Ok::<_, TimedOut>(match scraped.contains("\ntasks_jobs_total{outcome=\"success\"} ") {
            true => Check::Done(scraped),
            false => Check::NotYet(scraped),
        })
    });
    let scraped = counted.await.unwrap();
    let _ = stop.send(());
    worker.await.unwrap().unwrap();
    let value = |name: &str| local::client::metric_in(&scraped, name);
    let statuses = world.mock.statuses(REPO, &world.head);
    assert_eq!(value("tasks_jobs_total{outcome=\"success\"}"), 1, "{scraped}\n{statuses:#?}");
    assert!(value(tasks::metrics::RESCANS) >= 1, "the rescans are counted: {scraped}");
    // The rescan at the worker's start may queue the job before the event's scan queues it
    // again (Cockpit's rule for a pending context): that twin stops without a status.
    let twins = value("tasks_jobs_total{outcome=\"superseded\"}");
    assert!(twins <= 1, "{scraped}");
    assert_eq!(value("tasks_job_seconds_count"), 1 + twins, "{scraped}");

    let posted: Vec<String> =
        world.mock.statuses(REPO, &world.head).iter().map(|s| serde_json::to_string(s).unwrap()).collect();
    let log_url = format!("{}logs/pull-1-{}-", world.s3.url(), &world.head[..8]);
    // The event's scan and the start-up rescan may both read no status and both post "Not yet
    // tested" (Cockpit's scans do the same); the job after them is one.
    let not_tested = r#"{"context":"unit-tests","state":"pending","description":"Not yet tested"}"#;
    let queued = posted.iter().take_while(|status| *status == not_tested).count();
    assert!((1..=2).contains(&queued), "{posted:?}");
    let posted = &posted[queued - 1..];
    assert_eq!(posted[0], not_tested);
    let in_progress =
        r#"{"context":"unit-tests","state":"pending","description":"In progress [worker-1]","target_url":""#;
    assert!(posted[1].starts_with(&format!("{in_progress}{log_url}")), "{posted:?}");
    let success = r#"{"context":"unit-tests","state":"success","description":"Success [worker-1]","target_url":""#;
    assert!(posted[2].starts_with(&format!("{success}{log_url}")), "{posted:?}");
    assert_eq!(posted.len(), 3);
    // The log, its viewer and the attachment, where the status links to (anonymously readable).
    let target = world.mock.statuses(REPO, &world.head)[2].target_url.clone().unwrap();
    let reader = s3::Store::new(target.strip_suffix("log.html").unwrap(), None, None).unwrap();
    let log = String::from_utf8(reader.get("log").await.unwrap().expect("the final log")).unwrap();
    assert!(log.contains("\n\nRunning on: worker-1\n\n"), "{log}");
    assert!(log.ends_with("\n\nJob ran successfully.  :)\n"), "{log}");
    assert!(reader.get("log.html").await.unwrap().is_some_and(|page| page.starts_with(b"<!DOCTYPE html>")));
    let attachment = reader.get("bogus.log").await.unwrap();
    assert_eq!(attachment.as_deref(), Some(&b"heisenberg compensator at 99.8% efficiency\n"[..]));
    for queue in [WEBHOOK, PUBLIC] {
        assert_eq!(session.declare(queue).await.unwrap(), 0, "{} is empty: everything was acknowledged", queue.name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_with_two_slots_run_every_job_exactly_once() {
    let world = world().await;
    let session = Session::connect(&world.broker.client_config()).await.unwrap();
    session.declare(PUBLIC).await.unwrap();
    for n in 0..20 {
        world.publish_job(&session, &format!("unit-tests/{n}"), None).await;
    }
    let workers = [world.worker("worker-a", 2), world.worker("worker-b", 2)];
    world.wait_for_statuses(40).await;
    for (stop, worker) in workers {
        let _ = stop.send(());
        worker.await.unwrap().unwrap();
    }

    let statuses = world.mock.statuses(REPO, &world.head);
    assert_eq!(statuses.len(), 40, "two statuses per job, no more");
    let mut hosts = std::collections::BTreeSet::new();
    for n in 0..20 {
        let context = format!("unit-tests/{n}");
        let own: Vec<_> = statuses.iter().filter(|s| s.context == context).collect();
        let host = own[0].description.trim_start_matches("In progress ").to_owned();
        assert_eq!(
            own.iter().map(|s| (s.state.as_str(), s.description.clone())).collect::<Vec<_>>(),
            [("pending", format!("In progress {host}")), ("success", format!("Success {host}"))],
            "{context}"
        );
        hosts.insert(host);
    }
    assert_eq!(session.declare(PUBLIC).await.unwrap(), 0, "every job acknowledged");
    assert_eq!(hosts.len(), 2, "both workers took jobs: {hosts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_of_a_worker_killed_hard_is_redelivered_to_another() {
    let world = world().await;
    let session = Session::connect(&world.broker.client_config()).await.unwrap();
    session.declare(PUBLIC).await.unwrap();
    world.publish_job(&session, "unit-tests", Some(&["sh", "-c", "sleep 5"])).await;

    let mut killed = world.worker_process("worker-killed");
    world.wait_until(|statuses| statuses.iter().any(|s| s.description == "In progress [worker-killed]")).await;
    killed.kill().unwrap();
    killed.wait().unwrap();

    let (stop, worker) = world.worker("worker-2", 1);
    world.wait_until(|statuses| statuses.last().is_some_and(|s| s.state == "success")).await;
    let _ = stop.send(());
    worker.await.unwrap().unwrap();
    assert_eq!(
        world.posted(),
        [
            ("pending".into(), "In progress [worker-killed]".into()),
            ("pending".into(), "In progress [worker-2]".into()),
            ("success".into(), "Success [worker-2]".into()),
        ]
    );
    assert_eq!(session.declare(PUBLIC).await.unwrap(), 0, "acknowledged by the second worker");
}

/// The window between posting a final status and acknowledging the message, made wide by a
/// GitHub slow to answer: a worker killed in it leaves a redelivered job that must not run
/// again, or the job would end with two final statuses.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_final_status_was_posted_before_its_worker_was_killed_is_not_run_again() {
    let world = world().await;
    let session = Session::connect(&world.broker.client_config()).await.unwrap();
    session.declare(PUBLIC).await.unwrap();
    world.publish_job(&session, "unit-tests", Some(&["true"])).await;
    world.mock.set_status_faults(StatusFaults { delay: Duration::from_secs(3), ..StatusFaults::default() });
    let mut killed = world.worker_process("worker-killed");
    world.wait_until(|statuses| statuses.iter().any(|s| s.state == "success")).await;
    killed.kill().unwrap();
    killed.wait().unwrap();
    world.mock.set_status_faults(StatusFaults::default());

    let (stop, worker) = world.worker("worker-2", 1);
    world.wait_until_done(PUBLIC.name).await;
    let _ = stop.send(());
    worker.await.unwrap().unwrap();
    assert_eq!(
        world.posted(),
        [
            ("pending".into(), "In progress [worker-killed]".into()),
            ("success".into(), "Success [worker-killed]".into())
        ]
    );
}

/// What a job given up after its bounded tries leaves: one "In progress" per try, then one
/// error status saying so, a log saying so, and an empty queue.
async fn assert_given_up(world: &World, session: &Session, host: &str) {
    let tries = run_queue::MAX_TRIES as usize;
    let mut expected = vec![("pending".to_owned(), format!("In progress [{host}]")); tries];
    expected.push(("error".into(), format!("Internal error: gave up after {tries} tries [{host}]")));
    assert_eq!(world.posted(), expected);
    let target = world.mock.statuses(REPO, &world.head).pop().unwrap().target_url.unwrap();
    let reader = s3::Store::new(target.strip_suffix("log.html").unwrap(), None, None).unwrap();
    let log = String::from_utf8(reader.get("log").await.unwrap().unwrap()).unwrap();
    assert!(log.starts_with(&format!("*** Internal error: gave up after {tries} tries: ")), "{log}");
    assert_eq!(reader.get("log.chunks").await.unwrap(), None, "the viewer stops waiting");
    world.wait_until_done(PUBLIC.name).await;
    assert_eq!(session.declare(PUBLIC).await.unwrap(), 0);
}

/// A job that kills the process that runs it, every time: the worker survives each time, and
/// the job ends after its bounded tries with a status saying so.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_kills_its_job_process_every_time_is_given_up_after_its_tries() {
    let world = world().await;
    let session = Session::connect(&world.broker.client_config()).await.unwrap();
    session.declare(PUBLIC).await.unwrap();
    world.publish_job(&session, "unit-tests", Some(&["sh", "-c", "kill -9 $PPID"])).await;
    let (stop, worker) = world.worker("worker-1", 1);
    world.wait_until(|statuses| statuses.last().is_some_and(|s| s.state != "pending")).await;
    assert_given_up(&world, &session, "worker-1").await;
    let _ = stop.send(());
    worker.await.unwrap().unwrap();
}

/// A job that kills its worker every time (as a job that takes all memory gets its worker
/// killed): each restarted worker finds it redelivered, and after the bounded tries it ends with
/// a status saying so instead of taking every worker down forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_kills_its_worker_every_time_is_given_up_after_its_tries() {
    let world = world().await;
    let session = Session::connect(&world.broker.client_config()).await.unwrap();
    session.declare(PUBLIC).await.unwrap();
    // The job process's parent is the worker.
    let kill_worker = "kill -9 $(cut -d' ' -f4 /proc/$PPID/stat)";
    world.publish_job(&session, "unit-tests", Some(&["sh", "-c", kill_worker])).await;
    let mut deaths = 0;
    let mut worker = world.worker_process("worker-1");
    // Each death of the worker, a new one: until the job has its final status.
    let ended = wait_until("a final status", Duration::from_secs(180), || {
        if worker.try_wait().unwrap().is_some() {
            deaths += 1;
            worker = world.worker_process("worker-1");
        }
        let posted = world.posted();
        async move {
            Ok::<_, TimedOut>(match posted.last().is_some_and(|(state, _)| state != "pending") {
                true => Check::Done(()),
                false => Check::NotYet(format!("{posted:?}")),
            })
        }
    });
    ended.await.unwrap();
    assert_given_up(&world, &session, "worker-1").await;
    assert!(worker.try_wait().unwrap().is_none(), "the worker that gave the job up goes on");
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert_eq!(deaths, run_queue::MAX_TRIES, "each try took a worker down");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_worker_cancels_jobs_past_its_grace_period_and_acknowledges_them() {
    let world = world().await;
    let session = Session::connect(&world.broker.client_config()).await.unwrap();
    session.declare(PUBLIC).await.unwrap();
    // First a job the worker cannot even start (an unknown forge): parked, and the worker goes
    // on to the next.
    let broken =
        Job { forge: Some("nowhere".into()), ..Job::for_pull(REPO, &world.head, 0, "broken", "20261123-000000") };
    let broken = serde_json::to_vec(&broken.message("broken")).unwrap();
    session.publish(PUBLIC.name, &broken, Some(5)).await.unwrap();
    world.publish_job(&session, "unit-tests", Some(&["sh", "-c", "sleep 600"])).await;
    let (stop, worker) = world.worker_with(Args { hostname: Some("worker-1".into()), grace: 1, ..world.args.clone() });
    world.wait_until(|statuses| !statuses.is_empty()).await;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(60), worker).await.expect("the worker stops").unwrap().unwrap();
    let last = world.mock.statuses(REPO, &world.head).pop().unwrap();
    assert_eq!((last.state.as_str(), last.description.as_str()), ("error", "Cancelled [worker-1]"));
    assert_eq!(session.declare(PUBLIC).await.unwrap(), 0, "a cancelled job is acknowledged: a rescan queues it again");
    let parked = session.get(amqp::DEAD_LETTER.name).await.unwrap().expect("the job that could not start, parked");
    assert_eq!(parked.body, broken);
    assert!(parked.header(amqp::ERROR_HEADER).unwrap_or_default().contains("nowhere"), "says why");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_merged_pull_request_becomes_cockpits_statistics_command() {
    let world = world().await;
    let session = Session::connect(&world.broker.client_config()).await.unwrap();
    session.declare(WEBHOOK).await.unwrap();
    session.declare(STATISTICS).await.unwrap();
    world.mock.close_pull(REPO, 1, true).unwrap();
    let event = world.mock.pull_request_event(REPO, 1, "closed").unwrap();
    session.publish(WEBHOOK.name, &event.queue_message(), None).await.unwrap();

    // A worker without --statistics leaves the command for one that has it.
    let (stop, worker) = world.worker("worker-1", 1);
    let queued = wait_until("a statistics command queued", Duration::from_secs(60), || async {
        Ok::<_, TimedOut>(match session.declare(STATISTICS).await.unwrap() {
            0 => Check::NotYet("statistics is empty".into()),
            _ => Check::Done(()),
        })
    });
    queued.await.unwrap();
    let _ = stop.send(());
    worker.await.unwrap().unwrap();
    let delivery = session.get(STATISTICS.name).await.unwrap().unwrap();
    assert_eq!(delivery.priority, Some(9));
    let db = format!(
        "{}/test-results.db",
        std::env::var("COCKPIT_IMAGES_DATA_DIR")
            .unwrap_or_else(|_| format!("{}/.cache/cockpit-images", std::env::var("HOME").unwrap()))
    );
    let expected = amqp::CommandMessage::statistics(&db, REPO, &world.head);
    assert_eq!(delivery.body, serde_json::to_vec(&expected).unwrap());
    delivery.reject(true).await.unwrap();
    assert!(world.mock.statuses(REPO, &world.head).is_empty(), "a merged pull request is not tested");

    // A statistics worker runs it (here it fails: Cockpit's scripts are not in the work
    // directory) and acknowledges it all the same, as Cockpit's run-queue does.
    let (stop, worker) = world.worker_with(Args { statistics: true, ..world.args.clone() });
    // Done means acknowledged, not only handed to the worker: a worker stopped before it took
    // a prefetched message leaves it to the next one.
    world.wait_until_done(STATISTICS.name).await;
    let _ = stop.send(());
    worker.await.unwrap().unwrap();
    assert_eq!(session.declare(STATISTICS).await.unwrap(), 0);
}

fn tasks_binary() -> PathBuf {
    let binary = local::Binaries::of_test_build().tasks;
    assert!(binary.is_file(), "{} is missing: build it with `cargo build -p tasks`", binary.display());
    binary
}

/// An event whose scan fails for good (its repository is not on GitHub: 404) is parked in the
/// dead-letter queue with why, and the event behind it is scanned all the same.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_that_fails_for_good_is_parked_and_holds_nothing_up() {
    let world = world().await;
    let session = Session::connect(&world.broker.client_config()).await.unwrap();
    session.declare(WEBHOOK).await.unwrap();
    let event = world.mock.pull_request_event(REPO, 1, "opened").unwrap();
    let gone = String::from_utf8(event.body.clone()).unwrap().replace(REPO, "workbench-ci/gone");
    let gone = local::Delivery { body: gone.into_bytes(), ..event.clone() };
    session.publish(WEBHOOK.name, &gone.queue_message(), None).await.unwrap();
    session.publish(WEBHOOK.name, &event.queue_message(), None).await.unwrap();
    let (stop, worker) = world.worker_with(Args { hostname: Some("worker-1".into()), scans: 1, ..world.args.clone() });
    world.wait_for_statuses(3).await;
    world.wait_until_done(WEBHOOK.name).await;
    let _ = stop.send(());
    worker.await.unwrap().unwrap();

    // inspect-queue shows it, with where it came from and why, and leaves it where it is.
    let mut shown = Vec::new();
    let args = tasks::queue_tools::InspectArgs { human: false };
    tasks::queue_tools::inspect(&world.broker.client_config(), &args, &mut shown).await.unwrap();
    let shown = String::from_utf8(shown).unwrap();
    let parked_line =
        shown.lines().skip_while(|line| *line != "workbench.dead-letter queue:").nth(1).unwrap_or_default();
    assert!(parked_line.contains("workbench-ci/gone") && parked_line.contains("(parked from webhook: "), "{shown}");
    assert!(shown.contains("queue webhook does not exist or is empty"), "{shown}");
    let parked = session.get(amqp::DEAD_LETTER.name).await.unwrap().expect("the failed event, parked");
    assert_eq!(parked.body, gone.queue_message(), "parked as it was queued");
    assert_eq!(parked.header(amqp::QUEUE_HEADER).as_deref(), Some("webhook"));
    let error = parked.header(amqp::ERROR_HEADER).unwrap_or_default();
    assert!(error.contains("workbench-ci/gone") && error.contains("404"), "{error}");
    parked.ack().await.unwrap();
    assert!(session.get(amqp::DEAD_LETTER.name).await.unwrap().is_none(), "only that one");
    assert_eq!(world.posted().last().map(|(state, _)| state.as_str()), Some("success"), "{:?}", world.posted());
}

/// An event whose scan failed for a while too often (its message put off the last time it may
/// be, and back from its delay queue) that fails so once more is parked, not put off again.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_put_off_too_often_is_parked_after_its_last_try() {
    let world = world().await;
    let session = Session::connect(&world.broker.client_config()).await.unwrap();
    session.declare(WEBHOOK).await.unwrap();
    let event = world.mock.pull_request_event(REPO, 1, "opened").unwrap();
    session.publish(WEBHOOK.name, &event.queue_message(), None).await.unwrap();
    let taken = session.get(WEBHOOK.name).await.unwrap().expect("the event");
    let last = retry::MAX_RETRIES;
    session.retry_later(WEBHOOK.name, &taken, Duration::ZERO, last, "GitHub away").await.unwrap();
    taken.ack().await.unwrap();
    session.declare(amqp::DEAD_LETTER).await.unwrap();
    let outage = local::github::ApiFaults::outage(&[(Duration::from_secs(600), local::github::Outage::Status(502))]);
    world.mock.set_api_faults(outage);
    let (stop, worker) = world.worker_with(Args { hostname: Some("worker-1".into()), ..world.args.clone() });
    // Back after 5 s, then Cockpit's five tries (about 15 s).
    let parked = wait_until("the event parked", Duration::from_secs(120), || async {
        Ok::<_, TimedOut>(match session.get(amqp::DEAD_LETTER.name).await.unwrap() {
            Some(parked) => Check::Done(parked),
            None => Check::NotYet("the dead-letter queue is empty".into()),
        })
    });
    let parked = parked.await.unwrap();
    let _ = stop.send(());
    worker.await.unwrap().unwrap();
    assert_eq!(parked.body, event.queue_message());
    assert_eq!(parked.retries, last, "back from its delay queue with its count");
    let error = parked.header(amqp::ERROR_HEADER).unwrap_or_default();
    assert!(error.starts_with(&format!("tried {} times, each failing for a while", last + 1)), "{error}");
    assert!(error.contains("502"), "{error}");
    assert!(world.mock.statuses(REPO, &world.head).is_empty(), "nothing posted while GitHub was away");
}

/// With GitHub answering every request 2 s late, scans take seconds each: a queued job starts
/// all the same before they are done, as scans run beside jobs, not in front of them.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_github_under_scans_does_not_hold_queued_jobs_up() {
    let world = world().await;
    let session = Session::connect(&world.broker.client_config()).await.unwrap();
    session.declare(WEBHOOK).await.unwrap();
    session.declare(PUBLIC).await.unwrap();
    for number in 2..5 {
        world.mock.open_pull(REPO, number, "Another change", "workbench-ci").unwrap();
        let event = world.mock.pull_request_event(REPO, number, "opened").unwrap();
        session.publish(WEBHOOK.name, &event.queue_message(), None).await.unwrap();
    }
    world.publish_job(&session, "queued-job", Some(&["true"])).await;
    let faults = local::github::ApiFaults { delay: Duration::from_secs(2), ..Default::default() };
    world.mock.set_api_faults(faults);
    let (stop, worker) = world.worker_with(Args { hostname: Some("worker-1".into()), scans: 1, ..world.args.clone() });
    world.wait_until(|statuses| statuses.iter().any(|s| s.context == "queued-job" && s.state == "success")).await;
    world.wait_until_done(WEBHOOK.name).await;
    let _ = stop.send(());
    worker.await.unwrap().unwrap();

    // The mock records each request as it arrives, before its delay.
    let requests = world.mock.requests();
    let job_started =
        requests.iter().position(|r| r.path == format!("/repos/{REPO}/pulls/1")).expect("the job's first request");
    let scans_done = requests
        .iter()
        .rposition(|r| r.method == "POST" && r.body.contains("Not yet tested"))
        .expect("the scans' last status");
    assert!(job_started < scans_done, "the job waited for the scans: {requests:#?}");
}

/// A worker of the local deployment is ready only once its rescan at start has ended, so that
/// the scenarios' pull requests, opened after, are queued by their events alone (no twin job).
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_ready_after_its_rescan_has_counted_it_when_it_is_ready() {
    let world = world().await;
    // Each of the rescan's requests (a page of pull requests per repository, a status per
    // open one) waits, while answering its metrics takes none: a worker ready as soon as it
    // serves its metrics would be read here before its rescan ends (this fails so).
    let faults = local::github::ApiFaults { delay: Duration::from_millis(400), ..Default::default() };
    world.mock.set_api_faults(faults);
    let forge = local::worker::Forge::mock(&world.mock, &world.secrets);
    let config = local::service::WorkerConfig {
        broker: &world.broker,
        secrets: &world.secrets,
        test_map: &world.args.scan.test_map,
        forge: &forge,
        runner_config: world.args.job_runner_config.as_deref().unwrap(),
        work_dir: world.args.work_dir.as_deref().unwrap(),
        jobs: 1,
        rescan_interval: None,
        ready_after_rescan: true,
    };
    let run_dir = world.args.work_dir.clone().unwrap();
    let mut worker = local::service::Worker::start(&tasks_binary(), &run_dir, "worker-1", &config).await.unwrap();
    let rescans = local::client::metric(worker.metrics, tasks::metrics::RESCANS).await.unwrap();
    // The job the rescan queued ends quickly, and with it the worker's stop.
    world.mock.set_api_faults(Default::default());
    worker.service.stop().await;
    assert_eq!(rescans, 1, "{}", worker.service.log_tail(20));
    // The rescan queued the open pull request's context.
    let posted: Vec<String> = world.mock.statuses(REPO, &world.head).into_iter().map(|s| s.description).collect();
    assert_eq!(posted.first().map(String::as_str), Some("Not yet tested"), "{posted:?}");
}

/// A rescan cut short by a lost broker session (the rescan at start, here) is made again as
/// soon as the worker serves again, not a rescan interval later.
#[tokio::test(flavor = "multi_thread")]
async fn a_rescan_cut_short_by_a_lost_session_is_made_again_at_once() {
    let world = world().await;
    // The rescan asks GitHub once per repository of the test map, at least: it takes seconds.
    world.mock.set_api_faults(local::github::ApiFaults { delay: Duration::from_secs(1), ..Default::default() });
    let (args, address_file) = world.serving_metrics(3600);
    let (stop, worker) = world.worker_with(args);
    let serving = wait_until("the worker serving its metrics", Duration::from_secs(60), || async {
        let address = std::fs::read_to_string(&address_file).ok().and_then(|text| text.trim().parse().ok());
        Ok::<_, TimedOut>(match address {
            Some(address) if local::client::answers(address, "/metrics").await => Check::Done(address),
            _ => Check::NotYet("no metrics yet".into()),
        })
    });
    let metrics = serving.await.unwrap();
    world.broker.ctl(&["close_all_connections", "a test cuts the worker's session"]).unwrap();
    world.mock.set_api_faults(Default::default());
    let rescanned = wait_until("a rescan counted", Duration::from_secs(60), || async {
        let rescans = local::client::metric(metrics, tasks::metrics::RESCANS).await.unwrap_or(0);
        Ok::<_, TimedOut>(match rescans {
            0 => Check::NotYet("none yet".into()),
            _ => Check::Done(()),
        })
    });
    let result = rescanned.await;
    let _ = stop.send(());
    worker.await.unwrap().unwrap();
    result.unwrap();
}
