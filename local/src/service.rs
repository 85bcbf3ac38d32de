//! The production services as child processes of the local deployment: the webhook and the
//! tasks workers run from their binaries as `launch` says, each logging to a file of the run
//! directory, listening on a port of 127.0.0.1 they chose and named in a file (no port is
//! picked for them, so none is taken twice), checked ready by asking them (never by sleeping),
//! and stopped with their whole process group.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::child::{ProcessGroup, tail};
use crate::client::Check;
use crate::{Broker, Secrets};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot start {name} ({}): {source}", binary.display())]
    Spawn { name: String, binary: PathBuf, source: std::io::Error },
    #[error("{name} exited before it was ready; the last lines of {}:\n{tail}", log.display())]
    Exited { name: String, log: PathBuf, tail: String },
    #[error("{reason}; the last lines of {}:\n{tail}", log.display())]
    NotReady { reason: crate::client::TimedOut, log: PathBuf, tail: String },
    #[error("cannot prepare {name}: {source}")]
    Io { name: String, source: std::io::Error },
    #[error(transparent)]
    Hosts(#[from] crate::hosts::HostsError),
}

/// A wait that timed out, before its log is known.
impl From<crate::client::TimedOut> for ServiceError {
    fn from(reason: crate::client::TimedOut) -> ServiceError {
        ServiceError::NotReady { reason, log: PathBuf::new(), tail: String::new() }
    }
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

    /// Waits until the service named the address it listens on in `file` and `probe` says it
    /// is ready there, failing early if the process exits; returns the address.
    async fn wait_listening(&mut self, file: &Path, probe: Readiness) -> Result<SocketAddr, ServiceError> {
        self.wait_answering(|| std::fs::read_to_string(file).ok().and_then(|text| text.trim().parse().ok()), probe)
            .await
    }

    /// Waits until `probe` says the service is ready at the address `address` says (none: not
    /// known yet), failing early if the process exits; returns the address.
    async fn wait_answering(
        &mut self,
        address: impl Fn() -> Option<SocketAddr>,
        probe: Readiness,
    ) -> Result<SocketAddr, ServiceError> {
        let what = format!("{} {probe}", self.name);
        let process = std::cell::RefCell::new(&mut self.process);
        let (name, log) = (&self.name, &self.log);
        let waited = crate::client::wait_until(&what, READY_WITHIN, || async {
            let checked = match address() {
                Some(address) => probe.check(address).await.map(|()| address),
                None => Err("no address named yet".to_owned()),
            };
            match checked {
                Ok(address) => return Ok(Check::Done(address)),
                Err(_) if process.borrow_mut().exited(0).is_some() => {}
                Err(not_yet) => return Ok(Check::NotYet(not_yet)),
            }
            Err(ServiceError::Exited { name: name.clone(), log: log.clone(), tail: tail(log, 20) })
        })
        .await;
        waited.map_err(|err| match err {
            ServiceError::NotReady { reason, .. } => {
                ServiceError::NotReady { reason, log: self.log.clone(), tail: self.log_tail(20) }
            }
            err => err,
        })
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
    pub async fn stop(&mut self) {
        self.process.stop_async(Duration::from_secs(10)).await;
    }
}

/// What says that a service is ready, asked at its address.
#[derive(Debug, Clone, Copy)]
enum Readiness {
    /// It answers `GET path` with 200.
    Answers(&'static str),
    /// A worker serves its metrics and has finished its rescan at start ([`worker_rescanned`]).
    Rescanned,
}

impl Readiness {
    /// `Err` says what is not there yet.
    async fn check(self, address: SocketAddr) -> Result<(), String> {
        match self {
            Readiness::Answers(path) => match crate::client::answers(address, path).await {
                true => Ok(()),
                false => Err(format!("{address} does not answer {path} yet")),
            },
            Readiness::Rescanned => rescanned(address).await,
        }
    }
}

impl std::fmt::Display for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Readiness::Answers(path) => write!(f, "answering {path}"),
            Readiness::Rescanned => f.write_str("done with its rescan at start"),
        }
    }
}

