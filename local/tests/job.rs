//! job-runner against the mock GitHub (statuses, git) and the in-process S3 (log,
//! attachments), in both sandboxes: Cockpit's status sequence and log layout for passing,
//! failing, broken and cancelled jobs, and what a job may see of its worker. The container
//! tests run where podman is installed and say why they are skipped elsewhere.

#[path = "support/browser.rs"]
mod browser;

use std::io::Write;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

use amqp::Job;
use github::StatusUpdate;
use local::github::StatusFaults;
use local::images::BASE as BASE_IMAGE;
use local::podman::PodmanService;
use local::{MockGitHub, S3Server, secrets};
use tasks::job::{self, Outcome};
use tasks::runner_config::RunnerConfig;

const HOST: &str = "worker-1";
const SECRET: &str = "s3cret-value-for-the-job";

fn workspace(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[derive(Clone, Copy, PartialEq)]
enum Sandbox {
    Process,
    Container,
}

struct World {
    mock: MockGitHub,
    s3: S3Server,
    config: RunnerConfig,
    token_file: PathBuf,
    dir: tempfile::TempDir,
    _podman: Option<PodmanService>,
}

/// The world for `sandbox`.
async fn world(sandbox: Sandbox, clone_url: Option<&str>) -> World {
    let dir = tempfile::tempdir().unwrap();
    let podman = match sandbox {
        Sandbox::Process => None,
        Sandbox::Container => {
            Some(PodmanService::start(&dir.path().join("podman")).await.unwrap_or_else(|e| panic!("{e}")))
        }
    };
    if let Some(podman) = &podman {
        local::images::ensure_base(podman).unwrap();
    }
    let (secrets, _) = secrets::generate(&dir.path().join("secrets"), false).unwrap();
    let token = std::fs::read_to_string(secrets.github_token()).unwrap();
    let mock = MockGitHub::start(&dir.path().join("github"), &token).await.unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"), &secrets, false).await.unwrap();
    let sandbox = match &podman {
        Some(podman) => local::worker::Sandbox::Container { socket: podman.socket(), image: BASE_IMAGE, run_args: &[] },
        None => local::worker::Sandbox::Process,
    };
    let forge = local::worker::Forge::mock(&mock, &secrets);
    let file = local::worker::RunnerConfig::local(&forge, &s3, &secrets, sandbox).write(dir.path()).unwrap();
    // A secret jobs may ask for.
    let extra = format!(
        r#"[container.secrets]
image-upload = ["--volume=%{{image-upload}}:%{{image-upload}}:ro", "--env=SECRET_FILE=%{{image-upload}}"]
[secrets.inline]
image-upload = "{SECRET}"
"#
    );
    std::fs::OpenOptions::new().append(true).open(&file).unwrap().write_all(extra.as_bytes()).unwrap();
    if let Some(url) = clone_url {
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, text.replace(&mock.clone_url(), url)).unwrap();
    }
    let config = RunnerConfig::load(Some(&file)).unwrap();
    World { mock, s3, config, token_file: secrets.github_token(), dir, _podman: podman }
}

/// The job tests-scan queues for pull request #1 of `repo` at `sha`, context `unit-tests`.
fn job(repo: &str, sha: &str) -> Job {
    let job = Job {
        secrets: vec!["github-token".into(), "image-download".into()],
        ..Job::for_pull(repo, sha, 1, "unit-tests", "20261123-000000")
    };
    job.with_env(&[
        ("TEST_OS", "unit-tests"),
        ("TEST_REVISION", sha),
        ("COCKPIT_BOTS_REF", "main"),
        ("BASE_BRANCH", "main"),
        ("TEST_PULL", "1"),
    ])
}

/// A job's argv.
fn command(argv: &[&str]) -> Option<Vec<String>> {
    Some(argv.iter().map(|arg| (*arg).to_owned()).collect())
}

struct Ran {
    repo: String,
    outcome: Outcome,
    statuses: Vec<StatusUpdate>,
    log: String,
    log_dir: String,
}

