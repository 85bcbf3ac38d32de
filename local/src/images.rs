//! The project's images, built without a registry (platform-notes.md): a base of this machine's
//! own distribution release from its packages (mmdebstrap piped into `podman import`), so that
//! binaries built here run in it, then the RabbitMQ and tasks images (and Prometheus' for
//! `--monitor`) from the Containerfiles in `local/images/`, the tasks image with the service
//! binaries in a last layer of their own. An image whose inputs did not change is not built again.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::launch::Binaries;
use crate::podman::{PodmanConfig, PodmanError};

/// This machine's distribution from its packages: the base of the others, and an image jobs
/// can run in.
pub const BASE: &str = "localhost/workbench/base";
pub const RABBITMQ: &str = "localhost/workbench/rabbitmq";
pub const TASKS: &str = "localhost/workbench/tasks";
/// Prometheus, for the pod of `run-local --monitor`.
pub const PROMETHEUS: &str = "localhost/workbench/prometheus";

/// The label holding a digest of what an image was built from.
const INPUTS_LABEL: &str = "workbench.inputs";

/// Whether a build did anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Built {
    Built,
    Unchanged,
}

/// The directory of the Containerfiles.
pub fn containerfiles() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("images")
}

fn failed(image: &str, detail: impl Into<String>) -> PodmanError {
    PodmanError::Build { image: image.to_owned(), detail: detail.into() }
}

/// Builds [`BASE`] with mmdebstrap unless it exists. Concurrent callers (tests in other
/// processes) wait for one build.
pub fn ensure_base(podman: &PodmanConfig) -> Result<Built, PodmanError> {
    let _lock = lock(BASE)?;
    if podman.command().args(["image", "exists", BASE]).status().is_ok_and(|status| status.success()) {
        return Ok(Built::Unchanged);
    }
    // A root file system of this machine's own release, so that binaries built here run in it,
    // with documentation stripped, streamed into an image.
    let (release, components) = host_release();
    let mut debootstrap = Command::new("mmdebstrap")
        .args([
            "--quiet",
            "--variant=apt",
            "--include=ca-certificates",
            "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            components,
            &release,
            "-",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(BASE, format!("cannot run mmdebstrap: {e} (install the mmdebstrap package)")))?;
    let tarball = debootstrap.stdout.take().expect("piped");
    let imported = podman
        .command()
        .args(["import", "--quiet", "-", BASE])
        .stdin(tarball)
        .stdout(Stdio::null())
        .output()
        .map_err(|e| failed(BASE, format!("cannot run podman import: {e}")))?;
    let built = debootstrap.wait_with_output().map_err(|e| failed(BASE, e.to_string()))?;
    if !built.status.success() {
        return Err(failed(BASE, format!("mmdebstrap: {}", String::from_utf8_lossy(&built.stderr).trim())));
    }
    if !imported.status.success() {
        return Err(failed(BASE, format!("podman import: {}", String::from_utf8_lossy(&imported.stderr).trim())));
    }
    Ok(Built::Built)
}

/// The code name of this machine's distribution release (`bookworm`, `noble`) from
/// `/etc/os-release`, Debian's stable when it does not say; and mmdebstrap's components
/// option for it: Ubuntu keeps some of what the images install (rabbitmq-server) in universe.
fn host_release() -> (String, &'static str) {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |name: &str| {
        text.lines().find_map(|line| line.strip_prefix(name)).map(|value| value.trim_matches('"').to_owned())
    };
    let release = field("VERSION_CODENAME=").filter(|name| !name.is_empty()).unwrap_or_else(|| "bookworm".into());
    let components = match field("ID=").as_deref() {
        Some("ubuntu") => "--components=main,universe",
        _ => "--components=main",
    };
    (release, components)
}

