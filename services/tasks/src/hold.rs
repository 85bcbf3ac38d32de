//! Holding a failed job for inspection (`hold-failed = true` in job-runner's configuration, a
//! key of ours that `run-local --hold-failed` sets): the first job of a work directory whose
//! tests fail keeps its scratch directory (the checkout as the tests left it, the attachments, and the
//! secrets the job asked for) and, in the container sandbox, gets a container like its own
//! (same image, mounts, environment and limits) left running `sleep infinity`, to open a shell
//! in. `<work dir>/held.json` describes it; whoever set the key releases it: `run-local`'s
//! teardown (`cargo xtask down`) removes the container and the directory.
//!
//! A work directory holds at most one job (workers that share one, as run-local's process
//! workers do, share that one): the record is written whole, then linked under its name, which
//! fails if a record is there; later failures clean up as usual, and held jobs never fill the
//! disk.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The record's name in the worker's work directory.
pub const RECORD: &str = "held.json";

/// The label of a held job's container, beside the job container's own.
pub const HELD_LABEL: &str = "workbench.held";

/// A held job: where it is and what its tests ran with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    /// The job's slug (its log's name in S3).
    pub slug: String,
    /// The scratch directory, kept: the checkout, attachments and secrets are in it.
    pub scratch: PathBuf,
    /// Where the tests ran: the checkout, or in the container its mount point.
    pub dir: PathBuf,
    /// The environment the tests ran with: all of it in the process sandbox; in the container
    /// sandbox the container has it, and a shell opened in it inherits it.
    pub env: Vec<(String, String)>,
    /// The container left running, in the container sandbox.
    pub container: Option<String>,
}

/// Whether a job is held in `work_dir` already.
pub fn holding(work_dir: &Path) -> bool {
    work_dir.join(RECORD).exists()
}

/// Records `held` as the job held in `work_dir`, unless one is held already (`Ok(false)`).
pub fn record(work_dir: &Path, held: &Held) -> std::io::Result<bool> {
    let mut partial = tempfile::NamedTempFile::new_in(work_dir)?;
    partial.write_all(&serde_json::to_vec_pretty(held)?)?;
    partial.as_file().sync_all()?;
    match std::fs::hard_link(partial.path(), work_dir.join(RECORD)) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(err),
    }
}

/// The job held by the worker working in `work_dir`, if any.
pub fn read(work_dir: &Path) -> Option<Held> {
    let text = std::fs::read(work_dir.join(RECORD)).ok()?;
    serde_json::from_slice(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_holds_one_job_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let held = Held {
            slug: "pull-1-5f3a9d2c-20261123-120000-unit-tests".into(),
            scratch: dir.path().join("job-1"),
            dir: dir.path().join("job-1/checkout"),
            env: vec![("TEST_OS".into(), "unit-tests".into())],
            container: None,
        };
        assert_eq!(read(dir.path()), None);
        assert!(!holding(dir.path()));
        assert!(record(dir.path(), &held).unwrap(), "the first is held");
        let second = Held { slug: "another".into(), ..held.clone() };
        assert!(!record(dir.path(), &second).unwrap(), "a second failed job is not held");
        assert!(holding(dir.path()));
        assert_eq!(read(dir.path()), Some(held));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [RECORD], "no partial record is left");
    }
}
