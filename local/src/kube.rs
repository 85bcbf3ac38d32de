//! Kubernetes manifests of the pod description (`crate::pod::PodSpec`), in two forms, built
//! from the Kubernetes API's own types (k8s-openapi), so that a misspelled field does not
//! compile:
//!
//! - [`Target::Podman`]: the pod as the podman runtime makes it, for `podman kube play` on this
//!   machine (`run-local --via-kube`): mounts and `/dev/kvm` as host paths, ports on 127.0.0.1.
//! - [`Target::Cluster`]: what `cargo xtask kube` writes for production, as Cockpit's
//!   deployment has it: RabbitMQ and the webhook in one Deployment with the Services `amqp`
//!   and `webhook`, the workers in another (scaled by replicas), the RabbitMQ configuration as
//!   the ConfigMap `amqp-config`, the secrets as Secret templates; hardened as far as each
//!   container allows (no service-account token, non-root and read-only where the service
//!   allows, no capabilities, resource bounds, probes), and every check of `checkov` that still
//!   fails skipped in the object with its reason.
//!
//! Both come from the same containers (images, commands, environment, mounts, ports); only
//! where mounts come from and how containers are grouped differ.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, HostAlias, HostPathVolumeSource, KeyToPath, Namespace, ObjectFieldSelector, Pod,
    PodSecurityContext, PodSpec as KubePodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::pod::{self, ContainerSpec, Mount, PodSpec};
use crate::secrets::POD_HOSTNAME;

/// Where the manifests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Podman,
    Cluster,
}

/// One Kubernetes object of the stream.
// A dozen objects, made once: their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Manifest {
    Namespace(Namespace),
    Pod(Pod),
    Deployment(Deployment),
    Service(Service),
    ConfigMap(ConfigMap),
    Secret(Secret),
    NetworkPolicy(NetworkPolicy),
}

/// The label that ties Deployments, their pods and the Services together.
const APP_LABEL: &str = "app";
/// The namespace of the production objects.
pub const NAMESPACE: &str = "workbench";

/// Where the production pods find the node's podman and keep their work (host paths).
const NODE_PODMAN_SOCKET: &str = "/run/podman/podman.sock";
const NODE_JOBS_DIR: &str = "/var/lib/workbench/jobs";

/// The user RabbitMQ and the webhook run as on a cluster: none of the image's, high enough not
/// to be any of the node's. The group owns the mounted secrets (mode 0440).
const SERVICE_USER: i64 = 10001;
const SECRETS_GROUP: i64 = 10001;
/// Where RabbitMQ writes on a cluster: an empty directory, its root file system being read-only.
const RABBITMQ_DATA: &str = "/var/lib/rabbitmq";
/// Secrets and configuration are readable by their group (the pod's `fsGroup`) only.
const SECRET_MODE: i32 = 0o440;

/// The deployment's pod as production runs it: the real GitHub, `workers` tasks replicas with
/// `/dev/kvm` from their node when `kvm` says so, the secrets and configuration from the
/// cluster. Render it with [`Target::Cluster`].
pub fn production(rabbitmq_image: &str, tasks_image: &str, workers: u16, kvm: bool) -> PodSpec {
    let inside = pod::secrets_inside();
    let ports = pod::HostPorts { amqp: 0, webhook: 0, metrics: vec![0; usize::from(workers)], prometheus: None };
    pod::deployment(&pod::Inputs {
        name: "workbench",
        rabbitmq_image,
        tasks_image,
        secrets: &inside,
        service_secrets: Path::new("/run/secrets/services"),
        kvm,
        config_dir: Path::new("/run/secrets"),
        jobs_dir: Path::new(NODE_JOBS_DIR),
        podman_socket: Path::new(NODE_PODMAN_SOCKET),
        github_api: github::DEFAULT_API,
        workers,
        // In production each job is a VM: one at a time per worker, as Cockpit's.
        jobs: 1,
        host_ports: &ports,
        traces_dir: None,
        hosts: None,
        // The alert rules read the broker's own metrics (deploy/prometheus/).
        broker_metrics: true,
        prometheus: None,
    })
}

