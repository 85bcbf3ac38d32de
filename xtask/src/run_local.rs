//! `cargo xtask run-local`: bring the deployment up on this machine, assert the flow through
//! it, and tear everything down on every exit path (success, failure, Ctrl-C).
//!
//! Today the deployment is the private broker and the scenario is `queue`; the webhook, tasks
//! workers, S3 and mock GitHub join it as they are built (docs/ARCHITECTURE.md).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use local::Broker;
use local::scenario::ScenarioError;

use crate::packages::{self, RABBITMQ};
use crate::progress::step;

#[derive(clap::Args, Default)]
pub struct Args {}

struct Outcome {
    name: &'static str,
    seconds: f64,
    result: Result<(), ScenarioError>,
}

pub fn run(_args: Args) -> anyhow::Result<()> {
    packages::ensure(&[RABBITMQ])?;
    let runs = crate::runs_dir();
    std::fs::create_dir_all(&runs).with_context(|| format!("creating {}", runs.display()))?;
    let run_dir = tempfile::Builder::new().prefix("run-").tempdir_in(&runs).context("creating the run directory")?;
    let result = crate::runtime()?.block_on(async {
        tokio::select! {
            result = deploy_and_check(run_dir.path()) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // Every service has been stopped by now (their guards dropped with the future above).
    if result.is_err() {
        let kept = run_dir.keep();
        eprintln!("the deployment was torn down; its logs are kept in {}", kept.display());
    }
    result
}

async fn deploy_and_check(run_dir: &Path) -> anyhow::Result<()> {
    let secrets_dir = run_dir.join("secrets");
    let (secrets, _) = step("generating fake secrets", async { local::secrets::generate(&secrets_dir, false) }).await?;
    let broker =
        step("starting RabbitMQ (TLS only, certificate login)", Broker::start(&run_dir.join("broker"), &secrets))
            .await?;

    let mut outcomes = Vec::new();
    let started = Instant::now();
    let result = local::scenario::queue(&broker.client_config()).await;
    outcomes.push(Outcome { name: "queue", seconds: started.elapsed().as_secs_f64(), result });

    println!("\n{:<16} {:<6} {:>8}", "scenario", "result", "time");
    for outcome in &outcomes {
        let status = if outcome.result.is_ok() { "pass" } else { "FAIL" };
        println!("{:<16} {:<6} {:>6.2} s", outcome.name, status, outcome.seconds);
    }
    let failed: Vec<_> = outcomes.iter().filter_map(|o| o.result.as_ref().err().map(|e| (o.name, e))).collect();
    if failed.is_empty() {
        return Ok(());
    }
    for (name, err) in &failed {
        eprintln!("\nscenario {name} failed: {err}");
    }
    eprintln!("\nbroker log ({}), last lines:\n{}", broker.log_path().display(), broker.log_tail());
    bail!("{} of {} scenarios failed", failed.len(), outcomes.len())
}
