//! The `podman` runtime: the deployment's services as the containers of one podman pod,
//! created through the podman REST API (podman-api). One description, [`PodSpec`], is what
//! this runtime creates and what `cargo xtask kube` writes as Kubernetes manifests.
//!
//! Inside the pod the services find each other as in Cockpit's deployment: RabbitMQ on
//! `localhost:5671`, the secrets at `/run/secrets/{webhook,s3-keys,tasks}`, the RabbitMQ
//! configuration at `/etc/rabbitmq`, the podman socket at `/podman.sock`. The S3 store and the
//! mock GitHub stay on this machine's loopback: the pod's network (slirp4netns, with the host's
//! loopback allowed) reaches them by the name [`HOST_ALIAS`]. Ports are published on 127.0.0.1
//! only. Job containers join the pod (`--pod`), so removing the pod removes them too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use podman_api::Podman;
use podman_api::models::{ContainerMount, LinuxDevice, ListContainer, Namespace, PortMapping};
use podman_api::opts::{
    ContainerCreateOpts, ContainerListFilter, ContainerListOpts, ContainerStopOpts, PlayKubernetesYamlOpts,
    PodCreateOpts,
};

use crate::client::Check;
pub use crate::secrets::HOST_ALIAS;
use crate::secrets::{POD_HOSTNAME, Secrets, Service};

/// Cockpit's AMQP port, inside the pod.
pub const AMQP_PORT: u16 = 5671;
/// The webhook's port inside the pod, as in Cockpit's.
pub const WEBHOOK_PORT: u16 = 8080;
/// Worker `n` serves its metrics on this port plus `n`.
const METRICS_PORT: u16 = 9100;
/// Where RabbitMQ's `rabbitmq_prometheus` plugin serves the broker's metrics (its own
/// default), when [`Inputs::broker_metrics`].
pub const RABBITMQ_METRICS_PORT: u16 = 15692;
/// Prometheus' port in the pod ([`Inputs::prometheus`]), its own default.
pub const PROMETHEUS_PORT: u16 = 9090;
/// Prometheus' container.
pub const PROMETHEUS: &str = "prometheus";
/// Where Prometheus' container has its configuration and rules.
const PROMETHEUS_CONFIG: &str = "/etc/workbench-prometheus";
/// Prometheus' data, in its container (the Debian package's directory, its user's).
const PROMETHEUS_DATA: &str = "/var/lib/prometheus/metrics2";
/// slirp4netns's address for the host's loopback.
pub(crate) const HOST_LOOPBACK: &str = "10.0.2.2";
/// The names by which the pod reaches this machine's loopback: the host alias (the mock
/// GitHub), and the S3 store's own name, which Cockpit's tools in the pod need.
pub(crate) const HOST_NAMES: [&str; 2] = [HOST_ALIAS, crate::secrets::S3_HOST];

/// The broker's container.
pub const RABBITMQ: &str = "rabbitmq";

/// Where the secrets and configuration are inside the containers.
pub const WEBHOOK_SECRETS: &str = "/run/secrets/webhook";
pub const S3_KEYS: &str = "/run/secrets/s3-keys";
pub const TASKS_SECRETS: &str = "/run/secrets/tasks";
pub const PODMAN_SOCKET: &str = "/podman.sock";
/// Where the tasks image has the service binaries (`images/tasks/Containerfile`).
const BINARIES_INSIDE: &str = "/usr/local/bin";
pub(crate) const RABBITMQ_CONFIG: &str = "/etc/rabbitmq";

/// The pod's network: its own, with this machine's loopback reachable.
const NETWORK: &str = "slirp4netns:allow_host_loopback=true";

/// How long the services of a new pod may take to be ready.
const READY_WITHIN: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("podman API: cannot {what}: {source}")]
    Api { what: String, source: podman_api::Error },
    #[error("cannot {what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("container {name} exited before the pod was ready; its log ({}) ends with:\n{tail}", log.display())]
    Exited { name: String, log: PathBuf, tail: String },
    #[error("container {name} was removed before the pod was ready (by a `podman rm` or `pod rm` from outside?)")]
    Removed { name: String },
    #[error("{reason}; the containers' logs are in {}", logs.display())]
    NotReady { reason: crate::client::TimedOut, logs: PathBuf },
}

/// A wait that timed out, before the logs are saved.
impl From<crate::client::TimedOut> for PodError {
    fn from(reason: crate::client::TimedOut) -> PodError {
        PodError::NotReady { reason, logs: PathBuf::new() }
    }
}

/// How often a pod whose published port was taken meanwhile is made again on other ports.
pub const PORT_TRIES: u32 = 3;

impl PodError {
    /// Whether a port the pod publishes was in use.
    pub fn port_taken(&self) -> bool {
        self.to_string().to_ascii_lowercase().contains("address already in use")
    }
}

/// A pod: its containers and the ports it publishes on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub ports: Vec<Port>,
    pub containers: Vec<ContainerSpec>,
}

