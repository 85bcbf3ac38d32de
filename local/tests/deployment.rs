//! The whole deployment on the process runtime, from the workspace's service binaries: every
//! scenario passes, and dropping the deployment leaves no process and no listening port.

use std::path::PathBuf;

use local::Deployment;
use local::deployment::{Binaries, Options, Progress};
use local::scenario::{self, Ran};

/// Records the steps, to check they are reported in the order of the data flow.
#[derive(Default)]
struct Steps(Vec<String>);

impl Progress for Steps {
    fn start(&mut self, step: &str) {
        self.0.push(step.to_owned());
    }
    fn done(&mut self, ok: bool) {
        assert!(ok, "step {:?} failed", self.0.last());
    }
}

/// The service binaries of this build: tests run from target/<profile>/deps/.
fn binaries() -> Binaries {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let binaries = Binaries::in_dir(dir);
    for binary in [&binaries.webhook, &binaries.tasks] {
        assert!(binary.is_file(), "{} is missing: build the workspace first (cargo build)", binary.display());
    }
    binaries
}

#[tokio::test(flavor = "multi_thread")]
async fn every_scenario_passes_and_teardown_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        binaries: binaries(),
        secrets: None,
        workers: 2,
        fixtures: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures"),
    };
    let mut steps = Steps::default();
    let deployment = Deployment::start(dir.path(), &options, &mut steps).await.unwrap();
    assert_eq!(
        steps.0,
        [
            "generating fake secrets",
            "starting RabbitMQ (TLS only, certificate login)",
            "starting S3 (HTTPS, buckets logs and images)",
            "starting the mock GitHub with the fixture projects",
            "starting the webhook",
            "starting 2 tasks worker(s)",
        ]
    );
    for name in scenario::ALL {
        let ran = scenario::run(name, &deployment).await;
        assert!(matches!(ran, Ok(Ran::Passed | Ran::Skipped(_))), "scenario {name}: {ran:?}");
    }
    let unknown = scenario::run("no-such-scenario", &deployment).await.unwrap_err().to_string();
    assert!(unknown.starts_with("no scenario \"no-such-scenario\"; the scenarios are queue, s3,"), "{unknown}");

    let pids = deployment.process_ids();
    assert!(pids.len() >= 4, "broker, webhook and two workers run: {pids:?}");
    let endpoints = deployment.endpoints();
    let ports: Vec<String> = [&endpoints.amqp, &endpoints.webhook, &endpoints.github_api, &endpoints.s3]
        .iter()
        .map(|url| url.trim_end_matches('/').rsplit(':').next().unwrap().to_owned())
        .collect();
    drop(deployment);
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "process {pid} outlived the deployment");
    }
    // The in-process servers close their listeners as their tasks end, just after the drop.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    for port in ports {
        while std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).is_ok() {
            assert!(std::time::Instant::now() < deadline, "port {port} still answers after teardown");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