impl World {
    /// Runs the job for `fixture`'s pull request #1 (changed by `edit`), cancelling it once it
    /// is in progress if `cancel` says so.
    async fn run(&self, fixture: &str, edit: impl FnOnce(&mut Job), cancel: bool) -> Ran {
        // A repository of its own for every run, so that runs do not see each other's statuses.
        let repo = format!("workbench-ci/{fixture}-{}", unique());
        self.mock.add_repo(&repo, &workspace(&format!("fixtures/repos/{fixture}"))).unwrap();
        let head = self.mock.open_pull(&repo, 1, "A change", "workbench-ci").unwrap();
        let mut job = job(&repo, &head);
        edit(&mut job);
        let scratch = self.dir.path().join(format!("scratch-{}", unique()));
        std::fs::create_dir_all(&scratch).unwrap();
        let cancel_job = CancellationToken::new();
        let run = job::run(&self.config, &job, HOST, &scratch, cancel_job.clone());
        let canceller = async {
            if cancel {
                while !self.mock.statuses(&repo, &head).iter().any(|s| s.description.starts_with("In progress")) {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                cancel_job.cancel();
            }
            std::future::pending::<()>().await
        };
        let outcome = tokio::select! {
            outcome = run => outcome.unwrap(),
            () = canceller => unreachable!(),
        };
        let log_dir = format!("{}logs/{}/", self.s3.url(), job.slug.unwrap());
        let reader = s3::Store::new(&log_dir, None, None).unwrap();
        let log = String::from_utf8(reader.get("log").await.unwrap().expect("the final log")).unwrap();
        Ran { outcome, statuses: self.mock.statuses(&repo, &head), log, log_dir, repo }
    }
}

impl World {
    /// Runs `fixture`'s pull request #1 with the command `sh -c script`, a commit having been
    /// pushed to `main` (`later.txt`) since the pull request was opened: the job rebases it.
    async fn run_after_main_moved(&self, fixture: &str, script: &str) -> Ran {
        let moved = |job: &mut Job| {
            self.mock.push_to_main(&job.repo, "later.txt", "pushed after the pull request\n").unwrap();
            job.command = command(&["sh", "-c", script]);
        };
        self.run(fixture, moved, false).await
    }
}

fn unique() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn last_status(ran: &Ran) -> Option<(&str, &str)> {
    ran.statuses.last().map(|s| (s.state.as_str(), s.description.as_str()))
}

async fn passing(sandbox: Sandbox) {
    let world = world(sandbox, None).await;
    let ran = world.run("passing", |_| {}, false).await;
    let log = &ran.log;
    assert_eq!(ran.outcome, Outcome::Success, "{log}");
    let target = Some(format!("{}log.html", ran.log_dir));
    let posted: Vec<_> =
        ran.statuses.iter().map(|s| (s.state.clone(), s.description.clone(), s.target_url.clone())).collect();
    assert_eq!(
        posted,
        [
            ("pending".into(), format!("In progress [{HOST}]"), target.clone()),
            ("success".into(), format!("Success [{HOST}]"), target),
        ]
    );
    assert!(log.contains(&format!("\n\nRunning on: {HOST}\n\n")), "{log}");
    assert!(log.contains("ok 2 checkout has README.md"), "{log}");
    assert!(log.ends_with("\n\nJob ran successfully.  :)\n"), "{log}");
    let reader = s3::Store::new(&ran.log_dir, None, None).unwrap();
    assert_eq!(
        reader.get("bogus.log").await.unwrap().as_deref(),
        Some(&b"heisenberg compensator at 99.8% efficiency\n"[..])
    );
    assert_eq!(reader.get("data/subdir-file.txt").await.unwrap().as_deref(), Some(&b"subdir-file\n"[..]));
    let page = String::from_utf8(reader.get("log.html").await.unwrap().unwrap()).unwrap();
    assert!(page.contains("<html>"));
    assert_eq!(reader.get("log.chunks").await.unwrap(), None, "streaming is over");
}

async fn failing(sandbox: Sandbox) {
    let world = world(sandbox, None).await;
    let ran = world.run("failing", |_| {}, false).await;
    let reason = "Container exited with code 1".to_owned();
    assert_eq!(ran.outcome, Outcome::Failure(reason.clone()));
    assert_eq!(last_status(&ran), Some(("failure", &*format!("{reason} [{HOST}]"))));
    assert!(ran.log.contains("not ok 1 the frobnicator is broken"), "{}", ran.log);
    assert!(ran.log.ends_with(&format!("\n*** Failure: {reason}\n")), "{}", ran.log);
}

/// With `hold-failed`, a worker's first failed job is held (a passing one is not, nor a second
/// failure) and its environment is the tests': the checkout they left, their environment, and
/// in the container sandbox a running container like theirs.
async fn held(sandbox: Sandbox) {
    let mut world = world(sandbox, None).await;
    world.config.hold_failed = true;
    let passed = world.run("passing", |_| {}, false).await;
    assert_eq!(passed.outcome, Outcome::Success, "{}", passed.log);
    assert_eq!(tasks::hold::read(world.dir.path()), None, "a passing job is not held");
    let ran = world.run("failing", |_| {}, false).await;
    assert_eq!(ran.outcome, Outcome::Failure("Container exited with code 1".into()));
    let held = tasks::hold::read(world.dir.path()).expect("the failed job is held");
    assert!(ran.log_dir.ends_with(&format!("/{}/", held.slug)), "{} is not {}", held.slug, ran.log_dir);
    let again = world.run("failing", |_| {}, false).await;
    assert!(matches!(again.outcome, Outcome::Failure(_)));
    assert_eq!(tasks::hold::read(world.dir.path()).as_ref(), Some(&held), "a worker holds one job");

    let probe = "echo \"$TEST_OS $PWD\"; test -x .cockpit-ci/run && echo has-the-checkout";
    let output = match sandbox {
        Sandbox::Process => {
            assert_eq!((held.container.as_deref(), &held.dir), (None, &held.scratch.join("checkout")));
            let env = held.env.iter().map(|(name, value)| format!("{name}={value}"));
            std::process::Command::new("env")
                .args(["-i", "--"])
                .args(env)
                .args(["sh", "-c", probe])
                .current_dir(&held.dir)
                .output()
        }
        Sandbox::Container => {
            let container = held.container.as_deref().expect("a container is left running");
            let url = format!("--url=unix://{}", world._podman.as_ref().unwrap().socket().display());
            let output = std::process::Command::new("podman")
                .args(["--remote", &url, "exec", container, "sh", "-c", probe])
                .output();
            let removed = std::process::Command::new("podman")
                .args(["--remote", &url, "rm", "-f", "-t", "0", container])
                .output();
            assert!(removed.unwrap().status.success());
            output
        }
    }
    .unwrap();
    let shown = String::from_utf8_lossy(&output.stdout);
    assert_eq!(shown, format!("unit-tests {}\nhas-the-checkout\n", held.dir.display()), "{output:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn process_the_first_failed_job_is_held_with_its_environment() {
    held(Sandbox::Process).await;
}

#[cfg_attr(not(ci), ignore = "needs podman: cargo xtask ci installs it and runs this")]
#[tokio::test(flavor = "multi_thread")]
async fn container_the_first_failed_job_is_held_with_its_environment() {
    held(Sandbox::Container).await;
}

/// As Cockpit's job-runner, a job whose pull request moved on fails with "<repo>#<n> changed".
#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_pull_request_changed_fails_so() {
    let world = world(Sandbox::Process, None).await;
    let repo = "workbench-ci/moved-on";
    let main = world.mock.add_repo(repo, &workspace("fixtures/repos/passing")).unwrap();
    world.mock.open_pull(repo, 1, "A change", "workbench-ci").unwrap();
    // The job tests an older commit than the pull request's head.
    let job = Job { command: command(&["sleep", "60"]), ..job(repo, &main) };
    let scratch = world.dir.path().join("scratch-moved-on");
    std::fs::create_dir_all(&scratch).unwrap();
    let never = CancellationToken::new();
    let outcome = job::run(&world.config, &job, HOST, &scratch, never).await.unwrap();
    let reason = format!("{repo}#1 changed");
    assert_eq!(outcome, Outcome::Failure(reason.clone()));
    let last = world.mock.statuses(repo, &main).pop().unwrap();
    assert_eq!((last.state.as_str(), last.description), ("failure", format!("{reason} [{HOST}]")));
}

/// A pull request is tested on its target as the target is now, as Cockpit's checkout-and-run
/// rebases it: a commit pushed to `main` after the pull request was opened is in the checkout,
/// under the pull request's own commit.
#[tokio::test(flavor = "multi_thread")]
async fn a_pull_request_is_tested_rebased_onto_its_target_as_it_is_now() {
    let world = world(Sandbox::Process, None).await;
    let script = "cat later.txt pull-1.txt && git log --format='%s (%cn <%ce>)'";
    let ran = world.run_after_main_moved("passing", script).await;
    assert_eq!(ran.outcome, Outcome::Success, "{}", ran.log);
    // The replayed commit is the worker's to commit; the others keep their committer.
    let seen = format!(
        "pushed after the pull request\nA change\nPull request 1 (job-runner <job-runner@{HOST}>)\n\
         Change later.txt (Workbench <workbench@localhost>)\nInitial workbench-ci/passing-"
    );
    assert!(ran.log.contains(&seen), "{}", ran.log);
}

/// The checkout's own files are the pull request's: git on the worker must not read them as
/// its configuration (a `.gitconfig` where `HOME` is), or the project's hooks would run on the
/// worker, outside the job's sandbox.
#[tokio::test(flavor = "multi_thread")]
async fn a_project_s_git_configuration_runs_nothing_on_the_worker() {
    let world = world(Sandbox::Process, None).await;
    // A rebase that replays the pull request's commit, with the project's files in place.
    let ran = world.run_after_main_moved("hostile-git", "ls -a; test ! -e fsmonitor-ran && test ! -e hook-ran").await;
    assert_eq!(ran.outcome, Outcome::Success, "{}", ran.log);
    assert!(ran.log.contains(".gitconfig"), "the checkout has the project's configuration: {}", ran.log);
}

/// A project with neither `.cockpit-ci/run` nor `test/run` fails as in Cockpit (its
/// checkout-and-run exits 1), not as an infrastructure error.
#[tokio::test(flavor = "multi_thread")]
async fn a_project_without_an_entry_point_fails() {
    let world = world(Sandbox::Process, None).await;
    let ran = world.run("no-entry-point", |_| {}, false).await;
    assert_eq!(ran.outcome, Outcome::Failure("Container exited with code 1".into()));
    assert!(ran.log.contains("\n*** Failed to execute entry point.\n"), "{}", ran.log);
    assert!(!ran.log.contains("Internal error"), "{}", ran.log);
}

/// A job gets a secret only when it asks for it, and never the worker's environment.
async fn secrets(sandbox: Sandbox) {
    let world = world(sandbox, None).await;
    let token = std::fs::read_to_string(&world.token_file).unwrap();
    let probe = world.token_file.display().to_string();
    let with_probe = |job: &mut Job, secrets: &[&str]| {
        job.secrets = secrets.iter().map(|secret| (*secret).to_owned()).collect();
        job.env.insert("PROBE".into(), probe.clone());
    };
    let asked = world.run("probe", |job| with_probe(job, &["image-upload"]), false).await;
    assert_eq!(asked.outcome, Outcome::Success, "{}", asked.log);
    assert!(asked.log.contains(&format!("secret: {SECRET}")), "{}", asked.log);
    let not_asked = world.run("probe", |job| with_probe(job, &[]), false).await;
    assert!(not_asked.log.contains("secret file: none"), "{}", not_asked.log);
    assert!(!not_asked.log.contains(SECRET), "{}", not_asked.log);
    let environment = |log: &str| -> Vec<String> {
        let start = log.find("--- environment\n").unwrap() + "--- environment\n".len();
        let end = log.find("--- end of environment").unwrap();
        log[start..end].lines().map(|line| line.split('=').next().unwrap().to_owned()).collect()
    };
    let names = environment(&not_asked.log);
    for name in ["COCKPIT_CI_LOG_URL", "TEST_ATTACHMENTS", "TEST_OS", "PROBE"] {
        assert!(names.iter().any(|n| n == name), "{name} is set for the job: {names:?}");
    }
    for name in ["CARGO", "RUST_LOG", "GITHUB_API", "AMQP_SERVER", "COCKPIT_GITHUB_TOKEN_FILE", "CARGO_MANIFEST_DIR"] {
        assert!(!names.iter().any(|n| n == name), "the worker's {name} leaked into the job: {names:?}");
    }
    assert!(!not_asked.log.contains(token.trim()), "the worker's GitHub token leaked");
    if sandbox == Sandbox::Container {
        assert!(not_asked.log.contains("probe: unreadable"), "a container sees no worker file: {}", not_asked.log);
    }
}

async fn cancelled(sandbox: Sandbox) {
    let world = world(sandbox, None).await;
    let ran = world.run("passing", |job| job.command = command(&["sh", "-c", "echo started; sleep 600"]), true).await;
    assert_eq!(ran.outcome, Outcome::Cancelled, "{}", ran.log);
    assert_eq!(last_status(&ran), Some(("error", &*format!("Cancelled [{HOST}]"))));
    assert!(ran.log.ends_with("*** Job cancelled\n"), "{}", ran.log);
}

/// A hostile project in a container with a process limit: it finds none of the worker's
/// credentials, writes nothing outside its checkout on the host, its fork bomb stops at the
/// limit, running forever ends at the job's timeout, and the next job runs as usual.
#[cfg_attr(not(ci), ignore = "needs podman: cargo xtask ci installs it and runs this")]
#[tokio::test(flavor = "multi_thread")]
async fn container_a_hostile_job_gets_nothing_and_its_limits_hold() {
    let mut world = world(Sandbox::Container, None).await;
    let file = world.dir.path().join("job-runner.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("run-args = []", r#"run-args = ["--pids-limit=128"]"#)).unwrap();
    world.config = RunnerConfig::load(Some(&file)).unwrap();
    let probe = world.token_file.display().to_string();
    let ran = world
        .run("hostile", |job| *job = Job { timeout: Some(1), ..job.clone().with_env(&[("PROBE", &probe)]) }, false)
        .await;
    let log = &ran.log;
    assert_eq!(ran.outcome, Outcome::Failure("Timeout after 1 minutes".into()), "{log}");
    assert!(!log.contains("found: "), "{log}");
    assert!(log.contains("credentials in the environment: none\n"), "{log}");
    assert!(log.contains("fork bomb ended: 2\n"), "the bomb ran out of processes: {log}");
    let running: usize =
        log.split("processes running: ").nth(1).and_then(|rest| rest.lines().next()).unwrap().parse().unwrap();
    assert!(running <= 128, "{running} processes: {log}");
    assert!(log.contains("now running forever"), "{log}");
    let escaped: Vec<_> = walk(world.dir.path()).into_iter().filter(|path| path.ends_with("escaped")).collect();
    assert!(escaped.is_empty(), "written outside the checkout: {escaped:?}");

    let next = world.run("passing", |_| {}, false).await;
    assert_eq!(next.outcome, Outcome::Success, "{}", next.log);
    let socket = world.config.container.socket();
    assert_eq!(
        tasks::container::remove_leftovers(&socket, HOST, world.dir.path()).await,
        Ok(0),
        "no job container is left"
    );
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .flat_map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => walk(&entry.path()),
            _ => vec![entry.path()],
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn process_a_passing_job_posts_cockpits_statuses_and_leaves_its_log_and_attachments() {
    passing(Sandbox::Process).await;
}

#[cfg_attr(not(ci), ignore = "needs podman: cargo xtask ci installs it and runs this")]
#[tokio::test(flavor = "multi_thread")]
async fn container_a_passing_job_posts_cockpits_statuses_and_leaves_its_log_and_attachments() {
    passing(Sandbox::Container).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn process_a_failing_job_ends_in_failure_with_its_reason() {
    failing(Sandbox::Process).await;
}

#[cfg_attr(not(ci), ignore = "needs podman: cargo xtask ci installs it and runs this")]
#[tokio::test(flavor = "multi_thread")]
async fn container_a_failing_job_ends_in_failure_with_its_reason() {
    failing(Sandbox::Container).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn process_a_job_sees_only_the_secrets_it_asks_for() {
    secrets(Sandbox::Process).await;
}

#[cfg_attr(not(ci), ignore = "needs podman: cargo xtask ci installs it and runs this")]
#[tokio::test(flavor = "multi_thread")]
async fn container_a_job_sees_only_the_secrets_it_asks_for() {
    secrets(Sandbox::Container).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn process_a_cancelled_job_says_so() {
    cancelled(Sandbox::Process).await;
}

#[cfg_attr(not(ci), ignore = "needs podman: cargo xtask ci installs it and runs this")]
#[tokio::test(flavor = "multi_thread")]
async fn container_a_cancelled_job_says_so() {
    cancelled(Sandbox::Container).await;
}

/// The status POSTs job-runner made to `repo`, refused or not.
fn status_posts(mock: &MockGitHub, repo: &str) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.starts_with(&format!("/repos/{repo}/statuses/")))
        .count()
}

/// GitHub answering 500 and 502 for a while, and slowly: statuses are retried with Cockpit's
/// back-off and all arrive.
#[tokio::test(flavor = "multi_thread")]
async fn statuses_ride_out_github_errors_and_slow_answers() {
    let world = world(Sandbox::Process, None).await;
    let delay = std::time::Duration::from_millis(500);
    world.mock.set_status_faults(StatusFaults { refuse: [500, 502, 500, 502].into(), delay });
    let ran = world.run("passing", |_| {}, false).await;
    assert_eq!(ran.outcome, Outcome::Success, "{}", ran.log);
    let posted: Vec<_> = ran.statuses.iter().map(|s| (s.state.as_str(), s.description.as_str())).collect();
    assert_eq!(posted, [("pending", &*format!("In progress [{HOST}]")), ("success", &*format!("Success [{HOST}]"))]);
    assert_eq!(status_posts(&world.mock, &ran.repo), 6, "four refused, two taken");
}

/// An outage longer than Cockpit's five tries: the "In progress" is given up, the job runs all
/// the same, and its final status is tried until GitHub takes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_final_status_outlasts_a_github_outage_longer_than_cockpits_tries() {
    let world = world(Sandbox::Process, None).await;
    world.mock.set_status_faults(StatusFaults { refuse: [502; 7].into(), ..StatusFaults::default() });
    let ran = world.run("passing", |_| {}, false).await;
    assert_eq!(ran.outcome, Outcome::Success, "{}", ran.log);
    let posted: Vec<_> = ran.statuses.iter().map(|s| (s.state.as_str(), s.description.as_str())).collect();
    assert_eq!(posted, [("success", &*format!("Success [{HOST}]"))]);
    assert_eq!(status_posts(&world.mock, &ran.repo), 8, "five tries of \"In progress\", three of the outcome");
}

/// S3 going away while a job runs: the job still ends with a final status, an error saying its
/// log could not be stored, and job-runner returns as after any job (the worker goes on).
#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_log_cannot_be_stored_still_ends_with_an_error_saying_so() {
    let World { mock, s3, config, dir, .. } = world(Sandbox::Process, None).await;
    let repo = "workbench-ci/s3-away";
    mock.add_repo(repo, &workspace("fixtures/repos/passing")).unwrap();
    let head = mock.open_pull(repo, 1, "A change", "workbench-ci").unwrap();
    let job = Job { command: command(&["sh", "-c", "sleep 2; echo finished"]), ..job(repo, &head) };
    let scratch = dir.path().join("scratch-s3-away");
    std::fs::create_dir_all(&scratch).unwrap();
    let never = CancellationToken::new();
    let run = job::run(&config, &job, HOST, &scratch, never);
    let mut s3 = Some(s3);
    let outage = async {
        while !mock.statuses(repo, &head).iter().any(|s| s.description.starts_with("In progress")) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        drop(s3.take());
        std::future::pending::<()>().await
    };
    let outcome = tokio::select! {
        outcome = run => outcome.unwrap(),
        () = outage => unreachable!(),
    };
    assert!(matches!(&outcome, Outcome::LogNotStored(err) if err.contains("S3 PUT")), "{outcome:?}");
    let last = mock.statuses(repo, &head).pop().unwrap();
    assert_eq!((last.state.as_str(), last.description), ("error", format!("{} [{HOST}]", job::LOG_NOT_STORED)));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_repository_is_an_internal_error() {
    let world = world(Sandbox::Process, Some("http://127.0.0.1:9/")).await;
    let ran = world.run("passing", |_| {}, false).await;
    assert!(matches!(ran.outcome, Outcome::Error(_)), "{:?}", ran.outcome);
    assert_eq!(last_status(&ran), Some(("error", &*format!("Internal error [{HOST}]"))));
    assert!(ran.log.contains("git clone failed"), "the log says why: {}", ran.log);
}

#[cfg_attr(not(ci), ignore = "needs podman: cargo xtask ci installs it and runs this")]
#[tokio::test(flavor = "multi_thread")]
async fn container_the_project_names_its_image_and_a_missing_image_is_an_internal_error() {
    let world = world(Sandbox::Container, None).await;
    let ran = world.run("container", |_| {}, false).await;
    assert_eq!(ran.outcome, Outcome::Success, "{}", ran.log);
    assert!(ran.log.contains(&format!("Using container image: {BASE_IMAGE}\n")), "{}", ran.log);

    let ran = world.run("passing", |job| job.container = Some("localhost/workbench/no-such-image".into()), false).await;
    assert!(matches!(ran.outcome, Outcome::Error(_)), "{:?}", ran.outcome);
    assert_eq!(last_status(&ran), Some(("error", &*format!("Internal error [{HOST}]"))));
    assert!(ran.log.contains("Failed to create container from localhost/workbench/no-such-image"), "{}", ran.log);
}

/// `tasks job-runner json`: the same job run from the command line; a failed test is a normal
/// end (exit 0), as in Cockpit.
#[tokio::test(flavor = "multi_thread")]
async fn the_job_runner_command_runs_a_job_to_its_final_status() {
    let world = world(Sandbox::Process, None).await;
    let binary = local::Binaries::of_test_build().tasks;
    assert!(binary.is_file(), "{} is missing: build it with `cargo build -p tasks`", binary.display());
    for (fixture, state) in [("passing", "success"), ("failing", "failure")] {
        let repo = format!("workbench-ci/{fixture}-cli");
        world.mock.add_repo(&repo, &workspace(&format!("fixtures/repos/{fixture}"))).unwrap();
        let head = world.mock.open_pull(&repo, 1, "A change", "workbench-ci").unwrap();
        let job = serde_json::to_string(&job(&repo, &head)).unwrap();
        let status = tokio::process::Command::new(&binary)
            .args(["job-runner", "--hostname", "cli", "--job-runner-config"])
            .arg(world.dir.path().join("job-runner.toml"))
            .args(["json", &job])
            .status()
            .await
            .unwrap();
        assert!(status.success(), "{fixture}: {status}");
        let last = world.mock.statuses(&repo, &head).pop().unwrap();
        assert_eq!((last.state.as_str(), last.description.ends_with("[cli]")), (state, true), "{fixture}");
    }
}

/// A job queued twice for one run (an event's scan and a rescan's) whose twin already said "In
/// progress": it runs nothing, posts nothing, and says whose run it is.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_run_another_job_owns_posts_nothing_and_runs_nothing() {
    let World { mock, config, dir, token_file, .. } = world(Sandbox::Process, None).await;
    let repo = "workbench-ci/twins";
    mock.add_repo(repo, &workspace("fixtures/repos/passing")).unwrap();
    let head = mock.open_pull(repo, 1, "A change", "workbench-ci").unwrap();
    let token = std::fs::read_to_string(token_file).unwrap();
    let github = github::GitHub::new(&mock.api_url(), token.trim()).unwrap();
    let twin = "https://logs.example/pull-1-twin/log.html";
    for (description, target_url) in [("Not yet tested", None), ("In progress [worker-2]", Some(twin))] {
        let status = StatusUpdate {
            context: "unit-tests".into(),
            state: "pending".into(),
            description: description.into(),
            target_url: target_url.map(Into::into),
        };
        github.post_status(repo, &head, &status).await.unwrap();
    }
    let marker = dir.path().join("ran");
    let command = format!("touch {}", marker.display());
    let job = Job { command: self::command(&["sh", "-c", &command]), ..job(repo, &head) };
    let scratch = dir.path().join("scratch-twin");
    std::fs::create_dir_all(&scratch).unwrap();
    let outcome = job::run(&config, &job, HOST, &scratch, CancellationToken::new()).await.unwrap();
    assert_eq!(outcome, Outcome::Superseded(twin.into()));
    assert_eq!(mock.statuses(repo, &head).len(), 2, "nothing posted");
    assert!(!marker.exists(), "the tests did not run");
}

/// GitHub away when the job asks which image to use: the job is put off (a transient error for
/// its worker) before it says "In progress", rather than ended with an internal error.
#[cfg_attr(not(ci), ignore = "needs podman: cargo xtask ci installs it and runs this")]
#[tokio::test(flavor = "multi_thread")]
async fn container_github_away_before_a_job_starts_puts_it_off_without_a_status() {
    use retry::Transient;
    let World { mock, config, dir, .. } = world(Sandbox::Container, None).await;
    let repo = "workbench-ci/image-outage";
    mock.add_repo(repo, &workspace("fixtures/repos/container")).unwrap();
    let head = mock.open_pull(repo, 1, "A change", "workbench-ci").unwrap();
    // Without a pull request to read, the image is the first thing asked of GitHub.
    let job = Job { pull: None, ..job(repo, &head) };
    let outage = std::time::Duration::from_secs(120);
    mock.set_api_faults(local::github::ApiFaults::outage(&[(outage, local::github::Outage::Status(502))]));
    let scratch = dir.path().join("scratch-image-outage");
    std::fs::create_dir_all(&scratch).unwrap();
    let run = job::run(&config, &job, HOST, &scratch, CancellationToken::new()).await;
    let err = run.expect_err("GitHub answered 502 throughout");
    assert!(err.is_transient(), "{err}");
    assert!(mock.statuses(repo, &head).is_empty(), "no status while GitHub is away");
    let asked = mock.requests().iter().filter(|r| r.path.contains("/contents/.cockpit-ci/container")).count();
    assert_eq!(asked, 5, "Cockpit's five tries");
}

/// `[logs] driver = "local"` (Cockpit's default): the log and its viewer go into a directory of
/// this machine, and the statuses link to where `[logs.local] link` serves it.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_with_local_logs_writes_them_into_their_directory() {
    let World { mock, mut config, dir, .. } = world(Sandbox::Process, None).await;
    let logs = dir.path().join("logs");
    config.logs.driver = tasks::runner_config::LogsDriver::Local;
    config.logs.local =
        tasks::runner_config::LogsLocal { dir: logs.display().to_string(), link: "http://127.0.0.1:8000/".into() };
    let repo = "workbench-ci/local-logs";
    mock.add_repo(repo, &workspace("fixtures/repos/passing")).unwrap();
    let head = mock.open_pull(repo, 1, "A change", "workbench-ci").unwrap();
    let job = job(repo, &head);
    let slug = job.slug.clone().unwrap();
    let scratch = dir.path().join("scratch-local-logs");
    std::fs::create_dir_all(&scratch).unwrap();
    let outcome = job::run(&config, &job, HOST, &scratch, CancellationToken::new()).await.unwrap();
    assert_eq!(outcome, Outcome::Success);
    let log = std::fs::read_to_string(logs.join(&slug).join("log")).unwrap();
    assert!(log.ends_with("Job ran successfully.  :)\n"), "{log}");
    for name in ["log.html", "index.html"] {
        assert!(logs.join(&slug).join(name).is_file(), "{name}");
    }
    assert!(!logs.join(&slug).join("log.chunks").exists(), "a complete log has no chunk list");
    let last = mock.statuses(repo, &head).pop().unwrap();
    assert_eq!(last.target_url.as_deref(), Some(&*format!("http://127.0.0.1:8000/{slug}/log.html")));
}

/// The job's "Files" page and its viewer in Chromium, for attachments named like markup and
/// like links: no markup of theirs reaches the page, no script runs, each name shows as text,
/// and each link opens its own file.
#[tokio::test(flavor = "multi_thread")]
async fn process_hostile_attachment_names_stay_text_in_a_browser() {
    const HOSTILE: [(&str, &str); 4] = [
        ("<img src=x onerror=alert(1)>", "one"),
        ("\"><svg onload=alert(2)>.log", "two"),
        ("a b#c?d&e.txt", "three"),
        ("%3Cb%3E.txt", "four"),
    ];
    let world = world(Sandbox::Process, None).await;
    let ran = world.run("hostile-names", |_| {}, false).await;
    assert_eq!(ran.outcome, Outcome::Success, "{}", ran.log);
    let browser = browser::Browser::start().await;
    browser.open(&format!("{}index.html", ran.log_dir)).await;
    assert_eq!(browser.dialog().await, None, "the Files page opened a dialog: a name ran as script");
    let injected = browser.eval("return document.querySelectorAll('img, svg, script').length").await;
    assert_eq!(injected, serde_json::json!(0), "a name became markup");
    let links = browser.eval("return [...document.querySelectorAll('li a')].map(a => [a.textContent, a.href])").await;
    let links: Vec<(String, String)> = serde_json::from_value(links).unwrap();
    let mut names: Vec<&str> = HOSTILE.iter().map(|(name, _)| *name).chain(["log", "log.html"]).collect();
    names.sort_unstable();
    assert_eq!(links.iter().map(|(text, _)| text.as_str()).collect::<Vec<_>>(), names);
    browser.screenshot("attachments-with-hostile-names").await;
    for (name, content) in HOSTILE {
        let (_, href) = links.iter().find(|(text, _)| text == name).unwrap();
        browser.open(href).await;
        assert_eq!(browser.dialog().await, None, "{href} opened a dialog");
        assert_eq!(browser.text("body").await, content, "the link of {name:?} ({href}) opens another file");
    }
    browser.open(&format!("{}log.html", ran.log_dir)).await;
    browser.wait_for_text("#state", "finished", |state| state == "finished").await;
    assert!(browser.text("#log").await.contains("ok 1 attachments with hostile names written"));
    // Checked last, when every page has had its time to run what it would.
    assert_eq!(browser.dialog().await, None, "a page opened a dialog: a name ran as script");
    browser.close().await;
}