#[derive(Debug, Clone)]
pub struct Port {
    pub container: u16,
    pub host: u16,
}

#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Its name within the pod (podman's container name is the pod's name, a dash, and this).
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    /// `None` for the image's user.
    pub user: Option<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub devices: Vec<String>,
    /// The ports it listens on.
    pub ports: Vec<u16>,
}

/// A directory or file of this machine, mounted into a container.
#[derive(Debug, Clone)]
pub struct Mount {
    pub host: PathBuf,
    pub container: PathBuf,
    pub read_only: bool,
    /// The only files of the directory the container gets (none: all of them). The host
    /// directory holds just these; a cluster's Secret volume projects just these keys.
    pub files: Vec<String>,
}

impl Mount {
    fn new(host: impl Into<PathBuf>, container: impl Into<PathBuf>, read_only: bool) -> Mount {
        Mount { host: host.into(), container: container.into(), read_only, files: Vec::new() }
    }

    fn read_only(host: impl Into<PathBuf>, container: impl Into<PathBuf>) -> Mount {
        Mount::new(host, container, true)
    }

    /// A service's own secrets (`Secrets::split`) at Cockpit's `/run/secrets/webhook`.
    fn secrets(split: &Path, service: Service) -> Mount {
        let files = service.files().iter().map(|file| file.to_string()).collect();
        Mount { files, ..Mount::read_only(split.join(service.name()), WEBHOOK_SECRETS) }
    }
}

/// What the deployment's pod is made of.
pub struct Inputs<'a> {
    pub name: &'a str,
    pub rabbitmq_image: &'a str,
    pub tasks_image: &'a str,
    /// The generated secrets, on this machine.
    pub secrets: &'a Secrets,
    /// The secrets split by service (`Secrets::split`): what each container mounts.
    pub service_secrets: &'a Path,
    /// Whether the workers get `/dev/kvm`: the machine the pod runs on has it.
    pub kvm: bool,
    /// Holds `rabbitmq/` (mounted at `/etc/rabbitmq`) and `tasks/` (at `/run/secrets/tasks`:
    /// `job-runner.toml`, `testmap.toml`), written by [`write_config`].
    pub config_dir: &'a Path,
    /// The workers' work directories, mounted at the same path: the job containers they ask
    /// this machine's podman for mount checkouts from there.
    pub jobs_dir: &'a Path,
    pub podman_socket: &'a Path,
    /// The mock GitHub's API, as the pod reaches it.
    pub github_api: &'a str,
    pub workers: u16,
    /// Jobs each worker runs at once (`--jobs`).
    pub jobs: u16,
    pub host_ports: &'a HostPorts,
    /// Where the services append their spans (`<service>.jsonl`), mounted at the same path;
    /// `None`: not traced.
    pub traces_dir: Option<&'a Path>,
    /// The pod's own `/etc/hosts` ([`write_hosts`]), mounted read-only in every container;
    /// `None`: podman's (a cluster's pod has its own).
    pub hosts: Option<&'a Path>,
    /// Whether RabbitMQ serves its metrics on [`RABBITMQ_METRICS_PORT`] of the pod's network.
    pub broker_metrics: bool,
    /// The image of a Prometheus scraping the pod from inside it (`--monitor`), its
    /// configuration in `config_dir/prometheus/` ([`write_prometheus_config`]).
    pub prometheus: Option<&'a str>,
}

/// The ports of this machine's 127.0.0.1 the pod publishes.
#[derive(Debug, Clone)]
pub struct HostPorts {
    pub amqp: u16,
    pub webhook: u16,
    /// One per worker.
    pub metrics: Vec<u16>,
    /// Prometheus', with [`Inputs::prometheus`].
    pub prometheus: Option<u16>,
}

/// The host name of worker `n`, shown in its statuses ("In progress [worker-1]").
pub fn worker_name(n: u16) -> String {
    format!("worker-{n}")
}