/// Whether the worker whose metrics are at `metrics` serves them (its consumers are in place)
/// and has finished its rescan at start: the scenarios' pull requests, opened after it, are
/// then queued by their events alone, never also by that rescan (a twin job, `tasks::status`).
pub async fn worker_rescanned(metrics: SocketAddr) -> bool {
    rescanned(metrics).await.is_ok()
}

async fn rescanned(metrics: SocketAddr) -> Result<(), String> {
    let answer = crate::client::probe(metrics, "/metrics").await.filter(|answer| answer.status == 200);
    let answer = answer.ok_or_else(|| format!("{metrics} does not answer /metrics yet"))?;
    match crate::client::metric_in(&answer.text(), tasks::metrics::RESCANS) {
        0 => Err(format!("the worker at {metrics} has not finished its rescan at start yet")),
        _ => Ok(()),
    }
}

/// The file `service` of the deployment in `run_dir` appends its spans to.
pub(crate) fn traces_file(run_dir: &Path, service: &str) -> Result<PathBuf, ServiceError> {
    let dir = crate::deployment::traces_dir(run_dir);
    std::fs::create_dir_all(&dir).map_err(|source| ServiceError::Io { name: format!("{service}'s traces"), source })?;
    Ok(crate::deployment::traces_file(&dir, service))
}

/// The webhook binary, listening on a free port of 127.0.0.1.
pub struct Webhook {
    pub service: Service,
    pub address: SocketAddr,
}

impl Webhook {
    /// Starts the webhook on `port` of 127.0.0.1 (0: any free one): a restarted webhook keeps
    /// the address its clients know. It appends its spans to `traces`, if given.
    pub async fn start(
        binary: &Path,
        run_dir: &Path,
        secrets: &Secrets,
        broker: &Broker,
        port: u16,
        traces: Option<&Path>,
        prometheus: Option<&str>,
    ) -> Result<Webhook, ServiceError> {
        let address_file = run_dir.join("webhook.address");
        // A restart must not read the address the last one wrote.
        let _ = std::fs::remove_file(&address_file);
        let broker_address = broker.address().to_string();
        let webhook_dir = secrets.webhook_dir();
        let launch = crate::launch::Webhook {
            broker: crate::launch::Broker { address: Some(&broker_address), secrets_dir: Some(&webhook_dir) },
            secret_file: &secrets.webhook_token(),
            listen: crate::launch::Listen {
                address: SocketAddr::from(([127, 0, 0, 1], port)),
                address_file: Some(&address_file),
            },
            log: "info",
            traces,
            prometheus,
        }
        .launch();
        let mut service = Service::spawn("webhook", launch.command(binary), run_dir.join("webhook.log"))?;
        let address = service.wait_listening(&address_file, Readiness::Answers("/healthz")).await?;
        Ok(Webhook { service, address })
    }

    /// Starts the webhook on host [`crate::hosts::WEBHOOK_HOST`] of `network`, listening on
    /// [`crate::pod::WEBHOOK_PORT`] of its address and reaching the broker by its host's name;
    /// its address is the port of 127.0.0.1 relayed to it.
    pub async fn start_on_host(
        binary: &Path,
        run_dir: &Path,
        secrets: &Secrets,
        network: &crate::hosts::Network,
        traces: Option<&Path>,
    ) -> Result<Webhook, ServiceError> {
        let host = crate::hosts::WEBHOOK_HOST;
        let webhook_dir = secrets.webhook_dir();
        let launch = crate::launch::Webhook {
            broker: crate::launch::Broker { address: Some(crate::hosts::BROKER), secrets_dir: Some(&webhook_dir) },
            secret_file: &secrets.webhook_token(),
            listen: crate::launch::Listen {
                address: SocketAddr::from(([0, 0, 0, 0], crate::pod::WEBHOOK_PORT)),
                address_file: None,
            },
            log: "info",
            traces,
            prometheus: None,
        }
        .launch();
        let mut command = launch.command(binary);
        network.enter(host, &mut command)?;
        let mut service = Service::spawn("webhook", command, run_dir.join("webhook.log"))?;
        let exposed = network.expose(host, crate::pod::WEBHOOK_PORT).await?;
        let address = service.wait_answering(|| Some(exposed), Readiness::Answers("/healthz")).await?;
        Ok(Webhook { service, address })
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.address)
    }
}

