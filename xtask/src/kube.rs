//! `cargo xtask kube --out DIR`: the deployment's Kubernetes manifests for production, from the
//! pod description the podman runtime runs (`local::kube`). `run-local --via-kube` plays the
//! same description's local form with `podman kube play`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use local::kube::{self, Target};

#[derive(clap::Args)]
pub struct Args {
    /// The directory to write `workbench.yaml` into (created if needed).
    #[arg(long, value_name = "DIR", required_unless_present = "check")]
    out: Option<PathBuf>,
    /// Check the production manifests (with KVM and without) with checkov instead, as
    /// `cargo xtask ci` does.
    #[arg(long, conflicts_with = "out")]
    check: bool,
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
    let Some(out) = args.out else { return check() };
    let spec = kube::production(&args.rabbitmq_image, &args.tasks_image, args.workers.max(1), !args.no_kvm);
    let yaml = kube::to_yaml(&kube::manifests(&spec, Target::Cluster));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join("workbench.yaml");
    std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    println!("fill in the Secrets (each value says what goes there), then: kubectl apply -f {}", path.display());
    Ok(())
}

/// Checks the production manifests, with KVM and without, with checkov (installed from
/// `xtask/checkov/requirements.txt`, every package pinned, into the target directory): every
/// check passes, or is skipped in the object with its reason.
pub fn check() -> anyhow::Result<()> {
    let tools = crate::workspace::tools_dir().join("checkov");
    let requirements = crate::workspace::root().join("xtask/checkov/requirements.txt");
    let wanted = std::fs::read(&requirements).context("reading xtask/checkov/requirements.txt")?;
    let installed = tools.join("installed-requirements.txt");
    let checkov = tools.join("bin/checkov");
    if std::fs::read(&installed).ok().as_ref() != Some(&wanted) || !checkov.exists() {
        println!("installing checkov into {}", tools.display());
        let _ = std::fs::remove_dir_all(&tools);
        succeed(
            Command::new("python3").args(["-m", "venv"]).arg(&tools),
            "python3 -m venv (is python3-venv installed?)",
        )?;
        let pip = tools.join("bin/pip");
        succeed(
            Command::new(pip).args(["install", "--quiet", "--disable-pip-version-check", "-r"]).arg(&requirements),
            "pip install checkov",
        )?;
        std::fs::write(&installed, wanted).context("recording the installed requirements")?;
    }
    for (label, kvm) in [("with KVM", true), ("without KVM", false)] {
        let spec = kube::production(local::images::RABBITMQ, local::images::TASKS, 2, kvm);
        let dir = tools.join("manifests").join(if kvm { "kvm" } else { "no-kvm" });
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("workbench.yaml");
        std::fs::write(&path, kube::to_yaml(&kube::manifests(&spec, Target::Cluster)))?;
        println!("checkov: the production manifests {label}");
        // --skip-download: the checks are in the package; their online descriptions are not needed.
        let mut command = Command::new(&checkov);
        command.args(["--framework", "kubernetes", "--compact", "--quiet", "--skip-download", "-f"]).arg(&path);
        succeed(&mut command, &format!("checkov found problems in the manifests {label} ({})", path.display()))?;
    }
    Ok(())
}

fn succeed(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what}: {status}; see the output above");
    }
    Ok(())
}