/// Builds `image` from `containerfile` (FROM [`BASE`]) with `files` in its build context,
/// unless an image built from the same inputs (Containerfile, files, base image) exists or
/// `force`. podman's layer cache keeps what comes before a changed `COPY`.
pub fn build(
    podman: &PodmanConfig,
    image: &str,
    containerfile: &Path,
    files: &[&Path],
    force: bool,
) -> Result<Built, PodmanError> {
    let io = |what: String| move |source| PodmanError::Io { what, source };
    // Tests build the same image at once: the second must find the first's, not build its
    // own and prune the first's while a container is being made from it.
    let _lock = lock(image)?;
    let mut digest = Sha256::new();
    digest.update(std::fs::read(containerfile).map_err(io(format!("read {}", containerfile.display())))?);
    for file in files {
        digest.update(file.file_name().unwrap_or_default().as_encoded_bytes());
        digest.update(std::fs::read(file).map_err(io(format!("read {}", file.display())))?);
    }
    digest.update(inspect(podman, BASE, "{{.Id}}").unwrap_or_default());
    let inputs = format!("{:x}", digest.finalize());
    let label = format!("{{{{index .Labels \"{INPUTS_LABEL}\"}}}}");
    if !force && inspect(podman, image, &label).as_deref() == Some(inputs.as_str()) {
        return Ok(Built::Unchanged);
    }
    let context = tempfile::tempdir().map_err(io("create a build context".into()))?;
    for file in files {
        let name = file.file_name().unwrap_or_default();
        std::fs::copy(file, context.path().join(name)).map_err(io(format!("copy {}", file.display())))?;
    }
    let output = podman
        .command()
        .args(["build", "--quiet", "--label", &format!("{INPUTS_LABEL}={inputs}"), "--tag", image, "--file"])
        .arg(containerfile)
        .arg(context.path())
        .output()
        .map_err(|e| failed(image, format!("cannot run podman build: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        return Err(failed(image, tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
    }
    // The image this one replaced, now untagged, would otherwise pile up with every build.
    let _ = podman.command().args(["image", "prune", "--force", "--filter", &format!("label={INPUTS_LABEL}")]).output();
    Ok(Built::Built)
}

/// Holds this machine's lock on building `image` until dropped: processes of this project
/// (two test runs, run-local beside a test) build each image one at a time.
fn lock(image: &str) -> Result<std::fs::File, PodmanError> {
    let name: String = image.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let path = std::env::temp_dir().join(format!("workbench-image-{name}.lock"));
    let file = std::fs::File::create(&path)
        .map_err(|source| PodmanError::Io { what: format!("create {}", path.display()), source })?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| PodmanError::Io { what: format!("lock {}", path.display()), source: e.into() })?;
    Ok(file)
}

/// Builds [`RABBITMQ`], its plugins pruned to [`crate::broker::NEEDED_PLUGINS`] and the
/// metrics plugin's ([`crate::broker::METRICS_PLUGINS`]): RabbitMQ loads every plugin it finds
/// at start, most of its start-up time.
pub fn build_rabbitmq(podman: &PodmanConfig, force: bool) -> Result<Built, PodmanError> {
    let io = |what: String| move |source| PodmanError::Io { what, source };
    let dir = tempfile::tempdir().map_err(io("create a scratch directory".into()))?;
    let plugins = dir.path().join("needed-plugins");
    let kept = [&crate::broker::NEEDED_PLUGINS[..], &crate::broker::METRICS_PLUGINS[..]].concat();
    std::fs::write(&plugins, kept.join("\n") + "\n").map_err(io(format!("write {}", plugins.display())))?;
    build(podman, RABBITMQ, &containerfiles().join("rabbitmq/Containerfile"), &[&plugins], force)
}

/// Builds [`PROMETHEUS`].
pub fn build_prometheus(podman: &PodmanConfig, force: bool) -> Result<Built, PodmanError> {
    build(podman, PROMETHEUS, &containerfiles().join("prometheus/Containerfile"), &[], force)
}

/// What a tasks image lacks to be deployed, in words: the service binaries and git on its
/// `PATH`, and, where this machine has KVM, write access to `/dev/kvm` for its user.
pub fn lacks(podman: &PodmanConfig, image: &str) -> Vec<String> {
    const CHECK: &str = r#"for tool in tasks webhook git; do command -v $tool >/dev/null || echo "no $tool command on its PATH"; done
[ ! -e /dev/kvm ] || [ -w /dev/kvm ] || echo "its user ($(id -un)) cannot use /dev/kvm""#;
    let mut command = podman.command();
    command.args(["run", "--rm", "--network=none"]);
    if Path::new("/dev/kvm").exists() {
        command.arg("--device=/dev/kvm");
    }
    match command.args([image, "sh", "-c", CHECK]).output() {
        Ok(output) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect()
        }
        Ok(output) => {
            vec![format!("it cannot run sh ({})", String::from_utf8_lossy(&output.stderr).trim())]
        }
        Err(err) => vec![format!("podman run failed: {err}")],
    }
}

/// Builds [`TASKS`] with the service binaries of `binaries`.
pub fn build_tasks(podman: &PodmanConfig, binaries: &Binaries, force: bool) -> Result<Built, PodmanError> {
    build_tasks_as(podman, TASKS, binaries, force)
}

/// Builds the tasks image under the name `image`, with the service binaries of `binaries`.
pub fn build_tasks_as(
    podman: &PodmanConfig,
    image: &str,
    binaries: &Binaries,
    force: bool,
) -> Result<Built, PodmanError> {
    let files = [binaries.tasks.as_path(), binaries.webhook.as_path()];
    build(podman, image, &containerfiles().join("tasks/Containerfile"), &files, force)
}

/// `podman image inspect --format FORMAT IMAGE`, or `None` when there is no such image.
pub fn inspect(podman: &PodmanConfig, image: &str, format: &str) -> Option<String> {
    let output = podman.command().args(["image", "inspect", "--format", format, image]).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
