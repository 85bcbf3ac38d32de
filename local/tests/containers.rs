//! The services as containers of our images, one container each, started with testcontainers
//! against the project's own podman service (no registry, no Docker): a delivery to the
//! webhook container reaches the RabbitMQ container, and a tasks container consumes it,
//! posting Cockpit's "Not yet tested" to the mock GitHub and queueing the job in `public`.
//! The containers share this machine's network, and every server in them binds 127.0.0.1.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use local::broker::{self, Listener};
use local::deployment::Binaries;
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

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_goes_from_the_webhook_container_through_the_broker_container_to_a_tasks_container() {
    let dir = tempfile::tempdir().unwrap();
    let podman = match PodmanService::start(&dir.path().join("podman")).await {
        Ok(podman) => podman,
        Err(local::PodmanError::NotInstalled) => return eprintln!("skipped: podman is not installed here"),
        Err(err) => panic!("{err}"),
    };
    // testcontainers finds its engine here; this test is alone in its process.
    // SAFETY: no other thread reads the environment at this point.
    unsafe { std::env::set_var("DOCKER_HOST", format!("unix://{}", podman.socket().display())) };
    images::ensure_base(&podman).unwrap();
    images::build_rabbitmq(&podman, false).unwrap();
    images::build_tasks(&podman, &Binaries::of_test_build(), false).unwrap();

    let (secrets, _) = secrets::generate(&dir.path().join("secrets"), false).unwrap();
    let secret_dir = secrets.webhook_dir();
    let (amqp_port, webhook_port) = (local::free_port().unwrap(), local::free_port().unwrap());
    let config = dir.path().join("rabbitmq");
    std::fs::create_dir_all(&config).unwrap();
    let definitions = Path::new("/etc/rabbitmq/definitions.json");
    for (name, text) in
        broker::config_files(Listener::Loopback(amqp_port), Path::new("/run/secrets/webhook"), definitions)
    {
        std::fs::write(config.join(name), text).unwrap();
    }
    // On this machine's network the broker keeps its Erlang ports private and apart from
    // any other broker's, as the process runtime's does.
    let (epmd, dist) = (local::free_port().unwrap(), local::free_port().unwrap());
    let rabbitmq = container(images::RABBITMQ, &[(&secret_dir, "/run/secrets/webhook"), (&config, "/etc/rabbitmq")])
        .with_user("root")
        .with_env_var("RABBITMQ_NODENAME", format!("rabbit-{amqp_port}@localhost"))
        .with_env_var("ERL_EPMD_PORT", epmd.to_string())
        .with_env_var("ERL_EPMD_ADDRESS", "127.0.0.1")
        .with_env_var("RABBITMQ_DIST_PORT", dist.to_string())
        .with_env_var("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
        .with_ready_conditions(vec![WaitFor::message_on_stdout("Server startup complete")])
        .with_startup_timeout(Duration::from_secs(120))
        .start()
        .await
        .unwrap();
    let amqp = format!("127.0.0.1:{amqp_port}");

    let token = std::fs::read_to_string(secrets.github_token()).unwrap();
    let github = MockGitHub::start(&dir.path().join("github"), token.trim()).await.unwrap();
    github.add_repo(REPO, &Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/repos/passing")).unwrap();
    let test_map = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/testmap.toml");
    let tasks = container(images::TASKS, &[(&secret_dir, "/run/secrets/webhook"), (&test_map, "/testmap.toml")])
        .with_cmd([
            "tasks",
            "--amqp",
            &amqp,
            "run-queue",
            "--hostname",
            "in-a-container",
            "--test-map",
            "/testmap.toml",
            "--github-api",
            &github.api_url(),
            "--github-token-file",
            "/run/secrets/webhook/.config--github-token",
        ])
        .with_env_var("RUST_LOG", "info")
        .with_ready_conditions(vec![WaitFor::message_on_stderr("run-queue started")])
        .start()
        .await
        .unwrap();
    let webhook = container(images::TASKS, &[(&secret_dir, "/run/secrets/webhook")])
        .with_cmd([
            "webhook",
            "--amqp",
            &amqp,
            "--listen",
            &format!("127.0.0.1:{webhook_port}"),
            "--secret-file",
            "/run/secrets/webhook/.config--github-webhook-token",
        ])
        .with_ready_conditions(vec![WaitFor::message_on_either_std("connected to the broker")])
        .start()
        .await
        .unwrap();

    let head = github.open_pull(REPO, 1, "A change", "workbench-ci").unwrap();
    let delivery = github.pull_request_event(REPO, 1, "opened").unwrap();
    let secret = webhook::read_secret(&secrets.webhook_token()).unwrap();
    assert_eq!(post(webhook_port, &delivery.headers(&secret), &delivery.body), 200);

    let deadline = Instant::now() + Duration::from_secs(60);
    while github.statuses(REPO, &head).is_empty() {
        assert!(Instant::now() < deadline, "the tasks container posted no status");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

/// POSTs `body` with `headers` to the webhook on 127.0.0.1:`port`; returns the HTTP status.
fn post(port: u16, headers: &[(&str, String)], body: &[u8]) -> u16 {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut head = format!("POST / HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}
