//! The production services as child processes of the local deployment: the webhook and the
//! tasks workers run from their binaries, each logging to a file of the run directory, checked
//! ready by asking them (never by sleeping), and stopped with their whole process group.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::child::ProcessGroup;
use crate::{Broker, Secrets};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot start {name} ({}): {source}", binary.display())]
    Spawn { name: String, binary: PathBuf, source: std::io::Error },
    #[error("{name} exited before it was ready; the last lines of {}:\n{tail}", log.display())]
    Exited { name: String, log: PathBuf, tail: String },
    #[error("{name} was not ready within {seconds} s; the last lines of {}:\n{tail}", log.display())]
    NotReady { name: String, seconds: u64, log: PathBuf, tail: String },
    #[error("cannot prepare {name}: {source}")]
    Io { name: String, source: std::io::Error },
}

/// How long a service may take to answer after it started.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// One running service process.
pub struct Service {
    name: String,
    log: PathBuf,
    process: ProcessGroup,
}

impl Service {
    /// Starts `command` as `name`, its output appended to `log`.
    fn spawn(name: &str, mut command: Command, log: PathBuf) -> Result<Service, ServiceError> {
        let io = |source| ServiceError::Io { name: name.to_owned(), source };
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).map_err(io)?;
        command.stdin(Stdio::null()).stdout(file.try_clone().map_err(io)?).stderr(file);
        let mut process = ProcessGroup::new();
        let binary = PathBuf::from(command.get_program());
        process.spawn(&mut command).map_err(|source| ServiceError::Spawn { name: name.to_owned(), binary, source })?;
        Ok(Service { name: name.to_owned(), log, process })
    }

    /// Waits until `ready` answers true, failing early if the process exits.
    async fn wait_ready<F: Future<Output = bool>>(&mut self, ready: impl Fn() -> F) -> Result<(), ServiceError> {
        let deadline = Instant::now() + READY_WITHIN;
        while !ready().await {
            if self.process.exited(0).is_some() {
                return Err(ServiceError::Exited {
                    name: self.name.clone(),
                    log: self.log.clone(),
                    tail: self.log_tail(20),
                });
            }
            if Instant::now() > deadline {
                let (name, log, tail) = (self.name.clone(), self.log.clone(), self.log_tail(20));
                return Err(ServiceError::NotReady { name, seconds: READY_WITHIN.as_secs(), log, tail });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the service's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Every live process of the service.
    pub fn process_ids(&self) -> Vec<u32> {
        self.process.process_ids()
    }

    /// Kills the service and everything it started with SIGKILL, as a crash or the OOM killer
    /// would: no chance to clean up.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Stops the service: SIGTERM, then SIGKILL for whatever is left after the grace period.
    pub fn stop(&mut self) {
        self.process.stop(Duration::from_secs(10));
    }
}

/// The webhook binary, listening on a free port of 127.0.0.1.
pub struct Webhook {
    pub service: Service,
    pub address: SocketAddr,
}

impl Webhook {
    pub async fn start(
        binary: &Path,
        run_dir: &Path,
        secrets: &Secrets,
        broker: &Broker,
    ) -> Result<Webhook, ServiceError> {
        let address = SocketAddr::from(([127, 0, 0, 1], free_port("webhook")?));
        let mut command = Command::new(binary);
        command
            .args(["--amqp", &broker.address().to_string(), "--listen", &address.to_string()])
            .arg("--secrets-dir")
            .arg(secrets.webhook_dir())
            .arg("--secret-file")
            .arg(secrets.webhook_token())
            .env("RUST_LOG", "info");
        let mut service = Service::spawn("webhook", command, run_dir.join("webhook.log"))?;
        service.wait_ready(|| answers(address, "/healthz")).await?;
        Ok(Webhook { service, address })
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.address)
    }
}

/// What a tasks worker of the deployment is given.
pub struct WorkerConfig<'a> {
    pub broker: &'a Broker,
    pub secrets: &'a Secrets,
    pub test_map: &'a Path,
    pub forge: &'a crate::worker::Forge,
    pub runner_config: &'a Path,
    pub work_dir: &'a Path,
    pub jobs: u16,
}

/// A `tasks run-queue` process.
pub struct Worker {
    pub service: Service,
    pub hostname: String,
    pub metrics: SocketAddr,
}

impl Worker {
    /// Starts worker `hostname`; ready once it serves its metrics, which it does after its
    /// consumers are in place.
    pub async fn start(
        binary: &Path,
        run_dir: &Path,
        hostname: &str,
        config: &WorkerConfig<'_>,
    ) -> Result<Worker, ServiceError> {
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port(hostname)?));
        let mut command = Command::new(binary);
        command
            .args(["--amqp", &config.broker.address().to_string(), "--secrets-dir"])
            .arg(config.secrets.webhook_dir())
            .args(["run-queue", "--hostname", hostname, "--jobs", &config.jobs.to_string()])
            .arg("--test-map")
            .arg(config.test_map)
            .args(["--github-api", &config.forge.api_url, "--github-token-file"])
            .arg(&config.forge.token_file)
            .arg("--job-runner-config")
            .arg(config.runner_config)
            .arg("--work-dir")
            .arg(config.work_dir)
            .args(["--metrics-listen", &metrics.to_string()])
            .env("RUST_LOG", "info");
        let mut service = Service::spawn(hostname, command, run_dir.join(format!("{hostname}.log")))?;
        service.wait_ready(|| answers(metrics, "/metrics")).await?;
        Ok(Worker { service, hostname: hostname.to_owned(), metrics })
    }
}

/// The last `lines` lines of the file at `path`.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn free_port(name: &str) -> Result<u16, ServiceError> {
    crate::free_port().map_err(|source| ServiceError::Io { name: name.to_owned(), source })
}

/// Whether `GET path` on `address` answers 200.
pub(crate) async fn answers(address: SocketAddr, path: &str) -> bool {
    get(address, path).await.is_some()
}

/// `GET path` on `address`: the body of its answer, if it is a 200.
pub(crate) async fn get(address: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_owned())
}