/// Where a worker runs.
pub enum Place<'a> {
    /// On this machine, reaching the broker at this address.
    Here(amqp::Address),
    /// On host `.1` (its name, the worker's) of network `.0`, reaching the broker by its host's
    /// name.
    Host(&'a crate::hosts::Network, &'a str),
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
    /// Seconds between rescans (0: none); `None` for the worker's default.
    pub rescan_interval: Option<u64>,
    /// Ready only once the rescan at start has finished ([`worker_rescanned`]), rather than as
    /// soon as the consumers are in place (with rescans off, there is none to wait for).
    pub ready_after_rescan: bool,
}

/// A `tasks run-queue` process.
pub struct Worker {
    pub service: Service,
    pub hostname: String,
    pub metrics: SocketAddr,
}

impl Worker {
    /// Starts worker `hostname`; ready once it serves its metrics, which it does after its
    /// consumers are in place (and, with `ready_after_rescan`, once its rescan at start ended).
    pub async fn start(
        binary: &Path,
        run_dir: &Path,
        hostname: &str,
        config: &WorkerConfig<'_>,
    ) -> Result<Worker, ServiceError> {
        Worker::start_at(binary, run_dir, hostname, config, &Place::Here(config.broker.address())).await
    }

    /// [`Worker::start`], at `place`: on this machine reaching the broker at another address
    /// (a `crate::link::Link` to it, say), or on a host.
    pub async fn start_at(
        binary: &Path,
        run_dir: &Path,
        hostname: &str,
        config: &WorkerConfig<'_>,
        place: &Place<'_>,
    ) -> Result<Worker, ServiceError> {
        let address_file = run_dir.join(format!("{hostname}.metrics-address"));
        let _ = std::fs::remove_file(&address_file);
        let (broker_address, metrics) = match place {
            Place::Here(address) => (address.to_string(), crate::launch::Listen::loopback(&address_file)),
            Place::Host(..) => (
                crate::hosts::BROKER.to_owned(),
                crate::launch::Listen {
                    address: SocketAddr::from(([0, 0, 0, 0], crate::hosts::METRICS_PORT)),
                    address_file: None,
                },
            ),
        };
        let webhook_dir = config.secrets.webhook_dir();
        let launch = crate::launch::Worker {
            broker: crate::launch::Broker { address: Some(&broker_address), secrets_dir: Some(&webhook_dir) },
            hostname,
            jobs: config.jobs,
            test_map: config.test_map,
            github_api: &config.forge.api_url,
            github_token_file: &config.forge.token_file,
            runner_config: Some(config.runner_config),
            work_dir: Some(config.work_dir),
            metrics: Some(metrics),
            rescan_interval: config.rescan_interval,
            log: "info",
            traces: Some(&traces_file(run_dir, hostname)?),
        }
        .launch();
        let log = run_dir.join(format!("{hostname}.log"));
        let mut command = launch.command(binary);
        if let Place::Host(network, host) = place {
            network.enter(host, &mut command)?;
        }
        let mut service = Service::spawn(hostname, command, log)?;
        let probe = match config.ready_after_rescan && config.rescan_interval != Some(0) {
            true => Readiness::Rescanned,
            false => Readiness::Answers("/metrics"),
        };
        let metrics = match place {
            Place::Here(_) => service.wait_listening(&address_file, probe).await?,
            Place::Host(network, host) => {
                let exposed = network.expose(host, crate::hosts::METRICS_PORT).await?;
                service.wait_answering(|| Some(exposed), probe).await?
            }
        };
        Ok(Worker { service, hostname: hostname.to_owned(), metrics })
    }
}
