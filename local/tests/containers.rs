//! The services as containers of our images, one container each, started with testcontainers
//! against the project's own podman service (no registry, no Docker): a delivery to the
//! webhook container reaches the RabbitMQ container, and a tasks container consumes it,
//! posting Cockpit's "Not yet tested" to the mock GitHub and queueing the job in `public`.
//! The containers share this machine's network, and every server in them binds 127.0.0.1.

use std::path::Path;
use std::time::Duration;

use local::Binaries;
use local::broker::{self, Listener};
use local::images;
use local::{MockGitHub, PodmanService, secrets};
use testcontainers::core::{AccessMode, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerRequest, GenericImage, ImageExt};

const REPO: &str = "workbench-ci/demo";

/// One of our images on this machine's network, with `mounts` (this machine's path, the
/// container's, read-only).
fn container(image: &str, mounts: &[(&Path, &str)]) -> ContainerRequest<GenericImage> {
    let (name, tag) = image.rsplit_once(':').unwrap_or((image, "latest"));
    // Through the host configuration: testcontainers would create a network named "host".
    let mut request = GenericImage::new(name, tag)
        .with_wait_for(WaitFor::Nothing)
        .with_host_config_modifier(|config| config.network_mode = Some("host".into()));
    for (host, inside) in mounts {
        let mount = Mount::bind_mount(host.display().to_string(), *inside).with_access_mode(AccessMode::ReadOnly);
        request = request.with_mount(mount);
    }
    request
}

/// `request` running the command and environment of `launch`.
fn launched(request: ContainerRequest<GenericImage>, launch: &local::launch::Launch) -> ContainerRequest<GenericImage> {
    let mut request = request.with_cmd(launch.argv());
    for (name, value) in &launch.env {
        request = request.with_env_var(name, value);
    }
    request
}

