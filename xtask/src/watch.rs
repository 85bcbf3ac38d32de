//! What `run-local --watch` watches: the services' sources, told by the kernel when they
//! change (inotify, through notify), and which service binaries a rebuild changed, so that only
//! their services restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use local::Binaries;
use local::deployment::Restart;
use notify::event::{EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// How long the sources must be quiet before a change counts: an editor writes a file in
/// several steps, and a save of many files comes as one change.
const QUIET: Duration = Duration::from_millis(200);

/// The sources of the service binaries: every crate under `services/`, and the workspace's
/// manifest and lock file.
pub struct Sources {
    root: PathBuf,
    // Watching until dropped.
    _watcher: RecommendedWatcher,
    events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
}

impl Sources {
    /// Starts watching the workspace at `root`.
    pub fn watch(root: &Path) -> anyhow::Result<Sources> {
        let (sender, events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = sender.send(event);
        })
        .context("watching the sources (inotify)")?;
        let services = root.join("services");
        watcher
            .watch(&services, RecursiveMode::Recursive)
            .with_context(|| format!("watching {}", services.display()))?;
        // The directory, not the files: an editor that saves by renaming replaces the file.
        watcher.watch(root, RecursiveMode::NonRecursive).with_context(|| format!("watching {}", root.display()))?;
        Ok(Sources { root: root.to_owned(), _watcher: watcher, events })
    }

    /// Waits for the next change of source files, until they have been quiet for [`QUIET`];
    /// returns the files, relative to the root.
    pub async fn changed(&mut self) -> anyhow::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        loop {
            let next = self.events.recv();
            let event = match files.is_empty() {
                true => next.await,
                false => match tokio::time::timeout(QUIET, next).await {
                    Ok(event) => event,
                    Err(_quiet) => break,
                },
            };
            let event = event.context("the source watcher stopped")?.context("watching the sources")?;
            if changes_content(&event.kind) {
                let sources = event.paths.into_iter().filter(|path| is_source(path));
                files.extend(sources.map(|path| path.strip_prefix(&self.root).map_or(path.clone(), Path::to_owned)));
            }
        }
        files.sort();
        files.dedup();
        Ok(files)
    }
}

/// Whether an event can change what a file holds: not a read (cargo reads the manifests on
/// every build, and a build must not be a change), nor a change of its metadata.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Any => true,
        EventKind::Modify(modify) => !matches!(modify, ModifyKind::Metadata(_)),
        EventKind::Access(_) | EventKind::Other => false,
    }
}

/// Whether a change of `path` can change a service binary: Rust sources and cargo's manifests
/// (not an editor's swap or backup files, nor anything under a target directory).
fn is_source(path: &Path) -> bool {
    let name = path.file_name().unwrap_or_default();
    let rust = path.extension().is_some_and(|extension| extension == "rs");
    let manifest = name == "Cargo.toml" || name == "Cargo.lock";
    (rust || manifest) && !path.components().any(|part| part.as_os_str() == "target")
}

/// What the service binaries were at one moment: a build that changed one leaves another.
#[derive(Debug)]
pub struct Stamps {
    webhook: Option<(u64, SystemTime)>,
    tasks: Option<(u64, SystemTime)>,
}

impl Stamps {
    pub fn of(binaries: &Binaries) -> Stamps {
        let stamp = |path: &Path| std::fs::metadata(path).ok().and_then(|m| Some((m.len(), m.modified().ok()?)));
        Stamps { webhook: stamp(&binaries.webhook), tasks: stamp(&binaries.tasks) }
    }

    /// The services to restart because their binary changed since `before`.
    pub fn changed_since(&self, before: &Stamps) -> Vec<Restart> {
        let mut changed = Vec::new();
        if self.webhook != before.webhook {
            changed.push(Restart::Webhook);
        }
        if self.tasks != before.tasks {
            changed.push(Restart::Workers);
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rust_sources_and_manifests_outside_target_count() {
        assert!(is_source(Path::new("/w/services/webhook/src/routes.rs")));
        assert!(is_source(Path::new("/w/services/tasks/Cargo.toml")));
        assert!(is_source(Path::new("/w/Cargo.lock")));
        assert!(!is_source(Path::new("/w/services/webhook/src/.routes.rs.swp")));
        assert!(!is_source(Path::new("/w/services/webhook/src/routes.rs~")));
        assert!(!is_source(Path::new("/w/README.md")));
        assert!(!is_source(Path::new("/w/services/x/target/debug/build/out.rs")));
    }

    #[test]
    fn reads_and_metadata_are_no_change() {
        use notify::event::{AccessKind, CreateKind, DataChange, MetadataKind, RenameMode};
        assert!(changes_content(&EventKind::Modify(ModifyKind::Data(DataChange::Any))));
        assert!(changes_content(&EventKind::Modify(ModifyKind::Name(RenameMode::To))));
        assert!(changes_content(&EventKind::Create(CreateKind::File)));
        assert!(!changes_content(&EventKind::Access(AccessKind::Any)));
        assert!(!changes_content(&EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any))));
    }

    #[test]
    fn only_the_services_whose_binary_changed_restart() {
        let dir = tempfile::tempdir().unwrap();
        let binaries = Binaries::in_dir(dir.path());
        std::fs::write(&binaries.webhook, "1").unwrap();
        std::fs::write(&binaries.tasks, "1").unwrap();
        let before = Stamps::of(&binaries);
        assert_eq!(Stamps::of(&binaries).changed_since(&before), []);
        std::fs::write(&binaries.webhook, "22").unwrap();
        assert_eq!(Stamps::of(&binaries).changed_since(&before), [Restart::Webhook]);
        std::fs::write(&binaries.tasks, "333").unwrap();
        assert_eq!(Stamps::of(&binaries).changed_since(&before), [Restart::Webhook, Restart::Workers]);
    }

    /// A save of a service's source is seen, once, named relative to the root; a file that
    /// is not a source, and reading a source, are not.
    #[tokio::test]
    async fn a_saved_source_is_one_change() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("services/webhook/src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(root.path().join("Cargo.toml"), "[workspace]").unwrap();
        let mut sources = Sources::watch(root.path()).unwrap();
        std::fs::write(root.path().join("notes.txt"), "not a source").unwrap();
        std::fs::read(root.path().join("Cargo.toml")).unwrap();
        // Saved as editors do: a temporary file renamed over the old one.
        std::fs::write(src.join(".routes.rs.tmp"), "fn main() {}").unwrap();
        std::fs::rename(src.join(".routes.rs.tmp"), src.join("routes.rs")).unwrap();
        let changed = tokio::time::timeout(Duration::from_secs(30), sources.changed()).await.unwrap().unwrap();
        assert_eq!(changed, [PathBuf::from("services/webhook/src/routes.rs")]);
    }
}
