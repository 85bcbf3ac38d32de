//! Git repositories the mock GitHub hosts: bare repositories whose commits are written by
//! `git fast-import`, with a fixed author and date (so the same content always gives the same
//! sha), served over git's dumb HTTP protocol.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::MockError;

/// The author and committer of every commit, with a fixed time (2026-01-01T00:00:00Z).
const SIGNATURE: &str = "Workbench <workbench@localhost> 1767225600 +0000";

/// A hosted repository: a bare repository served over HTTP.
pub(crate) struct HostedRepo {
    pub bare: PathBuf,
}

/// A file of a commit: its path in the tree, git's mode for it, and its content (a symbolic
/// link's is its target).
struct Entry {
    path: String,
    mode: &'static str,
    content: Vec<u8>,
}

fn git(dir: &Path, args: &[&str], input: &[u8]) -> Result<String, MockError> {
    let mut command = Command::new("git");
    command.args(args).current_dir(dir).env("GIT_CONFIG_NOSYSTEM", "1").env("GIT_CONFIG_GLOBAL", "/dev/null");
    let output = crate::child::run_with_input(&mut command, input)
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
    /// Creates `root/git/<name>` with one commit on `main` holding the files of `fixture`.
    pub fn create(root: &Path, name: &str, fixture: &Path) -> Result<(HostedRepo, String), MockError> {
        let bare = root.join("git").join(name);
        std::fs::create_dir_all(&bare).map_err(|e| MockError::Git(format!("{}: {e}", bare.display())))?;
        git(&bare, &["init", "--quiet", "--bare", "--initial-branch=main"], b"")?;
        let mut entries = Vec::new();
        read_tree(fixture, "", &mut entries)
            .map_err(|e| MockError::Git(format!("cannot read the fixture {}: {e}", fixture.display())))?;
        let repo = HostedRepo { bare };
        let sha = repo.commit("refs/heads/main", None, &format!("Initial {name}\n"), &entries)?;
        Ok((repo, sha))
    }

    /// Commits a change on top of `base` for pull request `number` and publishes it as
    /// `refs/pull/<number>/head`, as GitHub does. Returns the head sha.
    pub fn open_pull(&self, number: u64, base: &str, change: &str) -> Result<String, MockError> {
        let change = Entry { path: format!("pull-{number}.txt"), mode: "100644", content: change.into() };
        self.commit(&format!("refs/pull/{number}/head"), Some(base), &format!("Pull request {number}\n"), &[change])
    }

    /// Commits `file` with `content` on top of `main` (at `parent`), as a push to it would.
    /// Returns the new head of `main`.
    pub fn push_main(&self, parent: &str, file: &str, content: &str) -> Result<String, MockError> {
        let change = Entry { path: file.to_owned(), mode: "100644", content: content.into() };
        self.commit("refs/heads/main", Some(parent), &format!("Change {file}\n"), &[change])
    }

    /// Writes a commit of `entries` (on top of `parent`'s tree, if any), points `reference` at
    /// it, and refreshes what the dumb HTTP protocol reads. Returns its sha. One `fast-import`
    /// rather than a work tree's `add`, `commit` and `push` (ten git processes): scenarios open
    /// pull requests while their jobs compete for the CPU.
    fn commit(
        &self,
        reference: &str,
        parent: Option<&str>,
        message: &str,
        entries: &[Entry],
    ) -> Result<String, MockError> {
        let mut stream = Vec::new();
        let header = format!("commit {reference}\nmark :1\nauthor {SIGNATURE}\ncommitter {SIGNATURE}\n");
        stream.extend_from_slice(header.as_bytes());
        data(&mut stream, message.as_bytes());
        if let Some(parent) = parent {
            stream.extend_from_slice(format!("from {parent}\n").as_bytes());
        }
        for entry in entries {
            stream.extend_from_slice(format!("M {} inline {}\n", entry.mode, quoted(&entry.path)).as_bytes());
            data(&mut stream, &entry.content);
        }
        // The commit's sha, on standard output.
        stream.extend_from_slice(b"get-mark :1\n");
        // --force: a pull request's head may be replaced by a commit not descending from it.
        let sha = git(&self.bare, &["fast-import", "--quiet", "--force"], &stream)?;
        git(&self.bare, &["update-server-info"], b"")?;
        Ok(sha)
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

/// Adds `bytes` to a fast-import stream as one `data` command.
fn data(stream: &mut Vec<u8>, bytes: &[u8]) {
    stream.extend_from_slice(format!("data {}\n", bytes.len()).as_bytes());
    stream.extend_from_slice(bytes);
    stream.push(b'\n');
}

/// A path as fast-import reads it: C-style quoted, so that any name a fixture has is taken
/// as it is.
fn quoted(path: &str) -> String {
    let mut quoted = String::from("\"");
    for c in path.chars() {
        match c {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            '\n' => quoted.push_str("\\n"),
            c if c.is_control() => {
                let mut bytes = [0; 4];
                for byte in c.encode_utf8(&mut bytes).bytes() {
                    let _ = write!(quoted, "\\{byte:03o}");
                }
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// The files below `dir`, with the modes `git add` gives them: executable if the owner may
/// run it, symbolic links as links. Unlike `git add`, a `.gitignore` is not read: a fixture
/// holds what its project commits. Anything else (a FIFO, a device) is an error.
fn read_tree(dir: &Path, prefix: &str, entries: &mut Vec<Entry>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for dirent in std::fs::read_dir(dir)? {
        let dirent = dirent?;
        let name = dirent
            .file_name()
            .into_string()
            .map_err(|name| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{name:?} is not UTF-8")))?;
        let path = format!("{prefix}{name}");
        let kind = dirent.file_type()?;
        if kind.is_dir() {
            read_tree(&dirent.path(), &format!("{path}/"), entries)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(dirent.path())?;
            let content = target.into_os_string().into_encoded_bytes();
            entries.push(Entry { path, mode: "120000", content });
        } else if kind.is_file() {
            let executable = dirent.metadata()?.permissions().mode() & 0o100 != 0;
            let mode = if executable { "100755" } else { "100644" };
            entries.push(Entry { path, mode, content: std::fs::read(dirent.path())? });
        } else {
            let what = format!("{} is neither a file, a directory nor a symbolic link", dirent.path().display());
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, what));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The commit `git add --all` and `git commit` make of `dir`'s files, as the mock's
    /// commits are: same author, date and message.
    fn committed_by_git(dir: &Path, message: &str) -> String {
        let run = |args: &[&str]| {
            let output = Command::new("git")
                .args(args)
                .current_dir(dir)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .envs([("GIT_AUTHOR_NAME", "Workbench"), ("GIT_COMMITTER_NAME", "Workbench")])
                .envs([("GIT_AUTHOR_EMAIL", "workbench@localhost"), ("GIT_COMMITTER_EMAIL", "workbench@localhost")])
                .envs([("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z"), ("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")])
                .output()
                .unwrap();
            assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
            String::from_utf8(output.stdout).unwrap().trim().to_owned()
        };
        run(&["init", "--quiet"]);
        run(&["add", "--all"]);
        run(&["commit", "--quiet", "-m", message]);
        run(&["rev-parse", "HEAD"])
    }

    #[test]
    fn a_fixture_s_commit_is_the_one_git_add_and_commit_make() {
        use std::os::unix::fs::PermissionsExt;
        let fixture = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(fixture.path().join(".cockpit-ci")).unwrap();
        let run = fixture.path().join(".cockpit-ci/run");
        std::fs::write(&run, "#!/bin/sh\necho ok\n").unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(fixture.path().join("README \"odd\" name.md"), "hello\n").unwrap();
        std::os::unix::fs::symlink("README \"odd\" name.md", fixture.path().join("link")).unwrap();
        let root = tempfile::tempdir().unwrap();

        let (_, sha) = HostedRepo::create(root.path(), "project", fixture.path()).unwrap();

        assert_eq!(sha, committed_by_git(fixture.path(), "Initial project"));
    }

    #[test]
    fn a_pull_request_is_one_commit_on_its_base_under_github_s_ref() {
        let fixture = tempfile::tempdir().unwrap();
        std::fs::write(fixture.path().join("README.md"), "hello\n").unwrap();
        let root = tempfile::tempdir().unwrap();
        let (repo, main) = HostedRepo::create(root.path(), "project", fixture.path()).unwrap();

        let first = repo.open_pull(7, &main, "A change\n").unwrap();
        // Opened again, the same number's head is replaced.
        let head = repo.open_pull(7, &main, "Another change\n").unwrap();

        assert_ne!(first, head);
        let show = |args: &[&str]| git(&repo.bare, args, b"").unwrap();
        assert_eq!(show(&["rev-parse", "refs/pull/7/head"]), head);
        assert_eq!(show(&["rev-parse", "refs/pull/7/head^"]), main);
        assert_eq!(show(&["show", "refs/pull/7/head:pull-7.txt"]), "Another change");
        assert_eq!(
            show(&["log", "-1", "--format=%an <%ae> %at %s", &head]),
            "Workbench <workbench@localhost> 1767225600 Pull request 7"
        );
        // What the dumb HTTP protocol reads lists it.
        let refs = std::fs::read_to_string(repo.bare.join("info/refs")).unwrap();
        assert!(refs.contains(&format!("{head}\trefs/pull/7/head")), "{refs}");
    }

    #[test]
    fn a_path_is_quoted_as_fast_import_reads_it() {
        assert_eq!(quoted("a b/c.txt"), r#""a b/c.txt""#);
        assert_eq!(quoted("say \"hi\"\\n\nx\ty"), r#""say \"hi\"\\n\nx\011y""#);
    }
}
