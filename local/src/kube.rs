//! Kubernetes manifests of the pod description (`crate::pod::PodSpec`), in two forms:
//!
//! - [`Target::Podman`]: the pod as the podman runtime makes it, for `podman kube play` on this
//!   machine (`run-local --via-kube`): mounts and `/dev/kvm` as host paths, ports on 127.0.0.1.
//! - [`Target::Cluster`]: what `cargo xtask kube` writes for production, as Cockpit's
//!   deployment has it: RabbitMQ and the webhook in one Deployment with the Services `amqp`
//!   and `webhook`, the workers in another (scaled by replicas), the RabbitMQ configuration as
//!   the ConfigMap `amqp-config`, the secrets as Secret templates.
//!
//! Both come from the same containers (images, commands, environment, mounts, ports); only
//! where mounts come from and how containers are grouped differ.

use std::path::Path;

use serde_json::{Value, json};

use crate::pod::{self, ContainerSpec, Mount, PodSpec};
use crate::secrets::POD_HOSTNAME;

/// Where the manifests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Podman,
    Cluster,
}

/// The label that ties Deployments, their pods and the Services together.
const APP_LABEL: &str = "app";

/// Where the production pods find the node's podman and keep their work (host paths).
const NODE_PODMAN_SOCKET: &str = "/run/podman/podman.sock";
const NODE_JOBS_DIR: &str = "/var/lib/workbench/jobs";

/// The deployment's pod as production runs it: the real GitHub, `workers` tasks replicas,
/// the secrets and configuration from the cluster. Render it with [`Target::Cluster`].
pub fn production(rabbitmq_image: &str, tasks_image: &str, workers: u16) -> PodSpec {
    let inside = pod::secrets_inside();
    let ports = pod::HostPorts { amqp: 0, webhook: 0, metrics: vec![0; usize::from(workers)] };
    pod::deployment(&pod::Inputs {
        name: "workbench",
        rabbitmq_image,
        tasks_image,
        secrets: &inside,
        config_dir: Path::new("/run/secrets"),
        jobs_dir: Path::new(NODE_JOBS_DIR),
        podman_socket: Path::new(NODE_PODMAN_SOCKET),
        github_api: github::DEFAULT_API,
        workers,
        host_ports: &ports,
    })
}

/// The manifests of `spec` for `target`, as Kubernetes objects.
pub fn manifests(spec: &PodSpec, target: Target) -> Vec<Value> {
    match target {
        Target::Podman => vec![podman_pod(spec)],
        Target::Cluster => cluster(spec),
    }
}

/// `manifests` as one YAML stream.
pub fn to_yaml(manifests: &[Value]) -> String {
    manifests
        .iter()
        .map(|manifest| serde_norway::to_string(manifest).expect("JSON values are YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The pod for this machine's podman: every container in it, mounts from this machine.
fn podman_pod(spec: &PodSpec) -> Value {
    let mut volumes = Volumes::default();
    let containers: Vec<Value> = spec
        .containers
        .iter()
        .map(|container| {
            let mut value = container_json(container, &mut volumes, Target::Podman);
            let published: Vec<Value> = container
                .ports
                .iter()
                .map(|&port| match spec.ports.iter().find(|p| p.container == port) {
                    Some(p) => json!({"containerPort": port, "hostPort": p.host, "hostIP": "127.0.0.1"}),
                    None => json!({"containerPort": port}),
                })
                .collect();
            value["ports"] = json!(published);
            value
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": spec.name, "labels": {APP_LABEL: spec.name}},
        "spec": {
            "hostname": POD_HOSTNAME,
            "hostAliases": [{"ip": pod::HOST_LOOPBACK, "hostnames": [pod::HOST_ALIAS]}],
            // A container that ends during a run is a failure to report, not to hide.
            "restartPolicy": "Never",
            "containers": containers,
            "volumes": volumes.json(),
        },
    })
}

/// The production objects: configuration, secrets, the webhook with its broker, the workers.
fn cluster(spec: &PodSpec) -> Vec<Value> {
    let (services, workers): (Vec<&ContainerSpec>, Vec<&ContainerSpec>) =
        spec.containers.iter().partition(|c| c.name == pod::RABBITMQ || c.name == "webhook");
    let mut objects = vec![amqp_config()];
    objects.extend(secret_templates());
    objects.push(deployment("webhook", 1, &services));
    objects.push(service("amqp", pod::AMQP_PORT, pod::AMQP_PORT));
    objects.push(service("webhook", 80, pod::WEBHOOK_PORT));
    if let Some(worker) = workers.first() {
        // Each replica goes by its own pod's name, and finds the broker by its Service.
        let mut worker = (*worker).clone();
        if let Some(at) = worker.command.iter().position(|arg| arg == "--hostname") {
            worker.command.drain(at..at + 2);
        }
        worker.name = "tasks".into();
        worker.env.push(("AMQP_SERVER".into(), format!("amqp:{}", pod::AMQP_PORT)));
        objects.push(deployment("tasks", workers.len(), &[&worker]));
    }
    objects
}

fn deployment(name: &str, replicas: usize, containers: &[&ContainerSpec]) -> Value {
    let mut volumes = Volumes::default();
    let containers: Vec<Value> = containers
        .iter()
        .map(|container| {
            let mut value = container_json(container, &mut volumes, Target::Cluster);
            value["ports"] =
                json!(container.ports.iter().map(|&port| json!({"containerPort": port})).collect::<Vec<_>>());
            value
        })
        .collect();
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {APP_LABEL: name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {APP_LABEL: name}},
            "template": {
                "metadata": {"labels": {APP_LABEL: name}},
                "spec": {"containers": containers, "volumes": volumes.json()},
            },
        },
    })
}

