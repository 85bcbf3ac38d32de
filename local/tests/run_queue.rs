//! The worker loop against the real broker, mock GitHub and S3: a pull_request event queued in
//! `webhook` ends, through tests-scan and job-runner, in Cockpit's three statuses.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use amqp::{PUBLIC, Session, WEBHOOK};
use local::{Broker, MockGitHub, S3Server, secrets};
use tasks::run_queue::{self, Args};
use tasks::tests_scan::ScanArgs;
use tokio::sync::oneshot;

const REPO: &str = "workbench-ci/demo";
const HOST: &str = "worker-1";

fn workspace(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_pull_request_event_is_tested_to_a_final_status() {
    let dir = tempfile::tempdir().unwrap();
    let (secrets, _) = secrets::generate(&dir.path().join("secrets"), false).unwrap();
    let token = std::fs::read_to_string(secrets.github_token()).unwrap();
    let broker_dir = dir.path().join("broker");
    let broker = Broker::start(&broker_dir, &secrets).await.unwrap();
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

    let session = Session::connect(&broker.client_config()).await.unwrap();
    session.declare(WEBHOOK).await.unwrap();
    let event = mock.pull_request_event(REPO, 1, "opened").unwrap();
    session.publish(WEBHOOK.name, &event.queue_message(), None).await.unwrap();

    let args = Args {
        scan: ScanArgs {
            test_map: workspace("fixtures/testmap.toml"),
            github_api: mock.api_url(),
            github_token_file: Some(secrets.github_token()),
            testmap_inject: None,
        },
        job_runner_config: Some(runner_config),
        hostname: Some(HOST.into()),
        work_dir: Some(dir.path().to_owned()),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let config = broker.client_config();
    let worker = tokio::spawn(async move {
        run_queue::run(&config, &args, async {
            let _ = stopped.await;
        })
        .await
    });

    let deadline = Instant::now() + Duration::from_secs(60);
    while mock.statuses(REPO, &head).len() < 3 {
        assert!(Instant::now() < deadline, "statuses so far: {:?}", mock.statuses(REPO, &head));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    worker.await.unwrap().unwrap();

    let posted: Vec<String> = mock.statuses(REPO, &head).iter().map(|s| serde_json::to_string(s).unwrap()).collect();
    let log_url = format!("{}logs/pull-1-{}-", s3.url(), &head[..8]);
    assert_eq!(posted[0], r#"{"context":"unit-tests","state":"pending","description":"Not yet tested"}"#);
    assert!(
        posted[1].starts_with(&format!(
            r#"{{"context":"unit-tests","state":"pending","description":"In progress [{HOST}]","target_url":"{log_url}"#
        )),
        "{posted:?}"
    );
    assert!(
        posted[2].starts_with(&format!(
            r#"{{"context":"unit-tests","state":"success","description":"Success [{HOST}]","target_url":"{log_url}"#
        )),
        "{posted:?}"
    );
    assert_eq!(posted.len(), 3);
    // Everything was acknowledged.
    for queue in [WEBHOOK, PUBLIC] {
        assert_eq!(session.declare(queue).await.unwrap(), 0, "{} is empty", queue.name);
    }
}
