//! `cargo xtask smoke --tasks-image REF`: is this tasks image deployable? First what it must
//! hold (the service binaries, git, the use of /dev/kvm), each missing piece named; then the
//! pod runs with it, and the scenarios that prove a deployment: a message through each queue,
//! a pull request tested to success, a job using KVM.

use std::path::PathBuf;

use anyhow::Context;

use crate::run_local::{self, Runtime};

/// The scenarios an image must pass to be rolled out.
const SCENARIOS: [&str; 3] = ["queue", "pr-success", "kvm"];

#[derive(clap::Args)]
pub struct Args {
    /// The tasks image to test, present in podman's storage (a release candidate, say).
    #[arg(long, value_name = "REF")]
    pub tasks_image: String,
    /// Run this RabbitMQ image instead of building localhost/workbench/rabbitmq.
    #[arg(long, value_name = "REF")]
    pub rabbitmq_image: Option<String>,
    /// Write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let image = args.tasks_image.clone();
    run_local::run(run_local::Args {
        runtime: Runtime::Podman,
        tasks_image: Some(args.tasks_image),
        rabbitmq_image: args.rabbitmq_image,
        scenarios: SCENARIOS.map(str::to_owned).to_vec(),
        json: args.json,
        ..Default::default()
    })
    .with_context(|| format!("smoke test of {image}"))?;
    println!("{image} is deployable: {} passed", SCENARIOS.join(", "));
    Ok(())
}
