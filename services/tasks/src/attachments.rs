//! Attachments: the files a job leaves in `TEST_ATTACHMENTS`, uploaded next to its log
//! (cockpit-protocol.md 4.5). The directory is the tested project's to fill, so everything in it
//! is hostile: it is walked without following a single link (each directory and file opened
//! relative to its parent with `O_NOFOLLOW`, so that nothing can be swapped in between a look
//! and an open), within bounds of depth, count and size, and each file is streamed from the
//! descriptor that was checked. What is not uploaded is named in the log, with why.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use s3::Body;

use crate::log_stream::{LogStream, Sink, is_reserved};

/// Bounds on what one job's attachments may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Files uploaded.
    pub files: u64,
    /// Directories below the attachments directory.
    pub depth: u32,
    /// Bytes of one file.
    pub file_size: u64,
    /// Bytes of all files together.
    pub total_size: u64,
}

/// How many refusals are named one by one in the log; the rest are counted.
const NAMED_REFUSALS: usize = 20;

/// What was uploaded and what was not.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub uploaded: u64,
    pub bytes: u64,
    /// `(path, reason)` of what was refused, in the order met.
    pub refused: Vec<(String, String)>,
}

/// Uploads what the job left in `dir` next to its log, within `limits`, and writes what was
/// refused into the log.
pub async fn upload<S: Sink>(dir: &Path, limits: &Limits, log: &mut LogStream<S>) -> Summary {
    let mut walk = Walk { limits, summary: Summary::default(), visited: 0 };
    match open_dir(rustix::fs::CWD, dir.as_os_str()) {
        Ok(root) => walk.dir(root, "", 0, log).await,
        // A job that never made the directory has no attachments.
        Err(rustix::io::Errno::NOENT) => {}
        Err(err) => walk.refuse(".", format!("the attachments directory cannot be opened ({err})")),
    }
    let summary = walk.summary;
    let mut notes = String::new();
    for (path, reason) in summary.refused.iter().take(NAMED_REFUSALS) {
        notes.push_str(&format!("*** Attachment {path:?} not uploaded: {reason}\n"));
    }
    if summary.refused.len() > NAMED_REFUSALS {
        notes.push_str(&format!("*** {} more attachments not uploaded\n", summary.refused.len() - NAMED_REFUSALS));
    }
    if !notes.is_empty() {
        log.note(&format!("\n{notes}")).await;
    }
    summary
}

struct Walk<'a> {
    limits: &'a Limits,
    summary: Summary,
    /// Entries looked at, refused ones included: a directory of a million empty files or links
    /// must not keep the worker busy.
    visited: u64,
}

