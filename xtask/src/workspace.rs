//! The workspace as xtask sees it: where its files, runs and tools are, how its binaries are
//! built, and the runtime async commands run on. Every command uses these; none of them uses
//! a command, so the arrows between xtask's modules point one way.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use indicatif::MultiProgress;
use local::Binaries;

use crate::progress::Spinner;

/// The workspace root (the directory of the top Cargo.toml): that of the xtask `cargo run`
/// started (cargo names its directory in `CARGO_MANIFEST_DIR`), else the one xtask was built
/// in. So a copy of the tree can run (and `run-local --watch` watch) itself with this binary.
pub(crate) fn root() -> PathBuf {
    let xtask = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from);
    xtask.parent().expect("xtask lives in the workspace").to_owned()
}

/// Where run directories go: under cargo's target directory, never the source tree.
pub(crate) fn runs_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    target.join("workbench")
}

/// Where tools xtask installs for itself (actionlint, cargo-fuzz) and their work go.
pub(crate) fn tools_dir() -> PathBuf {
    runs_dir().parent().expect("runs live in the target directory").join("tools")
}

/// A multi-threaded runtime for the async commands.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// The cargo that runs xtask (so that every step uses the same toolchain), in the workspace
/// root, without the variables cargo set for xtask itself: build scripts track some of them
/// (ring's tracks `CARGO_MANIFEST_DIR`), and a build from here would otherwise not reuse one
/// made by hand, nor the reverse.
pub(crate) fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    command.current_dir(crate::workspace::root());
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_") || name.starts_with("CARGO_BIN_") || name.starts_with("CARGO_MANIFEST_") {
            command.env_remove(&*name);
        }
    }
    // `cargo run` gives xtask its build script's OUT_DIR; ring's build script tracks OUT_DIR,
    // so passing it on made every release build after a plain `cargo build` start over.
    command.env_remove("CARGO_CRATE_NAME").env_remove("CARGO_PRIMARY_PACKAGE").env_remove("OUT_DIR");
    command
}

/// A cargo profile the service binaries are built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Profile {
    /// As they ship.
    Release,
    /// `run-local --watch`'s: the tests' (unoptimised and incremental), so that a rebuild
    /// after a one-line change takes seconds and reuses what the tests built. (A profile with
    /// optimised dependencies was tried: its first build took 4.5 minutes here, the dev
    /// profile's under one after the tests.)
    Dev,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Dev => "dev",
        }
    }

    /// Its output directory under cargo's target directory.
    fn dir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Dev => "debug",
        }
    }
}

/// Builds the service binaries with `profile` ([`build`]), outside any runtime, before
/// anything else: cargo runs in xtask's process group, which the terminal's Ctrl-C stops.
pub(crate) fn build_binaries(profile: Profile) -> anyhow::Result<Binaries> {
    runtime()?.block_on(build(profile, CargoGroup::Caller, None))
}

/// The process group cargo runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CargoGroup {
    /// xtask's: the terminal's Ctrl-C stops cargo and its compilers as it stops xtask (a build
    /// on its own, run to its end).
    Caller,
    /// One of its own, stopped with its compilers when the build is dropped (a build beside
    /// other work, which xtask ends on Ctrl-C or a failure).
    Own,
}

/// A running cargo, in the group it was given.
enum Cargo {
    Caller(tokio::process::Child),
    Own(local::child::ProcessGroup, usize),
}

impl Cargo {
    fn spawn(mut command: Command, group: CargoGroup) -> anyhow::Result<(Cargo, tokio::process::ChildStderr)> {
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        Ok(match group {
            CargoGroup::Caller => {
                let mut child =
                    tokio::process::Command::from(command).kill_on_drop(true).spawn().context("running cargo build")?;
                let stderr = child.stderr.take().expect("piped");
                (Cargo::Caller(child), stderr)
            }
            CargoGroup::Own => {
                let mut cargo_group = local::child::ProcessGroup::new();
                let index = cargo_group.spawn(&mut command).context("running cargo build")?;
                let stderr = tokio::process::ChildStderr::from_std(cargo_group.take_stderr(index).expect("piped"))
                    .context("reading cargo's output")?;
                (Cargo::Own(cargo_group, index), stderr)
            }
        })
    }

    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self {
            Cargo::Caller(child) => child.wait().await,
            Cargo::Own(cargo_group, index) => cargo_group.wait(*index).await,
        }
    }
}

/// Builds the service binaries with `profile`, saying what it compiles: on a terminal in the
/// spinner's line (in `display`, beside the steps running meanwhile), elsewhere (a CI log) a
/// line every few seconds. Dropped before it ends, it stops cargo (and, in a group of its own,
/// what cargo started).
pub(crate) async fn build(
    profile: Profile,
    group: CargoGroup,
    display: Option<&MultiProgress>,
) -> anyhow::Result<Binaries> {
    use tokio::io::AsyncBufReadExt;
    const SAY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
    let spinner = Spinner::start_in(display, &format!("building the service binaries ({})", profile.name()));
    let mut command = cargo();
    command.args(["build", "--profile", profile.name(), "--color", "never", "-p", "webhook", "-p", "tasks"]);
    let (mut cargo, stderr) = Cargo::spawn(command, group)?;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let (mut said, mut compiled, mut output) = (std::time::Instant::now(), 0, Vec::new());
    while let Some(line) = lines.next_line().await.context("reading cargo's output")? {
        if let Some(what) = line.trim_start().strip_prefix("Compiling ") {
            compiled += 1;
            let what = what.split(" (").next().unwrap_or(what);
            spinner.detail(&format!("{compiled} crates compiled, now {what}"));
            if spinner.is_hidden() && said.elapsed() >= SAY_EVERY {
                spinner.say(&format!("  building the service binaries: {compiled} crates compiled, now {what}"));
                said = std::time::Instant::now();
            }
        }
        output.push(line);
    }
    let status = cargo.wait().await.context("waiting for cargo build")?;
    spinner.finish(status.success());
    if !status.success() {
        bail!("building the service binaries failed:\n{}", output.join("\n"));
    }
    Ok(binaries(profile))
}

/// Where `profile`'s build puts the service binaries.
pub(crate) fn binaries(profile: Profile) -> Binaries {
    Binaries::in_dir(&runs_dir().parent().expect("runs live in the target directory").join(profile.dir()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn cargo_runs_without_what_cargo_run_gave_xtask() {
        let command = super::cargo();
        let removed: Vec<_> =
            command.get_envs().filter(|(_, value)| value.is_none()).map(|(name, _)| name.to_owned()).collect();
        for name in ["OUT_DIR", "CARGO_CRATE_NAME", "CARGO_PRIMARY_PACKAGE"] {
            assert!(removed.iter().any(|removed| removed == name), "{name} is passed on: {removed:?}");
        }
    }
}
