//! The Kubernetes manifests, checked like a schema validator would (kubeconform-style, for
//! the part of the Kubernetes API we write): every object parses into the API's shapes with no
//! unknown field, names are DNS labels, mounts name declared volumes, ConfigMaps and Secrets
//! exist where volumes use them, selectors select, and Services point at container ports.
//! `run-local --via-kube` shows podman accepts the local form, scenario by scenario.

use std::collections::BTreeMap;
use std::path::Path;

use local::kube::{self, Target};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Object {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Option<serde_norway::Value>,
    data: Option<BTreeMap<String, String>>,
    string_data: Option<BTreeMap<String, String>>,
    #[serde(rename = "type")]
    kind_of_secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodSpec {
    containers: Vec<Container>,
    #[serde(default)]
    volumes: Vec<Volume>,
    hostname: Option<String>,
    #[serde(default)]
    host_aliases: Vec<HostAlias>,
    restart_policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostAlias {
    ip: String,
    hostnames: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Container {
    name: String,
    image: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    #[serde(default)]
    volume_mounts: Vec<VolumeMount>,
    #[serde(default)]
    ports: Vec<ContainerPort>,
    security_context: Option<SecurityContext>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvVar {
    name: String,
    #[allow(dead_code)]
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct VolumeMount {
    name: String,
    mount_path: String,
    #[allow(dead_code)]
    read_only: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ContainerPort {
    container_port: u16,
    host_port: Option<u16>,
    #[serde(rename = "hostIP")]
    host_ip: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SecurityContext {
    run_as_user: Option<u32>,
    privileged: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Volume {
    name: String,
    host_path: Option<HostPath>,
    secret: Option<SecretSource>,
    config_map: Option<ConfigMapSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostPath {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SecretSource {
    secret_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigMapSource {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentSpec {
    replicas: u32,
    selector: Selector,
    template: Template,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Selector {
    match_labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Template {
    metadata: TemplateMetadata,
    spec: PodSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateMetadata {
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSpec {
    selector: BTreeMap<String, String>,
    ports: Vec<ServicePort>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServicePort {
    port: u16,
    target_port: u16,
    protocol: String,
}

fn parse(yaml: &str) -> Vec<Object> {
    serde_norway::Deserializer::from_str(yaml).map(|document| Object::deserialize(document).unwrap()).collect()
}

fn spec<T: serde::de::DeserializeOwned>(object: &Object) -> T {
    let spec = object.spec.clone().unwrap_or_else(|| panic!("{} {} has no spec", object.kind, object.metadata.name));
    serde_norway::from_value(spec).unwrap_or_else(|e| panic!("{} {}: {e}", object.kind, object.metadata.name))
}

fn assert_dns_label(what: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    assert!(ok, "{what} {name:?} is not a DNS label");
}

fn assert_keys(what: &str, keys: impl IntoIterator<Item = String>) {
    for key in keys {
        let ok = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
        assert!(ok, "{what} key {key:?} is not a valid ConfigMap/Secret key");
    }
}

/// Checks one pod template against the objects of its stream.
fn check_pod(owner: &str, pod: &PodSpec, config_maps: &[&str], secrets: &[&str]) {
    let volumes: Vec<&str> = pod.volumes.iter().map(|v| v.name.as_str()).collect();
    for volume in &pod.volumes {
        assert_dns_label(&format!("volume of {owner}"), &volume.name);
        let sources = [volume.host_path.is_some(), volume.secret.is_some(), volume.config_map.is_some()];
        assert_eq!(sources.iter().filter(|s| **s).count(), 1, "volume {} of {owner} has one source", volume.name);
        if let Some(host_path) = &volume.host_path {
            assert!(Path::new(&host_path.path).is_absolute(), "{}", host_path.path);
            assert!(
                ["Directory", "File", "Socket", "CharDevice"].contains(&host_path.kind.as_str()),
                "{}",
                host_path.kind
            );
        }
        if let Some(secret) = &volume.secret {
            assert!(
                secrets.contains(&secret.secret_name.as_str()),
                "{owner} mounts a missing Secret {}",
                secret.secret_name
            );
        }
        if let Some(config_map) = &volume.config_map {
            assert!(
                config_maps.contains(&config_map.name.as_str()),
                "{owner} mounts a missing ConfigMap {}",
                config_map.name
            );
        }
    }
    if let Some(hostname) = &pod.hostname {
        assert_dns_label("hostname", hostname);
    }
    for alias in &pod.host_aliases {
        assert!(alias.ip.parse::<std::net::IpAddr>().is_ok() && !alias.hostnames.is_empty());
    }
    assert!(pod.restart_policy.as_deref().is_none_or(|p| ["Always", "OnFailure", "Never"].contains(&p)));
    for container in &pod.containers {
        assert_dns_label(&format!("container of {owner}"), &container.name);
        assert!(!container.image.is_empty());
        for env in &container.env {
            let ok = env.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            assert!(ok && !env.name.starts_with(|c: char| c.is_ascii_digit()), "env {}", env.name);
        }
        for mount in &container.volume_mounts {
            assert!(
                volumes.contains(&mount.name.as_str()),
                "{} mounts an undeclared volume {}",
                container.name,
                mount.name
            );
            assert!(Path::new(&mount.mount_path).is_absolute());
        }
        for port in &container.ports {
            assert!(port.container_port > 0);
            assert!(port.host_ip.as_deref().is_none_or(|ip| ip == "127.0.0.1"), "ports are published on loopback only");
            assert!(
                port.host_port.is_none() || port.host_ip.is_some(),
                "a host port without a host address binds everywhere"
            );
        }
        if let Some(security) = &container.security_context {
            assert!(security.run_as_user.is_some() || security.privileged.is_some());
        }
    }
}

#[test]
fn the_production_manifests_are_valid_kubernetes_objects_that_fit_together() {
    let description =
        kube::production("registry.example/workbench/rabbitmq:1", "registry.example/workbench/tasks:1", 3);
    let objects = parse(&kube::to_yaml(&kube::manifests(&description, Target::Cluster)));
    let kinds: Vec<(&str, &str, &str)> =
        objects.iter().map(|o| (o.api_version.as_str(), o.kind.as_str(), o.metadata.name.as_str())).collect();
    assert_eq!(
        kinds,
        [
            ("v1", "ConfigMap", "amqp-config"),
            ("v1", "Secret", "webhook-secrets"),
            ("v1", "Secret", "s3-keys"),
            ("v1", "Secret", "tasks-secrets"),
            ("apps/v1", "Deployment", "webhook"),
            ("v1", "Service", "amqp"),
            ("v1", "Service", "webhook"),
            ("apps/v1", "Deployment", "tasks"),
        ]
    );
    let named = |kind: &str| -> Vec<&str> {
        objects.iter().filter(|o| o.kind == kind).map(|o| o.metadata.name.as_str()).collect()
    };
    let (config_maps, secrets) = (named("ConfigMap"), named("Secret"));
    let mut deployments = BTreeMap::new();
    for object in &objects {
        assert_dns_label(&object.kind, &object.metadata.name);
        match object.kind.as_str() {
            "ConfigMap" => assert_keys("ConfigMap", object.data.clone().unwrap().into_keys()),
            "Secret" => {
                assert_eq!(object.kind_of_secret.as_deref(), Some("Opaque"));
                assert_keys("Secret", object.string_data.clone().unwrap().into_keys());
            }
            "Deployment" => {
                let deployment: DeploymentSpec = spec(object);
                for (key, value) in &deployment.selector.match_labels {
                    assert_eq!(
                        deployment.template.metadata.labels.get(key),
                        Some(value),
                        "the selector selects the template"
                    );
                }
                assert_eq!(object.metadata.labels, deployment.template.metadata.labels);
                check_pod(&object.metadata.name, &deployment.template.spec, &config_maps, &secrets);
                deployments.insert(object.metadata.name.clone(), deployment);
            }
            _ => {}
        }
    }
    for service in objects.iter().filter(|o| o.kind == "Service") {
        let service_spec: ServiceSpec = spec(service);
        let selected: Vec<&DeploymentSpec> = deployments
            .values()
            .filter(|d| service_spec.selector.iter().all(|(k, v)| d.template.metadata.labels.get(k) == Some(v)))
            .collect();
        assert_eq!(selected.len(), 1, "Service {} selects one Deployment", service.metadata.name);
        for port in &service_spec.ports {
            assert_eq!(port.protocol, "TCP");
            assert!(port.port > 0);
            let listening = selected[0].template.spec.containers.iter().flat_map(|c| &c.ports);
            assert!(
                listening.clone().any(|p| p.container_port == port.target_port),
                "Service {} targets port {}, where no container listens",
                service.metadata.name,
                port.target_port
            );
        }
    }
    // Cockpit's names and ports: the broker at amqp:5671, the webhook at webhook:80.
    let amqp: ServiceSpec = spec(objects.iter().find(|o| o.metadata.name == "amqp" && o.kind == "Service").unwrap());
    assert_eq!((amqp.ports[0].port, amqp.ports[0].target_port), (5671, 5671));
    let tasks = &deployments["tasks"];
    assert_eq!(tasks.replicas, 3);
    let worker = &tasks.template.spec.containers[0];
    assert_eq!(worker.image, "registry.example/workbench/tasks:1");
    assert!(worker.env.iter().any(|e| e.name == "AMQP_SERVER"), "workers find the broker by its Service");
    assert!(!worker.args.contains(&"--hostname".to_owned()), "each replica goes by its own name");
    assert!(worker.volume_mounts.iter().any(|m| m.mount_path == "/dev/kvm"));
    let broker = objects.iter().find(|o| o.kind == "ConfigMap").unwrap().data.clone().unwrap();
    assert_eq!(broker.keys().collect::<Vec<_>>(), ["definitions.json", "enabled_plugins", "rabbitmq.config"]);
    assert!(broker["rabbitmq.config"].contains("{ssl_listeners, [5671]}"));
}

#[test]
fn the_local_manifest_is_the_pod_the_podman_runtime_makes() {
    let description = kube::production("localhost/workbench/rabbitmq", "localhost/workbench/tasks", 2);
    let objects = parse(&kube::to_yaml(&kube::manifests(&description, Target::Podman)));
    assert_eq!(objects.len(), 1);
    assert_eq!((objects[0].api_version.as_str(), objects[0].kind.as_str()), ("v1", "Pod"));
    let pod: PodSpec = spec(&objects[0]);
    check_pod("the pod", &pod, &[], &[]);
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    let expected: Vec<&str> = description.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, expected);
    assert_eq!(names, ["rabbitmq", "webhook", "worker-1", "worker-2"]);
    assert!(pod.volumes.iter().all(|v| v.host_path.is_some()), "on this machine, everything comes from host paths");
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
}