impl Walk<'_> {
    fn refuse(&mut self, path: &str, reason: impl Into<String>) {
        self.summary.refused.push((path.to_owned(), reason.into()));
    }

    async fn dir<S: Sink>(&mut self, dir: OwnedFd, prefix: &str, depth: u32, log: &mut LogStream<S>) {
        let names = match list(&dir) {
            Ok(names) => names,
            Err(err) => return self.refuse(prefix, format!("the directory cannot be read ({err})")),
        };
        for name in names {
            self.visited += 1;
            if self.visited > self.limits.files.saturating_mul(10) {
                return self.refuse(prefix, "too many entries: stopped looking");
            }
            let Ok(text) = std::str::from_utf8(name.as_bytes()) else {
                self.refuse(&format!("{prefix}{}", name.to_string_lossy()), "its name is not UTF-8");
                continue;
            };
            let path = format!("{prefix}{text}");
            let kind = match rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => FileType::from_raw_mode(stat.st_mode),
                Err(err) => {
                    self.refuse(&path, format!("it cannot be examined ({err})"));
                    continue;
                }
            };
            match kind {
                FileType::Directory if depth >= self.limits.depth => {
                    self.refuse(&path, format!("deeper than {} directories", self.limits.depth));
                }
                FileType::Directory => match open_dir(&dir, &name) {
                    Ok(inner) => Box::pin(self.dir(inner, &format!("{path}/"), depth + 1, log)).await,
                    Err(err) => self.refuse(&path, format!("the directory cannot be opened ({err})")),
                },
                FileType::RegularFile => self.file(&dir, &name, &path, log).await,
                FileType::Symlink => self.refuse(&path, "a symbolic link"),
                other => self.refuse(&path, format!("not a regular file ({})", describe(other))),
            }
        }
    }

    async fn file<S: Sink>(&mut self, dir: &OwnedFd, name: &OsStr, path: &str, log: &mut LogStream<S>) {
        let Limits { files, file_size, total_size, .. } = *self.limits;
        if prefix_free(path) && is_reserved(path) {
            return self.refuse(path, "the name is one of the log's own objects");
        }
        if self.summary.uploaded >= files {
            return self.refuse(path, format!("a job may upload {files} attachments"));
        }
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
        let opened = rustix::fs::openat(dir, name, flags, Mode::empty())
            .and_then(|fd| rustix::fs::fstat(&fd).map(|stat| (fd, stat)));
        let (fd, stat) = match opened {
            Ok(opened) => opened,
            Err(err) => return self.refuse(path, format!("it cannot be opened ({err})")),
        };
        // What was opened is what is checked: it may have been swapped since the look.
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return self.refuse(path, "not a regular file");
        }
        let size = u64::try_from(stat.st_size).unwrap_or(u64::MAX);
        if size > file_size {
            return self.refuse(path, format!("{size} bytes, over the limit of {file_size} per file"));
        }
        if self.summary.bytes + size > total_size {
            return self.refuse(path, format!("{size} bytes more than the {total_size} a job may upload"));
        }
        log.attach(path, Body::File { file: Arc::new(std::fs::File::from(fd)), start: 0, len: size }).await;
        self.summary.uploaded += 1;
        self.summary.bytes += size;
    }
}

/// A top-level name: the log's objects are at the top of the job's prefix.
fn prefix_free(path: &str) -> bool {
    !path.contains('/')
}

fn open_dir(parent: impl std::os::fd::AsFd, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(parent, name, flags, Mode::empty())
}

