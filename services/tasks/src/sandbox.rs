//! Where a job's commands run. Cockpit's job-runner runs the test in a podman container
//! (cockpit-protocol.md 4.5); this is that container (`container.rs`, through the podman API)
//! or, on machines without podman, a child process on the host. Both share the checkout made
//! on the host, the output pump into the log, the deadline and cancellation, so a job means the
//! same in either.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::log_store::LogStore;
use crate::log_stream::LogStream;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    TimedOut,
    Cancelled,
}

/// The `run` arguments of Cockpit's `[container]` configuration that a sandbox honours: limits,
/// devices, mounts and environment. Anything else is refused by name, rather than ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunArgs {
    pub env: Vec<(String, String)>,
    /// `SOURCE:DESTINATION[:ro]`.
    pub volumes: Vec<Volume>,
    pub devices: Vec<String>,
    /// `(destination, options)`, e.g. `("/tmp", "size=14g")`.
    pub tmpfs: Vec<(String, String)>,
    pub memory: Option<i64>,
    pub pids_limit: Option<i64>,
    pub shm_size: Option<i64>,
    pub pod: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    pub source: String,
    pub destination: String,
    pub read_only: bool,
}

const SUPPORTED: &str = "--env, --volume, --device, --tmpfs, --memory, --pids-limit, --shm-size, --pod";

impl RunArgs {
    /// Parses podman `run` arguments (`--flag=value` or `--flag value`) and adds them.
    pub fn add(&mut self, args: &[String]) -> Result<(), String> {
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with('-') => (flag, Some(value.to_owned())),
                _ => (arg.as_str(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next().cloned())
                    .ok_or_else(|| format!("container argument {flag} needs a value"))
            };
            match flag {
                "--env" | "-e" => {
                    let value = value()?;
                    let (key, val) =
                        value.split_once('=').ok_or_else(|| format!("--env {value:?} is not KEY=VALUE"))?;
                    self.env.push((key.to_owned(), val.to_owned()));
                }
                "--volume" | "-v" => {
                    let value = value()?;
                    let mut parts = value.splitn(3, ':');
                    let (Some(source), Some(destination)) = (parts.next(), parts.next()) else {
                        return Err(format!("--volume {value:?} is not SOURCE:DESTINATION[:ro]"));
                    };
                    let read_only = parts.next().is_some_and(|options| options.split(',').any(|o| o == "ro"));
                    self.volumes.push(Volume { source: source.into(), destination: destination.into(), read_only });
                }
                "--device" => self.devices.push(value()?),
                "--tmpfs" => {
                    let value = value()?;
                    let (destination, options) = value.split_once(':').unwrap_or((&value, ""));
                    self.tmpfs.push((destination.to_owned(), options.to_owned()));
                }
                "--memory" | "-m" => self.memory = Some(size(&value()?)?),
                "--shm-size" => self.shm_size = Some(size(&value()?)?),
                "--pids-limit" => {
                    let value = value()?;
                    self.pids_limit =
                        Some(value.parse().map_err(|_| format!("--pids-limit {value:?} is not a number"))?);
                }
                "--pod" => self.pod = Some(value()?),
                _ => return Err(format!("unsupported container argument {arg:?} (supported: {SUPPORTED})")),
            }
        }
        Ok(())
    }
}

/// `1024`, `512k`, `1024m`, `24g` in bytes.
pub(crate) fn size(text: &str) -> Result<i64, String> {
    let lower = text.to_ascii_lowercase();
    let (number, unit) = match lower.trim_end_matches('b').char_indices().last() {
        Some((at, 'k')) => (&lower[..at], 1 << 10),
        Some((at, 'm')) => (&lower[..at], 1 << 20),
        Some((at, 'g')) => (&lower[..at], 1 << 30),
        _ => (lower.trim_end_matches('b'), 1),
    };
    number.parse::<i64>().map(|n| n * unit).map_err(|_| format!("{text:?} is not a size"))
}

/// The secret names an argument refers to as `%{NAME}`.
pub fn referenced(arg: &str) -> impl Iterator<Item = &str> {
    arg.split("%{").skip(1).filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
}

/// Replaces `%{NAME}` by the path of secret NAME.
pub fn expand(arg: &str, secrets: &std::collections::BTreeMap<String, std::path::PathBuf>) -> String {
    secrets
        .iter()
        .fold(arg.to_owned(), |arg, (name, path)| arg.replace(&format!("%{{{name}}}"), &path.to_string_lossy()))
}

