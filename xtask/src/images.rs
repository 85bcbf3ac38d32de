//! `cargo xtask images`: the project's images, built offline from Debian's packages and the
//! Containerfiles in `local/images/` (`local::images`), skipped when their inputs did not change.

use anyhow::Context;
use local::PodmanService;
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
    let binaries = crate::run_local::build_binaries()?;
    let runs = crate::runs_dir();
    std::fs::create_dir_all(&runs).with_context(|| format!("creating {}", runs.display()))?;
    let dir = tempfile::Builder::new().prefix("images-").tempdir_in(&runs).context("creating a scratch directory")?;
    let podman = crate::runtime()?.block_on(PodmanService::start(dir.path()))?;
    let step = |name: &str, build: &dyn Fn() -> Result<Built, local::PodmanError>| -> anyhow::Result<()> {
        let spinner = Spinner::start(&format!("building {name}"));
        let built = build();
        let ok = built.is_ok();
        spinner.finish(ok);
        if built? == Built::Unchanged {
            println!("  {name} is up to date (its inputs did not change)");
        }
        Ok(())
    };
    let containerfiles = images::containerfiles();
    step(images::BASE, &|| images::ensure_base(&podman))?;
    step(images::RABBITMQ, &|| {
        images::build(&podman, images::RABBITMQ, &containerfiles.join("rabbitmq/Containerfile"), &[], args.force)
    })?;
    step(images::TASKS, &|| {
        let files = [binaries.tasks.as_path(), binaries.webhook.as_path()];
        images::build(&podman, images::TASKS, &containerfiles.join("tasks/Containerfile"), &files, args.force)
    })?;
    Ok(())
}
