//! The Kubernetes manifests: every object of the YAML stream reads back into the Kubernetes
//! API's types unchanged, and the objects fit together (mounts name declared volumes, Secrets
//! and ConfigMaps exist with the keys volumes take from them, selectors select, Services point
//! at container ports); the production form is hardened as `checkov` asks, and gives each
//! container only its own secrets. `run-local --via-kube` shows podman accepts the local form,
//! scenario by scenario; `cargo xtask ci` runs checkov on the production form.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Pod, PodSpec, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use local::kube::{self, Manifest, Target};
use local::secrets::Service as SecretsOf;
use serde::Deserialize;

/// Reads a YAML stream back into the API's types, by kind, and checks that each writes back
/// as it was read.
fn parse(yaml: &str) -> Vec<Manifest> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|document| {
            let value = serde_norway::Value::deserialize(document).unwrap();
            let kind = value["kind"].as_str().unwrap().to_owned();
            let typed = |value: serde_norway::Value| match kind.as_str() {
                "Namespace" => Manifest::Namespace(serde_norway::from_value::<Namespace>(value).unwrap()),
                "Pod" => Manifest::Pod(serde_norway::from_value::<Pod>(value).unwrap()),
                "Deployment" => Manifest::Deployment(serde_norway::from_value::<Deployment>(value).unwrap()),
                "Service" => Manifest::Service(serde_norway::from_value::<Service>(value).unwrap()),
                "ConfigMap" => Manifest::ConfigMap(serde_norway::from_value::<ConfigMap>(value).unwrap()),
                "Secret" => Manifest::Secret(serde_norway::from_value::<Secret>(value).unwrap()),
                "NetworkPolicy" => Manifest::NetworkPolicy(serde_norway::from_value::<NetworkPolicy>(value).unwrap()),
                other => panic!("unexpected kind {other}"),
            };
            let manifest = typed(value.clone());
            assert_eq!(serde_norway::to_value(&manifest).unwrap(), value, "{kind} reads back unchanged");
            manifest
        })
        .collect()
}

fn assert_dns_label(what: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    assert!(ok, "{what} {name:?} is not a DNS label");
}

/// The keys of each Secret and ConfigMap, by name.
type Keys = BTreeMap<String, Vec<String>>;

/// Checks one pod template against the Secrets and ConfigMaps of its stream.
fn check_pod(owner: &str, pod: &PodSpec, config_maps: &Keys, secrets: &Keys) {
    let volumes = pod.volumes.clone().unwrap_or_default();
    for volume in &volumes {
        assert_dns_label(&format!("volume of {owner}"), &volume.name);
        let sources = [
            volume.host_path.is_some(),
            volume.secret.is_some(),
            volume.config_map.is_some(),
            volume.empty_dir.is_some(),
        ];
        assert_eq!(sources.iter().filter(|s| **s).count(), 1, "volume {} of {owner} has one source", volume.name);
        if let Some(host_path) = &volume.host_path {
            assert!(Path::new(&host_path.path).is_absolute(), "{}", host_path.path);
            let kind = host_path.type_.as_deref().unwrap_or_default();
            assert!(["Directory", "File", "Socket", "CharDevice"].contains(&kind), "{kind}");
        }
        if let Some(secret) = &volume.secret {
            let name = secret.secret_name.clone().unwrap();
            let keys = secrets.get(&name).unwrap_or_else(|| panic!("{owner} mounts a missing Secret {name}"));
            for item in secret.items.iter().flatten() {
                assert!(
                    keys.contains(&item.key),
                    "{owner} takes {} from Secret {name}, which has no such key",
                    item.key
                );
            }
        }
        if let Some(config_map) = &volume.config_map {
            assert!(
                config_maps.contains_key(&config_map.name),
                "{owner} mounts a missing ConfigMap {}",
                config_map.name
            );
        }
    }
    if let Some(hostname) = &pod.hostname {
        assert_dns_label("hostname", hostname);
    }
    let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    for container in &pod.containers {
        assert_dns_label(&format!("container of {owner}"), &container.name);
        assert!(container.image.as_deref().is_some_and(|image| !image.is_empty()));
        for env in container.env.iter().flatten() {
            let ok = env.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            assert!(ok && !env.name.starts_with(|c: char| c.is_ascii_digit()), "env {}", env.name);
            assert!(env.value.is_some() != env.value_from.is_some(), "env {} has one value", env.name);
        }
        for mount in container.volume_mounts.iter().flatten() {
            assert!(
                names.contains(&mount.name.as_str()),
                "{} mounts an undeclared volume {}",
                container.name,
                mount.name
            );
            assert!(Path::new(&mount.mount_path).is_absolute());
        }
        for port in container.ports.iter().flatten() {
            assert!(port.container_port > 0);
            assert!(port.host_ip.as_deref().is_none_or(|ip| ip == "127.0.0.1"), "ports are published on loopback only");
            assert!(
                port.host_port.is_none() || port.host_ip.is_some(),
                "a host port without a host address binds everywhere"
            );
        }
    }
}