#[cfg_attr(not(ci), ignore = "needs podman: cargo xtask ci installs it and runs this")]
#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_goes_from_the_webhook_container_through_the_broker_container_to_a_tasks_container() {
    let dir = tempfile::tempdir().unwrap();
    let podman = PodmanService::start(&dir.path().join("podman")).await.unwrap_or_else(|e| panic!("{e}"));
    // testcontainers finds its engine here; this test is alone in its process.
    // SAFETY: no other thread reads the environment at this point.
    unsafe { std::env::set_var("DOCKER_HOST", format!("unix://{}", podman.socket().display())) };
    images::ensure_base(&podman).unwrap();
    images::build_rabbitmq(&podman, false).unwrap();
    images::build_tasks(&podman, &Binaries::of_test_build(), false).unwrap();

    let (secrets, _) = secrets::generate(&dir.path().join("secrets"), false).unwrap();
    let secret_dir = secrets.webhook_dir();
    // RabbitMQ's ports are its configuration: picked free, one may be taken before it binds
    // it, and then it is started again on others.
    let mut tries = 0;
    let (rabbitmq, amqp_port) = loop {
        tries += 1;
        let amqp_port = local::free_port().unwrap();
        let config = dir.path().join(format!("rabbitmq-{tries}"));
        std::fs::create_dir_all(&config).unwrap();
        let definitions = Path::new("/etc/rabbitmq/definitions.json");
        for (name, text) in
            broker::config_files(Listener::Loopback(amqp_port), Path::new("/run/secrets/webhook"), definitions, None)
        {
            std::fs::write(config.join(name), text).unwrap();
        }
        // On this machine's network the broker keeps its Erlang ports private and apart from
        // any other broker's, as the process runtime's does.
        let (epmd, dist) = (local::free_port().unwrap(), local::free_port().unwrap());
        let started = container(images::RABBITMQ, &[(&secret_dir, "/run/secrets/webhook"), (&config, "/etc/rabbitmq")])
            .with_user("root")
            .with_env_var("RABBITMQ_NODENAME", format!("rabbit-{amqp_port}@localhost"))
            .with_env_var("ERL_EPMD_PORT", epmd.to_string())
            .with_env_var("ERL_EPMD_ADDRESS", "127.0.0.1")
            .with_env_var("RABBITMQ_DIST_PORT", dist.to_string())
            .with_env_var("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            .with_ready_conditions(vec![WaitFor::message_on_stdout("Server startup complete")])
            .with_startup_timeout(Duration::from_secs(120))
            .start()
            .await;
        match started {
            Ok(rabbitmq) => break (rabbitmq, amqp_port),
            Err(err) if tries < 3 => eprintln!("RabbitMQ did not start ({err}); on other ports"),
            Err(err) => panic!("{err}"),
        }
    };
    let amqp = format!("127.0.0.1:{amqp_port}");

    let token = std::fs::read_to_string(secrets.github_token()).unwrap();
    let github = MockGitHub::start(&dir.path().join("github"), token.trim()).await.unwrap();
    github.add_repo(REPO, &Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/repos/passing")).unwrap();
    let test_map = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/testmap.toml");
    let broker = local::launch::Broker { address: Some(&amqp), secrets_dir: None };
    let worker = local::launch::Worker {
        broker,
        hostname: "in-a-container",
        jobs: 1,
        test_map: Path::new("/testmap.toml"),
        github_api: &github.api_url(),
        github_token_file: Path::new("/run/secrets/webhook/.config--github-token"),
        runner_config: None,
        work_dir: None,
        metrics: None,
        rescan_interval: Some(0),
        log: "info",
        traces: None,
    }
    .launch();
    let tasks = launched(
        container(images::TASKS, &[(&secret_dir, "/run/secrets/webhook"), (&test_map, "/testmap.toml")]),
        &worker,
    )
    .with_ready_conditions(vec![WaitFor::message_on_stderr("run-queue started")])
    .start()
    .await
    .unwrap();
    // The webhook listens on a port it picks, and names it in a file of a directory of ours.
    let listening = tempfile::tempdir().unwrap();
    let webhook = local::launch::Webhook {
        broker,
        secret_file: Path::new("/run/secrets/webhook/.config--github-webhook-token"),
        listen: local::launch::Listen::loopback(Path::new("/run/listening/webhook")),
        log: "info",
        traces: None,
        prometheus: None,
    }
    .launch();
    let webhook = launched(container(images::TASKS, &[(&secret_dir, "/run/secrets/webhook")]), &webhook)
        .with_mount(Mount::bind_mount(listening.path().display().to_string(), "/run/listening"))
        .with_ready_conditions(vec![WaitFor::message_on_either_std("connected to the broker")])
        .start()
        .await
        .unwrap();
    let webhook_address: std::net::SocketAddr =
        std::fs::read_to_string(listening.path().join("webhook")).unwrap().parse().unwrap();

    let head = github.open_pull(REPO, 1, "A change", "workbench-ci").unwrap();
    let delivery = github.pull_request_event(REPO, 1, "opened").unwrap();
    let secret = webhook::read_secret(&secrets.webhook_token()).unwrap();
    assert_eq!(local::client::deliver(webhook_address, &delivery, &secret).await.unwrap(), 200);

    let posted = local::client::wait_until("a status from the tasks container", Duration::from_secs(60), || async {
        Ok::<_, local::client::TimedOut>(match github.statuses(REPO, &head).is_empty() {
            true => local::client::Check::NotYet("none yet".into()),
            false => local::client::Check::Done(()),
        })
    });
    posted.await.unwrap();
    let statuses = github.statuses(REPO, &head);
    let posted: Vec<(&str, &str, &str)> =
        statuses.iter().map(|s| (s.context.as_str(), s.state.as_str(), s.description.as_str())).collect();
    assert_eq!(posted, [("unit-tests", "pending", "Not yet tested")]);
    let session = amqp::Session::connect(&amqp::Config::new(amqp.parse().unwrap(), &secret_dir)).await.unwrap();
    let job = session.get(amqp::PUBLIC.name).await.unwrap().expect("the job is queued in public");
    let job: serde_json::Value = serde_json::from_slice(&job.body).unwrap();
    assert_eq!((job["job"]["repo"].as_str(), job["job"]["sha"].as_str()), (Some(REPO), Some(head.as_str())));
    session.close().await;
    drop((webhook, tasks, rabbitmq));
}
