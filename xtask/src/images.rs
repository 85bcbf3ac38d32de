//! `cargo xtask images`: the project's images, built offline from Debian's packages and the
//! Containerfiles in `local/images/` (`local::images`), skipped when their inputs did not change.

use anyhow::{Context, bail};
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
    ensure(&binaries, None, None, args.force)?;
    Ok(())
}

/// Builds the images a pod needs, except those given by reference (`rabbitmq`, `tasks`), which
/// must be present. Returns the references of the RabbitMQ and tasks images to run.
pub(crate) fn ensure(
    binaries: &Binaries,
    rabbitmq: Option<&str>,
    tasks: Option<&str>,
    force: bool,
) -> anyhow::Result<(String, String)> {
    let (_dir, podman) = podman_config()?;
    if rabbitmq.is_none() || tasks.is_none() {
        step(images::BASE, &|| images::ensure_base(&podman))?;
    }
    if rabbitmq.is_none() {
        step(images::RABBITMQ, &|| images::build_rabbitmq(&podman, force))?;
    }
    if tasks.is_none() {
        step(images::TASKS, &|| images::build_tasks(&podman, binaries, force))?;
    }
    for given in [rabbitmq, tasks].into_iter().flatten() {
        if images::inspect(&podman, given, "{{.Id}}").is_none() {
            bail!("there is no image {given} in podman's storage: pull or load it first (we never pull)");
        }
    }
    if let Some(tasks) = tasks {
        let lacks = images::lacks(&podman, tasks);
        if !lacks.is_empty() {
            bail!("{tasks} is not a deployable tasks image: {}", lacks.join("; "));
        }
    }
    Ok((rabbitmq.unwrap_or(images::RABBITMQ).to_owned(), tasks.unwrap_or(images::TASKS).to_owned()))
}

/// Builds the Prometheus image of `run-local --monitor` on podman, unless it is up to date.
pub(crate) fn ensure_prometheus() -> anyhow::Result<()> {
    let (_dir, podman) = podman_config()?;
    step(images::BASE, &|| images::ensure_base(&podman))?;
    step(images::PROMETHEUS, &|| images::build_prometheus(&podman, false))
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
fn step(name: &str, build: &dyn Fn() -> Result<Built, local::PodmanError>) -> anyhow::Result<()> {
    let spinner = Spinner::start(&format!("building {name}"));
    let built = build();
    spinner.finish(built.is_ok());
    if built? == Built::Unchanged {
        println!("  {name} is up to date (its inputs did not change)");
    }
    Ok(())
}
