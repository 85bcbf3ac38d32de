//! Prometheus in the deployment (`run-local --monitor`), for real, on both runtimes (a process
//! beside the services; a container in the pod): it scrapes the webhook,
//! every worker and RabbitMQ's own plugin, per queue; the webhook's status page links to it;
//! every query of the Grafana dashboard (deploy/grafana/workbench.json) returns data once a
//! pull request has been tested; and when the workers go, the alert rules users deploy
//! (deploy/prometheus/alerts.yml) fire `WorkbenchNoWorker` in Prometheus' own API, its `for:`
//! shortened for the test.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use local::client::{Check, TimedOut, wait_until};
use local::deployment::{Binaries, Options, Runtime};
use local::{Deployment, prometheus};

/// Nothing to report, for `Deployment::start`.
struct Quiet;

impl local::deployment::Progress for Quiet {
    fn start(&self, _: &str) -> usize {
        0
    }
    fn done(&self, _: usize, _: bool) {}
}

/// GET `path` of Prometheus' API: its `data`.
async fn api(prometheus: SocketAddr, path: &str) -> serde_json::Value {
    let answer = local::client::get(prometheus, path).await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&answer.text()).unwrap();
    assert_eq!(body["status"], "success", "{path}: {body}");
    body["data"].clone()
}

/// What PromQL `query` returns now.
async fn query(prometheus: SocketAddr, query: &str) -> Vec<serde_json::Value> {
    let encoded = percent_encoding::utf8_percent_encode(query, percent_encoding::NON_ALPHANUMERIC);
    let data = api(prometheus, &format!("/api/v1/query?query={encoded}")).await;
    data["result"].as_array().cloned().unwrap_or_default()
}

/// The alerts by name and state.
async fn alerts(prometheus: SocketAddr) -> BTreeMap<String, String> {
    let data = api(prometheus, "/api/v1/alerts").await;
    let alerts = data["alerts"].as_array().cloned().unwrap_or_default();
    alerts
        .iter()
        .map(|alert| {
            (
                alert["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                alert["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// One deployment at a time: two side by side would be slow on these machines.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_every_process_and_fires_the_worker_alert_when_workers_go() {
    let _one = ONE_AT_A_TIME.lock().await;
    monitored(Runtime::Process).await;
}

#[cfg_attr(not(ci), ignore = "needs podman: cargo xtask ci installs it and runs this")]
#[tokio::test(flavor = "multi_thread")]
async fn prometheus_in_the_pod_scrapes_every_container_and_fires_the_worker_alert_when_workers_go() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let podman = local::PodmanService::start(dir.path()).await.unwrap_or_else(|e| panic!("{e}"));
    local::images::ensure_base(&podman).unwrap();
    local::images::build_rabbitmq(&podman, false).unwrap();
    local::images::build_tasks(&podman, &Binaries::of_test_build(), false).unwrap();
    local::images::build_prometheus(&podman, false).unwrap();
    drop(podman);
    monitored(Runtime::Podman {
        rabbitmq_image: local::images::RABBITMQ.into(),
        tasks_image: local::images::TASKS.into(),
        via_kube: false,
    })
    .await;
}

async fn monitored(runtime: Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let options = Options {
        binaries: Binaries::of_test_build(),
        secrets: None,
        workers: 2,
        fixtures: root.join("fixtures"),
        real_github_token: None,
        runtime,
        hold_failed: false,
        monitor: Some(prometheus::Settings {
            rules: root.join("deploy/prometheus/alerts.yml"),
            every: Duration::from_secs(1),
            alerts_after: Some(Duration::from_secs(3)),
        }),
    };
    let mut deployment = Deployment::start(dir.path(), &options, &Quiet).await.unwrap();
    let address = deployment.prometheus().expect("Prometheus runs").address();

    // Every target up, under the job names the rules use.
    let targets = wait_until("every scrape target up", Duration::from_secs(60), || async {
        let data = api(address, "/api/v1/targets").await;
        let active = data["activeTargets"].as_array().cloned().unwrap_or_default();
        let up: Vec<(String, String)> = active
            .iter()
            .map(|t| {
                (t["labels"]["job"].as_str().unwrap_or("").to_owned(), t["health"].as_str().unwrap_or("").to_owned())
            })
            .collect();
        Ok::<_, TimedOut>(match up.len() == 4 && up.iter().all(|(_, health)| health == "up") {
            true => Check::Done(up),
            false => Check::NotYet(format!("{up:?}")),
        })
    })
    .await
    .unwrap();
    let mut jobs: Vec<&str> = targets.iter().map(|(job, _)| job.as_str()).collect();
    jobs.sort_unstable();
    assert_eq!(jobs, ["rabbitmq", "workbench-tasks", "workbench-tasks", "workbench-webhook"]);

    // RabbitMQ's metrics per queue, which the queue rules read: both workers consume `public`.
    let consumers = wait_until("the consumers of public, per queue", Duration::from_secs(30), || async {
        let result = query(address, r#"rabbitmq_queue_consumers{queue="public"}"#).await;
        Ok::<_, TimedOut>(match result.first().and_then(|sample| sample["value"][1].as_str()) {
            Some(value) => Check::Done(value.to_owned()),
            None => Check::NotYet(format!("{result:?}")),
        })
    })
    .await
    .unwrap();
    assert_eq!(consumers, "2");

    // The status page links to it.
    let status = local::client::get(deployment.webhook, "/status").await.unwrap().text();
    let url = deployment.prometheus().unwrap().url();
    assert!(status.contains(&format!("<a href=\"{url}alerts\">alerts</a>")), "{status}");

    // The dashboard's queries, against what a tested pull request leaves in the metrics.
    // And the broker with its metrics plugin still lets nobody else in, and listens only where
    // it should: for AMQP over TLS, and for the plugin's HTTP on 127.0.0.1.
    for scenario in ["pr-success", "amqp-refusals"] {
        let ran = local::scenario::run(scenario, &deployment).await;
        assert!(matches!(ran, Ok(local::scenario::Ran::Passed)), "{scenario}: {ran:?}");
    }
    let dashboard: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("deploy/grafana/workbench.json")).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 5, "{dashboard}");
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().replace("$__rate_interval", "1m");
            let what = format!("data for {:?} ({expr})", panel["title"]);
            wait_until(&what, Duration::from_secs(30), || async {
                let result = query(address, &expr).await;
                Ok::<_, TimedOut>(match result.is_empty() {
                    false => Check::Done(()),
                    true => Check::NotYet("no series".into()),
                })
            })
            .await
            .unwrap();
        }
    }

    assert_ne!(alerts(address).await.get("WorkbenchNoWorker").map(String::as_str), Some("firing"));
    deployment.stop_workers().await.unwrap();
    wait_until("WorkbenchNoWorker firing", Duration::from_secs(60), || async {
        let alerts = alerts(address).await;
        Ok::<_, TimedOut>(match alerts.get("WorkbenchNoWorker").map(String::as_str) {
            Some("firing") => Check::Done(()),
            _ => Check::NotYet(format!("{alerts:?}")),
        })
    })
    .await
    .unwrap();
}
