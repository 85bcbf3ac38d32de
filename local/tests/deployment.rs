//! The whole deployment on the process runtime, from the workspace's service binaries: every
//! scenario passes, so does the real GitHub mode's scan of a pull request (against the mock),
//! and dropping the deployment leaves no process and no listening port; and on the hosts
//! runtime, every scenario passes with the services on hosts of their own.

#[path = "support/browser.rs"]
mod browser;

use std::path::{Path, PathBuf};

use local::Deployment;
use local::deployment::{Binaries, Options, Progress, Runtime};
use local::scenario::{self, Ran};

/// Records the steps and whether each succeeded.
#[derive(Default)]
struct Steps(std::sync::Mutex<Vec<(String, Option<bool>)>>);

impl Progress for Steps {
    fn start(&self, step: &str) -> usize {
        let mut steps = self.0.lock().unwrap();
        steps.push((step.to_owned(), None));
        steps.len() - 1
    }
    fn done(&self, step: usize, ok: bool) {
        self.0.lock().unwrap()[step].1 = Some(ok);
    }
}

/// Two workers on `runtime`, from the test build's binaries.
fn options(runtime: Runtime) -> Options {
    let binaries = Binaries::of_test_build();
    for binary in [&binaries.webhook, &binaries.tasks] {
        assert!(binary.is_file(), "{} is missing: build the workspace first (cargo build)", binary.display());
    }
    Options {
        binaries,
        secrets: None,
        workers: 2,
        fixtures: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures"),
        real_github_token: None,
        runtime,
        hold_failed: false,
        monitor: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_scenario_passes_and_teardown_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(Runtime::Process);
    let steps = Steps::default();
    let deployment = Deployment::start(dir.path(), &options, &steps).await.unwrap();
    let mut reported = steps.0.into_inner().unwrap();
    // Independent steps start together; the workers and the webhook wait for the broker.
    reported[1..4].sort();
    reported[4..].sort();
    let ok = |name: &str| (name.to_owned(), Some(true));
    assert_eq!(
        reported,
        [
            ok("generating fake secrets"),
            ok("starting RabbitMQ (TLS only, certificate login)"),
            ok("starting S3 (HTTPS, buckets logs and images)"),
            ok("starting the mock GitHub"),
            ok("starting 2 tasks worker(s)"),
            ok("starting the webhook"),
        ]
    );
    let mut recorded = Vec::new();
    for name in scenario::ALL {
        let (ran, deliveries) = scenario::run_recorded(name, &deployment).await;
        assert!(matches!(ran, Ok(Ran::Passed | Ran::Skipped(_))), "scenario {name}: {ran:?}");
        recorded.push((name, ran.unwrap(), deliveries));
    }
    the_report_in_a_browser_shows_every_scenario_and_a_timeline(&deployment, &recorded).await;
    // The real GitHub mode's code path, against the mock.
    deployment.github.open_pull("workbench-ci/demo", 4, "Scanned by number", "workbench-ci").unwrap();
    let within = std::time::Duration::from_secs(120);
    let statuses = scenario::scan_pull_request(&deployment, "workbench-ci/demo", 4, within).await.unwrap();
    let states: Vec<(&str, &str)> = statuses.iter().map(|s| (s.context.as_str(), s.state.as_str())).collect();
    assert_eq!(states, [("unit-tests", "success")]);

    let unknown = scenario::run("no-such-scenario", &deployment).await.unwrap_err().to_string();
    assert!(
        unknown.starts_with("no scenario \"no-such-scenario\"; the scenarios are queue, amqp-refusals, s3,"),
        "{unknown}"
    );

    let pids = deployment.process_ids();
    assert!(pids.len() >= 4, "broker, webhook and two workers run: {pids:?}");
    let endpoints = deployment.endpoints();
    let ports: Vec<String> = [&endpoints.amqp, &endpoints.webhook, &endpoints.github_api, &endpoints.s3]
        .iter()
        .map(|url| url.trim_end_matches('/').rsplit(':').next().unwrap().to_owned())
        .collect();
    drop(deployment);
    // Killed, and ended; one its parent died under is reaped by init a moment later.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    for pid in pids {
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            assert!(std::time::Instant::now() < deadline, "process {pid} outlived the deployment: {state}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    assert_no_secret_in(dir.path(), &dir.path().join("secrets"));
    // The in-process servers close their listeners as their tasks end, just after the drop.
    for port in ports {
        while std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).is_ok() {
            assert!(std::time::Instant::now() < deadline, "port {port} still answers after teardown");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// The hosts runtime: every scenario passes with the webhook and each worker on a host of its
/// own (a network namespace, not this process's), finding the broker by its host's name; the
/// drop leaves no process and no namespace.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(ci), ignore = "needs root for network namespaces: cargo xtask ci runs it")]
async fn on_hosts_every_scenario_passes_and_teardown_leaves_no_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(Runtime::Hosts);
    let deployment = Deployment::start(dir.path(), &options, &Steps::default()).await.unwrap();
    for name in scenario::ALL {
        let ran = scenario::run(name, &deployment).await;
        assert!(matches!(ran, Ok(Ran::Passed | Ran::Skipped(_))), "scenario {name}: {ran:?}");
    }
    let net = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let ours = net(std::process::id());
    // A process that has just ended has no namespace left to read.
    let on_a_host = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|ns| ns != ours);
    let list_on_hosts = || -> Vec<(u32, String)> {
        let pids = deployment.process_ids().into_iter().filter(|&pid| on_a_host(pid));
        pids.map(|pid| (pid, std::fs::read_to_string(format!("/proc/{pid}/environ")).unwrap_or_default())).collect()
    };
    // The webhook and both workers, each in a namespace of its own, told the broker is
    // `amqp:5671`; a job's process ends just after its final status, which its scenario saw.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut on_hosts = list_on_hosts();
    while on_hosts.len() > 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        on_hosts = list_on_hosts();
    }
    let pids = deployment.process_ids();
    assert_eq!(on_hosts.len(), 3, "{on_hosts:?}");
    assert!(on_hosts.iter().all(|(_, env)| env.split('\0').any(|v| v == "AMQP_SERVER=amqp:5671")), "{on_hosts:?}");
    let namespaces: std::collections::BTreeSet<_> = on_hosts.iter().map(|(pid, _)| net(*pid)).collect();
    assert_eq!(namespaces.len(), 3, "one host each");
    let id = dir.path().file_name().unwrap().to_string_lossy().into_owned();
    assert!(local::hosts::leftovers().iter().any(|name| name.contains(&id)));
    drop(deployment);
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "process {pid} outlived the deployment");
    }
    assert!(local::hosts::leftovers().iter().all(|name| !name.contains(&id)), "{:?}", local::hosts::leftovers());
}