/// The deployment's pod: RabbitMQ, the webhook, and the tasks workers (with KVM when the
/// inputs say), each with only its own secrets.
pub fn deployment(inputs: &Inputs) -> PodSpec {
    let secrets = |service| Mount::secrets(inputs.service_secrets, service);
    let traces_file = |service: &str| inputs.traces_dir.map(|dir| crate::deployment::traces_file(dir, service));
    let traces_mount = || inputs.traces_dir.map(|dir| Mount::new(dir, dir, false));
    // The status page links to Prometheus where its users reach it: on this machine.
    let prometheus_url = inputs.host_ports.prometheus.map(|port| format!("http://127.0.0.1:{port}/"));
    let webhook = crate::launch::Webhook {
        broker: crate::launch::Broker::default(),
        secret_file: &Path::new(WEBHOOK_SECRETS).join(".config--github-webhook-token"),
        listen: crate::launch::Listen { address: SocketAddr::from(([0, 0, 0, 0], WEBHOOK_PORT)), address_file: None },
        log: "info",
        traces: traces_file("webhook").as_deref(),
        prometheus: prometheus_url.as_deref(),
    }
    .launch();
    let mut containers = vec![
        ContainerSpec {
            name: RABBITMQ.into(),
            image: inputs.rabbitmq_image.into(),
            command: vec![],
            // The generated keys are private to the user who made them: root.
            user: Some("root".into()),
            env: vec![],
            mounts: vec![
                secrets(Service::Broker),
                Mount::read_only(inputs.config_dir.join("rabbitmq"), RABBITMQ_CONFIG),
            ],
            devices: vec![],
            ports: [AMQP_PORT].into_iter().chain(inputs.broker_metrics.then_some(RABBITMQ_METRICS_PORT)).collect(),
        },
        ContainerSpec {
            name: "webhook".into(),
            image: inputs.tasks_image.into(),
            command: webhook.argv(),
            user: None,
            env: webhook.env,
            mounts: [secrets(Service::Webhook)].into_iter().chain(traces_mount()).collect(),
            devices: vec![],
            ports: vec![WEBHOOK_PORT],
        },
    ];
    for n in 1..=inputs.workers {
        let hostname = worker_name(n);
        let work_dir = inputs.jobs_dir.join(&hostname);
        // As in Cockpit's tasks container, the tools find everything through the environment:
        // `podman exec` shells into it work the same.
        let worker = crate::launch::Worker {
            broker: crate::launch::Broker::default(),
            hostname: &hostname,
            jobs: inputs.jobs,
            test_map: &Path::new(TASKS_SECRETS).join("testmap.toml"),
            github_api: inputs.github_api,
            github_token_file: &Path::new(WEBHOOK_SECRETS).join(".config--github-token"),
            runner_config: Some(&Path::new(TASKS_SECRETS).join("job-runner.toml")),
            work_dir: Some(&work_dir),
            metrics: Some(crate::launch::Listen {
                address: SocketAddr::from(([0, 0, 0, 0], METRICS_PORT + n)),
                address_file: None,
            }),
            rescan_interval: None,
            log: "info",
            traces: traces_file(&hostname).as_deref(),
        }
        .launch();
        containers.push(ContainerSpec {
            name: hostname.clone(),
            image: inputs.tasks_image.into(),
            command: worker.argv(),
            user: None,
            env: worker.env,
            mounts: vec![
                secrets(Service::Worker),
                Mount::read_only(inputs.secrets.s3_keys_dir(), S3_KEYS),
                Mount::read_only(inputs.config_dir.join("tasks"), TASKS_SECRETS),
                Mount::new(inputs.podman_socket, PODMAN_SOCKET, false),
                Mount::new(&work_dir, &work_dir, false),
            ]
            .into_iter()
            .chain(traces_mount())
            .collect(),
            devices: if inputs.kvm { vec!["/dev/kvm".into()] } else { vec![] },
            ports: vec![METRICS_PORT + n],
        });
    }
    if let Some(image) = inputs.prometheus {
        let config = Path::new(PROMETHEUS_CONFIG);
        containers.push(ContainerSpec {
            name: PROMETHEUS.into(),
            image: image.into(),
            command: crate::prometheus::args(config, Path::new(PROMETHEUS_DATA), &format!(":{PROMETHEUS_PORT}")),
            user: None,
            env: vec![],
            mounts: vec![Mount::read_only(inputs.config_dir.join(PROMETHEUS), config)],
            devices: vec![],
            ports: vec![PROMETHEUS_PORT],
        });
    }
    let ports = inputs.host_ports;
    let mut published =
        vec![Port { container: AMQP_PORT, host: ports.amqp }, Port { container: WEBHOOK_PORT, host: ports.webhook }];
    published.extend((1..).zip(&ports.metrics).map(|(n, &host)| Port { container: METRICS_PORT + n, host }));
    published.extend(ports.prometheus.map(|host| Port { container: PROMETHEUS_PORT, host }));
    if let Some(hosts) = inputs.hosts {
        for container in &mut containers {
            container.mounts.push(Mount::read_only(hosts, HOSTS));
        }
    }
    PodSpec { name: inputs.name.to_owned(), ports: published, containers }
}

/// Where a container looks up names.
pub const HOSTS: &str = "/etc/hosts";

/// Writes the pod's own hosts file as `config_dir/hosts`: this machine's names
/// ([`HOST_NAMES`]) and the pod's host name. Podman keeps one `/etc/hosts` for the whole pod
/// and rewrites it in place whenever a container joins or leaves the pod, which every job
/// container does, from the podman service and from each container's cleanup process at once:
/// a lookup meanwhile fails, and two rewrites at once were seen to leave it NUL bytes and
/// podman's own lines, without this machine's names, for the rest of the pod's life (every
/// job's log upload failed). Mounted over `/etc/hosts` in every container of the pod, job
/// containers included, this file is the one they read, and nothing rewrites it.
pub fn write_hosts(config_dir: &Path) -> std::io::Result<PathBuf> {
    let path = config_dir.join("hosts");
    std::fs::create_dir_all(config_dir)?;
    std::fs::write(&path, hosts_file())?;
    Ok(path)
}