fn production(kvm: bool) -> Vec<Manifest> {
    let description =
        kube::production("registry.example/workbench/rabbitmq:1", "registry.example/workbench/tasks:1", 3, kvm);
    parse(&kube::to_yaml(&kube::manifests(&description, Target::Cluster)))
}

fn name_of(manifest: &Manifest) -> (&'static str, String) {
    match manifest {
        Manifest::Namespace(o) => ("Namespace", o.metadata.name.clone().unwrap()),
        Manifest::Pod(o) => ("Pod", o.metadata.name.clone().unwrap()),
        Manifest::Deployment(o) => ("Deployment", o.metadata.name.clone().unwrap()),
        Manifest::Service(o) => ("Service", o.metadata.name.clone().unwrap()),
        Manifest::ConfigMap(o) => ("ConfigMap", o.metadata.name.clone().unwrap()),
        Manifest::Secret(o) => ("Secret", o.metadata.name.clone().unwrap()),
        Manifest::NetworkPolicy(o) => ("NetworkPolicy", o.metadata.name.clone().unwrap()),
    }
}

fn deployments(objects: &[Manifest]) -> BTreeMap<String, Deployment> {
    objects
        .iter()
        .filter_map(|o| match o {
            Manifest::Deployment(d) => Some((d.metadata.name.clone().unwrap(), d.clone())),
            _ => None,
        })
        .collect()
}

fn pod_of(deployment: &Deployment) -> PodSpec {
    deployment.spec.clone().unwrap().template.spec.unwrap()
}

fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
    pod.containers.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no container {name}"))
}