/// The HTML report of the scenarios in Chromium: every scenario has its section, and
/// pr-success's delivery its timeline, a bar per span of the webhook, the worker and the job's
/// process.
async fn the_report_in_a_browser_shows_every_scenario_and_a_timeline(
    deployment: &Deployment,
    recorded: &[(&str, Ran, Vec<String>)],
) {
    use local::report::{Run, Scenario, Verdict};
    let scenarios: Vec<Scenario> = recorded
        .iter()
        .map(|(name, ran, deliveries)| Scenario {
            name,
            seconds: 1.0,
            verdict: match ran {
                Ran::Passed => Verdict::Passed,
                Ran::Skipped(why) => Verdict::Skipped(why),
            },
            deliveries,
        })
        .collect();
    let logs_url = format!("{}logs", deployment.s3.link_url());
    let run = Run {
        runtime: "process",
        seconds: 1.0,
        run_dir: &deployment.run_dir,
        logs_url: &logs_url,
        scenarios: &scenarios,
    };
    let path = local::report::write(&run, None).await.unwrap();
    let browser = browser::Browser::start().await;
    browser.open(&format!("file://{}", path.display())).await;
    let sections = browser.eval("return [...document.querySelectorAll('section.scenario')].map(s => s.id)").await;
    assert_eq!(sections, serde_json::json!(scenario::ALL));
    let bars = "return [...document.querySelectorAll('#pr-success svg.timeline g.span')].map(g => g.dataset.name)";
    let bars: Vec<String> = serde_json::from_value(browser.eval(bars).await).unwrap();
    for (name, _, _) in local::trace::JOB_CHAIN {
        assert!(bars.iter().any(|bar| bar == name), "no {name} on pr-success's timeline: {bars:?}");
    }
    let drawn =
        "return [...document.querySelectorAll('#pr-success svg.timeline rect')].every(r => r.getBBox().width > 0)";
    assert_eq!(browser.eval(drawn).await, serde_json::json!(true), "a bar of the timeline is not drawn");
    browser.screenshot("report").await;
    browser.close().await;
}