/// The podman `run` arguments of the pod's job containers: in pod `pod`, reading its hosts
/// file `hosts` ([`write_hosts`]) read-only, as the pod's own containers do. A path with a `:`
/// cannot be said in `--volume`: an error naming it.
pub fn job_run_args(pod: &str, hosts: &Path) -> std::io::Result<Vec<String>> {
    let source = hosts.to_str().filter(|path| !path.contains(':')).ok_or_else(|| {
        let what = format!("{} has a ':' (or is not UTF-8), which podman's --volume cannot carry", hosts.display());
        std::io::Error::new(std::io::ErrorKind::InvalidInput, what)
    })?;
    Ok(vec![format!("--pod={pod}"), format!("--volume={source}:{HOSTS}:ro")])
}

fn hosts_file() -> String {
    format!(
        "127.0.0.1\tlocalhost {POD_HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n{HOST_LOOPBACK}\t{}\n",
        HOST_NAMES.join(" ")
    )
}

/// Writes the configuration of the pod's Prometheus ([`Inputs::prometheus`]) into
/// `config_dir/prometheus/`: it scrapes the services of the pod, with `workers` workers, where
/// they listen inside it.
pub fn write_prometheus_config(
    config_dir: &Path,
    workers: u16,
    settings: &crate::prometheus::Settings,
) -> Result<(), crate::prometheus::PrometheusError> {
    let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let targets = crate::prometheus::Targets {
        webhook: local(WEBHOOK_PORT),
        workers: (1..=workers).map(|n| local(METRICS_PORT + n)).collect(),
        rabbitmq: local(RABBITMQ_METRICS_PORT),
    };
    crate::prometheus::write_config(&config_dir.join(PROMETHEUS), Path::new(PROMETHEUS_CONFIG), &targets, settings)
}

/// The secrets as the tasks containers see them.
pub fn secrets_inside() -> Secrets {
    Secrets::at("/run/secrets")
}