/// The manifests of `spec` for `target`, as Kubernetes objects.
pub fn manifests(spec: &PodSpec, target: Target) -> Vec<Manifest> {
    match target {
        Target::Podman => vec![Manifest::Pod(podman_pod(spec))],
        Target::Cluster => cluster(spec),
    }
}

/// `manifests` as one YAML stream.
pub fn to_yaml(manifests: &[Manifest]) -> String {
    manifests
        .iter()
        .map(|manifest| serde_norway::to_string(manifest).expect("Kubernetes objects are YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn labels(name: &str) -> BTreeMap<String, String> {
    [(APP_LABEL.to_owned(), name.to_owned())].into()
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|value| value.to_string()).collect()
}

/// The pod for this machine's podman: every container in it, mounts from this machine.
fn podman_pod(spec: &PodSpec) -> Pod {
    let mut volumes = Volumes::default();
    let containers = spec
        .containers
        .iter()
        .map(|container| {
            let ports = container
                .ports
                .iter()
                .map(|&port| match spec.ports.iter().find(|p| p.container == port) {
                    Some(p) => ContainerPort {
                        container_port: port.into(),
                        host_port: Some(p.host.into()),
                        host_ip: Some("127.0.0.1".into()),
                        ..Default::default()
                    },
                    None => ContainerPort { container_port: port.into(), ..Default::default() },
                })
                .collect();
            let mut value = container_of(container, &mut volumes, Target::Podman);
            value.ports = Some(ports);
            if container.user.as_deref() == Some("root") {
                value.security_context = Some(SecurityContext { run_as_user: Some(0), ..Default::default() });
            }
            value
        })
        .collect();
    Pod {
        metadata: ObjectMeta { name: Some(spec.name.clone()), labels: Some(labels(&spec.name)), ..Default::default() },
        spec: Some(KubePodSpec {
            hostname: Some(POD_HOSTNAME.into()),
            host_aliases: Some(vec![HostAlias {
                ip: pod::HOST_LOOPBACK.into(),
                hostnames: Some(pod::HOST_NAMES.map(str::to_owned).to_vec()),
            }]),
            // A container that ends during a run is a failure to report, not to hide.
            restart_policy: Some("Never".into()),
            containers,
            volumes: Some(volumes.0),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The production objects: the namespace, configuration, secrets, the webhook with its broker,
/// the workers.
fn cluster(spec: &PodSpec) -> Vec<Manifest> {
    let (services, workers): (Vec<&ContainerSpec>, Vec<&ContainerSpec>) =
        spec.containers.iter().partition(|c| c.name == pod::RABBITMQ || c.name == "webhook");
    let mut objects = vec![
        Manifest::Namespace(Namespace {
            metadata: ObjectMeta { name: Some(NAMESPACE.into()), ..Default::default() },
            ..Default::default()
        }),
        Manifest::ConfigMap(amqp_config(broker_metrics(spec))),
    ];
    objects.extend(secret_templates().into_iter().map(Manifest::Secret));
    objects.push(Manifest::Deployment(deployment("webhook", 1, &services, &[])));
    objects.push(Manifest::Service(service("amqp", "webhook", pod::AMQP_PORT, pod::AMQP_PORT)));
    objects.push(Manifest::Service(service("webhook", "webhook", 80, pod::WEBHOOK_PORT)));
    // What Prometheus scrapes (deploy/prometheus/kubernetes.yml).
    if broker_metrics(spec) {
        let port = pod::RABBITMQ_METRICS_PORT;
        objects.push(Manifest::Service(service("rabbitmq-metrics", "webhook", port, port)));
    }
    // GitHub delivers from anywhere, and workers may run anywhere (they log in with their
    // certificate): the webhook pods take connections on these two ports, and Prometheus'
    // scrapes of the broker's metrics, and no other.
    let ports: Vec<u16> = services.iter().flat_map(|c| c.ports.iter().copied()).collect();
    objects.push(Manifest::NetworkPolicy(ingress_only("webhook", &ports)));
    if let Some(worker) = workers.first() {
        // Each replica goes by its own pod's name, works in a directory of its own on the
        // node, and finds the broker by its Service.
        let mut worker = (*worker).clone();
        if let Some(at) = worker.command.iter().position(|arg| arg == "--hostname") {
            worker.command.drain(at..at + 2);
        }
        if let Some(at) = worker.command.iter().position(|arg| arg == "--work-dir") {
            worker.command[at + 1] = format!("{NODE_JOBS_DIR}/$(POD_NAME)");
        }
        for mount in &mut worker.mounts {
            if mount.container.starts_with(NODE_JOBS_DIR) {
                (mount.host, mount.container) = (NODE_JOBS_DIR.into(), NODE_JOBS_DIR.into());
            }
        }
        worker.name = "tasks".into();
        worker.env.push(("AMQP_SERVER".into(), format!("amqp:{}", pod::AMQP_PORT)));
        let mut skips = vec![
            ("CKV_K8S_23", "the worker talks to the node's rootful podman socket, root's to use"),
            ("CKV_K8S_40", "the worker runs as root, for the node's podman socket"),
        ];
        if !worker.devices.is_empty() {
            skips.extend([
                ("CKV_K8S_16", "/dev/kvm of the node is a device, which a host path gives only to a privileged container (without KVM: cargo xtask kube --no-kvm)"),
                ("CKV_K8S_20", "privilege escalation cannot be refused to a privileged container (without KVM: --no-kvm)"),
            ]);
        }
        let metrics: Vec<u16> = worker.ports.clone();
        objects.push(Manifest::Deployment(deployment("tasks", workers.len(), &[&worker], &skips)));
        // Headless: Prometheus finds every replica's address by name (deploy/prometheus/).
        if let Some(&port) = metrics.first() {
            let mut metrics_service = service("tasks-metrics", "tasks", port, port);
            metrics_service.spec.as_mut().expect("made with a spec").cluster_ip = Some("None".into());
            objects.push(Manifest::Service(metrics_service));
        }
        // Workers take no connection but their metrics' scrapes.
        objects.push(Manifest::NetworkPolicy(ingress_only("tasks", &metrics)));
    }
    objects
}

/// Whether the broker of `spec` serves its metrics.
fn broker_metrics(spec: &PodSpec) -> bool {
    spec.containers.iter().any(|c| c.name == pod::RABBITMQ && c.ports.contains(&pod::RABBITMQ_METRICS_PORT))
}

/// A policy letting the pods of Deployment `app` take connections on `ports` only (from
/// anywhere); what they connect to is not restricted.
fn ingress_only(app: &str, ports: &[u16]) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ObjectMeta { name: Some(app.into()), namespace: Some(NAMESPACE.into()), ..Default::default() },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(labels(app)), ..Default::default() }),
            policy_types: Some(strings(&["Ingress"])),
            ingress: Some(vec![NetworkPolicyIngressRule {
                ports: Some(
                    ports
                        .iter()
                        .map(|&port| NetworkPolicyPort {
                            port: Some(IntOrString::Int(port.into())),
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// Checks of `checkov` every Deployment fails on purpose, with why.
const IMAGE_SKIPS: [(&str, &str); 2] = [
    (
        "CKV_K8S_14",
        "the image is the operator's to name (--tasks-image, --rabbitmq-image): pass a fixed tag or a digest",
    ),
    ("CKV_K8S_43", "the image is the operator's to name (--tasks-image, --rabbitmq-image): pass a digest"),
];

fn deployment(name: &str, replicas: usize, containers: &[&ContainerSpec], skips: &[(&str, &str)]) -> Deployment {
    let mut volumes = Volumes::default();
    let containers = containers
        .iter()
        .map(|container| {
            let mut value = container_of(container, &mut volumes, Target::Cluster);
            value.ports = Some(
                container
                    .ports
                    .iter()
                    .map(|&port| ContainerPort { container_port: port.into(), ..Default::default() })
                    .collect(),
            );
            harden(container, &mut value, &mut volumes);
            value
        })
        .collect();
    let annotations: BTreeMap<String, String> = IMAGE_SKIPS
        .iter()
        .chain(skips)
        .enumerate()
        .map(|(n, (check, why))| (format!("checkov.io/skip{}", n + 1), format!("{check}={why}")))
        .collect();
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NAMESPACE.into()),
            labels: Some(labels(name)),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector { match_labels: Some(labels(name)), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels(name)), ..Default::default() }),
                spec: Some(KubePodSpec {
                    containers,
                    volumes: Some(volumes.0),
                    // The services never talk to the Kubernetes API.
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        fs_group: Some(SECRETS_GROUP),
                        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What each container may do and use on a cluster, as far as its service allows.
fn harden(spec: &ContainerSpec, container: &mut Container, volumes: &mut Volumes) {
    let quantity = |text: &str| Quantity(text.to_owned());
    let resources = |cpu: (&str, &str), memory: (&str, &str)| ResourceRequirements {
        requests: Some([("cpu".into(), quantity(cpu.0)), ("memory".into(), quantity(memory.0))].into()),
        limits: Some([("cpu".into(), quantity(cpu.1)), ("memory".into(), quantity(memory.1))].into()),
        ..Default::default()
    };
    let http = |path: &str, port: u16| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port.into()),
            ..Default::default()
        }),
        period_seconds: Some(10),
        ..Default::default()
    };
    let tcp = |port: u16| Probe {
        tcp_socket: Some(TCPSocketAction { port: IntOrString::Int(port.into()), ..Default::default() }),
        initial_delay_seconds: Some(10),
        period_seconds: Some(10),
        ..Default::default()
    };
    let unprivileged = SecurityContext {
        run_as_user: Some(SERVICE_USER),
        run_as_non_root: Some(true),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities { drop: Some(strings(&["ALL"])), ..Default::default() }),
        ..Default::default()
    };
    let writable = |volumes: &mut Volumes, container: &mut Container, path: &str| {
        let name = volumes.add_empty(path);
        container.volume_mounts.get_or_insert_default().push(VolumeMount {
            name,
            mount_path: path.into(),
            ..Default::default()
        });
    };
    match spec.name.as_str() {
        pod::RABBITMQ => {
            // Its node data, Erlang cookie and upgrade log, in a directory of its own.
            writable(volumes, container, RABBITMQ_DATA);
            for (name, value) in
                [("HOME", RABBITMQ_DATA.to_owned()), ("RABBITMQ_LOG_BASE", format!("{RABBITMQ_DATA}/log"))]
            {
                container.env.get_or_insert_default().push(EnvVar {
                    name: name.into(),
                    value: Some(value),
                    ..Default::default()
                });
            }
            container.resources = Some(resources(("250m", "1"), ("256Mi", "1Gi")));
            container.readiness_probe = Some(tcp(pod::AMQP_PORT));
            container.liveness_probe = Some(Probe { initial_delay_seconds: Some(60), ..tcp(pod::AMQP_PORT) });
            container.security_context = Some(unprivileged);
        }
        "webhook" => {
            // Ready once it can store deliveries; alive as long as it answers at all.
            container.resources = Some(resources(("50m", "500m"), ("64Mi", "256Mi")));
            container.readiness_probe = Some(http("/healthz", pod::WEBHOOK_PORT));
            container.liveness_probe = Some(http("/metrics", pod::WEBHOOK_PORT));
            container.security_context = Some(unprivileged);
        }
        _ => {
            writable(volumes, container, "/tmp");
            container.env.get_or_insert_default().push(EnvVar {
                name: "POD_NAME".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".into(), ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            });
            let metrics = spec.ports.first().copied().unwrap_or(pod::WEBHOOK_PORT);
            container.resources = Some(resources(("500m", "2"), ("512Mi", "2Gi")));
            container.readiness_probe = Some(http("/metrics", metrics));
            container.liveness_probe = Some(http("/metrics", metrics));
            let privileged = !spec.devices.is_empty();
            container.security_context = Some(SecurityContext {
                run_as_user: Some(0),
                privileged: privileged.then_some(true),
                allow_privilege_escalation: (!privileged).then_some(false),
                read_only_root_filesystem: Some(true),
                capabilities: Some(Capabilities { drop: Some(strings(&["ALL"])), ..Default::default() }),
                ..Default::default()
            });
        }
    }
}

/// Service `name` of the pods of Deployment `app` (RabbitMQ and the webhook share the
/// `webhook` Deployment's pods).
fn service(name: &str, app: &str, port: u16, target: u16) -> Service {
    Service {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some(NAMESPACE.into()), ..Default::default() },
        spec: Some(ServiceSpec {
            selector: Some(labels(app)),
            ports: Some(vec![ServicePort {
                port: port.into(),
                target_port: Some(IntOrString::Int(target.into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_of(container: &ContainerSpec, volumes: &mut Volumes, target: Target) -> Container {
    let mut mounts: Vec<VolumeMount> = container
        .mounts
        .iter()
        .map(|mount| VolumeMount {
            name: volumes.add(mount, target),
            mount_path: mount.container.display().to_string(),
            read_only: Some(mount.read_only),
            ..Default::default()
        })
        .collect();
    for device in &container.devices {
        let mount = Mount { host: device.into(), container: device.into(), read_only: false, files: Vec::new() };
        mounts.push(VolumeMount {
            name: volumes.add(&mount, target),
            mount_path: device.clone(),
            ..Default::default()
        });
    }
    Container {
        name: container.name.clone(),
        image: Some(container.image.clone()),
        env: Some(
            container
                .env
                .iter()
                .map(|(name, value)| EnvVar { name: name.clone(), value: Some(value.clone()), ..Default::default() })
                .collect(),
        ),
        volume_mounts: Some(mounts),
        // podman's command is the image's CMD, kept after its ENTRYPOINT: Kubernetes' `args`.
        args: (!container.command.is_empty()).then(|| container.command.clone()),
        ..Default::default()
    }
}

/// A pod's volumes, one per mounted source, named after where they are mounted.
#[derive(Default)]
struct Volumes(Vec<Volume>);

impl Volumes {
    /// The volume for `mount` (added unless there), by name.
    fn add(&mut self, mount: &Mount, target: Target) -> String {
        let source = match target {
            Target::Cluster => cluster_source(mount),
            Target::Podman => None,
        };
        let volume = source.unwrap_or_else(|| Volume {
            host_path: Some(HostPathVolumeSource {
                path: mount.host.display().to_string(),
                type_: Some(host_path_type(&mount.host).into()),
            }),
            ..Default::default()
        });
        self.named(volume, &mount.container)
    }

    /// A writable, empty directory for `path`.
    fn add_empty(&mut self, path: &str) -> String {
        let volume = Volume { empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() };
        self.named(volume, Path::new(path))
    }

    fn named(&mut self, mut volume: Volume, path: &Path) -> String {
        let same = |existing: &Volume| Volume { name: String::new(), ..existing.clone() } == volume;
        if let Some(existing) = self.0.iter().find(|existing| same(existing)) {
            return existing.name.clone();
        }
        let mut name = volume_name(path);
        if self.0.iter().any(|existing| existing.name == name) {
            name = format!("{}-{}", &name[..name.len().min(56)], self.0.len());
        }
        volume.name = name.clone();
        self.0.push(volume);
        name
    }
}

/// On a cluster, what is mounted at configuration paths comes from a ConfigMap or Secret
/// (just the files the container gets, readable by the secrets' group); the rest (the podman
/// socket, the work directories, devices) from the node.
fn cluster_source(mount: &Mount) -> Option<Volume> {
    let items = (!mount.files.is_empty()).then(|| {
        mount
            .files
            .iter()
            .map(|file| KeyToPath { key: file.clone(), path: file.clone(), ..Default::default() })
            .collect()
    });
    let secret = |name: &str| Volume {
        secret: Some(SecretVolumeSource {
            secret_name: Some(name.into()),
            default_mode: Some(SECRET_MODE),
            items: items.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    Some(match mount.container.to_str()? {
        pod::RABBITMQ_CONFIG => Volume {
            config_map: Some(ConfigMapVolumeSource {
                name: "amqp-config".into(),
                default_mode: Some(SECRET_MODE),
                ..Default::default()
            }),
            ..Default::default()
        },
        pod::WEBHOOK_SECRETS => secret("webhook-secrets"),
        pod::S3_KEYS => secret("s3-keys"),
        pod::TASKS_SECRETS => secret("tasks-secrets"),
        _ => return None,
    })
}

fn host_path_type(path: &Path) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path).map(|m| m.file_type()) {
        Ok(kind) if kind.is_char_device() => "CharDevice",
        Ok(kind) if kind.is_socket() => "Socket",
        Ok(kind) if kind.is_file() => "File",
        _ if path == Path::new("/dev/kvm") => "CharDevice",
        _ if path == Path::new(NODE_PODMAN_SOCKET) => "Socket",
        _ => "Directory",
    }
}

/// A DNS label from the last two components of `path`: `/run/secrets/webhook` is
/// `secrets-webhook`.
fn volume_name(path: &Path) -> String {
    let parts: Vec<String> = path.iter().rev().take(2).map(|part| part.to_string_lossy().to_lowercase()).collect();
    let joined: String = parts.into_iter().rev().collect::<Vec<_>>().join("-");
    let name: String = joined.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let name = name.trim_matches('-');
    name[..name.len().min(63)].trim_end_matches('-').to_owned()
}

/// The broker's configuration, as mounted at `/etc/rabbitmq` in the pod.
fn amqp_config(metrics: bool) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some("amqp-config".into()),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        data: Some(pod::broker_config(metrics).into_iter().map(|(name, text)| (name.to_owned(), text)).collect()),
        ..Default::default()
    }
}

/// The secrets, each key with what to put there (`cargo xtask secrets` writes fake ones in
/// the same layout).
fn secret_templates() -> Vec<Secret> {
    let secret = |name: &str, keys: &[(&str, &str)]| Secret {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some(NAMESPACE.into()), ..Default::default() },
        type_: Some("Opaque".into()),
        string_data: Some(keys.iter().map(|(key, what)| ((*key).to_owned(), format!("REPLACE with {what}"))).collect()),
        ..Default::default()
    };
    vec![
        secret(
            "webhook-secrets",
            &[
                ("ca.pem", "the CA certificate (PEM)"),
                ("amqp-server.pem", "the broker's certificate (PEM)"),
                ("amqp-server.key", "the broker's key (PEM)"),
                ("amqp-client.pem", "the client certificate, CN=cockpit-amqp (PEM)"),
                ("amqp-client.key", "the client key (PEM)"),
                (".config--github-token", "a GitHub token that may post statuses"),
                (".config--github-webhook-token", "the webhook's HMAC secret"),
            ],
        ),
        secret(
            "s3-keys",
            &[(
                "s3.us-east-1.amazonaws.com",
                "ACCESS SECRET of the logs store; name the key after its host, as Cockpit's lookup finds it",
            )],
        ),
        secret(
            "tasks-secrets",
            &[("job-runner.toml", "the job-runner configuration (docs/protocol.md)"), ("testmap.toml", "the test map")],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names_are_dns_labels_after_the_mount_point() {
        assert_eq!(volume_name(Path::new("/run/secrets/webhook")), "secrets-webhook");
        assert_eq!(volume_name(Path::new("/etc/rabbitmq")), "etc-rabbitmq");
        assert_eq!(volume_name(Path::new("/podman.sock")), "podman-sock");
        assert_eq!(volume_name(Path::new("/dev/kvm")), "dev-kvm");
        assert_eq!(volume_name(Path::new("/x/Run_Dir.1/jobs/worker-1")), "jobs-worker-1");
    }
}
