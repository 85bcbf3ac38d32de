//! A real Prometheus for `run-local --monitor`: Debian's `prometheus`, scraping the webhook,
//! every worker and RabbitMQ (its `rabbitmq_prometheus` plugin, per queue), and evaluating the
//! alert rules users deploy (`deploy/prometheus/alerts.yml`), under the job names those rules
//! expect. On the process runtime a child process with a data directory of the run's,
//! listening on 127.0.0.1 only; on podman a container of the pod (`crate::pod`) started with
//! the same arguments and configuration ([`args`], [`write_config`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::child::ProcessGroup;
use crate::client::Check;

/// Debian's Prometheus server (package `prometheus`, which also brings promtool).
pub const BINARY: &str = "/usr/bin/prometheus";

/// How long Prometheus may take to answer `/-/ready`.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// What Prometheus scrapes, by the job names of the alert rules.
#[derive(Debug, Clone)]
pub struct Targets {
    pub webhook: SocketAddr,
    pub workers: Vec<SocketAddr>,
    /// RabbitMQ's `rabbitmq_prometheus` plugin.
    pub rabbitmq: SocketAddr,
}

/// How it runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The alert rules file (`deploy/prometheus/alerts.yml`).
    pub rules: PathBuf,
    /// How often it scrapes and evaluates the rules.
    pub every: Duration,
    /// Every rule's `for:` replaced by this, for a test that wants to see an alert fire now.
    pub alerts_after: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error(
        "Prometheus is not installed ({BINARY} is missing): install the prometheus package (`cargo xtask` installs it)"
    )]
    NotInstalled,
    #[error("cannot {what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("the alert rules {} are not YAML of rule groups: {source}", path.display())]
    Rules { path: PathBuf, source: serde_norway::Error },
    #[error("{reason}; its log ({}) ends with:\n{tail}", log.display())]
    NotReady { reason: crate::client::TimedOut, log: PathBuf, tail: String },
}

/// A running Prometheus; dropping it stops it (the child process; a pod's goes with the pod).
pub struct Prometheus {
    address: SocketAddr,
    log: PathBuf,
    _process: Option<ProcessGroup>,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> PrometheusError {
    move |source| PrometheusError::Io { what, source }
}

impl Prometheus {
    /// Starts Prometheus on `address` (of 127.0.0.1) in `dir` (its configuration, rules, data
    /// and log) and returns once it is ready.
    pub async fn start(
        dir: &Path,
        address: SocketAddr,
        targets: &Targets,
        settings: &Settings,
    ) -> Result<Prometheus, PrometheusError> {
        if !Path::new(BINARY).exists() {
            return Err(PrometheusError::NotInstalled);
        }
        std::fs::create_dir_all(dir.join("data")).map_err(io(format!("create {}", dir.display())))?;
        write_config(dir, dir, targets, settings)?;
        let log = dir.join("prometheus.log");
        let output = std::fs::File::create(&log).map_err(io(format!("create {}", log.display())))?;
        let mut process = ProcessGroup::new();
        let mut command = std::process::Command::new(BINARY);
        command
            .args(args(dir, &dir.join("data"), &address.to_string()))
            .stdin(std::process::Stdio::null())
            .stdout(output.try_clone().map_err(io(format!("open {}", log.display())))?)
            .stderr(output);
        process.spawn(&mut command).map_err(io(format!("start {BINARY}")))?;
        let prometheus = Prometheus { address, log, _process: Some(process) };
        let what = format!("Prometheus answering http://{address}/-/ready");
        let ready = crate::client::wait_until(&what, READY_WITHIN, || async {
            Ok::<_, crate::client::TimedOut>(match ready(address).await {
                true => Check::Done(()),
                false => Check::NotYet(format!("{address} is not ready")),
            })
        })
        .await;
        match ready {
            Ok(()) => Ok(prometheus),
            Err(reason) => Err(PrometheusError::NotReady {
                reason,
                tail: crate::child::tail(&prometheus.log, 20),
                log: prometheus.log.clone(),
            }),
        }
    }

    /// The Prometheus of a pod, which started it, reached at `address` of 127.0.0.1; its log
    /// is saved with the pod's at `log`.
    pub fn in_pod(address: SocketAddr, log: PathBuf) -> Prometheus {
        Prometheus { address, log, _process: None }
    }

