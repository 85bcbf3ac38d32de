//! A private podman API service.
//!
//! The service is `podman system service` with the project's own containers.conf, passed by
//! `CONTAINERS_CONF`, so nothing in /etc changes (platform-notes.md: runc, not crun; ulimits
//! under the host's hard limit; logs in files, since there may be no journald, of a bounded size). Images live in
//! podman's usual storage, shared with the `podman` command (see `images.rs`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::child::ProcessGroup;

/// The project's containers.conf. A container's log file is capped (1 GiB): a job that prints
/// without end must not fill this machine's disk through podman's copy of its output (job-runner
/// reads the output through an attachment, and keeps its own bounded log). An exec's monitor
/// stays `exit_command_delay` after the exec ends (300 s by default), holding the pod's cgroup
/// and so its removal; with 0 it ends at once, and `podman exec` can lose the exec's exit
/// status, so our execs (`erl_call`, `getent`, the failure bundle's `rabbitmqctl`) send it in
/// their output (`Pod::exec`). An exec's cleanup may meet the pod's removal: `Pod`'s drop
/// checks that the pod is gone (docs/benchmarks.md).
const CONTAINERS_CONF: &str = r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
log_driver = "k8s-file"
log_size_max = 1073741824

[engine]
runtime = "runc"
events_logger = "file"
cgroup_manager = "cgroupfs"
exit_command_delay = 0
"#;

#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    #[error("podman is not installed (cargo xtask ci installs podman, runc, catatonit and mmdebstrap)")]
    NotInstalled,
    #[error("cannot {what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{reason} on {}; its log: {}", socket.display(), log.display())]
    NotReady { socket: PathBuf, reason: crate::client::TimedOut, log: PathBuf },
    #[error("building {image} failed: {detail}")]
    Build { image: String, detail: String },
}

/// Whether the podman command is installed; `Err` says what is missing.
pub fn installed() -> Result<(), PodmanError> {
    // Only podman is looked up: it finds its runtime (runc, in /usr/sbin, outside the PATH of
    // most users) by itself, and says so in the service's log if it cannot.
    let path = std::env::var_os("PATH").unwrap_or_default();
    match std::env::split_paths(&path).any(|dir| dir.join("podman").is_file()) {
        true => Ok(()),
        false => Err(PodmanError::NotInstalled),
    }
}

/// The project's containers.conf, written in a directory: the `podman` command configured
/// with it, without a service (image checks and builds need none).
pub struct PodmanConfig {
    conf: PathBuf,
}

impl PodmanConfig {
    /// Writes the configuration in `dir`.
    pub fn write(dir: &Path) -> Result<PodmanConfig, PodmanError> {
        installed()?;
        let io = |what: String| move |source| PodmanError::Io { what, source };
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let conf = dir.join("containers.conf");
        std::fs::write(&conf, CONTAINERS_CONF).map_err(io(format!("write {}", conf.display())))?;
        Ok(PodmanConfig { conf })
    }

    /// The `podman` command, configured as the service is.
    pub fn command(&self) -> Command {
        let mut command = Command::new("podman");
        command.env("CONTAINERS_CONF", &self.conf);
        command
    }
}

/// A running `podman system service` on a socket in its own directory; stopped on drop. It
/// derefs to its configuration, for the `podman` command.
pub struct PodmanService {
    socket: PathBuf,
    config: PodmanConfig,
    _process: ProcessGroup,
}

impl std::ops::Deref for PodmanService {
    type Target = PodmanConfig;

    fn deref(&self) -> &PodmanConfig {
        &self.config
    }
}

impl PodmanService {
    /// Starts the service in `dir` and waits until it answers.
    pub async fn start(dir: &Path) -> Result<PodmanService, PodmanError> {
        let config = PodmanConfig::write(dir)?;
        let io = |what: String| move |source| PodmanError::Io { what, source };
        let socket = dir.join("podman.sock");
        let log_path = dir.join("podman-service.log");
        let log = std::fs::File::create(&log_path).map_err(io(format!("create {}", log_path.display())))?;
        let mut process = ProcessGroup::new();
        let mut command = Command::new("podman");
        command
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .env("CONTAINERS_CONF", &config.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("duplicate the log file".into()))?)
            .stderr(log);
        process.spawn(&mut command).map_err(io("start podman system service".into()))?;
        let answering = crate::client::wait_until("the podman service", Duration::from_secs(30), || async {
            let podman = podman_api::Podman::unix(&socket);
            Ok::<_, crate::client::TimedOut>(
                match tokio::time::timeout(crate::client::PROBE_WITHIN, podman.ping()).await {
                    Ok(Ok(_)) => crate::client::Check::Done(()),
                    Ok(Err(err)) => crate::client::Check::NotYet(err.to_string()),
                    Err(_) => crate::client::Check::NotYet("no answer to a ping yet".into()),
                },
            )
        })
        .await;
        if let Err(reason) = answering {
            return Err(PodmanError::NotReady { socket, reason, log: log_path });
        }
        Ok(PodmanService { socket, config, _process: process })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}
