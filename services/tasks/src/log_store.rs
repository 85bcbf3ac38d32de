//! Where a job's log and attachments are stored, as `[logs] driver` says: an S3 store (what
//! deployments use), or a directory of this machine (Cockpit's default, for a developer running
//! job-runner by hand, the directory served by any web server at `[logs.local] link`).

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use s3::Body;

use crate::log_stream::Sink;
use crate::runner_config::{LogsDriver, RunnerConfig, S3Key};
use retry::Transient;

/// A job's log store: every name is relative to the job's place in it.
#[derive(Clone)]
pub enum LogStore {
    S3(Box<s3::Store>),
    /// The job's directory.
    Local(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    S3(#[from] s3::Error),
    #[error("cannot store {}: {source}", path.display())]
    Local { path: PathBuf, source: std::io::Error },
    #[error("refusing to store {name:?}: not a plain relative name")]
    Name { name: String },
}

impl Transient for StoreError {
    /// The S3 store's failures may pass; a full disk or a refused name do not.
    fn is_transient(&self) -> bool {
        match self {
            StoreError::S3(err) => err.is_transient(),
            StoreError::Local { .. } | StoreError::Name { .. } => false,
        }
    }
}

impl LogStore {
    /// The store of the job whose objects go under `prefix` (its slug), and the URL its
    /// statuses link to (the viewer page, `log.html`).
    pub fn for_job(config: &RunnerConfig, prefix: &str) -> Result<(LogStore, String), StoreError> {
        let logs = &config.logs;
        match logs.driver {
            LogsDriver::S3 => {
                let s3 = &logs.s3;
                let key = match &s3.key {
                    S3Key::Text(text) => s3::Key::parse(text),
                    S3Key::Table { access, secret } => Some(s3::Key { access: access.clone(), secret: secret.clone() }),
                };
                let url = format!("{}/{prefix}/", s3.url.trim_end_matches('/'));
                let store = s3::Store::new(&url, key, s3.ca.as_deref().map(str::as_bytes))?
                    .resolving(&s3.resolve)?
                    .with_user_agent(&s3.user_agent);
                let store = if s3.acl.is_empty() { store } else { store.with_acl(&s3.acl) };
                let link = s3.proxy_url.as_deref().unwrap_or(&s3.url).trim_end_matches('/');
                Ok((LogStore::S3(Box::new(store)), format!("{link}/{prefix}/log.html")))
            }
            LogsDriver::Local => {
                let dir = match (logs.local.dir.strip_prefix("~/"), std::env::var_os("HOME")) {
                    (Some(rest), Some(home)) => Path::new(&home).join(rest),
                    _ => PathBuf::from(&logs.local.dir),
                };
                let link = logs.local.link.trim_end_matches('/');
                Ok((LogStore::Local(dir.join(plain(prefix)?)), format!("{link}/{prefix}/log.html")))
            }
        }
    }

    /// The object `name`, if there is one.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            LogStore::S3(store) => Ok(retry::transient(name, retry::COCKPIT, || store.get(name)).await?),
            LogStore::Local(dir) => {
                let path = dir.join(plain(name)?);
                match tokio::fs::read(&path).await {
                    Ok(bytes) => Ok(Some(bytes)),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(StoreError::Local { path, source }),
                }
            }
        }
    }
}

/// Transient S3 failures are retried as Cockpit retries them.
impl Sink for LogStore {
    async fn put(&self, name: &str, body: Body, content_type: &str) -> Result<(), StoreError> {
        match self {
            LogStore::S3(store) => {
                Ok(retry::transient(name, retry::COCKPIT, || store.put(name, body.clone(), content_type)).await?)
            }
            LogStore::Local(dir) => {
                let path = dir.join(plain(name)?);
                let written = path.clone();
                tokio::task::spawn_blocking(move || write(&written, &body))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|written| written)
                    .map_err(|source| StoreError::Local { path, source })
            }
        }
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        match self {
            LogStore::S3(store) => Ok(retry::transient(name, retry::COCKPIT, || store.delete(name)).await?),
            LogStore::Local(dir) => {
                let path = dir.join(plain(name)?);
                match tokio::fs::remove_file(&path).await {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                        Err(StoreError::Local { path, source: err })
                    }
                    _ => Ok(()),
                }
            }
        }
    }
}

/// `name` when it stays below the directory it is joined to: relative, without `..` or empty
/// segments (a slug or an attachment's path, which a job influences).
fn plain(name: &str) -> Result<&Path, StoreError> {
    let plain = !name.starts_with('/') && name.split('/').all(|segment| !matches!(segment, "" | "." | ".."));
    plain.then_some(Path::new(name)).ok_or_else(|| StoreError::Name { name: name.to_owned() })
}

/// Writes `body` to `path` whole: into a temporary file beside it, renamed over it, so that a
/// reader sees the old object or the new one.
fn write(path: &Path, body: &Body) -> std::io::Result<()> {
    let dir = path.parent().expect("a joined name has a parent");
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    match body {
        Body::Bytes(bytes) => file.write_all(bytes)?,
        Body::File { file: source, start, len } => {
            let mut buffer = vec![0; 64 * 1024];
            let mut done = 0;
            while done < *len {
                let want = buffer.len().min(usize::try_from(len - done).unwrap_or(usize::MAX));
                let read = source.read_at(&mut buffer[..want], start + done)?;
                if read == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                file.write_all(&buffer[..read])?;
                done += read as u64;
            }
        }
    }
    file.persist(path).map_err(|err| err.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_below_the_job_directory() {
        for good in ["log", "log.0-12", "attachments/screenshot.png", "pull-1-abc/log"] {
            assert!(plain(good).is_ok(), "{good}");
        }
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/."] {
            assert!(plain(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_local_store_writes_reads_and_deletes_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::Local(dir.path().join("pull-1"));
        store.put("a/b.txt", Body::from(b"hello".to_vec()), "text/plain").await.unwrap();
        let source = tempfile::tempfile().unwrap();
        source.write_all_at(b"0123456789", 0).unwrap();
        let range = Body::File { file: std::sync::Arc::new(source), start: 2, len: 5 };
        store.put("log.2-7", range, "text/plain").await.unwrap();
        assert_eq!(store.get("a/b.txt").await.unwrap().as_deref(), Some(&b"hello"[..]));
        assert_eq!(std::fs::read(dir.path().join("pull-1/log.2-7")).unwrap(), b"23456");
        store.delete("a/b.txt").await.unwrap();
        store.delete("a/b.txt").await.unwrap();
        assert_eq!(store.get("a/b.txt").await.unwrap(), None);
        let refused = store.put("../escape", Body::from(b"x".to_vec()), "text/plain").await;
        assert!(matches!(refused, Err(StoreError::Name { .. })), "{refused:?}");
        assert!(!dir.path().join("escape").exists());
    }
}
