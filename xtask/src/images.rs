//! `cargo xtask images`: the project's images, built offline from Debian's packages and the
//! Containerfiles in `local/images/` (`local::images`), skipped when their inputs did not change.

use anyhow::{Context, bail};
use indicatif::MultiProgress;
use local::Binaries;
use local::PodmanConfig;
use local::images::{self, Built};

use crate::packages::{self, PODMAN};
use crate::progress::Spinner;

#[derive(clap::Args)]
pub struct Args {
    /// Build the RabbitMQ and tasks images even if their inputs did not change.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    packages::ensure(&PODMAN)?;
    let binaries = crate::workspace::build_binaries(crate::workspace::Profile::Release)?;
    ensure_base()?;
    ensure_rabbitmq(None, args.force)?;
    build_tasks(&binaries, args.force, None)
}

/// Builds the base image the others start from, unless it is there.
pub(crate) fn ensure_base() -> anyhow::Result<()> {
    let (_dir, podman) = podman_config()?;
    step(images::BASE, None, &|| images::ensure_base(&podman))
}

/// Builds the RabbitMQ image unless `given` by reference, which must then be present. Returns
/// the reference of the image to run.
pub(crate) fn ensure_rabbitmq(given: Option<&str>, force: bool) -> anyhow::Result<String> {
    let (_dir, podman) = podman_config()?;
    match given {
        None => {
            step(images::RABBITMQ, None, &|| images::build_rabbitmq(&podman, force))?;
            Ok(images::RABBITMQ.to_owned())
        }
        Some(given) => present(&podman, given),
    }
}

/// Builds the tasks image from `binaries`, unless it is up to date. `display`: the one of the
/// steps running meanwhile.
pub(crate) fn build_tasks(binaries: &Binaries, force: bool, display: Option<&MultiProgress>) -> anyhow::Result<()> {
    let (_dir, podman) = podman_config()?;
    step(images::TASKS, display, &|| images::build_tasks(&podman, binaries, force))
}

/// Checks that the tasks image `given` by reference is present and deployable.
pub(crate) fn check_tasks(given: &str) -> anyhow::Result<()> {
    let (_dir, podman) = podman_config()?;
    let lacks = images::lacks(&podman, &present(&podman, given)?);
    if !lacks.is_empty() {
        bail!("{given} is not a deployable tasks image: {}", lacks.join("; "));
    }
    Ok(())
}

/// `given`, if podman's storage has it.
fn present(podman: &PodmanConfig, given: &str) -> anyhow::Result<String> {
    if images::inspect(podman, given, "{{.Id}}").is_none() {
        bail!("there is no image {given} in podman's storage: pull or load it first (we never pull)");
    }
    Ok(given.to_owned())
}

/// Builds the Prometheus image of `run-local --monitor` on podman, unless it is up to date.
pub(crate) fn ensure_prometheus() -> anyhow::Result<()> {
    ensure_base()?;
    let (_dir, podman) = podman_config()?;
    step(images::PROMETHEUS, None, &|| images::build_prometheus(&podman, false))
}

/// The project's podman configuration for the builds, in a scratch directory: the checks and
/// builds are `podman` commands, which need no service. Bound as `let (_dir, podman)`.
fn podman_config() -> anyhow::Result<(tempfile::TempDir, PodmanConfig)> {
    let runs = crate::workspace::runs_dir();
    std::fs::create_dir_all(&runs).with_context(|| format!("creating {}", runs.display()))?;
    let dir = tempfile::Builder::new().prefix("images-").tempdir_in(&runs).context("creating a scratch directory")?;
    let podman = PodmanConfig::write(dir.path())?;
    Ok((dir, podman))
}

/// Builds image `name` with a spinner, saying when it was up to date.
fn step(
    name: &str,
    display: Option<&MultiProgress>,
    build: &dyn Fn() -> Result<Built, local::PodmanError>,
) -> anyhow::Result<()> {
    let spinner = Spinner::start_in(display, &format!("building {name}"));
    let built = build();
    spinner.finish(built.is_ok());
    if built? == Built::Unchanged {
        crate::progress::say(display, &format!("  {name} is up to date (its inputs did not change)"));
    }
    Ok(())
}
