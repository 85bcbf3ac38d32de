//! job-runner's process sandbox against the mock GitHub (statuses, git) and the in-process S3
//! (log, attachments): Cockpit's status sequence and log layout for passing, failing and broken
//! jobs.

use std::path::PathBuf;

use amqp::Job;
use github::StatusUpdate;
use local::{MockGitHub, S3Server, secrets};
use tasks::job::{self, Outcome};
use tasks::runner_config::RunnerConfig;

const HOST: &str = "worker-1";

fn workspace(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

struct World {
    mock: MockGitHub,
    s3: S3Server,
    config: RunnerConfig,
    dir: tempfile::TempDir,
}

async fn world(clone_url: Option<&str>) -> World {
    let dir = tempfile::tempdir().unwrap();
    let (secrets, _) = secrets::generate(&dir.path().join("secrets"), false).unwrap();
    let token = std::fs::read_to_string(secrets.github_token()).unwrap();
    let mock = MockGitHub::start(&dir.path().join("github"), &token).await.unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"), &secrets, false).await.unwrap();
    let file = dir.path().join("job-runner.toml");
    let toml = format!(
        r#"
[logs]
driver = "s3"
[logs.s3]
url = "{s3}logs"
key = [{{file = "{keys}/localhost"}}]
[forge.github]
api-url = "{api}"
clone-url = "{clone}"
post = true
token = [{{file = "{token}"}}]
"#,
        s3 = s3.url(),
        keys = secrets.s3_keys_dir().display(),
        api = mock.api_url(),
        clone = clone_url.map_or_else(|| mock.clone_url(), str::to_owned),
        token = secrets.github_token().display(),
    );
    std::fs::write(&file, toml).unwrap();
    let config = RunnerConfig::load(Some(&file)).unwrap();
    World { mock, s3, config, dir }
}

fn job(repo: &str, sha: &str) -> Job {
    serde_json::from_value(serde_json::json!({
        "repo": repo, "sha": sha, "context": "unit-tests", "pull": 1, "report": null, "command_subject": null,
        "slug": format!("pull-1-{}-20261123-000000-unit-tests", &sha[..8]),
        "env": {"TEST_OS": "unit-tests", "TEST_REVISION": sha, "COCKPIT_BOTS_REF": "main", "BASE_BRANCH": "main", "TEST_PULL": "1"},
        "secrets": ["github-token", "image-download"],
    }))
    .unwrap()
}

impl World {
    async fn run(&self, fixture: &str) -> (Outcome, Vec<StatusUpdate>, String, String) {
        let repo = format!("workbench-ci/{fixture}");
        self.mock.add_repo(&repo, &workspace(&format!("fixtures/repos/{fixture}"))).unwrap();
        let head = self.mock.open_pull(&repo, 1, "A change", "workbench-ci").unwrap();
        let job = job(&repo, &head);
        let scratch = self.dir.path().join(format!("scratch-{fixture}"));
        std::fs::create_dir_all(&scratch).unwrap();
        let outcome = job::run(&self.config, &job, HOST, &scratch).await.unwrap();
        let log_dir = format!("{}logs/{}/", self.s3.url(), job.slug.unwrap());
        let reader = s3::Store::new(&log_dir, None, None).unwrap();
        let log = String::from_utf8(reader.get("log").await.unwrap().expect("the final log")).unwrap();
        (outcome, self.mock.statuses(&repo, &head), log, log_dir)
    }
}

fn statuses(posted: &[StatusUpdate]) -> Vec<(String, String, Option<String>)> {
    posted.iter().map(|s| (s.state.clone(), s.description.clone(), s.target_url.clone())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_passing_job_posts_cockpits_statuses_and_leaves_its_log_and_attachments() {
    let world = world(None).await;
    let (outcome, posted, log, log_dir) = world.run("passing").await;
    assert_eq!(outcome, Outcome::Success, "{log}");
    let target = Some(format!("{log_dir}log.html"));
    assert_eq!(
        statuses(&posted),
        [
            ("pending".into(), format!("In progress [{HOST}]"), target.clone()),
            ("success".into(), format!("Success [{HOST}]"), target),
        ]
    );
    assert!(log.contains(&format!("\n\nRunning on: {HOST}\n\n")), "{log}");
    assert!(log.contains("ok 2 checkout has README.md"), "{log}");
    assert!(log.ends_with("\n\nJob ran successfully.  :)\n"), "{log}");
    let reader = s3::Store::new(&log_dir, None, None).unwrap();
    assert_eq!(
        reader.get("bogus.log").await.unwrap().as_deref(),
        Some(&b"heisenberg compensator at 99.8% efficiency\n"[..])
    );
    assert_eq!(reader.get("data/subdir-file.txt").await.unwrap().as_deref(), Some(&b"subdir-file\n"[..]));
    let page = String::from_utf8(reader.get("log.html").await.unwrap().unwrap()).unwrap();
    assert!(page.contains("<html>"));
    assert_eq!(reader.get("log.chunks").await.unwrap(), None, "streaming is over");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_job_ends_in_failure_with_its_reason() {
    let world = world(None).await;
    let (outcome, posted, log, _) = world.run("failing").await;
    let reason = "Container exited with code 1".to_owned();
    assert_eq!(outcome, Outcome::Failure(reason.clone()));
    assert_eq!(
        posted.last().map(|s| (s.state.as_str(), s.description.as_str())),
        Some(("failure", &*format!("{reason} [{HOST}]")))
    );
    assert!(log.contains("not ok 1 the frobnicator is broken"), "{log}");
    assert!(log.ends_with(&format!("\n*** Failure: {reason}\n")), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_repository_is_an_internal_error() {
    let world = world(Some("http://127.0.0.1:9/")).await;
    let (outcome, posted, log, _) = world.run("passing").await;
    assert!(matches!(outcome, Outcome::Error(_)), "{outcome:?}");
    assert_eq!(
        posted.last().map(|s| (s.state.as_str(), s.description.as_str())),
        Some(("error", &*format!("Internal error [{HOST}]")))
    );
    assert!(log.contains("git clone failed"), "the log says why: {log}");
}