    /// Its web interface and API.
    pub fn url(&self) -> String {
        format!("http://{}/", self.address)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

/// Whether the Prometheus at `address` is ready to answer queries.
pub async fn ready(address: SocketAddr) -> bool {
    crate::client::answers(address, "/-/ready").await
}

/// The server's arguments: its configuration in `config_dir` (written by [`write_config`]),
/// its data in `data`, listening on `listen`, logging only what is wrong.
pub fn args(config_dir: &Path, data: &Path, listen: &str) -> Vec<String> {
    vec![
        format!("--config.file={}", config_dir.join(CONFIG).display()),
        format!("--storage.tsdb.path={}", data.display()),
        format!("--web.listen-address={listen}"),
        "--log.level=warn".into(),
    ]
}

/// The configuration file, in its directory.
const CONFIG: &str = "prometheus.yml";
/// The rules file, beside it.
const RULES: &str = "alerts.yml";

/// Writes the configuration (scraping `targets`) and the rules of `settings` into `dir`, which
/// Prometheus sees at `seen_at` (the same directory, or where a container mounts it).
pub fn write_config(dir: &Path, seen_at: &Path, targets: &Targets, settings: &Settings) -> Result<(), PrometheusError> {
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    let text = std::fs::read_to_string(&settings.rules).map_err(io(format!("read {}", settings.rules.display())))?;
    let rules = dir.join(RULES);
    std::fs::write(&rules, rules_text(&text, settings.alerts_after, &settings.rules)?)
        .map_err(io(format!("write {}", rules.display())))?;
    let config = dir.join(CONFIG);
    std::fs::write(&config, config_text(targets, settings.every, &seen_at.join(RULES)))
        .map_err(io(format!("write {}", config.display())))
}

/// The scrape jobs (name, metrics path): the webhook's, the workers', RabbitMQ's, named as the
/// alert rules expect; production's (`deploy/prometheus/kubernetes.yml`) are the same.
pub const JOBS: [(&str, &str); 3] = [
    ("workbench-webhook", "/metrics"),
    ("workbench-tasks", "/metrics"),
    // Per queue: the plugin's default endpoint aggregates queues away.
    ("rabbitmq", "/metrics/per-object"),
];

/// The scrape configuration: [`JOBS`], scraping `targets`.
fn config_text(targets: &Targets, every: Duration, rules: &Path) -> String {
    let [webhook, workers, rabbitmq] = JOBS;
    let job = |(name, path): (&str, &str), addresses: &[SocketAddr]| {
        serde_json::json!({
            "job_name": name,
            "metrics_path": path,
            "static_configs": [{ "targets": addresses.iter().map(ToString::to_string).collect::<Vec<_>>() }],
        })
    };
    let every = format!("{}ms", every.as_millis());
    let config = serde_json::json!({
        "global": { "scrape_interval": every, "evaluation_interval": every, "scrape_timeout": every },
        "rule_files": [rules.display().to_string()],
        "scrape_configs": [
            job(webhook, &[targets.webhook]),
            job(workers, &targets.workers),
            job(rabbitmq, &[targets.rabbitmq]),
        ],
    });
    serde_norway::to_string(&config).expect("JSON values are YAML")
}

/// The rules file as given, or with every rule's `for:` set to `after`.
fn rules_text(text: &str, after: Option<Duration>, path: &Path) -> Result<String, PrometheusError> {
    let Some(after) = after else { return Ok(text.to_owned()) };
    let invalid = |source| PrometheusError::Rules { path: path.to_owned(), source };
    let mut rules: serde_norway::Value = serde_norway::from_str(text).map_err(invalid)?;
    let groups = rules.get_mut("groups").and_then(|groups| groups.as_sequence_mut());
    for group in groups.into_iter().flatten() {
        let group_rules = group.get_mut("rules").and_then(|rules| rules.as_sequence_mut());
        for rule in group_rules.into_iter().flatten().filter_map(|rule| rule.as_mapping_mut()) {
            rule.insert("for".into(), format!("{}ms", after.as_millis()).into());
        }
    }
    serde_norway::to_string(&rules).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jobs_are_those_the_alert_rules_name() {
        let targets = Targets {
            webhook: "127.0.0.1:1".parse().unwrap(),
            workers: vec!["127.0.0.1:2".parse().unwrap(), "127.0.0.1:3".parse().unwrap()],
            rabbitmq: "127.0.0.1:4".parse().unwrap(),
        };
        let text = config_text(&targets, Duration::from_secs(1), Path::new("/r/alerts.yml"));
        let config: serde_norway::Value = serde_norway::from_str(&text).unwrap();
        let jobs: Vec<(&str, &str, Vec<&str>)> = config["scrape_configs"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|job| {
                let targets = job["static_configs"][0]["targets"].as_sequence().unwrap();
                (
                    job["job_name"].as_str().unwrap(),
                    job["metrics_path"].as_str().unwrap(),
                    targets.iter().map(|t| t.as_str().unwrap()).collect(),
                )
            })
            .collect();
        assert_eq!(
            jobs,
            [
                ("workbench-webhook", "/metrics", vec!["127.0.0.1:1"]),
                ("workbench-tasks", "/metrics", vec!["127.0.0.1:2", "127.0.0.1:3"]),
                ("rabbitmq", "/metrics/per-object", vec!["127.0.0.1:4"]),
            ]
        );
        let rules =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus/alerts.yml")).unwrap();
        assert!(rules.contains("up{job=\"workbench-tasks\"}"), "the worker-gone rule names another job");
    }

    #[test]
    fn a_test_can_make_every_alert_fire_at_once() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus/alerts.yml"));
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(rules_text(&text, None, path).unwrap(), text);
        let short = rules_text(&text, Some(Duration::from_secs(2)), path).unwrap();
        let rules: serde_norway::Value = serde_norway::from_str(&short).unwrap();
        let all = rules["groups"][0]["rules"].as_sequence().unwrap();
        assert!(all.len() >= 7);
        assert!(all.iter().all(|rule| rule["for"].as_str() == Some("2000ms")), "{short}");
    }
}
