//! The project's images, built without a registry: the tasks image has the binaries, git and
//! qemu; the RabbitMQ image the server; an unchanged build is skipped; a changed binary
//! rebuilds only the binaries' layer. Skipped, with the reason, where podman is not installed.
//!
//! The tasks image is built here under a name of its own ([`IMAGE`]): the other podman tests,
//! running meanwhile, use [`images::TASKS`] of this build's binaries, and a changed build under
//! that name would untag, and prune, the image a test was starting a container from.

use local::images::{self, Built};
use local::{Binaries, PodmanService};

/// The tasks image this test builds, changes and removes.
const IMAGE: &str = "localhost/workbench/tasks-images-test";

/// Removes [`IMAGE`] when the test ends, however it ends.
struct Removed<'a>(&'a PodmanService);

impl Drop for Removed<'_> {
    fn drop(&mut self) {
        let _ = self.0.command().args(["rmi", "--force", IMAGE]).output();
    }
}

fn run(podman: &PodmanService, image: &str, args: &[&str]) -> String {
    let output =
        podman.command().args(["run", "--rm", "--entrypoint", args[0], image]).args(&args[1..]).output().unwrap();
    assert!(output.status.success(), "{args:?} in {image}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[cfg_attr(not(ci), ignore = "needs podman: cargo xtask ci installs it and runs this")]
#[tokio::test(flavor = "multi_thread")]
async fn images_build_offline_and_rebuild_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let podman = PodmanService::start(&dir.path().join("podman")).await.unwrap_or_else(|e| panic!("{e}"));
    images::ensure_base(&podman).unwrap();
    let binaries = Binaries::of_test_build();
    // Copies of the binaries, so that this test can change one.
    let copies = Binaries::in_dir(dir.path());
    std::fs::copy(&binaries.tasks, &copies.tasks).unwrap();
    std::fs::copy(&binaries.webhook, &copies.webhook).unwrap();

    images::build_rabbitmq(&podman, false).unwrap();
    let _removed = Removed(&podman);
    images::build_tasks_as(&podman, IMAGE, &copies, false).unwrap();
    assert!(run(&podman, IMAGE, &["tasks", "--version"]).starts_with("tasks "));
    assert!(run(&podman, IMAGE, &["webhook", "--help"]).contains("--listen"));
    assert!(run(&podman, IMAGE, &["git", "--version"]).starts_with("git version"));
    assert!(run(&podman, IMAGE, &["qemu-system-x86_64", "--version"]).starts_with("QEMU emulator"));
    assert_eq!(run(&podman, IMAGE, &["pwd"]).trim(), "/work");
    run(&podman, images::RABBITMQ, &["test", "-x", "/usr/lib/rabbitmq/bin/rabbitmq-server"]);
    let plugins = run(&podman, images::RABBITMQ, &["sh", "-c", "ls /usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins"]);
    let kept = local::broker::NEEDED_PLUGINS.len() + local::broker::METRICS_PLUGINS.len();
    assert_eq!(plugins.lines().count(), kept, "{plugins}");
    assert!(plugins.contains("rabbitmq_prometheus-"), "{plugins}");
    assert!(plugins.contains("rabbitmq_auth_mechanism_ssl-"), "{plugins}");

    assert_eq!(images::build_tasks_as(&podman, IMAGE, &copies, false).unwrap(), Built::Unchanged);
    assert_eq!(images::build_rabbitmq(&podman, false).unwrap(), Built::Unchanged);

    let layers = |image: &str| -> Vec<String> {
        let layers = images::inspect(&podman, image, "{{range .RootFS.Layers}}{{.}} {{end}}").unwrap();
        layers.split_whitespace().map(str::to_owned).collect()
    };
    // A trailing byte changes the file, not what it does.
    let change = || {
        let mut webhook = std::fs::OpenOptions::new().append(true).open(&copies.webhook).unwrap();
        std::io::Write::write_all(&mut webhook, b"\0").unwrap();
    };
    let before = layers(IMAGE);
    change();
    assert_eq!(images::build_tasks_as(&podman, IMAGE, &copies, false).unwrap(), Built::Built);
    let after = layers(IMAGE);
    assert_eq!(before.len(), after.len());
    assert_eq!(before[..before.len() - 1], after[..after.len() - 1], "only the binaries' layer changes");
    assert_ne!(before.last(), after.last());
    assert!(copies.webhook.is_file());

    // Two processes' builds of one change at once (tests, run-local): one builds, the other
    // finds its image, rather than building another and pruning the first's under its users.
    change();
    let both = std::thread::scope(|scope| {
        let builds = [(); 2].map(|()| scope.spawn(|| images::build_tasks_as(&podman, IMAGE, &copies, false).unwrap()));
        builds.map(|build| build.join().unwrap())
    });
    assert!(both.contains(&Built::Built) && both.contains(&Built::Unchanged), "{both:?}");
}
