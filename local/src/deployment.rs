//! The whole deployment, in the order of the data flow: fake secrets, the broker, the S3
//! store, the mock GitHub with the fixture projects, the webhook and the tasks workers. On the
//! `process` runtime the services are child processes; on the `podman` runtime they are the
//! containers of one pod (`crate::pod`). Dropping it tears everything down.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;

pub use crate::launch::Binaries;
use crate::pod::{self, HostPorts, Pod};
use crate::prometheus::Prometheus;
use crate::service::{ServiceError, Webhook, Worker, WorkerConfig};
use crate::worker::{Forge, RunnerConfig, Sandbox};
use crate::{Broker, MockGitHub, PodmanService, S3Server, Secrets};
use tasks::hold::{self, Held};

/// Jobs each local worker runs at once: the scenarios run side by side, and their jobs are
/// small (production's workers run one, see `kube::production`). Enough for every job of all
/// the scenarios (five): with four, the last waited for a slot, a second on podman.
const JOBS_PER_WORKER: u16 = 6;
/// Jobs each worker host runs at once on the hosts runtime, whose bench (`bench hosts`) states
/// its figures per four slots a host.
const JOBS_PER_HOST: u16 = 4;

/// The fixture projects on the mock GitHub: repository and fixture directory. Every
/// repository of the test map is there: a worker's rescan of one that is not fails.
pub const REPOS: [(&str, &str); 5] = [
    ("workbench-ci/demo", "passing"),
    ("workbench-ci/failing", "failing"),
    ("workbench-ci/library", "failing"),
    ("workbench-ci/kvm", "kvm"),
    ("workbench-ci/container", "container"),
];

#[derive(Debug, Clone)]
pub struct Options {
    pub binaries: Binaries,
    /// Existing secrets to use instead of fresh ones.
    pub secrets: Option<PathBuf>,
    pub workers: u16,
    /// The repository's `fixtures/` directory.
    pub fixtures: PathBuf,
    /// The workers talk to github.com with the token in this file, instead of the mock (which
    /// runs all the same, idle).
    pub real_github_token: Option<PathBuf>,
    pub runtime: Runtime,
    /// Keep the first job whose tests fail, for a shell in it ([`Deployment::held`]); released
    /// at teardown.
    pub hold_failed: bool,
    /// Also run a Prometheus scraping every service, with these settings (process runtime).
    pub monitor: Option<crate::prometheus::Settings>,
}

/// Where the services run.
#[derive(Debug, Clone)]
pub enum Runtime {
    /// Child processes of this one.
    Process,
    /// The containers of one podman pod, from these images (present in podman's storage);
    /// with `via_kube`, made by `podman kube play` of the pod's Kubernetes manifest.
    Podman { rabbitmq_image: String, tasks_image: String, via_kube: bool },
    /// Child processes of this one on hosts of their own (`crate::hosts`): the broker's, the
    /// webhook's, the mock GitHub's and S3's, and one per worker.
    Hosts,
}