/// The names in a directory, sorted, without `.` and `..`.
fn list(dir: &OwnedFd) -> rustix::io::Result<Vec<std::ffi::OsString>> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir)? {
        let name = OsStr::from_bytes(entry?.file_name().to_bytes()).to_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn describe(kind: FileType) -> &'static str {
    match kind {
        FileType::Fifo => "a fifo",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "of an unknown kind",
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::sync::Mutex;

    use super::*;

    /// Records the uploaded names and sizes.
    #[derive(Default)]
    struct Uploads(Mutex<Vec<(String, u64)>>);

    impl Sink for &Uploads {
        async fn put(&self, name: &str, body: Body, _: &str) -> Result<(), crate::log_store::StoreError> {
            let size = match body {
                Body::Bytes(bytes) => bytes.len() as u64,
                Body::File { len, .. } => len,
            };
            self.0.lock().unwrap().push((name.to_owned(), size));
            Ok(())
        }
        async fn delete(&self, _: &str) -> Result<(), crate::log_store::StoreError> {
            Ok(())
        }
    }

    const LIMITS: Limits = Limits { files: 10, depth: 2, file_size: 100, total_size: 150 };

    async fn upload_from(dir: &Path, limits: &Limits) -> (Summary, Vec<(String, u64)>) {
        let uploads = Uploads::default();
        let scratch = tempfile::tempdir().unwrap();
        let mut log = LogStream::start(&uploads, "", scratch.path(), 1 << 20).await.unwrap();
        let summary = upload(dir, limits, &mut log).await;
        let names = uploads.0.into_inner().unwrap().into_iter().filter(|(name, _)| name != "log.html").collect();
        (summary, names)
    }

    fn reasons(summary: &Summary) -> Vec<(&str, &str)> {
        summary.refused.iter().map(|(path, reason)| (path.as_str(), reason.as_str())).collect()
    }

    #[tokio::test]
    async fn regular_files_are_uploaded_and_links_never_followed() {
        let secrets = tempfile::tempdir().unwrap();
        std::fs::write(secrets.path().join("token"), "secret").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("bogus.log"), "heisenberg").unwrap();
        std::fs::create_dir(root.join("data")).unwrap();
        std::fs::write(root.join("data/subdir-file.txt"), "subdir-file").unwrap();
        symlink(secrets.path().join("token"), root.join("token")).unwrap();
        symlink(secrets.path(), root.join("secrets")).unwrap();
        symlink(".", root.join("data/loop")).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, root.join("fifo"), FileType::Fifo, Mode::RUSR, 0).unwrap();
        let (summary, uploaded) = upload_from(root, &LIMITS).await;
        assert_eq!(uploaded, [("bogus.log".to_owned(), 10), ("data/subdir-file.txt".to_owned(), 11)]);
        assert_eq!(
            reasons(&summary),
            [
                ("data/loop", "a symbolic link"),
                ("fifo", "not a regular file (a fifo)"),
                ("secrets", "a symbolic link"),
                ("token", "a symbolic link")
            ]
        );
    }

    #[tokio::test]
    async fn sizes_counts_depth_and_the_logs_names_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for name in ["log", "log.html", "index.html", "log.chunks", "log.0-10"] {
            std::fs::write(root.join(name), "forged").unwrap();
        }
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        std::fs::write(root.join("a/log"), "fine below the top").unwrap();
        std::fs::write(root.join("a/b/c/deep"), "too deep").unwrap();
        let big = std::fs::File::create(root.join("big")).unwrap();
        big.set_len(60 << 30).unwrap();
        std::fs::write(root.join("m1"), [b'x'; 100]).unwrap();
        std::fs::write(root.join("m2"), [b'x'; 60]).unwrap();
        let (summary, uploaded) = upload_from(root, &LIMITS).await;
        assert_eq!(uploaded, [("a/log".to_owned(), 18), ("m1".to_owned(), 100)]);
        assert_eq!(
            reasons(&summary),
            [
                ("a/b/c", "deeper than 2 directories"),
                ("big", "64424509440 bytes, over the limit of 100 per file"),
                ("index.html", "the name is one of the log's own objects"),
                ("log", "the name is one of the log's own objects"),
                ("log.0-10", "the name is one of the log's own objects"),
                ("log.chunks", "the name is one of the log's own objects"),
                ("log.html", "the name is one of the log's own objects"),
                ("m2", "60 bytes more than the 150 a job may upload"),
            ]
        );
        let few = Limits { files: 1, ..LIMITS };
        let (summary, uploaded) = upload_from(&root.join("a/b"), &few).await;
        assert_eq!(uploaded, [("c/deep".to_owned(), 8)]);
        std::fs::write(root.join("a/b/c/more"), "one too many").unwrap();
        let (summary_more, _) = upload_from(&root.join("a/b"), &few).await;
        assert!(summary.refused.is_empty());
        assert_eq!(reasons(&summary_more), [("c/more", "a job may upload 1 attachments")]);
    }

    #[tokio::test]
    async fn a_missing_directory_has_no_attachments_and_a_linked_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (summary, uploaded) = upload_from(&dir.path().join("none"), &LIMITS).await;
        assert_eq!((summary, uploaded), (Summary::default(), vec![]));
        symlink("/etc", dir.path().join("linked")).unwrap();
        let (summary, uploaded) = upload_from(&dir.path().join("linked"), &LIMITS).await;
        assert!(uploaded.is_empty());
        assert_eq!(summary.refused.len(), 1, "{summary:?}");
    }
}
