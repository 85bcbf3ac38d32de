//! The worker loop against the real broker, mock GitHub and S3: a pull_request event queued in
//! `webhook` ends, through tests-scan and job-runner, in Cockpit's three statuses; two workers
//! share a queue of jobs and run each exactly once.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use amqp::{JobMessage, PUBLIC, Session, WEBHOOK};
use local::{Broker, MockGitHub, S3Server, secrets};
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
    let runner_config = dir.path().join("job-runner.toml");
    let toml = format!(
        "[logs]\ndriver = \"s3\"\n[logs.s3]\nurl = \"{}logs\"\nkey = [{{file = \"{}/localhost\"}}]\n[forge.github]\napi-url = \"{}\"\nclone-url = \"{}\"\npost = true\ntoken = [{{file = \"{}\"}}]\n",
        s3.url(),
        secrets.s3_keys_dir().display(),
        mock.api_url(),
        mock.clone_url(),
        secrets.github_token().display()
    );
    std::fs::write(&runner_config, toml).unwrap();
    let args = Args {
        scan: ScanArgs {
            test_map: workspace("fixtures/testmap.toml"),
            github_api: mock.api_url(),
            github_token_file: Some(secrets.github_token()),
            testmap_inject: None,
        },
        job_runner_config: Some(runner_config),
        hostname: None,
        work_dir: Some(dir.path().to_owned()),
        jobs: 1,
    };
    World { broker, mock, s3, head, args, _dir: dir }
}

impl World {
    /// Starts a worker called `hostname` running `jobs` jobs at once; send to stop it.
    fn worker(&self, hostname: &str, jobs: u16) -> (oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>) {
        let args = Args { hostname: Some(hostname.into()), jobs, ..self.args.clone() };
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

    async fn wait_for_statuses(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.mock.statuses(REPO, &self.head).len() < count {
            assert!(Instant::now() < deadline, "statuses so far: {:?}", self.mock.statuses(REPO, &self.head));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_pull_request_event_is_tested_to_a_final_status() {
    let world = world().await;
    let session = Session::connect(&world.broker.client_config()).await.unwrap();
    session.declare(WEBHOOK).await.unwrap();
    let event = world.mock.pull_request_event(REPO, 1, "opened").unwrap();
    session.publish(WEBHOOK.name, &event.queue_message(), None).await.unwrap();

    let (stop, worker) = world.worker("worker-1", 1);
    world.wait_for_statuses(3).await;
    let _ = stop.send(());
    worker.await.unwrap().unwrap();

    let posted: Vec<String> =
        world.mock.statuses(REPO, &world.head).iter().map(|s| serde_json::to_string(s).unwrap()).collect();
    let log_url = format!("{}logs/pull-1-{}-", world.s3.url(), &world.head[..8]);
    assert_eq!(posted[0], r#"{"context":"unit-tests","state":"pending","description":"Not yet tested"}"#);
    let in_progress =
        r#"{"context":"unit-tests","state":"pending","description":"In progress [worker-1]","target_url":""#;
    assert!(posted[1].starts_with(&format!("{in_progress}{log_url}")), "{posted:?}");
    let success = r#"{"context":"unit-tests","state":"success","description":"Success [worker-1]","target_url":""#;
    assert!(posted[2].starts_with(&format!("{success}{log_url}")), "{posted:?}");
    assert_eq!(posted.len(), 3);
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
        let job = serde_json::json!({"job": {
            "repo": REPO, "sha": world.head, "context": format!("unit-tests/{n}"), "pull": 1, "report": null,
            "command_subject": null, "slug": format!("pull-1-{}-20261123-000000-unit-tests-{n}", &world.head[..8]),
            "env": {"TEST_OS": "unit-tests"}, "secrets": [],
        }, "human": format!("job {n}")});
        let message: JobMessage = serde_json::from_value(job).unwrap();
        session.publish(PUBLIC.name, &serde_json::to_vec(&message).unwrap(), Some(5)).await.unwrap();
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
