//! How the production services are started, in one place: the `webhook` and `tasks run-queue`
//! command lines and environments, the same for a child process (`service`), a container of
//! the pod (`pod`, and so the Kubernetes manifests), bench, chaos and the tests. Settings go
//! through the environment, as in Cockpit's containers (so that a shell in one finds them);
//! what differs between two instances (a worker's name, its work directory, where it listens)
//! goes on the command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where the service binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub webhook: PathBuf,
    pub tasks: PathBuf,
}

impl Binaries {
    /// The binaries of a cargo profile's output directory.
    pub fn in_dir(dir: &Path) -> Binaries {
        Binaries { webhook: dir.join("webhook"), tasks: dir.join("tasks") }
    }

    /// The binaries of the build a test belongs to: tests run from `target/<profile>/deps/`.
    pub fn of_test_build() -> Binaries {
        let exe = std::env::current_exe().unwrap_or_default();
        Binaries::in_dir(exe.parent().and_then(Path::parent).unwrap_or(Path::new(".")))
    }

    /// Their directory, for `PATH`.
    pub fn dir(&self) -> &Path {
        self.tasks.parent().unwrap_or(Path::new("."))
    }
}

/// A service's command line and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The program's name, as a container's command starts with it.
    pub program: &'static str,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Launch {
    /// The command line, the program's name first.
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.program.to_owned()).chain(self.args.iter().cloned()).collect()
    }

    /// A child process running `binary` so, with nothing of this process's environment that
    /// the service reads.
    pub fn command(&self, binary: &Path) -> std::process::Command {
        let mut command = std::process::Command::new(binary);
        for name in ENVIRONMENT {
            command.env_remove(name);
        }
        command.args(&self.args).envs(self.env.iter().map(|(name, value)| (name, value)));
        command
    }
}

/// Every variable a service reads: a child process must not inherit one by accident.
const ENVIRONMENT: [&str; 10] = [
    "AMQP_SERVER",
    "WORKBENCH_SECRETS_DIR",
    "COCKPIT_GITHUB_WEBHOOK_TOKEN_FILE",
    "JOB_RUNNER_CONFIG",
    "WORKBENCH_TESTMAP",
    "GITHUB_API",
    "COCKPIT_GITHUB_TOKEN_FILE",
    "COCKPIT_TESTMAP_INJECT",
    traces::ENV,
    "WORKBENCH_PROMETHEUS_URL",
];

/// Where a service finds the broker and its client certificate: `None` for the defaults
/// (`localhost:5671`, `/run/secrets/webhook`), which is where they are in the pod.
#[derive(Debug, Clone, Copy, Default)]
pub struct Broker<'a> {
    pub address: Option<&'a str>,
    pub secrets_dir: Option<&'a Path>,
}

/// Where a server listens, and the file it names the address it got in (for port 0).
#[derive(Debug, Clone, Copy)]
pub struct Listen<'a> {
    pub address: SocketAddr,
    pub address_file: Option<&'a Path>,
}

impl Listen<'_> {
    /// Any free port of 127.0.0.1, learnt from `address_file` once the server listens.
    pub fn loopback(address_file: &Path) -> Listen<'_> {
        Listen { address: SocketAddr::from(([127, 0, 0, 1], 0)), address_file: Some(address_file) }
    }
}

/// The webhook.
#[derive(Debug, Clone, Copy)]
pub struct Webhook<'a> {
    pub broker: Broker<'a>,
    /// The HMAC secret's file.
    pub secret_file: &'a Path,
    pub listen: Listen<'a>,
    /// `RUST_LOG`.
    pub log: &'a str,
    /// The file its spans are appended to (`traces::ENV`), if traced.
    pub traces: Option<&'a Path>,
    /// The Prometheus scraping the deployment, linked from the status page.
    pub prometheus: Option<&'a str>,
}

impl Webhook<'_> {
    pub fn launch(&self) -> Launch {
        let mut args = vec!["--listen".to_owned(), self.listen.address.to_string()];
        if let Some(file) = self.listen.address_file {
            args.extend(["--address-file".to_owned(), file.display().to_string()]);
        }
        let mut env = broker_env(&self.broker);
        env.push(("COCKPIT_GITHUB_WEBHOOK_TOKEN_FILE".into(), self.secret_file.display().to_string()));
        env.push(("RUST_LOG".into(), self.log.to_owned()));
        env.extend(traces_env(self.traces));
        if let Some(url) = self.prometheus {
            env.push(("WORKBENCH_PROMETHEUS_URL".to_owned(), url.to_owned()));
        }
        Launch { program: "webhook", args, env }
    }
}

