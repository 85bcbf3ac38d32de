//! Child processes owned by a guard: started in a process group of their own, stopped with
//! the whole group when the guard is stopped or dropped, and told to die with their parent.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// The last `lines` lines of the file at `path`.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `command` with `input` on its standard input; its output. The input is written before
/// the output is read, so what the command says before reading all of it must fit a pipe's
/// buffer (64 KiB), as with our commands (a line or two).
pub(crate) fn run_with_input(command: &mut Command, input: &[u8]) -> io::Result<std::process::Output> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let written = child.stdin.take().expect("stdin is piped").write_all(input);
    let output = child.wait_with_output()?;
    match written {
        // It ended without reading it all: what it said is the answer.
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => Err(err),
        _ => Ok(output),
    }
}

/// How long killed processes below the group's members may take to end.
const KILLED_WITHIN: Duration = Duration::from_secs(5);

/// How often a stopping child is looked at.
const STOP_LOOK_EVERY: Duration = Duration::from_millis(20);

/// Whether `child` still runs.
fn running(child: &mut Child) -> bool {
    child.try_wait().ok().flatten().is_none()
}

/// Whether process `pid` has ended: gone, or a zombie (its memory and files released) that its
/// parent has yet to reap.
fn ended(pid: i32) -> bool {
    u32::try_from(pid).ok().and_then(process_group_of).is_none()
}

/// Tells `child` to stop (SIGTERM) if it runs.
fn terminate(child: &mut Child) {
    if running(child)
        && let Some(pid) = Pid::from_raw(child.id() as i32)
    {
        let _ = rustix::process::kill_process(pid, Signal::TERM);
    }
}

/// A set of processes sharing one process group, the first of them its leader.
#[derive(Default)]
pub struct ProcessGroup {
    /// In start order; stopped in reverse.
    children: Vec<Child>,
    pgid: Option<Pid>,
}

impl ProcessGroup {
    pub fn new() -> ProcessGroup {
        ProcessGroup::default()
    }

    /// Starts `command` in the group (the first one founds it). Returns its index.
    pub fn spawn(&mut self, command: &mut Command) -> io::Result<usize> {
        command.process_group(self.pgid.map_or(0, |pgid| pgid.as_raw_nonzero().get()));
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                // If we die without cleaning up (SIGKILL), the kernel stops the child for us.
                rustix::process::set_parent_process_death_signal(Some(Signal::TERM))?;
                Ok(())
            });
        }
        let child = command.spawn()?;
        if self.pgid.is_none() {
            self.pgid = Pid::from_raw(child.id() as i32);
        }
        self.children.push(child);
        Ok(self.children.len() - 1)
    }

    /// The exit status of child `index`, if it has exited.
    pub(crate) fn exited(&mut self, index: usize) -> Option<ExitStatus> {
        self.children[index].try_wait().ok().flatten()
    }

    /// Child `index`'s standard error, if it was piped and is not taken yet.
    pub fn take_stderr(&mut self, index: usize) -> Option<std::process::ChildStderr> {
        self.children[index].stderr.take()
    }

    /// Waits for child `index` to exit, without holding a thread of the runtime. The group's
    /// other processes are still stopped when it is dropped.
    pub async fn wait(&mut self, index: usize) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.children[index].try_wait()? {
                return Ok(status);
            }
            tokio::time::sleep(STOP_LOOK_EVERY).await;
        }
    }

    /// Every live process in the group, including grandchildren that stayed in it.
    pub(crate) fn process_ids(&self) -> Vec<u32> {
        let Some(pgid) = self.pgid else { return Vec::new() };
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| process_group_of(*pid) == Some(pgid.as_raw_nonzero().get() as u32))
            .collect()
    }

    /// Stops the children in reverse start order with SIGTERM, each given `grace` to exit, then
    /// kills whatever is left in the group and reaps every child. For `Drop`, which cannot wait
    /// otherwise; async code calls [`ProcessGroup::stop_async`].
    pub(crate) fn stop(&mut self, grace: Duration) {
        for child in self.children.iter_mut().rev() {
            terminate(child);
            let deadline = Instant::now() + grace;
            while running(child) && Instant::now() < deadline {
                std::thread::sleep(STOP_LOOK_EVERY);
            }
        }
        self.kill();
    }

    /// [`ProcessGroup::stop`], waiting without holding a thread of the runtime.
    pub(crate) async fn stop_async(&mut self, grace: Duration) {
        for child in self.children.iter_mut().rev() {
            terminate(child);
            let deadline = Instant::now() + grace;
            while running(child) && Instant::now() < deadline {
                tokio::time::sleep(STOP_LOOK_EVERY).await;
            }
        }
        self.kill_async().await;
    }

    /// Kills every process in the group, and every process below its members (some make
    /// groups of their own: Erlang's port helpers do), with SIGKILL, at once, reaps every child
    /// and waits (up to 5 s) for the others to end.
    pub(crate) fn kill(&mut self) {
        let below = self.signal_kill();
        let deadline = Instant::now() + KILLED_WITHIN;
        while below.iter().any(|pid| !ended(*pid)) && Instant::now() < deadline {
            std::thread::sleep(STOP_LOOK_EVERY);
        }
    }

    /// [`ProcessGroup::kill`], waiting without holding a thread of the runtime.
    pub(crate) async fn kill_async(&mut self) {
        let below = self.signal_kill();
        let deadline = Instant::now() + KILLED_WITHIN;
        while below.iter().any(|pid| !ended(*pid)) && Instant::now() < deadline {
            tokio::time::sleep(STOP_LOOK_EVERY).await;
        }
    }

    /// Sends SIGKILL to the group and to what is below its members, and reaps the members.
    /// Returns the processes below them: not ours to reap, they end a moment after the signal,
    /// and until then may hold what the run opened (the broker's ports).
    fn signal_kill(&mut self) -> Vec<i32> {
        let below: Vec<i32> =
            self.children.iter().flat_map(|child| tasks::sandbox::descendants(child.id() as i32)).collect();
        if let Some(pgid) = self.pgid {
            let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
        }
        for pid in below.iter().filter_map(|pid| Pid::from_raw(*pid)) {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
        self.children.clear();
        below
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// Field 5 of /proc/PID/stat, counted after the command name (which may contain spaces).
fn process_group_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    // A zombie (or a process being reaped) still has an entry but is no longer running.
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(1)?.parse().ok()
}
