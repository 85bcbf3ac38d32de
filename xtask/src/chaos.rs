//! `cargo xtask chaos`: the fault runs of `local::chaos` in their full form, with the figures
//! docs/reliability.md records. Each run is bounded and stops by itself.

use anyhow::Context;

use crate::packages::{self, RABBITMQ};

#[derive(clap::Args)]
pub struct Args {
    /// Deliveries sent while the broker restarts.
    #[arg(long, default_value_t = 2_000)]
    deliveries: usize,
    /// Deliveries per second.
    #[arg(long, default_value_t = 50)]
    rate: u32,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    packages::ensure(&[RABBITMQ])?;
    let runs = crate::runs_dir();
    std::fs::create_dir_all(&runs).with_context(|| format!("creating {}", runs.display()))?;
    let dir = tempfile::Builder::new().prefix("chaos-").tempdir_in(&runs).context("creating a scratch directory")?;
    let spinner = crate::progress::Spinner::start(&format!(
        "broker restart under load: {} deliveries, {}/s",
        args.deliveries, args.rate
    ));
    let run =
        crate::runtime()?.block_on(local::chaos::broker_restart_under_load(dir.path(), args.deliveries, args.rate));
    spinner.finish(run.is_ok());
    let run = run?;
    println!(
        "broker restart under load: {} sent, {} answered 200 and all {} stored, {} answered 503, lost 0 ({:.1} s)",
        run.sent, run.accepted, run.stored, run.refused, run.seconds
    );
    Ok(())
}
