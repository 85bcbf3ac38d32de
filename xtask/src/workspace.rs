//! The workspace as xtask sees it: where its files, runs and tools are, how its binaries are
//! built, and the runtime async commands run on. Every command uses these; none of them uses
//! a command, so the arrows between xtask's modules point one way.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use local::Binaries;

use crate::progress::Spinner;

/// The workspace root (the directory of the top Cargo.toml).
pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
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
    command.env_remove("CARGO_CRATE_NAME").env_remove("CARGO_PRIMARY_PACKAGE");
    command
}

/// Builds the service binaries with the release profile, as they ship.
pub(crate) fn build_binaries() -> anyhow::Result<Binaries> {
    let spinner = Spinner::start("building the service binaries (release)");
    let output = cargo()
        .args(["build", "--release", "--quiet", "-p", "webhook", "-p", "tasks"])
        .output()
        .context("running cargo build")?;
    spinner.finish(output.status.success());
    if !output.status.success() {
        bail!("building the service binaries failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(release_binaries())
}

pub(crate) fn release_binaries() -> Binaries {
    Binaries::in_dir(&runs_dir().parent().expect("runs live in the target directory").join("release"))
}