#[test]
fn the_production_manifests_are_kubernetes_objects_that_fit_together() {
    let objects = production(true);
    let kinds: Vec<(&str, String)> = objects.iter().map(name_of).collect();
    let expected = [
        ("Namespace", "workbench"),
        ("ConfigMap", "amqp-config"),
        ("Secret", "webhook-secrets"),
        ("Secret", "s3-keys"),
        ("Secret", "tasks-secrets"),
        ("Deployment", "webhook"),
        ("Service", "amqp"),
        ("Service", "webhook"),
        ("Service", "rabbitmq-metrics"),
        ("NetworkPolicy", "webhook"),
        ("Deployment", "tasks"),
        ("Service", "tasks-metrics"),
        ("NetworkPolicy", "tasks"),
    ];
    assert_eq!(kinds, expected.map(|(kind, name)| (kind, name.to_owned())));
    let (mut config_maps, mut secrets) = (Keys::new(), Keys::new());
    for object in &objects {
        let (kind, name) = name_of(object);
        assert_dns_label(kind, &name);
        match object {
            Manifest::ConfigMap(o) => {
                config_maps.insert(name, o.data.clone().unwrap().into_keys().collect());
            }
            Manifest::Secret(o) => {
                assert_eq!(o.type_.as_deref(), Some("Opaque"));
                secrets.insert(name, o.string_data.clone().unwrap().into_keys().collect());
            }
            _ => {}
        }
    }
    let deployments = deployments(&objects);
    for (name, deployment) in &deployments {
        let spec = deployment.spec.clone().unwrap();
        let labels = spec.template.metadata.clone().unwrap().labels.unwrap();
        for (key, value) in spec.selector.match_labels.clone().unwrap() {
            assert_eq!(labels.get(&key), Some(&value), "the selector of {name} selects its template");
        }
        assert_eq!(deployment.metadata.namespace.as_deref(), Some(kube::NAMESPACE));
        check_pod(name, &pod_of(deployment), &config_maps, &secrets);
    }
    for object in &objects {
        let Manifest::Service(service) = object else { continue };
        let spec = service.spec.clone().unwrap();
        let selector = spec.selector.clone().unwrap();
        let selected: Vec<&Deployment> = deployments
            .values()
            .filter(|d| {
                let labels = d.spec.clone().unwrap().template.metadata.unwrap().labels.unwrap();
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .collect();
        assert_eq!(selected.len(), 1, "Service {:?} selects one Deployment", service.metadata.name);
        for port in spec.ports.unwrap() {
            let Some(IntOrString::Int(target)) = port.target_port else { panic!("a numeric target port") };
            let listening = pod_of(selected[0])
                .containers
                .iter()
                .flat_map(|c| c.ports.clone().unwrap_or_default())
                .collect::<Vec<_>>();
            assert!(
                listening.iter().any(|p| p.container_port == target),
                "Service targets {target}, where nothing listens"
            );
        }
    }
    // Cockpit's names and ports: the broker at amqp:5671, the webhook at webhook:80.
    let amqp = objects.iter().find_map(|o| match o {
        Manifest::Service(s) if s.metadata.name.as_deref() == Some("amqp") => Some(s.spec.clone().unwrap()),
        _ => None,
    });
    let port = &amqp.unwrap().ports.unwrap()[0];
    assert_eq!((port.port, port.target_port.clone()), (5671, Some(IntOrString::Int(5671))));
    let tasks = &deployments["tasks"];
    assert_eq!(tasks.spec.clone().unwrap().replicas, Some(3));
    let worker = container(&pod_of(tasks), "tasks").clone();
    assert_eq!(worker.image.as_deref(), Some("registry.example/workbench/tasks:1"));
    let env: Vec<String> = worker.env.clone().unwrap().into_iter().map(|e| e.name).collect();
    assert!(env.contains(&"AMQP_SERVER".to_owned()), "workers find the broker by its Service");
    let args = worker.args.clone().unwrap();
    assert!(!args.contains(&"--hostname".to_owned()), "each replica goes by its own name");
    assert!(args.windows(2).any(|a| a == ["--work-dir", "/var/lib/workbench/jobs/$(POD_NAME)"]), "{args:?}");
    assert!(env.contains(&"POD_NAME".to_owned()), "each replica works in a directory of its own");
    assert!(worker.volume_mounts.iter().flatten().any(|m| m.mount_path == "/dev/kvm"));
    let broker = &config_maps["amqp-config"];
    assert_eq!(broker, &["definitions.json", "enabled_plugins", "rabbitmq.config"]);
}

/// The production scrape configuration (deploy/prometheus/kubernetes.yml) has the jobs of the
/// local one, and each reaches, through a Service of the manifests, the container it names:
/// the webhook's, every tasks replica's (a headless Service), RabbitMQ's metrics plugin.
#[test]
fn production_prometheus_scrapes_each_service_through_the_manifests() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus/kubernetes.yml");
    let config: serde_norway::Value = serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let objects = production(true);
    let deployments = deployments(&objects);
    let services: BTreeMap<String, k8s_openapi::api::core::v1::ServiceSpec> = objects
        .iter()
        .filter_map(|o| match o {
            Manifest::Service(s) => Some((s.metadata.name.clone().unwrap(), s.spec.clone().unwrap())),
            _ => None,
        })
        .collect();
    let jobs = config["scrape_configs"].as_sequence().unwrap();
    let names: Vec<(&str, &str)> = jobs
        .iter()
        .map(|job| (job["job_name"].as_str().unwrap(), job["metrics_path"].as_str().unwrap_or("/metrics")))
        .collect();
    assert_eq!(names, local::prometheus::JOBS);
    let containers = [("workbench-webhook", "webhook"), ("workbench-tasks", "tasks"), ("rabbitmq", "rabbitmq")];
    for (job, (name, _)) in jobs.iter().zip(names) {
        // `<service>.workbench.svc.cluster.local:<port>`, by address or by DNS records.
        let (host, port, headless) = match job["dns_sd_configs"].as_sequence() {
            Some(dns) => (dns[0]["names"][0].as_str().unwrap().to_owned(), dns[0]["port"].as_u64().unwrap(), true),
            None => {
                let target = job["static_configs"][0]["targets"][0].as_str().unwrap();
                let (host, port) = target.rsplit_once(':').unwrap();
                (host.to_owned(), port.parse().unwrap(), false)
            }
        };
        let service = host
            .strip_suffix(&format!(".{}.svc.cluster.local", kube::NAMESPACE))
            .unwrap_or_else(|| panic!("job {name}: {host} is not a Service of namespace {}", kube::NAMESPACE));
        let spec = services.get(service).unwrap_or_else(|| panic!("job {name}: no Service {service}"));
        assert_eq!(spec.cluster_ip.as_deref() == Some("None"), headless, "job {name}: Service {service}");
        let service_port = spec.ports.clone().unwrap().into_iter().find(|p| i64::from(p.port) == port as i64);
        let Some(IntOrString::Int(target)) = service_port.and_then(|p| p.target_port) else {
            panic!("job {name}: Service {service} has no port {port}")
        };
        let app = &spec.selector.clone().unwrap()["app"];
        let container_name = containers.iter().find(|(job, _)| *job == name).unwrap().1;
        let listening = container(&pod_of(&deployments[app]), container_name).ports.clone().unwrap();
        assert!(
            listening.iter().any(|p| p.container_port == target),
            "job {name}: Service {service} leads to port {target}, where {container_name} does not listen"
        );
    }
}

/// Each container gets only its own secrets from `webhook-secrets`, at Cockpit's path.
#[test]
fn each_service_mounts_only_its_own_secrets() {
    let objects = production(true);
    let deployments = deployments(&objects);
    for (deployment, name, service) in [
        ("webhook", "rabbitmq", SecretsOf::Broker),
        ("webhook", "webhook", SecretsOf::Webhook),
        ("tasks", "tasks", SecretsOf::Worker),
    ] {
        let pod = pod_of(&deployments[deployment]);
        let mount = container(&pod, name)
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == "/run/secrets/webhook")
            .unwrap()
            .clone();
        let volume = pod.volumes.unwrap().into_iter().find(|v| v.name == mount.name).unwrap();
        let secret = volume.secret.unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("webhook-secrets"));
        let keys: Vec<String> = secret.items.unwrap().into_iter().map(|item| item.key).collect();
        assert_eq!(keys, service.files(), "{name}");
        assert_eq!(secret.default_mode, Some(0o440), "{name}: readable by the pod's group only");
    }
    assert!(!SecretsOf::Webhook.files().contains(&"amqp-server.key"));
    assert!(!SecretsOf::Worker.files().contains(&".config--github-webhook-token"));
}

