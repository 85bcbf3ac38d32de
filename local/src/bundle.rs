//! The failure bundle: when a run fails, what is needed to debug it, in one archive of the run
//! directory (`failure-bundle.tar.gz`), ready to attach to a bug report or keep as a CI
//! artifact. With the deployment still up, its state is written down first (the broker's
//! queues and consumers, the mock GitHub's requests and statuses, on podman the pod's and
//! containers' states and logs); then the archive takes every service log and trace, that
//! state, and the job logs in the S3 store. It takes nothing else: no key, token or certificate of the run
//! (an allowlist, not a denylist), no checkout, no git repository, no image.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::Deployment;

/// The archive's name in the run directory.
pub const FILE: &str = "failure-bundle.tar.gz";
/// Where the deployment's state is written down, in the run directory.
const STATE_DIR: &str = "state";
/// The job logs taken, at most, in bytes: a job that printed gigabytes must not make the bundle
/// too large to upload.
const JOB_LOGS_LIMIT: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
#[error("cannot write the failure bundle ({what}): {source}")]
pub struct BundleError {
    what: String,
    source: std::io::Error,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BundleError {
    let what = what.into();
    move |source| BundleError { what, source }
}

/// Writes the bundle of the run in `run_dir` (with `deployment`'s state when it is up) and
/// returns its path.
pub fn write(deployment: Option<&Deployment>, run_dir: &Path) -> Result<PathBuf, BundleError> {
    if let Some(deployment) = deployment {
        write_state(deployment, &run_dir.join(STATE_DIR))?;
    }
    let path = run_dir.join(FILE);
    let file = std::fs::File::create(&path).map_err(io(format!("create {}", path.display())))?;
    let mut archive = tar::Builder::new(flate2::write::GzEncoder::new(file, flate2::Compression::default()));
    let top = Path::new(run_dir.file_name().unwrap_or_default());
    let mut job_logs = 0;
    for relative in files(run_dir).map_err(io(format!("list {}", run_dir.display())))? {
        let full = run_dir.join(&relative);
        let Ok(metadata) = std::fs::symlink_metadata(&full) else { continue };
        if !metadata.is_file() || !taken(&relative) {
            continue;
        }
        if relative.starts_with("s3/logs") {
            job_logs += metadata.len();
            if job_logs > JOB_LOGS_LIMIT {
                continue;
            }
        }
        archive.append_path_with_name(&full, top.join(&relative)).map_err(io(format!("add {}", relative.display())))?;
    }
    let encoder = archive.into_inner().map_err(io("finish the archive"))?;
    encoder.finish().map_err(io("compress the archive"))?.flush().map_err(io("write the archive"))?;
    Ok(path)
}

/// Whether the file at `relative` (to the run directory) goes into the bundle: the services'
/// logs and traces, the state written down, where everything was, and the job logs in S3.
fn taken(relative: &Path) -> bool {
    let first = relative.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned());
    let name = relative.file_name().unwrap_or_default().to_string_lossy();
    match first.as_deref() {
        Some("s3") => relative.starts_with("s3/logs"),
        // Checkouts and git repositories: the tested projects' own files.
        Some("jobs" | "github" | "secrets") => false,
        Some(STATE_DIR) => true,
        // The services' spans (`crate::trace`).
        Some("traces") => name.ends_with(".jsonl"),
        _ => name.ends_with(".log") || name == "endpoints.json",
    }
}

/// Every file under `dir`, relative to it, sorted (links are not followed).
fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        for entry in std::fs::read_dir(dir.join(&relative))? {
            let entry = entry?;
            let path = relative.join(entry.file_name());
            match entry.file_type()?.is_dir() {
                true => pending.push(path),
                false => found.push(path),
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Writes the running deployment's state into `dir`, a file per source; what cannot be read
/// says why in its file.
fn write_state(deployment: &Deployment, dir: &Path) -> Result<(), BundleError> {
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    let put = |name: &str, text: String| std::fs::write(dir.join(name), text).map_err(io(format!("write {name}")));
    let ctl = |args: &[&str]| deployment.rabbitmqctl(args).unwrap_or_else(|err| format!("rabbitmqctl failed: {err}\n"));
    let queue_columns = ["name", "messages_ready", "messages_unacknowledged", "consumers", "arguments"];
    put("rabbitmq-queues.txt", ctl(&[&["list_queues", "--no-table-headers"][..], &queue_columns].concat()))?;
    put("rabbitmq-consumers.txt", ctl(&["list_consumers"]))?;
    let requests = deployment.github.requests().into_iter().map(|request| {
        let query = request.query.map(|query| format!("?{query}")).unwrap_or_default();
        format!("{} {}{query} {}\n", request.method, request.path, request.body)
    });
    put("github-requests.txt", requests.collect())?;
    let statuses: Vec<serde_json::Value> = deployment
        .github
        .all_statuses()
        .into_iter()
        .map(|(repo, sha, status)| serde_json::json!({ "repo": repo, "sha": sha, "status": status }))
        .collect();
    put("github-statuses.json", serde_json::to_string_pretty(&statuses).unwrap_or_default())?;
    if let Some(pod) = deployment.pod() {
        // The containers' logs land in the run directory, beside the states.
        pod.save_logs();
        put("pod.txt", pod.describe())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_logs_state_and_job_logs_are_taken() {
        for taken_path in [
            "webhook.log",
            "broker/rabbit.log",
            "endpoints.json",
            "traces/worker-1.jsonl",
            "state/rabbitmq-queues.txt",
            "s3/logs/pull-1-abc/log",
            "s3/logs/pull-1-abc/index.html",
        ] {
            assert!(taken(Path::new(taken_path)), "{taken_path} is left out");
        }
        for left in [
            "secrets/webhook/amqp-client.key",
            "secrets/webhook/.config--github-token",
            "pod/secrets/worker/ca.pem",
            "pod/tasks/job-runner.toml",
            "job-runner.toml",
            "jobs/worker-1/checkout/build.log",
            "github/repos/demo.git/HEAD",
            "s3/images/disk.qcow2",
            "s3-keys/localhost.localdomain",
        ] {
            assert!(!taken(Path::new(left)), "{left} is taken");
        }
    }
}