fn service(name: &str, port: u16, target: u16) -> Value {
    // RabbitMQ and the webhook share the `webhook` Deployment's pods.
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {APP_LABEL: "webhook"}, "ports": [{"port": port, "targetPort": target, "protocol": "TCP"}]},
    })
}

fn container_json(container: &ContainerSpec, volumes: &mut Volumes, target: Target) -> Value {
    let mut mounts: Vec<Value> = container
        .mounts
        .iter()
        .map(|mount| {
            let name = volumes.add(mount, target);
            json!({"name": name, "mountPath": mount.container, "readOnly": mount.read_only})
        })
        .collect();
    for device in &container.devices {
        let mount = Mount { host: device.into(), container: device.into(), read_only: false };
        let name = volumes.add(&mount, target);
        mounts.push(json!({"name": name, "mountPath": device}));
    }
    let mut value = json!({
        "name": container.name,
        "image": container.image,
        "env": container.env.iter().map(|(name, value)| json!({"name": name, "value": value})).collect::<Vec<_>>(),
        "volumeMounts": mounts,
    });
    // podman's command is the image's CMD, kept after its ENTRYPOINT: Kubernetes' `args`.
    if !container.command.is_empty() {
        value["args"] = json!(container.command);
    }
    let mut security = serde_json::Map::new();
    if container.user.as_deref() == Some("root") {
        security.insert("runAsUser".into(), json!(0));
    }
    // A device from a host path is usable only by a privileged container on a cluster.
    if target == Target::Cluster && !container.devices.is_empty() {
        security.insert("privileged".into(), json!(true));
    }
    if !security.is_empty() {
        value["securityContext"] = Value::Object(security);
    }
    value
}

/// A pod's volumes, one per mounted path, named after where they are mounted.
#[derive(Default)]
struct Volumes(Vec<(String, Value)>);

impl Volumes {
    /// The volume for `mount` (added unless there), by name.
    fn add(&mut self, mount: &Mount, target: Target) -> String {
        let source = match (target, cluster_source(&mount.container)) {
            (Target::Cluster, Some(source)) => source,
            _ => json!({"hostPath": {"path": mount.host, "type": host_path_type(&mount.host)}}),
        };
        if let Some((name, _)) = self.0.iter().find(|(_, existing)| *existing == source) {
            return name.clone();
        }
        let mut name = volume_name(&mount.container);
        if self.0.iter().any(|(existing, _)| *existing == name) {
            name = format!("{}-{}", &name[..name.len().min(56)], self.0.len());
        }
        self.0.push((name.clone(), source));
        name
    }

    fn json(&self) -> Value {
        let volumes: Vec<Value> = self
            .0
            .iter()
            .map(|(name, source)| {
                let mut volume = source.clone();
                volume["name"] = json!(name);
                volume
            })
            .collect();
        json!(volumes)
    }
}

/// On a cluster, what is mounted at `path` comes from a ConfigMap or Secret, when it is
/// configuration; the rest (the podman socket, the work directories, devices) from the node.
fn cluster_source(path: &Path) -> Option<Value> {
    let path = path.to_str()?;
    let (kind, name) = match path {
        pod::RABBITMQ_CONFIG => ("configMap", "amqp-config"),
        pod::WEBHOOK_SECRETS => ("secret", "webhook-secrets"),
        pod::S3_KEYS => ("secret", "s3-keys"),
        pod::TASKS_SECRETS => ("secret", "tasks-secrets"),
        _ => return None,
    };
    Some(match kind {
        "configMap" => json!({"configMap": {"name": name}}),
        _ => json!({"secret": {"secretName": name}}),
    })
}

fn host_path_type(path: &Path) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path).map(|m| m.file_type()) {
        Ok(kind) if kind.is_char_device() => "CharDevice",
        Ok(kind) if kind.is_socket() => "Socket",
        Ok(kind) if kind.is_file() => "File",
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
fn amqp_config() -> Value {
    let data: serde_json::Map<String, Value> =
        pod::broker_config().into_iter().map(|(name, text)| (name.to_owned(), json!(text))).collect();
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "amqp-config"}, "data": data})
}

/// The secrets, each key with what to put there (`cargo xtask secrets` writes fake ones in
/// the same layout).
fn secret_templates() -> Vec<Value> {
    let secret = |name: &str, keys: &[(&str, &str)]| {
        let data: serde_json::Map<String, Value> =
            keys.iter().map(|(key, what)| ((*key).to_owned(), json!(format!("REPLACE with {what}")))).collect();
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque", "stringData": data})
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
        secret("s3-keys", &[("localhost", "ACCESS SECRET of the S3 store; name the key after its host")]),
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
