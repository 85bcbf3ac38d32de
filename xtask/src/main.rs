//! `cargo xtask`: the developer entry point. This file only parses arguments and dispatches;
//! each command lives in its own module.

mod alerts;
mod bench;
mod chaos;
mod ci;
mod fuzz;
mod images;
mod junit;
mod kube;
mod packages;
mod payload;
mod progress;
mod run_local;
mod secrets;
mod smoke;
#[cfg(test)]
mod tidy;
mod watch;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Workbench: the Cockpit CI deployment on one machine, brought up and asserted end to end.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring the deployment up on this machine and assert the whole flow (the main job).
    RunLocal(run_local::Args),
    /// Stop the deployment `run-local --keep` left running.
    Down,
    /// Write fresh fake secrets in Cockpit's production layout.
    Secrets(secrets::Args),
    /// Run everything CI checks: formatting, lints, all tests, and run-local.
    Ci,
    /// Build the RabbitMQ and tasks images offline, from Debian's packages (no registry).
    Images(images::Args),
    /// Write the deployment's Kubernetes manifests (from the pod run-local runs).
    Kube(kube::Args),
    /// Smoke-test a tasks image before rollout: what it holds, then the pod with it.
    Smoke(smoke::Args),
    /// Inject faults into the running services and count what was lost (nothing, or it fails).
    Chaos(chaos::Args),
    /// Fuzz what the deployment parses from outside (cargo-fuzz targets of fuzz/), bounded.
    Fuzz(fuzz::Args),
    /// Measure, and print figures as recorded in docs/benchmarks.md.
    Bench(bench::Args),
    /// Print a mocked GitHub event as the webhook queues it (for `tasks publish-queue`).
    Payload(payload::Args),
}

fn main() -> ExitCode {
    // s3s logs every refused request as an error, and the s3 scenario's refusals are expected;
    // the in-process webhook of `chaos` warns of every delivery it refuses while the broker is
    // away, which is the point of that run.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // lapin logs, as errors, the refusals the amqp-refusals scenario provokes on
                // purpose; a real broker failure reaches the user as the error of its step.
                .unwrap_or_else(|_| "warn,s3s::ops=off,webhook::routes=error,lapin=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::RunLocal(args) => run_local::run(args),
        Command::Down => run_local::down(),
        Command::Secrets(args) => secrets::run(args),
        Command::Ci => ci::run(),
        Command::Images(args) => images::run(args),
        Command::Kube(args) => kube::run(args),
        Command::Smoke(args) => smoke::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Chaos(args) => chaos::run(args),
        Command::Fuzz(args) => fuzz::run(args),
        Command::Payload(args) => payload::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