/// The pod broker's configuration files, as mounted at `/etc/rabbitmq`; with `metrics`, it
/// serves its metrics on [`RABBITMQ_METRICS_PORT`].
pub fn broker_config(metrics: bool) -> [(&'static str, String); 3] {
    let definitions = Path::new(RABBITMQ_CONFIG).join("definitions.json");
    let listener = crate::broker::Listener::Pod(AMQP_PORT);
    let metrics = metrics.then_some(RABBITMQ_METRICS_PORT);
    crate::broker::config_files(listener, Path::new(WEBHOOK_SECRETS), &definitions, metrics)
}

/// Writes what [`Inputs::config_dir`] holds: the RabbitMQ configuration (with
/// `broker_metrics`, as [`Inputs::broker_metrics`]), and the workers' `job-runner.toml`
/// (`runner_config`, as written for paths inside the pod) and test map.
pub fn write_config(
    config_dir: &Path,
    runner_config: &crate::worker::RunnerConfig,
    test_map: &Path,
    broker_metrics: bool,
) -> std::io::Result<()> {
    let (rabbitmq, tasks) = (config_dir.join("rabbitmq"), config_dir.join("tasks"));
    std::fs::create_dir_all(&rabbitmq)?;
    std::fs::create_dir_all(&tasks)?;
    for (name, contents) in broker_config(broker_metrics) {
        std::fs::write(rabbitmq.join(name), contents)?;
    }
    runner_config.write(&tasks)?;
    std::fs::copy(test_map, tasks.join("testmap.toml"))?;
    Ok(())
}

/// `url` (of a server on this machine's loopback) as the pod reaches it: plain HTTP by
/// address, TLS by [`HOST_ALIAS`], which its certificate names. By address where it can be:
/// fewer names to look up (the pod's hosts file, [`write_hosts`]).
pub fn seen_from_pod(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = if scheme == "http" { HOST_LOOPBACK } else { HOST_ALIAS };
    match authority.rsplit_once(':') {
        Some((_, port)) => format!("{scheme}://{host}:{port}{path}"),
        None => format!("{scheme}://{host}{path}"),
    }
}

/// A pod created from a [`PodSpec`], its broker started first, then the other containers.
/// Dropping it saves its containers' logs and removes it with every container in it, job
/// containers included.
pub struct Pod {
    name: String,
    socket: PathBuf,
    /// The started containers, by [`ContainerSpec::name`]: a lock, so that one starts while
    /// another is created or awaited.
    containers: std::sync::Mutex<Vec<String>>,
    log_dir: PathBuf,
}

impl Pod {
    /// Creates the pod, without its containers, through the podman API at `socket`; the
    /// containers' logs are saved into `log_dir` as `<name>.log` when it is removed.
    pub async fn create(socket: &Path, spec: &PodSpec, log_dir: &Path) -> Result<Pod, PodError> {
        let opts = PodCreateOpts::builder()
            .name(&spec.name)
            .hostname(POD_HOSTNAME)
            .netns(model::<Namespace>(serde_json::json!({ "nsmode": "slirp4netns" })))
            .network_options([("slirp4netns", vec![NETWORK.trim_start_matches("slirp4netns:")])])
            .add_hosts(HOST_NAMES.map(|name| format!("{name}:{HOST_LOOPBACK}")))
            .portmappings(spec.ports.iter().map(|port| {
                model::<PortMapping>(serde_json::json!({
                    "container_port": port.container, "host_port": port.host, "host_ip": "127.0.0.1", "protocol": "tcp",
                }))
            }))
            .build();
        Podman::unix(socket)
            .pods()
            .create(&opts)
            .await
            .map_err(|source| PodError::Api { what: format!("create pod {}", spec.name), source })?;
        Ok(Pod {
            name: spec.name.clone(),
            socket: socket.to_owned(),
            containers: Default::default(),
            log_dir: log_dir.to_owned(),
        })
    }

    /// Creates and starts the pod with `podman kube play` of `yaml` (the Kubernetes form of
    /// `spec`, see `crate::kube`) through the podman API at `socket`.
    pub async fn play(socket: &Path, spec: &PodSpec, yaml: &str, log_dir: &Path) -> Result<Pod, PodError> {
        let opts = PlayKubernetesYamlOpts::builder().network([NETWORK]).start(true).build();
        let played = Podman::unix(socket).play_kubernetes_yaml(&opts, yaml).await;
        // Whatever it made, the guard removes.
        let pod = Pod {
            name: spec.name.clone(),
            socket: socket.to_owned(),
            containers: std::sync::Mutex::new(spec.containers.iter().map(|c| c.name.clone()).collect()),
            log_dir: log_dir.to_owned(),
        };
        played.map_err(|source| PodError::Api { what: format!("play the manifests of pod {}", spec.name), source })?;
        Ok(pod)
    }

    /// Creates one of its containers, not started yet ([`Pod::start`]): services that need the
    /// broker are created while it boots, and start once it answers (they would only make
    /// noise, and back off for seconds, before).
    pub async fn create_container(&self, container: &ContainerSpec) -> Result<(), PodError> {
        let name = self.container(&container.name);
        Podman::unix(&self.socket)
            .containers()
            .create(&container_options(&self.name, &name, container))
            .await
            .map(drop)
            .map_err(|source| PodError::Api {
                what: format!("create container {name} from {}", container.image),
                source,
            })
    }

    /// Starts its containers `names`, made by [`Pod::create_container`], at once.
    pub async fn start(&self, names: &[&str]) -> Result<(), PodError> {
        self.started().extend(names.iter().map(|name| name.to_string()));
        let podman = Podman::unix(&self.socket);
        let starts = names.iter().map(|name| async {
            let container = self.container(name);
            let started = podman.containers().get(&container).start(None).await;
            started.map_err(|source| PodError::Api { what: format!("start container {container}"), source })
        });
        futures_util::future::try_join_all(starts).await.map(drop)
    }

    /// Copies `binary` over its namesake in container `name` and restarts the container with
    /// it, as `--watch` does after a build: seconds, where a new image would take a minute.
    pub async fn replace_binary(&self, name: &str, binary: &Path) -> Result<(), PodError> {
        let container = self.container(name);
        let file = binary.file_name().unwrap_or_default().to_string_lossy();
        let output = self
            .podman()
            .arg("cp")
            .arg(binary)
            .arg(format!("{container}:{BINARIES_INSIDE}/{file}"))
            .stdin(Stdio::null())
            .output()
            .map_err(|source| PodError::Io { what: "run podman cp".into(), source })?;
        if !output.status.success() {
            let detail = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            let what = format!("copy {} into {container}: {detail}", binary.display());
            return Err(PodError::Io { what, source: std::io::Error::other("podman cp failed") });
        }
        // The services stop at once on SIGTERM when idle; a job in flight is not waited for.
        Podman::unix(&self.socket)
            .containers()
            .get(&container)
            .restart_with_timeout(2)
            .await
            .map_err(|source| PodError::Api { what: format!("restart container {container}"), source })
    }

    /// Stops its container `name` (SIGTERM, then SIGKILL after 2 s), as a dead worker would.
    pub async fn stop(&self, name: &str) -> Result<(), PodError> {
        let container = self.container(name);
        Podman::unix(&self.socket)
            .containers()
            .get(&container)
            .stop(&ContainerStopOpts::builder().timeout(2).build())
            .await
            .map_err(|source| PodError::Api { what: format!("stop container {container}"), source })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pod's and its containers' states, as podman reports them (for a failure bundle).
    pub fn describe(&self) -> String {
        let mut text = String::new();
        for args in [
            vec!["ps", "--all", "--pod", "--filter", &format!("pod={}", self.name)],
            vec!["pod", "inspect", &self.name],
        ] {
            let output = self.podman().args(&args).stdin(Stdio::null()).output();
            text.push_str(&format!("$ podman {}\n", args.join(" ")));
            match output {
                Ok(output) => {
                    text.push_str(&String::from_utf8_lossy(&output.stdout));
                    text.push_str(&String::from_utf8_lossy(&output.stderr));
                }
                Err(err) => text.push_str(&format!("cannot run podman: {err}\n")),
            }
        }
        text
    }

    /// podman's name of its container `name` (as in [`ContainerSpec::name`]).
    pub fn container(&self, name: &str) -> String {
        format!("{}-{name}", self.name)
    }

    /// Waits until `ready` answers true; fails early, with its log, if a container exits.
    pub async fn wait_ready<F: Future<Output = bool>>(
        &self,
        what: &str,
        ready: impl Fn() -> F,
    ) -> Result<(), PodError> {
        let podman = Podman::unix(&self.socket);
        let checked = std::cell::Cell::new(Instant::now());
        let waited = crate::client::wait_until(what, READY_WITHIN, || async {
            if ready().await {
                return Ok(Check::Done(()));
            }
            // The containers' states, every half second: asking costs the podman service.
            if checked.get().elapsed() > Duration::from_millis(500) {
                checked.set(Instant::now());
                let started = self.started().clone();
                // States podman could not give are asked for again the next time.
                let Ok(states) = self.states(&podman).await else {
                    return Ok(Check::NotYet("not answering yet; podman gave no container states".into()));
                };
                for name in &started {
                    let full_name = self.container(name);
                    match states.get(&full_name) {
                        // Gone, it will not answer either.
                        None => return Err(PodError::Removed { name: full_name }),
                        Some(state) if state != "running" => {
                            let log = self.save_log(name);
                            // A removal from outside stops it before it is gone.
                            let now = self.states(&podman).await;
                            if now.is_ok_and(|now| !now.contains_key(&full_name)) {
                                return Err(PodError::Removed { name: full_name });
                            }
                            let tail = crate::child::tail(&log, 20);
                            return Err(PodError::Exited { name: full_name, log, tail });
                        }
                        Some(_) => {}
                    }
                }
            }
            Ok(Check::NotYet("not answering yet; every container runs".into()))
        })
        .await;
        waited.map_err(|err| match err {
            PodError::NotReady { reason, .. } => {
                self.save_logs();
                PodError::NotReady { reason, logs: self.log_dir.clone() }
            }
            err => err,
        })
    }

    /// The state (`running`, `exited`...) of each of the pod's containers, by full name. Read
    /// from the container list, not `inspect`: podman-api's `inspect` asks for the container's
    /// size, which podman computes by walking every file of its image (0.15 s of the service's
    /// CPU for the tasks image), beside the broker's start.
    async fn states(&self, podman: &Podman) -> Result<HashMap<String, String>, podman_api::Error> {
        let filter = ContainerListFilter::Pod(self.name.clone());
        let listed = podman.containers().list(&ContainerListOpts::builder().all(true).filter([filter]).build()).await?;
        let named = |listed: ListContainer| {
            let state = listed.state.unwrap_or_default();
            listed.names.unwrap_or_default().into_iter().map(move |name| (name, state.clone()))
        };
        Ok(listed.into_iter().flat_map(named).collect())
    }

    fn started(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.containers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes each container's log to `<log dir>/<name>.log` (`rabbitmq.log`, ...); returns
    /// the names and paths.
    pub fn save_logs(&self) -> Vec<(String, PathBuf)> {
        // A `podman logs` each, at once: one after the other they were half of the teardown.
        let names = self.started().clone();
        std::thread::scope(|scope| {
            let saving: Vec<_> = names.iter().map(|name| (name, scope.spawn(|| self.save_log(name)))).collect();
            saving
                .into_iter()
                .map(|(name, saved)| (name.clone(), saved.join().expect("saving a log does not panic")))
                .collect()
        })
    }

    fn save_log(&self, name: &str) -> PathBuf {
        let path = self.log_dir.join(format!("{name}.log"));
        if let Ok(file) = std::fs::File::create(&path) {
            let _ = self
                .podman()
                .args(["logs", &self.container(name)])
                .stdin(Stdio::null())
                .stdout(file.try_clone().map_or(Stdio::null(), Stdio::from))
                .stderr(file)
                .status();
        }
        path
    }

    /// The podman command, talking to the service that made the pod: ports it published stay
    /// reserved in that service until it removes the pod.
    pub fn podman(&self) -> Command {
        let mut command = Command::new("podman");
        command.arg("--remote").arg(format!("--url=unix://{}", self.socket.display()));
        command
    }

    /// Runs `argv` in container `name` of the pod (`podman exec`), with `input` on its standard
    /// input; its output and its own exit status. `podman exec` can lose that status (the
    /// exec's session is cleaned up at once: podman.rs's containers.conf), so the container's
    /// shell sends it as the last line of the output, marked ([`EXIT_STATUS`]).
    pub fn exec(&self, name: &str, argv: &[&str], input: &str) -> std::io::Result<std::process::Output> {
        let mut command = self.podman();
        let script = format!(r#""$0" "$@"; printf '\n{EXIT_STATUS}%s' $?"#);
        command.args(["exec", "--interactive", &self.container(name), "sh", "-c", &script]);
        let output = crate::child::run_with_input(command.args(argv), input.as_bytes())?;
        Ok(exec_output(output))
    }
}

/// What marks the line on which [`Pod::exec`]'s command sends its exit status.
const EXIT_STATUS: &str = "workbench-exit-status:";

/// The output of an exec of [`Pod::exec`] with the exit status its last line sends in place of
/// podman's; as it is when that line is missing (the exec did not start).
fn exec_output(mut output: std::process::Output) -> std::process::Output {
    use std::os::unix::process::ExitStatusExt;
    let sent = output.stdout.iter().rposition(|&byte| byte == b'\n').and_then(|at| {
        let line = std::str::from_utf8(&output.stdout[at + 1..]).ok()?;
        let code: i32 = line.strip_prefix(EXIT_STATUS)?.parse().ok()?;
        Some((at, code))
    });
    if let Some((at, code)) = sent {
        output.stdout.truncate(at);
        output.status = std::process::ExitStatus::from_raw((code & 0xff) << 8);
    }
    output
}

impl Drop for Pod {
    fn drop(&mut self) {
        // Synchronous, so that it happens on every exit path, panics included. The logs are
        // saved first; what the containers hold is thrown away, so they are killed at once.
        self.save_logs();
        // On a run interrupted while jobs start, podman 4.3's `pod rm --force` was seen to
        // remove only the job containers and exit 0, printing nothing, with the pod and its
        // services left running (about one run in ten on a loaded machine). The first try has
        // killed the worker that makes job containers; a second one removes the rest. Its
        // output stays in the run directory.
        let mut log = String::new();
        let mut gone = false;
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(500));
            }
            let removed =
                self.podman().args(["pod", "rm", "--force", "--time", "0", &self.name]).stdin(Stdio::null()).output();
            match &removed {
                Ok(output) => log.push_str(&format!(
                    "pod rm: {}\n{}{}",
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                )),
                Err(err) => log.push_str(&format!("cannot run podman pod rm: {err}\n")),
            }
            // It names the pod it removed; the silent exit above named none.
            if removed.is_ok_and(|output| output.status.success() && named_a_pod(&output.stdout)) {
                gone = true;
                break;
            }
            // 1: no such pod; 0: it is still there; anything else: podman cannot say.
            let exists = self.podman().args(["pod", "exists", &self.name]).stdin(Stdio::null()).status();
            log.push_str(&format!("pod exists: {exists:?}\n"));
            if exists.is_ok_and(|status| status.code() == Some(1)) {
                gone = true;
                break;
            }
        }
        let path = self.log_dir.join("pod-rm.log");
        if !gone {
            eprintln!(
                "pod {} may be left: `podman pod rm --force {}` removes it; what podman said: {}",
                self.name,
                self.name,
                path.display()
            );
        }
        let _ = std::fs::write(path, log);
    }
}

/// Whether `pod rm`'s output names a removed pod: its 64-digit id.
fn named_a_pod(stdout: &[u8]) -> bool {
    String::from_utf8_lossy(stdout).lines().any(|line| line.len() == 64 && line.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn container_options(pod: &str, name: &str, spec: &ContainerSpec) -> ContainerCreateOpts {
    let mounts = spec.mounts.iter().map(|mount| ContainerMount {
        destination: Some(mount.container.display().to_string()),
        options: Some(vec!["rbind".into(), if mount.read_only { "ro" } else { "rw" }.into()]),
        source: Some(mount.host.display().to_string()),
        _type: Some("bind".into()),
        uid_mappings: None,
        gid_mappings: None,
    });
    let devices = spec.devices.iter().map(|path| model::<LinuxDevice>(serde_json::json!({ "path": path })));
    let mut builder = ContainerCreateOpts::builder()
        .name(name)
        .pod(pod)
        .image(&spec.image)
        .env(spec.env.clone())
        .mounts(mounts)
        .devices(devices);
    if !spec.command.is_empty() {
        builder = builder.command(&spec.command);
    }
    if let Some(user) = &spec.user {
        builder = builder.user(user);
    }
    builder.build()
}

/// A podman API model with only the given fields set (the models have no `Default`).
fn model<T: serde::de::DeserializeOwned>(fields: serde_json::Value) -> T {
    serde_json::from_value(fields).expect("the fields match the podman API model")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_this_machine_are_reached_through_the_host_alias() {
        assert_eq!(seen_from_pod("http://127.0.0.1:4321"), "http://10.0.2.2:4321");
        assert_eq!(seen_from_pod("https://localhost:99/logs/"), "https://workbench-host:99/logs/");
        assert_eq!(seen_from_pod("http://127.0.0.1:80/git/"), "http://10.0.2.2:80/git/");
    }

    #[test]
    fn every_container_of_a_local_pod_reads_the_pod_s_own_hosts_file() {
        let secrets = secrets_inside();
        let ports = HostPorts { amqp: 1, webhook: 2, metrics: vec![3, 4], prometheus: Some(5) };
        let hosts = Path::new("/run/pod/hosts");
        let inputs = Inputs {
            name: "pod",
            rabbitmq_image: "rabbitmq",
            tasks_image: "tasks",
            secrets: &secrets,
            service_secrets: Path::new("/run/split"),
            kvm: false,
            config_dir: Path::new("/run/pod"),
            jobs_dir: Path::new("/run/jobs"),
            podman_socket: Path::new("/run/podman.sock"),
            github_api: "http://10.0.2.2:1",
            workers: 2,
            jobs: 1,
            host_ports: &ports,
            traces_dir: None,
            hosts: Some(hosts),
            broker_metrics: true,
            prometheus: Some("prometheus"),
        };

        let spec = deployment(&inputs);
        let without = deployment(&Inputs { hosts: None, ..inputs });

        assert_eq!(spec.containers.len(), 5);
        for container in &spec.containers {
            let mounted: Vec<_> = container.mounts.iter().filter(|m| m.container == Path::new("/etc/hosts")).collect();
            assert_eq!(mounted.len(), 1, "{}", container.name);
            assert!(mounted[0].host == hosts && mounted[0].read_only, "{}", container.name);
        }
        assert!(without.containers.iter().all(|c| c.mounts.iter().all(|m| m.container != Path::new("/etc/hosts"))));
        assert_eq!(
            hosts_file(),
            "127.0.0.1\tlocalhost workbench\n::1\tlocalhost ip6-localhost ip6-loopback\n10.0.2.2\tworkbench-host localhost.localdomain\n"
        );
    }

    #[test]
    fn job_containers_join_the_pod_and_read_its_hosts_file() {
        let args = job_run_args("workbench-run-x", Path::new("/run dir/pod/hosts")).unwrap();
        let mut parsed = tasks::sandbox::RunArgs::default();
        parsed.add(&args).unwrap();

        assert_eq!(parsed.pod.as_deref(), Some("workbench-run-x"));
        assert_eq!(parsed.volumes.len(), 1);
        let volume = &parsed.volumes[0];
        assert_eq!((volume.source.as_str(), volume.destination.as_str()), ("/run dir/pod/hosts", "/etc/hosts"));
        assert!(volume.read_only);
        let err = job_run_args("p", Path::new("/a:b/pod/hosts")).unwrap_err().to_string();
        assert!(err.contains("/a:b/pod/hosts") && err.contains("':'"), "{err}");
    }

    #[test]
    fn pod_rm_names_a_removed_pod_only_by_a_whole_id() {
        let id = "0123456789abcdef".repeat(4);
        assert!(named_a_pod(format!("{id}\n").as_bytes()));
        assert!(!named_a_pod(b""));
        assert!(!named_a_pod(format!("{}\n", &id[1..]).as_bytes()));
        assert!(!named_a_pod(b"Error: no pod with name or ID workbench-run-x found\n"));
    }

    /// An exec's status is the one its last line sends, whatever podman said; without that
    /// line (the exec did not start), podman's.
    #[test]
    fn an_exec_status_is_the_one_its_shell_sent() {
        use std::os::unix::process::ExitStatusExt;
        let output = |status: i32, stdout: &str| std::process::Output {
            status: std::process::ExitStatus::from_raw(status << 8),
            stdout: stdout.into(),
            stderr: Vec::new(),
        };
        let sent = exec_output(output(0, &format!("a\nb\n\n{EXIT_STATUS}3")));
        assert_eq!((sent.status.code(), &sent.stdout[..]), (Some(3), &b"a\nb\n"[..]));
        let sent = exec_output(output(125, &format!("no newline\n{EXIT_STATUS}0")));
        assert_eq!((sent.status.code(), &sent.stdout[..]), (Some(0), &b"no newline"[..]));
        // A command's own output that happens to end in a number is not a status.
        let own = exec_output(output(125, "counted\n3"));
        assert_eq!((own.status.code(), &own.stdout[..]), (Some(125), &b"counted\n3"[..]));
        let failed = exec_output(output(125, "Error: container state improper\n"));
        assert_eq!((failed.status.code(), &failed.stdout[..]), (Some(125), &b"Error: container state improper\n"[..]));
    }
}