/// The whole environment of a command [`process`] runs in `dir`: a minimal one, then `env`.
pub fn environment(dir: &Path, env: &[(String, String)]) -> Vec<(String, String)> {
    let base = [("PATH", "/usr/local/bin:/usr/bin:/bin"), ("HOME", &*dir.to_string_lossy()), ("LANG", "C.UTF-8")];
    base.iter().map(|(name, value)| (name.to_string(), value.to_string())).chain(env.iter().cloned()).collect()
}

/// Runs `argv` on the host in `dir` with only `env` added to a minimal environment (none of the
/// worker's credentials), output merged into the log.
pub async fn process(
    argv: &[String],
    dir: &Path,
    env: &[(String, String)],
    log: &mut LogStream<LogStore>,
    deadline: Option<Instant>,
    cancel: &CancellationToken,
) -> Result<Ended, String> {
    let mut command = tokio::process::Command::new(&argv[0]);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        // A worker killed hard takes its job's process with it; the broker redelivers the job.
        command.pre_exec(|| Ok(rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?));
    }
    let mut child = command
        .args(&argv[1..])
        .current_dir(dir)
        .env_clear()
        .envs(environment(dir, env))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
    let (sender, output) = mpsc::channel(16);
    let _forwarders = [
        forward(child.stdout.take().expect("piped"), sender.clone()),
        forward(child.stderr.take().expect("piped"), sender),
    ];
    let ended = pump(output, log, deadline, cancel).await?;
    if ended.is_some() {
        // The whole process group: a test's own children must not outlive it.
        if let Some(pid) = child.id().and_then(|pid| rustix::process::Pid::from_raw(pid as i32)) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = child.kill().await;
    }
    let status = child.wait().await.map_err(|e| e.to_string())?;
    stop_orphans().await;
    Ok(ended.unwrap_or(Ended::Exited(status.code().unwrap_or(128))))
}

/// Whether this process adopts the processes its jobs leave behind ([`adopt_orphans`]).
static ADOPTING: AtomicBool = AtomicBool::new(false);

/// Makes this process the subreaper of everything it starts: a process of a job that leaves its
/// process group and its parent (`setsid`, a double fork) becomes this process's child instead
/// of init's, and is stopped when the command that started it ends. Only for a process that
/// runs one job and starts nothing else (`tasks run-job`, `tasks job-runner`): every other
/// process it has then is the job's.
pub fn adopt_orphans() -> std::io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    ADOPTING.store(true, Ordering::SeqCst);
    Ok(())
}

/// Kills every process below this one and reaps it, until none is left (a fork bomb may keep
/// forking between two looks), when this process adopts orphans.
async fn stop_orphans() {
    if !ADOPTING.load(Ordering::SeqCst) {
        return;
    }
    for round in 0..100 {
        reap();
        let descendants = descendants(rustix::process::getpid().as_raw_nonzero().get());
        if descendants.is_empty() {
            return;
        }
        tracing::debug!(?descendants, "stopping what the job left running");
        for pid in descendants {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        if round > 0 {
            // A fork bomb may keep forking between two looks: give the kills time to land.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    reap();
}

/// Collects every child that ended (`waitpid(-1)`, whatever its process group): what this
/// process adopted is its to reap.
fn reap() {
    while let Ok(Some(_)) = rustix::process::wait(rustix::process::WaitOptions::NOHANG) {}
}

/// The processes below `root`, from each process's parent in `/proc/PID/stat`. Read by hand:
/// one field of one file, where the procfs crate would bring a dependency tree.
pub fn descendants(root: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .filter_map(|pid| Some((pid, parent(pid)?)))
                .collect()
        })
        .unwrap_or_default();
    let mut found = vec![root];
    let mut next = 0;
    while next < found.len() {
        let of = found[next];
        found.extend(parents.iter().filter(|(_, parent)| *parent == of).map(|(pid, _)| *pid));
        next += 1;
    }
    found.remove(0);
    found
}

/// The parent of `pid`: the second field after the command name, which may hold any character
/// but ends at the last `)`.
fn parent(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// Sends what `reader` reads to `sender` until either ends; the caller owns the task.
fn forward(
    mut reader: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    sender: mpsc::Sender<Vec<u8>>,
) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut buffer = vec![0u8; 65536];
        while let Ok(n @ 1..) = reader.read(&mut buffer).await {
            if sender.send(buffer[..n].to_vec()).await.is_err() {
                break;
            }
        }
    }))
}