/// What checkov asks, held by construction: no service-account token, a seccomp profile, bounds
/// and probes for every container, no capabilities, non-root and read-only where the service
/// allows; the workers privileged only when the target has KVM.
#[test]
fn the_production_pods_are_hardened_and_privileged_only_for_kvm() {
    for kvm in [true, false] {
        let deployments = deployments(&production(kvm));
        for (name, deployment) in &deployments {
            let pod = pod_of(deployment);
            assert_eq!(pod.automount_service_account_token, Some(false), "{name}");
            let security = pod.security_context.clone().unwrap();
            assert_eq!(security.seccomp_profile.unwrap().type_, "RuntimeDefault");
            for container in &pod.containers {
                let what = format!("{name}/{}", container.name);
                let resources = container.resources.clone().unwrap();
                for bound in [resources.requests.unwrap(), resources.limits.unwrap()] {
                    assert_eq!(bound.keys().collect::<Vec<_>>(), ["cpu", "memory"], "{what}");
                }
                assert!(container.readiness_probe.is_some() && container.liveness_probe.is_some(), "{what}");
                let context = container.security_context.clone().unwrap();
                assert_eq!(context.capabilities.unwrap().drop, Some(vec!["ALL".to_owned()]), "{what}");
                assert_eq!(context.read_only_root_filesystem, Some(true), "{what}");
                if container.name == "tasks" {
                    assert_eq!(context.privileged.unwrap_or(false), kvm, "{what}");
                    assert_eq!(context.allow_privilege_escalation, (!kvm).then_some(false), "{what}");
                    let annotations = deployment.metadata.annotations.clone().unwrap();
                    let skips_privileged = annotations.values().any(|skip| skip.starts_with("CKV_K8S_16="));
                    assert_eq!(skips_privileged, kvm, "the privileged check is skipped only where it fails");
                } else {
                    assert_eq!(
                        (context.run_as_non_root, context.allow_privilege_escalation),
                        (Some(true), Some(false)),
                        "{what}"
                    );
                    assert!(context.run_as_user.unwrap() >= 10000, "{what}");
                }
            }
        }
    }
}

