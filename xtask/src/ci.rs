//! `cargo xtask ci`: everything CI checks, in the order that fails fastest. `.ci/run` calls it.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::packages::{self, OPENSSL, PODMAN, RABBITMQ};

pub fn run() -> anyhow::Result<()> {
    packages::ensure(&[&[RABBITMQ, OPENSSL], PODMAN.as_slice()].concat())?;
    let root = crate::workspace_root();
    cargo(&root, "formatting", &["fmt", "--all", "--check"])?;
    cargo(&root, "lints", &["clippy", "--workspace", "--all-targets", "--quiet", "--", "-D", "warnings"])?;
    if has_nextest(&root) {
        cargo(&root, "tests", &["nextest", "run", "--workspace", "--no-fail-fast"])?;
    } else {
        cargo(&root, "tests", &["test", "--workspace", "--no-fail-fast"])?;
    }
    println!("==> run-local");
    crate::run_local::run(Default::default()).context("run-local")?;
    println!("==> ci passed");
    Ok(())
}

/// The cargo that runs xtask, so that every step uses the same toolchain.
pub(crate) fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

fn cargo(root: &Path, step: &str, args: &[&str]) -> anyhow::Result<()> {
    println!("==> {step}: cargo {}", args.join(" "));
    let status = Command::new(cargo_program())
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("starting cargo for {step}"))?;
    if !status.success() {
        bail!("{step} failed (cargo {}): see the output above", args.join(" "));
    }
    Ok(())
}

fn has_nextest(root: &Path) -> bool {
    Command::new(cargo_program())
        .args(["nextest", "--version"])
        .current_dir(root)
        .output()
        .is_ok_and(|output| output.status.success())
}
