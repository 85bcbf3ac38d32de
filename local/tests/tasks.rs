//! The tasks worker's tests-scan against the real broker and the mock GitHub: a queued
//! pull_request event becomes Cockpit's "Not yet tested" status and a job in `public`; rescans
//! of all open pull requests never queue a context twice.

use std::path::PathBuf;

use amqp::{JobMessage, PUBLIC, Session};
use local::{Broker, MockGitHub, secrets};
use tasks::tests_scan::{self, Args, ScanArgs};

const REPO: &str = "workbench-ci/demo";

fn workspace(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_request_event_becomes_a_pending_status_and_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let (secrets, _) = secrets::generate(&dir.path().join("secrets"), false).unwrap();
    let token = std::fs::read_to_string(secrets.github_token()).unwrap();
    let (broker_dir, github_dir) = (dir.path().join("broker"), dir.path().join("github"));
    let (broker, mock) = tokio::join!(Broker::start(&broker_dir, &secrets), MockGitHub::start(&github_dir, &token));
    let (broker, mock) = (broker.unwrap(), mock.unwrap());
    mock.add_repo(REPO, &workspace("fixtures/repos/passing")).unwrap();
    let head = mock.open_pull(REPO, 1, "Make the frobnicator faster", "workbench-ci").unwrap();
    let event = mock.pull_request_event(REPO, 1, "opened").unwrap();

    let args = Args {
        repo: REPO.into(),
        pull_data: Some(String::from_utf8(event.body).unwrap()),
        publish: true,
        // The summary lines are printed, and the jobs still published.
        human_readable: true,
        scan: ScanArgs {
            test_map: workspace("fixtures/testmap.toml"),
            github_api: mock.api_url(),
            github_token_file: Some(secrets.github_token()),
            testmap_inject: None,
        },
        ..Args::default()
    };
    tests_scan::run(&broker.client_config(), &args).await.unwrap();

    let posted = mock.statuses(REPO, &head);
    let bodies: Vec<String> = posted.iter().map(|s| serde_json::to_string(s).unwrap()).collect();
    assert_eq!(bodies, [r#"{"context":"unit-tests","state":"pending","description":"Not yet tested"}"#]);

    let session = Session::connect(&broker.client_config()).await.unwrap();
    let delivery = session.get(PUBLIC.name).await.unwrap().expect("a job in public");
    assert_eq!(delivery.priority, Some(5));
    let message: JobMessage = serde_json::from_slice(&delivery.body).unwrap();
    let job = &message.job;
    assert_eq!(
        (job.repo.as_str(), job.sha.as_deref(), job.context.as_deref(), job.pull),
        (REPO, Some(head.as_str()), Some("unit-tests"), Some(1))
    );
    let slug = job.slug.as_deref().unwrap();
    assert!(slug.starts_with(&format!("pull-1-{}-", &head[..8])) && slug.ends_with("-unit-tests"), "{slug}");
    assert_eq!(slug.len(), "pull-1-12345678-20240315-135902-unit-tests".len(), "{slug}");
    let env: Vec<(&str, &str)> = job.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        env,
        [
            ("TEST_OS", "unit-tests"),
            ("TEST_REVISION", head.as_str()),
            ("COCKPIT_BOTS_REF", "main"),
            ("BASE_BRANCH", "main"),
            ("TEST_PULL", "1")
        ]
    );
    assert!(message.human.starts_with("pull-1      unit-tests"), "{}", message.human);
    delivery.ack().await.unwrap();
    assert!(session.get(PUBLIC.name).await.unwrap().is_none(), "exactly one job");

    // A second scan of the event sees the pending status: no second "Not yet tested", but, as
    // in Cockpit, the job again.
    tests_scan::run(&broker.client_config(), &args).await.unwrap();
    assert_eq!(mock.statuses(REPO, &head).len(), 1);
    session.get(PUBLIC.name).await.unwrap().expect("the event's context queued again").ack().await.unwrap();

    // Rescans of every open pull request (for missed webhooks) queue what has no status yet,
    // once, however often they run.
    mock.open_pull(REPO, 2, "Another change", "workbench-ci").unwrap();
    let rescan = Args { repo: REPO.into(), publish: true, scan: args.scan.clone(), ..Args::default() };
    for _ in 0..3 {
        tests_scan::run(&broker.client_config(), &rescan).await.unwrap();
    }
    let delivery = session.get(PUBLIC.name).await.unwrap().expect("a job for the new pull request");
    let message: JobMessage = serde_json::from_slice(&delivery.body).unwrap();
    assert_eq!(message.job.pull, Some(2));
    delivery.ack().await.unwrap();
    assert!(session.get(PUBLIC.name).await.unwrap().is_none(), "no context queued twice");
}

/// A repository with more open pull requests than a page of GitHub's list holds: a scan of
/// them all follows the `Link` header to every page and tests every one.
#[tokio::test(flavor = "multi_thread")]
async fn a_scan_of_every_open_pull_request_reads_every_page() {
    let dir = tempfile::tempdir().unwrap();
    let (secrets, _) = secrets::generate(&dir.path().join("secrets"), false).unwrap();
    let token = std::fs::read_to_string(secrets.github_token()).unwrap();
    let mock = MockGitHub::start(&dir.path().join("github"), &token).await.unwrap();
    mock.add_repo(REPO, &workspace("fixtures/repos/passing")).unwrap();
    let heads: Vec<String> = (1..=25)
        .map(|number| mock.open_pull(REPO, number, &format!("Change {number}"), "workbench-ci").unwrap())
        .collect();
    mock.set_api_faults(local::github::ApiFaults { page_limit: Some(10), ..Default::default() });
    let args = Args {
        repo: REPO.into(),
        human_readable: true,
        scan: ScanArgs {
            test_map: workspace("fixtures/testmap.toml"),
            github_api: mock.api_url(),
            github_token_file: Some(secrets.github_token()),
            testmap_inject: None,
        },
        ..Args::default()
    };
    let config = amqp::Config::new(amqp::Address::PlainLocalhost, dir.path());
    tests_scan::run(&config, &args).await.unwrap();
    for head in &heads {
        let posted = mock.statuses(REPO, head);
        assert_eq!(posted.len(), 1, "pull request at {head}: {posted:?}");
    }
    let pages = mock.requests().iter().filter(|r| r.path == format!("/repos/{REPO}/pulls")).count();
    assert_eq!(pages, 3, "three pages of ten");
}

/// A `@bots#N` context is tested with the head of bots pull request N, which the scan asks
/// GitHub for (Cockpit's `COCKPIT_BOTS_REF`).
#[tokio::test(flavor = "multi_thread")]
async fn a_bots_pull_request_context_is_tested_with_that_pull_requests_head() {
    let dir = tempfile::tempdir().unwrap();
    let (secrets, _) = secrets::generate(&dir.path().join("secrets"), false).unwrap();
    let token = std::fs::read_to_string(secrets.github_token()).unwrap();
    let mock = MockGitHub::start(&dir.path().join("github"), &token).await.unwrap();
    mock.add_repo(REPO, &workspace("fixtures/repos/passing")).unwrap();
    mock.add_repo("cockpit-project/bots", &workspace("fixtures/repos/failing")).unwrap();
    let bots_head = mock.open_pull("cockpit-project/bots", 1234, "New bots", "cockpit-project").unwrap();
    mock.open_pull(REPO, 1, "A change", "workbench-ci").unwrap();
    let scanner = tests_scan::Scanner::load(&ScanArgs {
        test_map: workspace("fixtures/testmap.toml"),
        github_api: mock.api_url(),
        github_token_file: Some(secrets.github_token()),
        testmap_inject: Some("main/fedora-44@bots#1234".into()),
    })
    .unwrap();
    let request = tests_scan::Request {
        repo: REPO.into(),
        target: tests_scan::Target::Number(1),
        contexts: vec!["fedora-44@bots#1234".into()],
        mode: tests_scan::Mode::Dry,
    };
    let jobs = scanner.scan(&request, None).await.unwrap();
    let refs: Vec<&str> = jobs.iter().map(|message| message.job.env["COCKPIT_BOTS_REF"].as_str()).collect();
    assert_eq!(refs, [bots_head.as_str()]);
}