#[test]
fn the_local_manifest_is_the_pod_the_podman_runtime_makes() {
    let description = kube::production("localhost/workbench/rabbitmq", "localhost/workbench/tasks", 2, true);
    let objects = parse(&kube::to_yaml(&kube::manifests(&description, Target::Podman)));
    let [Manifest::Pod(pod)] = objects.as_slice() else { panic!("one pod") };
    let spec = pod.spec.clone().unwrap();
    check_pod("the pod", &spec, &Keys::new(), &Keys::new());
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    let expected: Vec<&str> = description.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, expected);
    assert_eq!(names, ["rabbitmq", "webhook", "worker-1", "worker-2"]);
    let volumes = spec.volumes.clone().unwrap();
    assert!(volumes.iter().all(|v| v.host_path.is_some()), "on this machine, everything comes from host paths");
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
}

/// The production form of RabbitMQ works as its manifest runs it: podman made to do what the
/// cluster would (the user and group, a read-only root, no capability, no privilege escalation,
/// the environment, an empty writable directory, the ConfigMap and the broker's Secret keys
/// readable by the group only), and a client of the CA logs in over TLS.
#[cfg_attr(not(ci), ignore = "needs podman: cargo xtask ci installs it and runs this")]
#[tokio::test(flavor = "multi_thread")]
async fn container_rabbitmq_runs_as_its_production_manifest_says() {
    let dir = tempfile::tempdir().unwrap();
    let podman =
        local::PodmanService::start(&dir.path().join("podman")).await.expect("podman (cargo xtask ci installs it)");
    local::images::ensure_base(&podman).unwrap();
    local::images::build_rabbitmq(&podman, false).unwrap();
    let deployments = deployments(&production(false));
    let pod = pod_of(&deployments["webhook"]);
    let rabbitmq = container(&pod, "rabbitmq");
    let security = rabbitmq.security_context.clone().unwrap();
    let group = pod.security_context.clone().unwrap().fs_group.unwrap();
    let (secrets, _) = local::secrets::generate(&dir.path().join("secrets"), false).unwrap();

    let mut command = podman.command();
    command.args(["run", "--detach", "--rm", "--publish", "127.0.0.1::5671", "--publish", "127.0.0.1::15692"]);
    command.arg(format!("--user={}:{group}", security.run_as_user.unwrap()));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    command.arg("--read-only");
    assert_eq!(security.capabilities.clone().unwrap().drop, Some(vec!["ALL".to_owned()]));
    command.args(["--cap-drop=ALL", "--security-opt=no-new-privileges"]);
    for env in rabbitmq.env.clone().unwrap_or_default() {
        command.arg(format!("--env={}={}", env.name, env.value.unwrap()));
    }
    for mount in rabbitmq.volume_mounts.clone().unwrap() {
        let volume = pod.volumes.clone().unwrap().into_iter().find(|v| v.name == mount.name).unwrap();
        let host = dir.path().join(&mount.name);
        std::fs::create_dir_all(&host).unwrap();
        use std::os::unix::fs::PermissionsExt;
        if volume.empty_dir.is_some() {
            std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o1777)).unwrap();
        } else {
            // What the kubelet writes: the keys, owned by the pod's group, with the volume's mode.
            let files: Vec<(String, Vec<u8>)> = match (&volume.config_map, &volume.secret) {
                (Some(_), _) => {
                    local::pod::broker_config(true).into_iter().map(|(n, t)| (n.to_owned(), t.into_bytes())).collect()
                }
                (_, Some(secret)) => secret
                    .items
                    .clone()
                    .unwrap()
                    .into_iter()
                    .map(|item| (item.path, std::fs::read(secrets.webhook_dir().join(&item.key)).unwrap()))
                    .collect(),
                _ => panic!("volume {} of RabbitMQ", mount.name),
            };
            let mode =
                volume.config_map.map(|c| c.default_mode).or(volume.secret.map(|s| s.default_mode)).flatten().unwrap();
            for (name, bytes) in files {
                let path = host.join(name);
                std::fs::write(&path, bytes).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode as u32)).unwrap();
                rustix::fs::chown(&path, None, rustix::fs::Gid::from_raw(group as u32).into()).unwrap();
            }
        }
        command.arg(format!("--volume={}:{}", host.display(), mount.mount_path));
    }
    // The image built here, never pulled (the manifest names the registry's).
    let output = command.args(["--pull=never", local::images::RABBITMQ]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let published = |port: &str| -> u16 {
        let output = podman.command().args(["port", &id, port]).output().unwrap();
        String::from_utf8_lossy(&output.stdout).trim().rsplit(':').next().unwrap().parse().unwrap()
    };
    let port = published("5671");
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], published("15692")));
    let config = amqp::Config::new(amqp::Address::Tls { host: "127.0.0.1".into(), port }, &secrets.webhook_dir());
    let logged_in = local::client::wait_until("a login to RabbitMQ", std::time::Duration::from_secs(90), || async {
        Ok::<_, local::client::TimedOut>(match amqp::Session::connect(&config).await {
            Ok(session) => local::client::Check::Done(session),
            Err(err) => local::client::Check::NotYet(err.to_string()),
        })
    });
    let logged_in = logged_in.await;
    // Its metrics, per object, for the Prometheus of deploy/prometheus/kubernetes.yml.
    let scraped = local::client::get(metrics, "/metrics/per-object").await.map(|answer| answer.text());
    let logs = podman.command().args(["logs", &id]).output().unwrap();
    let _ = podman.command().args(["rm", "--force", "--time=0", &id]).output();
    let logs = String::from_utf8_lossy(&[logs.stdout, logs.stderr].concat()).into_owned();
    logged_in.unwrap_or_else(|err| panic!("{err}\n{logs}"));
    let scraped = scraped.unwrap_or_else(|err| panic!("no metrics on port 15692: {err}\n{logs}"));
    assert!(scraped.contains("rabbitmq_erlang_uptime_seconds"), "{scraped}");
}