/// A `tasks run-queue` worker.
#[derive(Debug, Clone, Copy)]
pub struct Worker<'a> {
    pub broker: Broker<'a>,
    /// Its name in statuses and logs.
    pub hostname: &'a str,
    /// How many jobs it runs at once.
    pub jobs: u16,
    pub test_map: &'a Path,
    pub github_api: &'a str,
    pub github_token_file: &'a Path,
    /// job-runner's configuration: none for a worker that only scans.
    pub runner_config: Option<&'a Path>,
    pub work_dir: Option<&'a Path>,
    /// Where it serves its metrics, if anywhere.
    pub metrics: Option<Listen<'a>>,
    /// Seconds between rescans (0: none); `None` for the worker's default.
    pub rescan_interval: Option<u64>,
    /// `RUST_LOG`.
    pub log: &'a str,
    /// The file its spans, and those of its jobs' processes, are appended to, if traced.
    pub traces: Option<&'a Path>,
}

impl Worker<'_> {
    pub fn launch(&self) -> Launch {
        let mut args: Vec<String> =
            ["run-queue", "--hostname", self.hostname, "--jobs", &self.jobs.to_string()].map(str::to_owned).to_vec();
        if let Some(dir) = self.work_dir {
            args.extend(["--work-dir".to_owned(), dir.display().to_string()]);
        }
        if let Some(listen) = self.metrics {
            args.extend(["--metrics-listen".to_owned(), listen.address.to_string()]);
            if let Some(file) = listen.address_file {
                args.extend(["--metrics-address-file".to_owned(), file.display().to_string()]);
            }
        }
        if let Some(seconds) = self.rescan_interval {
            args.extend(["--rescan-interval".to_owned(), seconds.to_string()]);
        }
        let mut env = broker_env(&self.broker);
        if let Some(config) = self.runner_config {
            env.push(("JOB_RUNNER_CONFIG".to_owned(), config.display().to_string()));
        }
        env.extend([
            ("WORKBENCH_TESTMAP".to_owned(), self.test_map.display().to_string()),
            ("GITHUB_API".to_owned(), self.github_api.to_owned()),
            ("COCKPIT_GITHUB_TOKEN_FILE".to_owned(), self.github_token_file.display().to_string()),
            ("RUST_LOG".to_owned(), self.log.to_owned()),
        ]);
        env.extend(traces_env(self.traces));
        Launch { program: "tasks", args, env }
    }
}

fn traces_env(file: Option<&Path>) -> Option<(String, String)> {
    file.map(|file| (traces::ENV.to_owned(), file.display().to_string()))
}

fn broker_env(broker: &Broker) -> Vec<(String, String)> {
    let mut env = Vec::new();
    if let Some(address) = broker.address {
        env.push(("AMQP_SERVER".to_owned(), address.to_owned()));
    }
    if let Some(dir) = broker.secrets_dir {
        env.push(("WORKBENCH_SECRETS_DIR".to_owned(), dir.display().to_string()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_named_on_its_command_line_and_configured_by_its_environment() {
        let launch = Worker {
            broker: Broker { address: Some("127.0.0.1:5671"), secrets_dir: Some(Path::new("/s")) },
            hostname: "worker-1",
            jobs: 2,
            test_map: Path::new("/t/testmap.toml"),
            github_api: "http://127.0.0.1:1/",
            github_token_file: Path::new("/s/token"),
            runner_config: Some(Path::new("/t/job-runner.toml")),
            work_dir: Some(Path::new("/w")),
            metrics: Some(Listen::loopback(Path::new("/run/metrics.address"))),
            rescan_interval: Some(0),
            log: "info",
            traces: None,
        }
        .launch();
        assert_eq!(
            launch.argv().join(" "),
            "tasks run-queue --hostname worker-1 --jobs 2 --work-dir /w --metrics-listen 127.0.0.1:0 \
             --metrics-address-file /run/metrics.address --rescan-interval 0"
        );
        let env: Vec<String> = launch.env.iter().map(|(name, value)| format!("{name}={value}")).collect();
        assert_eq!(
            env,
            [
                "AMQP_SERVER=127.0.0.1:5671",
                "WORKBENCH_SECRETS_DIR=/s",
                "JOB_RUNNER_CONFIG=/t/job-runner.toml",
                "WORKBENCH_TESTMAP=/t/testmap.toml",
                "GITHUB_API=http://127.0.0.1:1/",
                "COCKPIT_GITHUB_TOKEN_FILE=/s/token",
                "RUST_LOG=info",
            ]
        );
    }
}
