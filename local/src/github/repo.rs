//! Git repositories the mock GitHub hosts: built from a fixture directory with fixed authors
//! and dates (so commit ids are stable), served over git's dumb HTTP protocol.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::MockError;

/// Fixed identity and time of every commit, so the same fixture always gives the same sha.
const IDENTITY: [(&str, &str); 6] = [
    ("GIT_AUTHOR_NAME", "Workbench"),
    ("GIT_AUTHOR_EMAIL", "workbench@localhost"),
    ("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z"),
    ("GIT_COMMITTER_NAME", "Workbench"),
    ("GIT_COMMITTER_EMAIL", "workbench@localhost"),
    ("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z"),
];

/// A hosted repository: a bare repository served over HTTP and the work tree its commits are
/// made in.
pub(crate) struct HostedRepo {
    pub bare: PathBuf,
    work: PathBuf,
}

fn git(dir: &Path, args: &[&str]) -> Result<String, MockError> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .envs(IDENTITY)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .map_err(|e| MockError::Git(format!("cannot run git {}: {e}", args.join(" "))))?;
    if !output.status.success() {
        return Err(MockError::Git(format!(
            "git {} in {}: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

impl HostedRepo {
    /// Creates `root/<name>.git` with one commit on `main` holding the files of `fixture`.
    pub fn create(root: &Path, name: &str, fixture: &Path) -> Result<(HostedRepo, String), MockError> {
        let bare = root.join("git").join(name);
        let work = root.join("work").join(name);
        for dir in [&bare, &work] {
            std::fs::create_dir_all(dir).map_err(|e| MockError::Git(format!("{}: {e}", dir.display())))?;
        }
        git(&bare, &["init", "--quiet", "--bare", "--initial-branch=main"])?;
        git(&work, &["init", "--quiet", "--initial-branch=main"])?;
        let copied = Command::new("cp").arg("-a").arg(fixture.join(".")).arg(&work).status();
        if !copied.is_ok_and(|status| status.success()) {
            return Err(MockError::Git(format!("cannot copy the fixture {}", fixture.display())));
        }
        git(&work, &["add", "--all"])?;
        git(&work, &["commit", "--quiet", "-m", &format!("Initial {name}")])?;
        let repo = HostedRepo { bare, work };
        let sha = repo.publish("main", "refs/heads/main")?;
        Ok((repo, sha))
    }

    /// Commits a change on top of `base` for pull request `number` and publishes it as
    /// `refs/pull/<number>/head`, as GitHub does. Returns the head sha.
    pub fn open_pull(&self, number: u64, base: &str, change: &str) -> Result<String, MockError> {
        let branch = format!("pull-{number}");
        git(&self.work, &["checkout", "--quiet", "-B", &branch, base])?;
        let file = format!("pull-{number}.txt");
        std::fs::write(self.work.join(&file), change).map_err(|e| MockError::Git(e.to_string()))?;
        git(&self.work, &["add", &file])?;
        git(&self.work, &["commit", "--quiet", "-m", &format!("Pull request {number}")])?;
        self.publish(&branch, &format!("refs/pull/{number}/head"))
    }

    /// Pushes a local branch to a ref of the bare repository and refreshes what the dumb HTTP
    /// protocol reads. Returns the pushed sha.
    fn publish(&self, branch: &str, target: &str) -> Result<String, MockError> {
        let bare = self.bare.to_string_lossy().into_owned();
        git(&self.work, &["push", "--quiet", "--force", &bare, &format!("{branch}:{target}")])?;
        git(&self.bare, &["update-server-info"])?;
        git(&self.work, &["rev-parse", branch])
    }

    /// A file of the repository at a commit, or `None` if it has no such file.
    pub fn file(&self, git_ref: &str, path: &str) -> Option<Vec<u8>> {
        Command::new("git")
            .args(["show", &format!("{git_ref}:{path}")])
            .current_dir(&self.bare)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| output.stdout)
    }
}