/// Told about each step as it starts and ends, to show progress. Independent steps run at
/// the same time, so a step is named by the number `start` returned.
pub trait Progress {
    fn start(&self, step: &str) -> usize;
    fn done(&self, step: usize, ok: bool);
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Secrets(#[from] crate::SecretsError),
    #[error(transparent)]
    Broker(#[from] crate::BrokerError),
    #[error(transparent)]
    S3(#[from] crate::s3_server::S3ServerError),
    #[error(transparent)]
    GitHub(#[from] crate::github::MockError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Hosts(#[from] crate::hosts::HostsError),
    #[error(transparent)]
    Podman(#[from] crate::PodmanError),
    #[error(transparent)]
    Pod(#[from] pod::PodError),
    #[error(transparent)]
    Prometheus(#[from] crate::prometheus::PrometheusError),
    #[error("{0}")]
    Unsupported(&'static str),
    /// What the caller prepared for the services ([`Deployment::start_beside`]) failed.
    #[error("{0}")]
    Prepared(String),
    #[error("cannot {what}: {source}")]
    Io { what: String, source: std::io::Error },
}

/// A running deployment.
pub struct Deployment {
    pub run_dir: PathBuf,
    pub secrets: Secrets,
    pub test_map: PathBuf,
    /// The workers' job-runner configuration.
    pub runner_config: PathBuf,
    pub binaries: Binaries,
    /// The GitHub the workers talk to: the mock, unless in the real GitHub mode.
    pub forge: Forge,
    /// How clients on this machine reach the broker.
    pub amqp: amqp::Config,
    /// Where the webhook takes deliveries, on this machine's loopback.
    pub webhook: SocketAddr,
    /// The Prometheus scraping it (`Options::monitor`).
    prometheus: Option<Prometheus>,
    // Stopped in reverse order of the data flow: the services first, the S3 store last.
    services: Services,
    pub github: MockGitHub,
    pub s3: S3Server,
}

enum Services {
    // Workers first, broker last, then the hosts' network (the hosts runtime's).
    Processes { workers: Vec<Worker>, webhook: Webhook, broker: Broker, network: Option<crate::hosts::Network> },
    // The pod is removed through the service that made it. `metrics`: each worker's, as
    // published on this machine.
    Pod { pod: Pod, metrics: Vec<SocketAddr>, _podman: PodmanService },
}

/// A service [`Deployment::restart`] replaces with a new build of its binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    Webhook,
    /// Every tasks worker.
    Workers,
}

/// Where the services of the deployment in `run_dir` append their spans, a file each
/// (`<service>.jsonl`, OTLP JSON lines; see `traces`).
pub fn traces_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("traces")
}

/// The file of `traces_dir` service `service` appends its spans to.
pub fn traces_file(traces_dir: &Path, service: &str) -> PathBuf {
    traces_dir.join(format!("{service}.jsonl"))
}

/// Runs one step, telling `progress` about it.
async fn step<T, E>(progress: &dyn Progress, what: &str, work: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    let id = progress.start(what);
    let result = work.await;
    progress.done(id, result.is_ok());
    result
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> DeployError {
    move |source| DeployError::Io { what, source }
}

/// What both runtimes share: secrets, the S3 store and the mock GitHub.
struct World<'a> {
    secrets: Secrets,
    s3: S3Server,
    github: MockGitHub,
    before_services: BeforeServices<'a>,
    test_map: PathBuf,
    jobs_dir: PathBuf,
}

/// What the services wait for, made while the broker starts: the mock GitHub's fixture
/// projects (git at work on a thread of its own), as a worker scans them when it starts, and
/// what the caller prepared ([`Deployment::start_beside`]).
struct BeforeServices<'a> {
    fixtures: tokio::task::JoinHandle<Result<(), crate::github::MockError>>,
    prepared: Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>,
}

impl BeforeServices<'_> {
    async fn done(self) -> Result<(), DeployError> {
        self.fixtures.await.expect("adding the fixture projects does not panic")?;
        self.prepared.await.map_err(DeployError::Prepared)
    }
}

impl Deployment {
    /// Brings the deployment up in `run_dir`: what needs nothing else at once (the broker, or
    /// the podman service, whose start is most of the time; the S3 store and the mock GitHub),
    /// then the services that need the broker.
    pub async fn start(run_dir: &Path, options: &Options, progress: &dyn Progress) -> Result<Deployment, DeployError> {
        Deployment::start_beside(run_dir, options, progress, async { Ok(()) }).await
    }

    /// [`Deployment::start`], the services also waiting for `prepared`: what they need that
    /// the caller makes meanwhile, beside the broker's start (their binaries built, their
    /// image). Its error says what failed.
    pub async fn start_beside(
        run_dir: &Path,
        options: &Options,
        progress: &dyn Progress,
        prepared: impl Future<Output = Result<(), String>>,
    ) -> Result<Deployment, DeployError> {
        let secrets = match &options.secrets {
            Some(dir) => Secrets::existing(dir)?,
            None => {
                step(progress, "generating fake secrets", async {
                    crate::secrets::generate(&run_dir.join("secrets"), false)
                })
                .await?
                .0
            }
        };
        let jobs_dir = run_dir.join("jobs");
        std::fs::create_dir_all(&jobs_dir).map_err(io(format!("create {}", jobs_dir.display())))?;
        match &options.runtime {
            Runtime::Process => {
                let broker_dir = run_dir.join("broker");
                let broker = async {
                    match options.monitor {
                        Some(_) => Broker::start_with_metrics(&broker_dir, &secrets).await,
                        None => Broker::start(&broker_dir, &secrets).await,
                    }
                };
                let (broker, world) = tokio::join!(
                    step(progress, "starting RabbitMQ (TLS only, certificate login)", broker),
                    World::start(run_dir, secrets.clone(), jobs_dir, options, prepared, progress),
                );
                Deployment::start_processes(run_dir, options, broker?, world?, progress).await
            }
            Runtime::Hosts => {
                if options.real_github_token.is_some() || options.monitor.is_some() {
                    return Err(DeployError::Unsupported(
                        "the hosts runtime runs the mock GitHub, without Prometheus: drop --github-token and --monitor",
                    ));
                }
                let broker_dir = run_dir.join("broker");
                let (broker, world) = tokio::join!(
                    step(
                        progress,
                        "starting RabbitMQ (TLS only, certificate login)",
                        Broker::start(&broker_dir, &secrets)
                    ),
                    World::start(run_dir, secrets.clone(), jobs_dir, options, prepared, progress),
                );
                Deployment::start_hosts(run_dir, options, broker?, world?, progress).await
            }
            Runtime::Podman { rabbitmq_image, tasks_image, via_kube } => {
                if options.real_github_token.is_some() {
                    return Err(DeployError::Unsupported(
                        "the real GitHub mode runs on the process runtime: pass --runtime process",
                    ));
                }
                let podman_dir = run_dir.join("podman");
                let (podman, world) = tokio::join!(
                    step(progress, "starting the podman service", PodmanService::start(&podman_dir)),
                    World::start(run_dir, secrets.clone(), jobs_dir, options, prepared, progress),
                );
                let images = (rabbitmq_image.as_str(), tasks_image.as_str());
                Deployment::start_pod(run_dir, options, podman?, world?, images, *via_kube, progress).await
            }
        }
    }

    async fn start_processes(
        run_dir: &Path,
        options: &Options,
        broker: Broker,
        world: World<'_>,
        progress: &dyn Progress,
    ) -> Result<Deployment, DeployError> {
        let World { secrets, s3, github, before_services, test_map, jobs_dir } = world;
        before_services.done().await?;
        let forge = match &options.real_github_token {
            Some(token_file) => Forge::github(token_file),
            None => Forge::mock(&github, &secrets),
        };
        let runner_config = RunnerConfig {
            hold_failed: options.hold_failed,
            ..RunnerConfig::local(&forge, &s3, &secrets, Sandbox::Process)
        }
        .write(run_dir)
        .map_err(io("write the job-runner configuration".into()))?;
        let config = WorkerConfig {
            broker: &broker,
            secrets: &secrets,
            test_map: &test_map,
            forge: &forge,
            runner_config: &runner_config,
            work_dir: &jobs_dir,
            jobs: JOBS_PER_WORKER,
            rescan_interval: None,
            // The scenarios open pull requests on the mock; the real GitHub mode's is none of the
            // test map's, and a rescan of github.com is not worth waiting for.
            ready_after_rescan: forge.is_mock(&github),
        };
        let workers_label = format!("starting {} tasks worker(s)", options.workers.max(1));
        // Prometheus starts last, scraping what is up; the webhook links to it from the start.
        let prometheus_address = match options.monitor {
            Some(_) => {
                Some(SocketAddr::from(([127, 0, 0, 1], crate::free_port().map_err(io("find a free port".into()))?)))
            }
            None => None,
        };
        let prometheus_url = prometheus_address.map(|address| format!("http://{address}/"));
        let (webhook, workers) = tokio::join!(
            step(progress, "starting the webhook", async {
                let traces = crate::service::traces_file(run_dir, "webhook")?;
                let binary = &options.binaries.webhook;
                Webhook::start(binary, run_dir, &secrets, &broker, 0, Some(&traces), prometheus_url.as_deref()).await
            }),
            step(progress, &workers_label, async {
                let starts = (1..=options.workers.max(1)).map(|n| {
                    let hostname = pod::worker_name(n);
                    let config = &config;
                    async move { Worker::start(&options.binaries.tasks, run_dir, &hostname, config).await }
                });
                futures_util::future::try_join_all(starts).await
            }),
        );
        let (webhook, workers) = (webhook?, workers?);
        let prometheus = match (&options.monitor, prometheus_address, broker.metrics_address()) {
            (Some(settings), Some(address), Some(rabbitmq)) => {
                let targets = crate::prometheus::Targets {
                    webhook: webhook.address,
                    workers: workers.iter().map(|worker| worker.metrics).collect(),
                    rabbitmq,
                };
                let dir = run_dir.join("prometheus");
                let started = Prometheus::start(&dir, address, &targets, settings);
                Some(step(progress, "starting Prometheus with the alert rules", started).await?)
            }
            _ => None,
        };
        Deployment {
            run_dir: run_dir.to_owned(),
            amqp: broker.client_config(),
            webhook: webhook.address,
            prometheus,
            secrets,
            test_map,
            runner_config,
            binaries: options.binaries.clone(),
            forge,
            services: Services::Processes { workers, webhook, broker, network: None },
            github,
            s3,
        }
        .written_down()
    }

    /// The hosts runtime: a network of hosts (`crate::hosts`), the broker, the mock GitHub and
    /// S3 of this machine relayed onto the broker's and the services' hosts, the webhook and
    /// each worker started on a host of its own, reaching the others by name.
    async fn start_hosts(
        run_dir: &Path,
        options: &Options,
        broker: Broker,
        world: World<'_>,
        progress: &dyn Progress,
    ) -> Result<Deployment, DeployError> {
        let World { secrets, s3, github, before_services, test_map, jobs_dir } = world;
        before_services.done().await?;
        let workers = options.workers.max(1);
        let names: Vec<String> = (1..=workers).map(pod::worker_name).collect();
        let id = run_dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let label = format!("making the hosts: broker, webhook, services and {workers} worker(s)");
        let servers = [s3.url(), github.api_url()];
        let network =
            step(progress, &label, crate::hosts::deployment(run_dir, &id, &names, broker.socket_address(), &servers))
                .await?;
        // The hosts' view: GitHub and S3 on the services host, by its names.
        let forge_on_hosts = Forge::mock_on_hosts(&github, &secrets);
        let runner_config = RunnerConfig {
            hold_failed: options.hold_failed,
            s3_hosts: Default::default(),
            ..RunnerConfig::local(&forge_on_hosts, &s3, &secrets, Sandbox::Process)
        }
        .write(run_dir)
        .map_err(io("write the job-runner configuration".into()))?;
        let config = WorkerConfig {
            broker: &broker,
            secrets: &secrets,
            test_map: &test_map,
            forge: &forge_on_hosts,
            runner_config: &runner_config,
            work_dir: &jobs_dir,
            jobs: JOBS_PER_HOST,
            rescan_interval: None,
            ready_after_rescan: true,
        };
        let traces = crate::service::traces_file(run_dir, "webhook")?;
        let binaries = &options.binaries;
        let workers_label = format!("starting {workers} tasks worker(s), a host each");
        let (webhook, workers) = tokio::join!(
            step(progress, "starting the webhook on its host", async {
                Webhook::start_on_host(&binaries.webhook, run_dir, &secrets, &network, Some(&traces)).await
            }),
            step(progress, &workers_label, async {
                let starts = names.iter().map(|name| {
                    let (config, network) = (&config, &network);
                    async move {
                        let place = crate::service::Place::Host(network, name);
                        Worker::start_at(&binaries.tasks, run_dir, name, config, &place).await
                    }
                });
                futures_util::future::try_join_all(starts).await
            }),
        );
        let (webhook, workers) = (webhook?, workers?);
        Deployment {
            run_dir: run_dir.to_owned(),
            amqp: broker.client_config(),
            webhook: webhook.address,
            prometheus: None,
            secrets: secrets.clone(),
            test_map,
            runner_config,
            binaries: options.binaries.clone(),
            forge: Forge::mock(&github, &secrets),
            services: Services::Processes { workers, webhook, broker, network: Some(network) },
            github,
            s3,
        }
        .written_down()
    }

    async fn start_pod(
        run_dir: &Path,
        options: &Options,
        podman: PodmanService,
        world: World<'_>,
        (rabbitmq_image, tasks_image): (&str, &str),
        via_kube: bool,
        progress: &dyn Progress,
    ) -> Result<Deployment, DeployError> {
        let World { secrets, s3, github, before_services, test_map, jobs_dir } = world;
        // Awaited before the services' containers are made (from the tasks image), or before
        // a played pod starts every container at once. A try that ends while it is awaited
        // (a port taken) leaves it to the next, which goes on awaiting it.
        let mut before_services = Some(Box::pin(before_services.done()));
        let workers = options.workers.max(1);
        let name = format!("workbench-{}", run_dir.file_name().unwrap_or_default().to_string_lossy());
        // The workers' view: the secrets where the pod mounts them, this machine through the
        // host alias, jobs in containers of the pod; status links stay this machine's.
        let inside = pod::secrets_inside();
        let forge_inside = Forge {
            api_url: pod::seen_from_pod(&github.api_url()),
            clone_url: pod::seen_from_pod(&github.clone_url()),
            token_file: inside.github_token(),
        };
        let config_dir = run_dir.join("pod");
        let hosts = pod::write_hosts(&config_dir)
            .map_err(io(format!("write the pod's hosts file into {}", config_dir.display())))?;
        let run_args = pod::job_run_args(&name, &hosts).map_err(io("make the job containers' arguments".into()))?;
        let runner_config = RunnerConfig {
            forge: &forge_inside,
            // The pod knows the store's name (`pod::Inputs::s3_host`).
            s3_url: s3.url(),
            logs_link: Some(format!("{}logs", s3.link_url())),
            s3_hosts: Default::default(),
            secrets: &inside,
            sandbox: Sandbox::Container {
                socket: Path::new(pod::PODMAN_SOCKET),
                image: tasks_image,
                run_args: &run_args,
            },
            hold_failed: options.hold_failed,
        };
        let traces_dir = traces_dir(run_dir);
        std::fs::create_dir_all(&traces_dir).map_err(io(format!("create {}", traces_dir.display())))?;
        pod::write_config(&config_dir, &runner_config, &test_map, options.monitor.is_some())
            .map_err(io(format!("write the pod's configuration into {}", config_dir.display())))?;
        if let Some(settings) = &options.monitor {
            pod::write_prometheus_config(&config_dir, workers, settings)?;
        }
        for n in 1..=workers {
            let dir = jobs_dir.join(pod::worker_name(n));
            std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        }
        let service_secrets = secrets.split(&config_dir.join("secrets"))?;
        // The published ports are the pod's configuration: picked free, one can be taken before
        // podman binds it. Then the pod is made again on others.
        let mut tries = 1;
        let (pod, amqp, webhook, metrics, prometheus) = loop {
            let free = || crate::free_port().map_err(io("find a free port".into()));
            let host_ports = HostPorts {
                amqp: free()?,
                webhook: free()?,
                metrics: (0..workers).map(|_| free()).collect::<Result<_, _>>()?,
                prometheus: options.monitor.as_ref().map(|_| free()).transpose()?,
            };
            let started = async {
                let spec = pod::deployment(&pod::Inputs {
                    name: &name,
                    rabbitmq_image,
                    tasks_image,
                    secrets: &secrets,
                    service_secrets: &service_secrets,
                    kvm: Path::new("/dev/kvm").exists(),
                    config_dir: &config_dir,
                    jobs_dir: &jobs_dir,
                    podman_socket: podman.socket(),
                    github_api: &forge_inside.api_url,
                    workers,
                    jobs: JOBS_PER_WORKER,
                    host_ports: &host_ports,
                    traces_dir: Some(&traces_dir),
                    hosts: Some(&hosts),
                    broker_metrics: options.monitor.is_some(),
                    prometheus: options.monitor.as_ref().map(|_| crate::images::PROMETHEUS),
                });
                let amqp = amqp::Config::new(
                    amqp::Address::Tls { host: "127.0.0.1".into(), port: host_ports.amqp },
                    &secrets.webhook_dir(),
                );
                let webhook = SocketAddr::from(([127, 0, 0, 1], host_ports.webhook));
                let rabbitmq = crate::client::BrokerProbe::new(amqp.clone());
                let pod = match via_kube {
                    true => {
                        let yaml = crate::kube::to_yaml(&crate::kube::manifests(&spec, crate::kube::Target::Podman));
                        let path = config_dir.join("kube.yaml");
                        std::fs::write(&path, &yaml).map_err(io(format!("write {}", path.display())))?;
                        if let Some(before) = &mut before_services {
                            before.await?;
                            before_services = None;
                        }
                        let label = format!("podman kube play {} (pod {name})", path.display());
                        let pod = step(progress, &label, Pod::play(podman.socket(), &spec, &yaml, run_dir)).await?;
                        step(
                            progress,
                            "waiting for RabbitMQ in the pod",
                            pod.wait_ready("RabbitMQ", || async { rabbitmq.answers().await.is_ok() }),
                        )
                        .await?;
                        pod
                    }
                    false => {
                        let pod = Pod::create(podman.socket(), &spec, run_dir).await?;
                        let (broker, services) = spec.containers.split_first().expect("the pod starts with RabbitMQ");
                        let label = format!("starting RabbitMQ in pod {name}");
                        let ready = step(progress, &label, async {
                            pod.create_container(broker).await?;
                            pod.start(&[&broker.name]).await?;
                            pod.wait_ready("RabbitMQ", || async { rabbitmq.answers().await.is_ok() }).await
                        });
                        // The services' containers are made while it boots, and started
                        // once it answers (they would only back off for seconds before).
                        let created = async {
                            if let Some(before) = &mut before_services {
                                before.await?;
                                before_services = None;
                            }
                            for container in services {
                                pod.create_container(container).await?;
                            }
                            Ok::<_, DeployError>(())
                        };
                        tokio::try_join!(async { Ok::<_, DeployError>(ready.await?) }, created)?;
                        pod.start(&services.iter().map(|container| container.name.as_str()).collect::<Vec<_>>())
                            .await?;
                        pod
                    }
                };
                let label = format!("waiting for the webhook and {workers} tasks worker(s) in the pod");
                step(progress, &label, async {
                    pod.wait_ready("the webhook", || crate::client::answers(webhook, "/healthz")).await?;
                    for port in &host_ports.metrics {
                        let metrics = SocketAddr::from(([127, 0, 0, 1], *port));
                        pod.wait_ready("a tasks worker", || crate::service::worker_rescanned(metrics)).await?;
                    }
                    Ok::<_, pod::PodError>(())
                })
                .await?;
                let prometheus = match host_ports.prometheus {
                    Some(port) => {
                        let address = SocketAddr::from(([127, 0, 0, 1], port));
                        let ready = pod.wait_ready("Prometheus", || crate::prometheus::ready(address));
                        step(progress, "waiting for Prometheus in the pod, with the alert rules", ready).await?;
                        let log = run_dir.join(format!("{}.log", pod::PROMETHEUS));
                        Some(Prometheus::in_pod(address, log))
                    }
                    None => None,
                };
                let metrics = host_ports.metrics.iter().map(|port| SocketAddr::from(([127, 0, 0, 1], *port)));
                Ok::<_, DeployError>((pod, amqp, webhook, metrics.collect::<Vec<_>>(), prometheus))
            }
            .await;
            match started {
                Ok(started) => break started,
                Err(DeployError::Pod(err)) if tries < pod::PORT_TRIES && err.port_taken() => {
                    tracing::warn!(%err, tries, "a port the pod publishes was taken meanwhile; making it again");
                    tries += 1;
                }
                Err(err) => return Err(err),
            }
        };
        // The forge as this machine's tools reach it (the workers' view is in their config).
        let forge = Forge::mock(&github, &secrets);
        Deployment {
            run_dir: run_dir.to_owned(),
            amqp,
            webhook,
            secrets,
            test_map,
            runner_config: config_dir.join("tasks/job-runner.toml"),
            binaries: options.binaries.clone(),
            forge,
            prometheus,
            services: Services::Pod { pod, metrics, _podman: podman },
            github,
            s3,
        }
        .written_down()
    }

    /// Writes where everything is into the run directory, for people and tools looking there.
    fn written_down(self) -> Result<Deployment, DeployError> {
        let path = self.run_dir.join("endpoints.json");
        std::fs::write(&path, self.endpoints().to_json().to_string())
            .map_err(io(format!("write {}", path.display())))?;
        Ok(self)
    }

    /// How to reach each service.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            amqp: self.amqp.address.to_string(),
            secrets: self.secrets.webhook_dir(),
            webhook: format!("http://{}/", self.webhook),
            github_api: self.forge.api_url.clone(),
            s3: self.s3.url(),
            prometheus: self.prometheus.as_ref().map(Prometheus::url),
        }
    }

    /// Stops `service` and starts it again from `binaries`, where it was (the webhook on its
    /// address): the process on the process runtime; on podman, the container, with the new
    /// binary copied into it (the image is not rebuilt). Ready when it answers again.
    pub async fn restart(&mut self, service: Restart, binaries: &Binaries) -> Result<(), DeployError> {
        let run_dir = &self.run_dir;
        match &mut self.services {
            Services::Processes { network: Some(_), .. } => {
                return Err(DeployError::Unsupported("restarting a service on the hosts runtime"));
            }
            Services::Processes { workers, webhook, broker, network: None } => match service {
                Restart::Webhook => {
                    webhook.service.stop().await;
                    let port = self.webhook.port();
                    let traces = crate::service::traces_file(run_dir, "webhook")?;
                    let prometheus = self.prometheus.as_ref().map(Prometheus::url);
                    let (secrets, traces, prometheus) = (&self.secrets, Some(traces.as_path()), prometheus.as_deref());
                    *webhook =
                        Webhook::start(&binaries.webhook, run_dir, secrets, broker, port, traces, prometheus).await?;
                }
                Restart::Workers => {
                    let config = WorkerConfig {
                        broker,
                        secrets: &self.secrets,
                        test_map: &self.test_map,
                        forge: &self.forge,
                        runner_config: &self.runner_config,
                        work_dir: &run_dir.join("jobs"),
                        jobs: JOBS_PER_WORKER,
                        rescan_interval: None,
                        ready_after_rescan: self.forge.is_mock(&self.github),
                    };
                    futures_util::future::join_all(workers.iter_mut().map(|w| w.service.stop())).await;
                    let starts = workers.iter().map(|w| Worker::start(&binaries.tasks, run_dir, &w.hostname, &config));
                    *workers = futures_util::future::try_join_all(starts).await?;
                }
            },
            Services::Pod { pod, metrics, .. } => match service {
                Restart::Webhook => {
                    pod.replace_binary("webhook", &binaries.webhook).await?;
                    let webhook = self.webhook;
                    pod.wait_ready("the webhook", || crate::client::answers(webhook, "/healthz")).await?;
                }
                Restart::Workers => {
                    for n in 1..=metrics.len() as u16 {
                        pod.replace_binary(&pod::worker_name(n), &binaries.tasks).await?;
                    }
                    for &address in metrics.iter() {
                        pod.wait_ready("a tasks worker", || crate::service::worker_rescanned(address)).await?;
                    }
                }
            },
        }
        self.binaries = binaries.clone();
        Ok(())
    }

    /// The pod, on the podman runtime.
    pub fn pod(&self) -> Option<&Pod> {
        match &self.services {
            Services::Pod { pod, .. } => Some(pod),
            Services::Processes { .. } => None,
        }
    }

    /// Runs `rabbitmqctl` with `args` against the broker, wherever it runs; returns its output.
    pub fn rabbitmqctl(&self, args: &[&str]) -> Result<String, DeployError> {
        match &self.services {
            Services::Processes { broker, .. } => Ok(broker.ctl(args)?),
            Services::Pod { pod, .. } => {
                let ctl = Path::new(crate::broker::RABBITMQ_BIN).join("rabbitmqctl");
                let argv = [&[ctl.to_str().expect("a UTF-8 path")][..], args].concat();
                let output = pod.exec(pod::RABBITMQ, &argv, "").map_err(io("run podman exec rabbitmqctl".into()))?;
                Ok(crate::broker::ctl_output(args, output)?)
            }
        }
    }

    /// Evaluates the Erlang expression `expr`, which returns a string, on the broker's node,
    /// wherever it runs (`erl_call`: milliseconds, where `rabbitmqctl` takes a second of CPU);
    /// returns that string.
    pub fn broker_eval(&self, expr: &str) -> Result<String, DeployError> {
        match &self.services {
            Services::Processes { broker, .. } => Ok(broker.eval(expr)?),
            Services::Pod { pod, .. } => {
                // The pod's node is RabbitMQ's default, `rabbit` on the pod's host name.
                let argv = crate::broker::eval_argv("rabbit", crate::broker::ERL_CALL_TIMEOUT_SECONDS);
                let output = pod.exec(pod::RABBITMQ, &argv, expr).map_err(io("run podman exec erl_call".into()))?;
                Ok(crate::broker::eval_output(expr, output)?)
            }
        }
    }

    /// The Prometheus scraping the deployment, with `Options::monitor`.
    pub fn prometheus(&self) -> Option<&Prometheus> {
        self.prometheus.as_ref()
    }

    /// Stops every tasks worker (SIGTERM, then their grace period), as a worker host going
    /// away would: for the tests of what notices it. Process runtime only.
    pub async fn stop_workers(&mut self) -> Result<(), DeployError> {
        match &mut self.services {
            Services::Processes { workers, .. } => {
                for worker in workers {
                    worker.service.stop().await;
                }
                Ok(())
            }
            Services::Pod { pod, metrics, .. } => {
                for n in (1..).take(metrics.len()) {
                    pod.stop(&pod::worker_name(n)).await?;
                }
                Ok(())
            }
        }
    }

    /// The jobs the workers hold ([`Options::hold_failed`]), the first held first. Process
    /// workers share the jobs directory, pod workers have one each below it.
    pub fn held(&self) -> Vec<Held> {
        let mut held: Vec<(std::time::SystemTime, Held)> = self
            .work_dirs()
            .into_iter()
            .filter_map(|dir| {
                let at = std::fs::metadata(dir.join(hold::RECORD)).and_then(|m| m.modified()).ok()?;
                Some((at, hold::read(&dir)?))
            })
            .collect();
        held.sort_by_key(|(at, _)| *at);
        held.into_iter().map(|(_, held)| held).collect()
    }

    /// The command that opens a shell, on this machine, in `held`'s environment: in its
    /// container; on the process runtime in its checkout with the environment its tests had
    /// (and no start files: the checkout is `HOME`, and its `.bashrc` is the tested project's).
    /// `Err` says why no safe command can be printed: a word no shell quoting can carry, or a
    /// variable name of the job's that is not one (`env` would read it as an option).
    pub fn held_shell(&self, held: &Held) -> Result<String, String> {
        let quote = |word: &str| {
            shlex::try_quote(word)
                .map(|word| word.into_owned())
                .map_err(|_| format!("{word:?} cannot be quoted for a shell"))
        };
        match (&held.container, &self.services) {
            (Some(container), Services::Pod { _podman: podman, .. }) => Ok(format!(
                "podman --remote --url=unix://{} exec -it {} sh -c {}",
                quote(&podman.socket().to_string_lossy())?,
                quote(container)?,
                quote("command -v bash >/dev/null && exec bash || exec sh")?
            )),
            _ => {
                let mut env = Vec::new();
                for (name, value) in &held.env {
                    let mut chars = name.chars();
                    let first = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
                    if !first || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(format!("the held job's environment names a variable {name:?}"));
                    }
                    env.push(quote(&format!("{name}={value}"))?);
                }
                let dir = quote(&held.dir.to_string_lossy())?;
                Ok(format!("cd {dir} && env -i -- {} bash --noprofile --norc", env.join(" ")))
            }
        }
    }

    /// Removes what the held jobs keep: their containers, directories and records. The process
    /// workers are stopped first, so that no job is held after the release. Only a job's
    /// scratch directory (`job-*`, a directory, right in a work directory) is removed, whatever
    /// a record says; what cannot be removed is logged.
    fn release_held(&mut self) {
        if let Services::Processes { workers, .. } = &mut self.services {
            for worker in workers {
                worker.service.kill();
            }
        }
        let work_dirs = self.work_dirs();
        for held in self.held() {
            if let (Some(container), Some(pod)) = (&held.container, self.pod()) {
                let removed = pod
                    .podman()
                    .args(["rm", "--force", "--time", "0", container])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
                if !removed.is_ok_and(|status| status.success()) {
                    tracing::warn!(container, "cannot remove the held job's container");
                }
            }
            let scratch = &held.scratch;
            let a_job =
                scratch.parent().is_some_and(|parent| work_dirs.iter().any(|dir| dir == parent)) && is_job_dir(scratch);
            match a_job {
                true => {
                    if let Err(err) = std::fs::remove_dir_all(scratch) {
                        tracing::warn!(%err, scratch = %scratch.display(), "cannot remove the held job's directory");
                    }
                }
                false => tracing::warn!(scratch = %scratch.display(), "not removing what is not a job's directory"),
            }
        }
        // The process workers, killed above, also leave the directories of the jobs they ran.
        let killed = matches!(self.services, Services::Processes { .. });
        for dir in work_dirs {
            let _ = std::fs::remove_file(dir.join(hold::RECORD));
            if !killed {
                continue;
            }
            let entries = std::fs::read_dir(&dir).into_iter().flatten().flatten();
            for scratch in entries.map(|entry| entry.path()).filter(|path| is_job_dir(path)) {
                if let Err(err) = std::fs::remove_dir_all(&scratch) {
                    tracing::warn!(%err, scratch = %scratch.display(), "cannot remove a killed job's directory");
                }
            }
        }
    }

    /// The workers' work directories: the jobs directory, which process workers share, and
    /// those below it, one for each pod worker.
    fn work_dirs(&self) -> Vec<PathBuf> {
        let jobs = self.run_dir.join("jobs");
        match &self.services {
            Services::Processes { .. } => vec![jobs],
            Services::Pod { metrics, .. } => {
                (1..=metrics.len() as u16).map(|n| jobs.join(pod::worker_name(n))).collect()
            }
        }
    }

    /// The environment in which the tasks tools reach this deployment, as typed in a shell.
    pub fn shell_env(&self) -> Vec<(String, String)> {
        let path = std::env::var("PATH").unwrap_or_default();
        let endpoints = self.endpoints();
        [
            ("AMQP_SERVER", endpoints.amqp),
            ("WORKBENCH_SECRETS_DIR", endpoints.secrets.display().to_string()),
            ("GITHUB_API", endpoints.github_api),
            ("COCKPIT_GITHUB_TOKEN_FILE", self.forge.token_file.display().to_string()),
            ("WORKBENCH_TESTMAP", self.test_map.display().to_string()),
            ("JOB_RUNNER_CONFIG", self.runner_config.display().to_string()),
            ("WORKBENCH_WEBHOOK", endpoints.webhook),
            ("WORKBENCH_S3", endpoints.s3),
            ("WORKBENCH_S3_LOGS", format!("{}logs/", self.s3.url())),
            ("PATH", format!("{}:{path}", self.binaries.dir().display())),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
    }

    /// Each service's name, log file and last `lines` lines, for reports of failures.
    pub fn log_tails(&self, lines: usize) -> Vec<(String, PathBuf, String)> {
        match &self.services {
            Services::Processes { workers, webhook, broker, .. } => {
                let mut tails = vec![("rabbitmq".to_owned(), broker.log_path(), broker.log_tail())];
                for service in std::iter::once(&webhook.service).chain(workers.iter().map(|w| &w.service)) {
                    tails.push((service.name().to_owned(), service.log_path().to_owned(), service.log_tail(lines)));
                }
                tails
            }
            Services::Pod { pod, .. } => pod
                .save_logs()
                .into_iter()
                .map(|(name, path)| {
                    let tail = crate::child::tail(&path, lines);
                    (name, path, tail)
                })
                .collect(),
        }
    }

    /// Every process the deployment started on the `process` runtime.
    pub fn process_ids(&self) -> Vec<u32> {
        match &self.services {
            Services::Processes { workers, webhook, broker, .. } => {
                let services = std::iter::once(&webhook.service).chain(workers.iter().map(|w| &w.service));
                broker.process_ids().into_iter().chain(services.flat_map(|s| s.process_ids())).collect()
            }
            Services::Pod { .. } => vec![],
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.release_held();
    }
}

impl<'a> World<'a> {
    async fn start(
        run_dir: &Path,
        secrets: Secrets,
        jobs_dir: PathBuf,
        options: &Options,
        prepared: impl Future<Output = Result<(), String>> + 'a,
        progress: &dyn Progress,
    ) -> Result<World<'a>, DeployError> {
        let token = std::fs::read_to_string(secrets.github_token())
            .map_err(io(format!("read {}", secrets.github_token().display())))?;
        let s3_dir = run_dir.join("s3");
        let github_dir = run_dir.join("github");
        let (s3, github) = tokio::join!(
            step(progress, "starting S3 (HTTPS, buckets logs and images)", S3Server::start(&s3_dir, &secrets, true)),
            step(progress, "starting the mock GitHub", MockGitHub::start(&github_dir, token.trim())),
        );
        let (s3, github) = (s3?, github?);
        let repos = REPOS.map(|(repo, fixture)| (repo.to_owned(), options.fixtures.join("repos").join(fixture)));
        let before_services = BeforeServices { fixtures: github.add_repos(repos.into()), prepared: Box::pin(prepared) };
        Ok(World { secrets, s3, github, before_services, test_map: options.fixtures.join("testmap.toml"), jobs_dir })
    }
}

/// Where a running deployment's services are.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub amqp: String,
    pub secrets: PathBuf,
    pub webhook: String,
    pub github_api: String,
    pub s3: String,
    /// With `Options::monitor`.
    pub prometheus: Option<String>,
}

impl Endpoints {
    /// As run-local's report has them.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "amqp": self.amqp,
            "secrets": self.secrets,
            "webhook": self.webhook,
            "github_api": self.github_api,
            "s3": self.s3,
            "prometheus": self.prometheus,
        })
    }
}

/// Whether `path` is a job's scratch directory (`job-*`, a directory and not a link to one).
fn is_job_dir(path: &Path) -> bool {
    path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("job-"))
        && std::fs::symlink_metadata(path).is_ok_and(|metadata| metadata.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_repository_of_the_test_map_is_on_the_mock_github() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
        let map = tasks::testmap::TestMap::load(&fixtures.join("testmap.toml")).unwrap();
        for project in map.projects() {
            let fixture = REPOS.iter().find(|(repo, _)| *repo == project).map(|(_, fixture)| fixture);
            let fixture = fixture.unwrap_or_else(|| panic!("{project} is in the test map, not in REPOS"));
            assert!(fixtures.join("repos").join(fixture).is_dir(), "{project}: no fixture {fixture}");
        }
    }
}
