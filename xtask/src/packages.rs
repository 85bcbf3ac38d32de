//! System packages the commands need, installed through the distribution's package manager:
//! asking first on a terminal, without asking when CI=true, and otherwise saying exactly what
//! is missing and how to install it.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// A Debian package and a file that shows it is installed.
#[derive(Clone, Copy)]
pub struct Package {
    pub name: &'static str,
    pub provides: &'static str,
}

pub const RABBITMQ: Package = Package { name: "rabbitmq-server", provides: "/usr/lib/rabbitmq/bin/rabbitmq-server" };
pub const OPENSSL: Package = Package { name: "openssl", provides: "/usr/bin/openssl" };
/// The workflow linter runs on Node.js, installed with npm.
pub const NODE: [Package; 2] =
    [Package { name: "nodejs", provides: "/usr/bin/node" }, Package { name: "npm", provides: "/usr/bin/npm" }];
/// libFuzzer, which the fuzz targets link, is C++.
pub const CXX: Package = Package { name: "g++", provides: "/usr/bin/g++" };
/// checkov, which checks the production manifests, installs into a Python virtual environment.
pub const PYTHON_VENV: Package = Package { name: "python3-venv", provides: "/usr/share/doc/python3-venv" };
/// promtool, which checks the alert rules, comes with Prometheus.
/// `ip`, for the hosts runtime's network namespaces.
pub const IPROUTE2: Package = Package { name: "iproute2", provides: "/usr/sbin/ip" };
pub const PROMETHEUS: Package = Package { name: "prometheus", provides: "/usr/bin/promtool" };
/// Headless Chromium and its WebDriver, for the page tests.
pub const CHROMIUM: [Package; 2] = [
    Package { name: "chromium", provides: "/usr/bin/chromium" },
    Package { name: "chromium-driver", provides: "/usr/bin/chromedriver" },
];

/// The interactive mode's test drives a terminal with it.
pub const TMUX: Package = Package { name: "tmux", provides: "/usr/bin/tmux" };
/// Containers: podman with runc (crun fails here), catatonit for pods and `--init`, netavark
/// and iptables for container networks, slirp4netns for the pod's way to this machine's
/// loopback (all only recommended by podman, and we install without recommends), and
/// mmdebstrap to build images from Debian packages without a registry (platform-notes.md).
pub const PODMAN: [Package; 7] = [
    Package { name: "podman", provides: "/usr/bin/podman" },
    Package { name: "runc", provides: "/usr/sbin/runc" },
    Package { name: "catatonit", provides: "/usr/bin/catatonit" },
    Package { name: "netavark", provides: "/usr/lib/podman/netavark" },
    Package { name: "iptables", provides: "/usr/sbin/iptables" },
    Package { name: "slirp4netns", provides: "/usr/bin/slirp4netns" },
    Package { name: "mmdebstrap", provides: "/usr/bin/mmdebstrap" },
];

/// The packages that are not installed.
pub fn missing(packages: &[Package]) -> Vec<&'static str> {
    packages.iter().filter(|package| !Path::new(package.provides).exists()).map(|package| package.name).collect()
}

/// Makes sure every package is installed, installing the missing ones.
pub fn ensure(packages: &[Package]) -> anyhow::Result<()> {
    let missing = missing(packages);
    if missing.is_empty() {
        return Ok(());
    }
    let names = missing.join(" ");
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!(
            "missing system packages: {names}. This machine has no apt-get: install them with your distribution's package manager and run again"
        );
    }
    let sudo: &[&str] = if rustix::process::geteuid().is_root() {
        &[]
    } else if Path::new("/usr/bin/sudo").exists() {
        &["sudo"]
    } else {
        bail!("missing system packages: {names}. Install them as root: apt-get install -y {names}");
    };
    let in_ci = std::env::var("CI").is_ok_and(|value| value == "true");
    if !in_ci && !confirm(&format!("Workbench needs {names}. Install with apt-get now? [Y/n] "))? {
        bail!("missing system packages: {names}. Install them with: sudo apt-get install -y {names}");
    }
    println!("installing {names} with apt-get");
    apt(sudo, &["update", "-q"])?;
    apt(sudo, &[&["install", "-y", "-q", "--no-install-recommends"][..], &missing].concat())?;
    if let Some(package) = packages.iter().find(|package| !Path::new(package.provides).exists()) {
        bail!("apt-get installed {} but {} is still missing", package.name, package.provides);
    }
    Ok(())
}

/// Asks a yes/no question on the terminal; without a terminal the answer is no.
fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    print!("{question}");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "" | "y" | "Y" | "yes"))
}

fn apt(sudo: &[&str], args: &[&str]) -> anyhow::Result<()> {
    let (program, rest) = match sudo {
        [sudo, ..] => (*sudo, [&["apt-get"][..], args].concat()),
        [] => ("apt-get", args.to_vec()),
    };
    let status = Command::new(program)
        .args(&rest)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .with_context(|| format!("running {program} {}", rest.join(" ")))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status}); see its output above", rest.join(" "));
    }
    Ok(())
}
