//! `cargo xtask kube --out DIR`: the deployment's Kubernetes manifests for production, from the
//! pod description the podman runtime runs (`local::kube`). `run-local --via-kube` plays the
//! same description's local form with `podman kube play`.

use std::path::PathBuf;

use anyhow::Context;
use local::kube::{self, Target};

#[derive(clap::Args)]
pub struct Args {
    /// The directory to write `workbench.yaml` into (created if needed).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The tasks image the cluster pulls.
    #[arg(long, value_name = "REF", default_value = local::images::TASKS)]
    tasks_image: String,
    /// The RabbitMQ image the cluster pulls.
    #[arg(long, value_name = "REF", default_value = local::images::RABBITMQ)]
    rabbitmq_image: String,
    /// How many tasks workers (replicas) to run.
    #[arg(long, default_value_t = 1)]
    workers: u16,
    /// The nodes give workers no /dev/kvm (or give it through a device plugin): the workers
    /// are not privileged, and jobs run without KVM.
    #[arg(long)]
    no_kvm: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let spec = kube::production(&args.rabbitmq_image, &args.tasks_image, args.workers.max(1), !args.no_kvm);
    let yaml = kube::to_yaml(&kube::manifests(&spec, Target::Cluster));
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let path = args.out.join("workbench.yaml");
    std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    println!("fill in the Secrets (each value says what goes there), then: kubectl apply -f {}", path.display());
    Ok(())
}
