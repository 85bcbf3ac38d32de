//! job-runner: runs one job the way Cockpit's does (cockpit-protocol.md 4.3-4.7): resolve what
//! to test, post "In progress [host]", stream the log to S3, run the project's tests on a fresh
//! checkout, upload attachments, post the outcome.
//!
//! This is the `process` sandbox: a child process in a scratch checkout, for machines without
//! podman.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use amqp::Job;
use github::{GitHub, StatusUpdate};
use tokio::io::AsyncReadExt;

use crate::log_stream::LogStream;
use crate::runner_config::{RunnerConfig, S3Key};

/// Cockpit's default job timeout, in minutes.
const DEFAULT_TIMEOUT_MINUTES: u64 = 120;

/// How a job ended, as reported on GitHub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The test failed: the text of the failure status.
    Failure(String),
    /// The infrastructure failed, not the test.
    Error(String),
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job-runner: {0}")]
    Config(String),
    #[error(transparent)]
    GitHub(#[from] github::Error),
    #[error(transparent)]
    S3(#[from] s3::Error),
}

/// What was resolved about the job before it runs.
struct Subject {
    repo: String,
    sha: String,
    rebase: Option<String>,
}

/// Runs `job` on this host, called `hostname` in statuses and the log.
pub async fn run(config: &RunnerConfig, job: &Job, hostname: &str, scratch: &Path) -> Result<Outcome, JobError> {
    let forge_name = job.forge.clone().unwrap_or_else(|| config.forge.default.clone());
    let forge =
        config.forge.forges.get(&forge_name).ok_or_else(|| JobError::Config(format!("no forge {forge_name:?}")))?;
    let token = forge.token.clone().unwrap_or_default();
    let github = GitHub::new(forge.api_url.trim_end_matches('/'), token.trim())?;
    let subject = resolve(&github, job).await?;

    let context = job.context.clone();
    let (shown_context, short_sha) = (context.as_deref().unwrap_or("-"), &subject.sha[..12.min(subject.sha.len())]);
    let title = job.title.clone().unwrap_or_else(|| format!("{shown_context}@{}#{short_sha}", job.repo));
    let slug = job.slug.clone().unwrap_or_else(|| format!("{}/{shown_context}/{short_sha}", job.repo));
    let prefix = slug.replace("//", "--").replace(':', "-");
    let s3 = &config.logs.s3;
    let link = format!("{}/{prefix}/", s3.proxy_url.as_deref().unwrap_or(&s3.url).trim_end_matches('/'));
    let log_url = format!("{link}log.html");
    let key = match &s3.key {
        S3Key::Text(text) => s3::Key::parse(text),
        S3Key::Table { access, secret } => Some(s3::Key { access: access.clone(), secret: secret.clone() }),
    };
    let mut store = s3::Store::new(
        &format!("{}/{prefix}/", s3.url.trim_end_matches('/')),
        key,
        s3.ca.as_deref().map(str::as_bytes),
    )?;
    if !s3.acl.is_empty() {
        store = store.with_acl(&s3.acl);
    }
    let header = format!(
        "{title}\n\nRunning on: {hostname}\n\nJob({})\n\n",
        serde_json::to_string_pretty(job).unwrap_or_default()
    );
    let mut log = LogStream::start(store, &header).await?;
    let post = |state: &str, description: String| {
        let status = context.clone().map(|context| StatusUpdate {
            context,
            state: state.to_owned(),
            description: format!("{description} [{hostname}]"),
            target_url: Some(log_url.clone()),
        });
        let (github, repo, sha) = (github.clone(), subject.repo.clone(), subject.sha.clone());
        async move {
            match (status, forge.post) {
                (Some(status), true) => github.post_status(&repo, &sha, &status).await,
                _ => Ok(()),
            }
        }
    };
    post("pending", "In progress".into()).await?;

    let attachments = scratch.join("attachments");
    let outcome = match execute(job, &subject, &forge.clone_url, scratch, &attachments, &log_url, &mut log).await {
        Ok(outcome) => outcome,
        Err(err) => Outcome::Error(err),
    };
    upload_attachments(&attachments, &attachments, &mut log).await?;
    match &outcome {
        Outcome::Success => {
            post("success", "Success".into()).await?;
            log.write(b"\n\nJob ran successfully.  :)\n").await?;
        }
        Outcome::Failure(message) => {
            log.write(format!("\n*** Failure: {message}\n").as_bytes()).await?;
            post("failure", message.clone()).await?;
        }
        Outcome::Error(message) => {
            log.write(format!("\n*** Internal error: {message}\n").as_bytes()).await?;
            post("error", "Internal error".into()).await?;
        }
    }
    log.close().await?;
    Ok(outcome)
}

async fn resolve(github: &GitHub, job: &Job) -> Result<Subject, JobError> {
    if let Some(number) = job.pull {
        let pull = github
            .pull(&job.repo, number)
            .await?
            .ok_or_else(|| JobError::Config(format!("{}#{number} does not exist", job.repo)))?;
        let sha = job.sha.clone().unwrap_or(pull.head.sha);
        let rebase = job.target.clone().or(Some(pull.base.branch));
        return Ok(Subject { repo: job.repo.clone(), sha, rebase });
    }
    if let Some(sha) = &job.sha {
        return Ok(Subject { repo: job.repo.clone(), sha: sha.clone(), rebase: job.target.clone() });
    }
    let branch = match &job.branch {
        Some(branch) => branch.clone(),
        None => github.default_branch(&job.repo).await?,
    };
    Ok(Subject { repo: job.repo.clone(), sha: github.branch_sha(&job.repo, &branch).await?, rebase: None })
}

/// Checks out the code under test and runs its tests, streaming their output into the log.
/// `Err` is an infrastructure failure.
async fn execute(
    job: &Job,
    subject: &Subject,
    clone_url: &str,
    scratch: &Path,
    attachments: &Path,
    log_url: &str,
    log: &mut LogStream<s3::Store>,
) -> Result<Outcome, String> {
    let checkout = scratch.join("checkout");
    std::fs::create_dir_all(attachments).map_err(|e| format!("cannot create {}: {e}", attachments.display()))?;
    // A cross-project context runs the other project's tests, at its branch, unrebased.
    let (repo, revision, rebase) = match &job.command_subject {
        Some(other) => (other.repo.clone(), other.branch.clone().unwrap_or_else(|| "main".into()), None),
        None => (subject.repo.clone(), subject.sha.clone(), subject.rebase.clone()),
    };
    let git = |args: &[&str]| -> Vec<String> { ["git"].iter().chain(args).map(|arg| arg.to_string()).collect() };
    let url = format!("{clone_url}{repo}");
    let target = checkout.display().to_string();
    // Each step runs in a directory: the clone in the scratch directory, the rest in the checkout.
    let mut steps = vec![
        (scratch, git(&["clone", "--quiet", "--", &url, &target])),
        (&checkout, git(&["fetch", "--quiet", "--", "origin", &revision])),
        (&checkout, git(&["checkout", "--quiet", "--detach", "FETCH_HEAD"])),
    ];
    if let Some(base) = rebase {
        steps.push((&checkout, git(&["fetch", "--quiet", "--", "origin", &base])));
        steps.push((&checkout, git(&["rebase", "--quiet", "FETCH_HEAD"])));
    }
    for (dir, step) in steps {
        log.write(format!("\n+ {}\n", step.join(" ")).as_bytes()).await.map_err(|e| e.to_string())?;
        let status = stream(&step, dir, &[], log, None).await?;
        if status != Some(0) {
            return Err(format!("{} failed", step[..2].join(" ")));
        }
    }
    let command = match &job.command {
        Some(command) => command.clone(),
        None => {
            let entry = [".cockpit-ci/run", "test/run"].into_iter().find(|entry| checkout.join(entry).exists());
            vec![format!("./{}", entry.ok_or("*** Failed to execute entry point.")?)]
        }
    };
    let mut env: Vec<(String, String)> = job.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    env.push(("TEST_ATTACHMENTS".into(), attachments.display().to_string()));
    env.push(("COCKPIT_CI_LOG_URL".into(), log_url.to_owned()));
    log.write(format!("\n+ {}\n", command.join(" ")).as_bytes()).await.map_err(|e| e.to_string())?;
    let minutes = job.timeout.unwrap_or(DEFAULT_TIMEOUT_MINUTES);
    let timeout = (minutes > 0).then(|| Duration::from_secs(minutes * 60));
    match stream(&command, &checkout, &env, log, timeout).await? {
        Some(0) => Ok(Outcome::Success),
        Some(code) => Ok(Outcome::Failure(format!("Container exited with code {code}"))),
        None => Ok(Outcome::Failure(format!("Timeout after {minutes} minutes"))),
    }
}

/// Runs `argv` in `dir` with only `env` added to a minimal environment (none of the worker's
/// credentials), output merged into the log. `None` when it ran out of time.
async fn stream(
    argv: &[String],
    dir: &Path,
    env: &[(String, String)],
    log: &mut LogStream<s3::Store>,
    timeout: Option<Duration>,
) -> Result<Option<i32>, String> {
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", dir)
        .env("LANG", "C.UTF-8")
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
    let (mut stdout, mut stderr) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let deadline = timeout.map(|timeout| tokio::time::Instant::now() + timeout);
    let (mut out, mut err) = (vec![0u8; 65536], vec![0u8; 65536]);
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        let sleep = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = stdout.read(&mut out), if out_open => match read {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => log.write(&out[..n]).await.map_err(|e| e.to_string())?,
            },
            read = stderr.read(&mut err), if err_open => match read {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => log.write(&err[..n]).await.map_err(|e| e.to_string())?,
            },
            () = tokio::time::sleep(Duration::from_secs(1)) => log.flush_if_due().await.map_err(|e| e.to_string())?,
            () = sleep => {
                let _ = child.kill().await;
                return Ok(None);
            }
        }
    }
    let status = child.wait().await.map_err(|e| e.to_string())?;
    Ok(Some(status.code().unwrap_or(128)))
}

/// Uploads every regular file under `dir`, by its path relative to `root`.
async fn upload_attachments(root: &Path, dir: &Path, log: &mut LogStream<s3::Store>) -> Result<(), s3::Error> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    let mut paths: Vec<PathBuf> = entries.filter_map(|entry| entry.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            Box::pin(upload_attachments(root, &path, log)).await?;
        } else if path.is_file()
            && let (Ok(relative), Ok(bytes)) = (path.strip_prefix(root), std::fs::read(&path))
        {
            log.attach(&relative.to_string_lossy(), bytes).await?;
        }
    }
    Ok(())
}