/// No private value of `secrets` appears in any file of the run directory `dir` outside the
/// secrets themselves: service logs, job logs in the S3 store, the endpoints file, configuration.
fn assert_no_secret_in(dir: &Path, secrets: &Path) {
    let values = local::Secrets::at(secrets).private_values().unwrap();
    assert!(values.len() >= 7, "found the secrets: {values:?}");
    let scanned: Vec<PathBuf> = files_under(dir).into_iter().filter(|file| !file.starts_with(secrets)).collect();
    assert!(scanned.iter().any(|file| file.extension().is_some_and(|e| e == "log")), "{scanned:?}");
    for file in scanned {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        for value in &values {
            assert!(!text.contains(value.as_str()), "a secret is in {}", file.display());
        }
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        match entry.file_type().unwrap() {
            kind if kind.is_dir() => files.extend(files_under(&path)),
            kind if kind.is_file() => files.push(path),
            _ => {}
        }
    }
    files
}

/// A pod taken away from outside while its broker starts (a `podman pod rm`, a host's
/// cleanup) fails the start as soon as the readiness wait next looks at the containers, saying
/// so, rather than when the broker's readiness times out (two minutes). The wait may catch the
/// broker stopped but not yet removed: then it says the container exited.
#[cfg_attr(not(ci), ignore = "needs podman: cargo xtask ci installs it and runs this")]
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_removed_while_its_broker_starts_fails_the_start_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let podman = local::PodmanService::start(&dir.path().join("images")).await.unwrap_or_else(|e| panic!("{e}"));
    local::images::ensure_base(&podman).unwrap();
    local::images::build_rabbitmq(&podman, false).unwrap();
    local::images::build_tasks(&podman, &Binaries::of_test_build(), false).unwrap();
    drop(podman);
    let run_dir = dir.path().join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).unwrap();
    let options = options(Runtime::Podman {
        rabbitmq_image: local::images::RABBITMQ.into(),
        tasks_image: local::images::TASKS.into(),
        via_kube: false,
    });
    let pod = format!("workbench-{}", run_dir.file_name().unwrap().to_string_lossy());
    let url = format!("--url=unix://{}", run_dir.join("podman/podman.sock").display());
    // Once the broker runs and the others are created, while the broker boots.
    let remover = tokio::task::spawn_blocking(move || {
        let podman = |args: &[&str]| std::process::Command::new("podman").args(["--remote", &url]).args(args).output();
        let running = format!("{pod}-rabbitmq");
        let created = format!("{pod}-worker-2");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            assert!(std::time::Instant::now() < deadline, "the pod's containers never all existed");
            let state = podman(&["inspect", "--format", "{{.State.Running}}", &running]);
            let exists = podman(&["container", "exists", &created]);
            if state.is_ok_and(|o| o.stdout.starts_with(b"true")) && exists.is_ok_and(|o| o.status.success()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(podman(&["pod", "rm", "--force", "--time", "0", &pod]).unwrap().status.success());
    });
    let started = Deployment::start(&run_dir, &options, &Steps::default()).await;
    remover.await.unwrap();
    let err = started.err().expect("the start fails").to_string();
    let noticed = ["was removed before the pod was ready", "rabbitmq exited before the pod was ready"];
    assert!(noticed.iter().any(|said| err.contains(said)), "{err}");
}
