//! `cargo xtask bench <what>`: measurements, printed as recorded in docs/benchmarks.md.

use std::time::{Duration, Instant};

use anyhow::Context;
use local::Broker;

use crate::packages::{self, RABBITMQ};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Private broker start: launch to the first successful TLS + EXTERNAL login.
    BrokerStart {
        /// How many starts to measure.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.what {
        What::BrokerStart { runs } => broker_start(runs),
    }
}

fn broker_start(runs: usize) -> anyhow::Result<()> {
    packages::ensure(&[RABBITMQ])?;
    let runtime = crate::runtime()?;
    let mut times = Vec::new();
    for run in 1..=runs {
        let dir = tempfile::tempdir().context("creating a scratch directory")?;
        let (secrets, _) = local::secrets::generate(&dir.path().join("secrets"), false)?;
        let started = Instant::now();
        let mut broker = runtime.block_on(Broker::start(&dir.path().join("broker"), &secrets))?;
        let elapsed = started.elapsed();
        broker.stop();
        println!("run {run}: {:.2} s", elapsed.as_secs_f64());
        times.push(elapsed);
    }
    println!(
        "broker-start: median {:.2} s over {runs} runs (min {:.2} s, max {:.2} s)",
        secs(median(&mut times)),
        secs(times[0]),
        secs(times[runs - 1])
    );
    Ok(())
}

/// Sorts `times` and returns the middle one.
fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}