/// Ends at `deadline`; never without one.
pub async fn expiry(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Copies `output` into the log until every sender is gone (`None`), the deadline passes or
/// the job is cancelled. Flushes the log while output is quiet, so it keeps streaming.
pub async fn pump(
    mut output: mpsc::Receiver<Vec<u8>>,
    log: &mut LogStream<LogStore>,
    deadline: Option<Instant>,
    cancel: &CancellationToken,
) -> Result<Option<Ended>, String> {
    loop {
        tokio::select! {
            chunk = output.recv() => match chunk {
                Some(chunk) => log.write(&chunk).await,
                None => return Ok(None),
            },
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                log.flush_if_due().await;
            }
            () = expiry(deadline) => return Ok(Some(Ended::TimedOut)),
            () = cancel.cancelled() => return Ok(Some(Ended::Cancelled)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|arg| arg.to_string()).collect()
    }

    /// The run arguments of Cockpit's production configuration (cockpit-protocol.md 4.2).
    #[test]
    fn cockpits_production_run_arguments() {
        let mut args = RunArgs::default();
        args.add(&strings(&[
            "--device=/dev/kvm",
            "--memory=24g",
            "--pids-limit=16384",
            "--shm-size=1024m",
            "--tmpfs=/tmp:size=14g",
            "--env=TEST_OVERLAY_DIR=/tmp",
            "-v",
            "/cache/images:/cache/images:rw,z",
            "--volume=/run/secrets/s3-keys:/run/secrets/s3-keys:ro",
        ]))
        .unwrap();
        assert_eq!(args.devices, ["/dev/kvm"]);
        assert_eq!(args.memory, Some(24 << 30));
        assert_eq!(args.pids_limit, Some(16384));
        assert_eq!(args.shm_size, Some(1024 << 20));
        assert_eq!(args.tmpfs, [("/tmp".to_owned(), "size=14g".to_owned())]);
        assert_eq!(args.env, [("TEST_OVERLAY_DIR".to_owned(), "/tmp".to_owned())]);
        assert_eq!(
            args.volumes,
            [
                Volume { source: "/cache/images".into(), destination: "/cache/images".into(), read_only: false },
                Volume {
                    source: "/run/secrets/s3-keys".into(),
                    destination: "/run/secrets/s3-keys".into(),
                    read_only: true
                },
            ]
        );
    }

    #[test]
    fn unknown_or_malformed_arguments_are_refused_by_name() {
        let mut args = RunArgs::default();
        assert_eq!(
            args.add(&strings(&["--privileged"])).unwrap_err(),
            format!("unsupported container argument \"--privileged\" (supported: {SUPPORTED})")
        );
        assert_eq!(args.add(&strings(&["--memory=lots"])).unwrap_err(), "\"lots\" is not a size");
        assert_eq!(args.add(&strings(&["--env"])).unwrap_err(), "container argument --env needs a value");
        assert_eq!(args.add(&strings(&["--env=NOVALUE"])).unwrap_err(), "--env \"NOVALUE\" is not KEY=VALUE");
    }

    #[test]
    fn descendants_are_found_through_their_parents() {
        let mut child = std::process::Command::new("sh").args(["-c", "sleep 30 | sleep 31; wait"]).spawn().unwrap();
        let shell = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let found = loop {
            let found = descendants(shell);
            if found.len() >= 2 || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(found.len(), 2, "the shell's two sleeps: {found:?}");
        assert!(found.iter().all(|pid| parent(*pid) == Some(shell)), "{found:?}");
        assert_eq!(parent(shell), Some(std::process::id() as i32));
        for pid in found.into_iter().filter_map(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn secrets_expand_to_their_paths() {
        let secrets = [("github-token".to_owned(), std::path::PathBuf::from("/run/secrets/token"))].into();
        assert_eq!(
            expand("--volume=%{github-token}:/run/secrets/github-token:ro", &secrets),
            "--volume=/run/secrets/token:/run/secrets/github-token:ro"
        );
        assert_eq!(expand("--env=X=%{unknown}", &secrets), "--env=X=%{unknown}");
        let names: Vec<&str> = referenced("--volume=%{s3-keys}:/keys --env=A=%{ca}%{").collect();
        assert_eq!(names, ["s3-keys", "ca"]);
    }
}
