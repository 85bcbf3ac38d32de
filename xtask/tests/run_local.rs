//! `cargo xtask run-local` as a user runs it, on both runtimes: a run that fails on purpose and
//! a run interrupted with SIGINT leave no process, container or pod of the run and no port it
//! used open; the interactive mode, driven under tmux, reaches the deployment and tears it
//! down on `exit`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `xtask run-local` on `runtime` with the service binaries of this build (not rebuilt with
/// the release profile: `cargo xtask ci` runs that path).
fn run_local(runtime: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    command.args(["run-local", "--runtime", runtime, "--binaries", &binaries_dir()]);
    command
}

/// Fails, naming them, when the podman runtime's packages are missing.
fn require_podman() {
    for tool in ["/usr/bin/podman", "/usr/bin/slirp4netns"] {
        assert!(Path::new(tool).exists(), "{tool} is not installed: cargo xtask ci installs it");
    }
}

fn binaries_dir() -> String {
    Path::new(env!("CARGO_BIN_EXE_xtask")).parent().unwrap().display().to_string()
}

/// The run directory named in run-local's output ("... kept in DIR" or "logs: DIR").
fn run_dir(output: &str) -> String {
    let line = output
        .lines()
        .find(|line| line.contains("kept in ") || line.trim_start().starts_with("logs:"))
        .unwrap_or_else(|| panic!("no run directory in:\n{output}"));
    line.rsplit([' ']).next().unwrap().trim().to_owned()
}

/// Every live process whose command line or environment mentions `dir`.
fn processes_of(dir: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if pid.parse::<u32>().is_err() || pid == std::process::id().to_string() {
            continue;
        }
        for file in ["cmdline", "environ"] {
            let text = std::fs::read(entry.path().join(file)).unwrap_or_default();
            if String::from_utf8_lossy(&text).contains(dir) {
                let command = String::from_utf8_lossy(&std::fs::read(entry.path().join("cmdline")).unwrap_or_default())
                    .replace('\0', " ");
                found.push(format!("{pid}: {command}"));
                break;
            }
        }
    }
    found
}

#[test]
fn a_failed_run_reports_the_failure_and_leaves_nothing_behind() {
    failed_run_leaves_nothing_behind("process");
}

#[cfg_attr(not(ci), ignore = "needs podman: cargo xtask ci installs it and runs this")]
#[test]
fn a_failed_run_on_podman_leaves_no_pod_behind() {
    require_podman();
    failed_run_leaves_nothing_behind("podman");
}

/// A target directory of the test's own with a stand-in `cargo` running `script` (the build
/// of the service binaries), and the `xtask run-local --runtime process` that uses them.
fn with_stand_in_cargo(script: &str) -> (tempfile::TempDir, Command) {
    let target = tempfile::tempdir().unwrap();
    let cargo = target.path().join("cargo");
    std::fs::write(&cargo, script).unwrap();
    std::fs::set_permissions(&cargo, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    command.args(["run-local", "--runtime", "process"]).env("CARGO", &cargo).env("CARGO_TARGET_DIR", target.path());
    (target, command)
}

/// A build of the service binaries that fails (a stand-in `cargo`, in a target directory of
/// the test's own) ends the start at once, the broker's beside it included, says what the
/// compiler said, and leaves no process of the run.
#[test]
fn a_failed_build_ends_the_start_at_once_and_leaves_nothing_behind() {
    let (target, mut run_local) = with_stand_in_cargo(
        "#!/bin/sh\necho '   Compiling webhook v0.1.0' >&2\necho 'error[E0308]: mismatched types' >&2\nexit 101\n",
    );
    let output = run_local.output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("building the service binaries failed:\n   Compiling webhook"), "{stderr}");
    assert!(stderr.contains("error[E0308]: mismatched types"), "{stderr}");
    assert!(stdout.contains("✘ building the service binaries (release)"), "{stdout}");
    assert!(!stdout.contains("✔ starting RabbitMQ"), "the start waited for the broker:\n{stdout}");
    let dir = run_dir(&stderr);
    assert!(dir.starts_with(&*target.path().to_string_lossy()), "{dir}");
    assert_eq!(processes_of(&dir), Vec::<String>::new(), "processes of the run are left");
}

/// Ctrl-C while the service binaries build (a stand-in `cargo` whose "compiler", a `sleep` it
/// started, runs on) stops cargo and what it started, and leaves no process of the run.
#[test]
fn an_interrupted_build_stops_cargo_and_what_it_started() {
    let (target, mut run_local) = with_stand_in_cargo("#!/bin/sh\nsleep 600 &\nwait\n");
    let child = run_local.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    // The target directory is in the environment of everything the run started.
    let dir = target.path().to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !processes_of(&dir).iter().any(|process| process.contains("sleep 600")) {
        assert!(Instant::now() < deadline, "the stand-in cargo's sleep never ran: {:?}", processes_of(&dir));
        std::thread::sleep(Duration::from_millis(100));
    }
    rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::INT).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("interrupted"), "{stderr}");
    assert_eq!(processes_of(&dir), Vec::<String>::new(), "processes of the run are left");
}

/// A copy of the fixtures with the project that must pass broken: `pr-success` fails.
fn broken_fixtures() -> tempfile::TempDir {
    let fixtures = tempfile::tempdir().unwrap();
    let copied = Command::new("cp")
        .args(["-r", "--"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/."))
        .arg(fixtures.path())
        .status()
        .unwrap();
    assert!(copied.success());
    let run = fixtures.path().join("repos/passing/.cockpit-ci/run");
    std::fs::write(&run, "#!/bin/sh\necho 'not ok 1 broken on purpose'\nexit 1\n").unwrap();
    fixtures
}

fn failed_run_leaves_nothing_behind(runtime: &str) {
    let report = tempfile::NamedTempFile::new().unwrap();
    let junit = tempfile::NamedTempFile::new().unwrap();
    let page = tempfile::NamedTempFile::new().unwrap();
    let fixtures = broken_fixtures();
    let output = run_local(runtime)
        .args(["--scenario", "queue", "--scenario", "pr-success", "--fixtures"])
        .arg(fixtures.path())
        .arg("--json")
        .arg(report.path())
        .arg("--junit")
        .arg(junit.path())
        .arg("--report")
        .arg(page.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("scenario pr-success failed: "), "{stderr}");
    assert!(stderr.contains("rabbitmq (") && stderr.contains("webhook (") && stderr.contains("worker-1 ("), "{stderr}");
    let dir = run_dir(&stderr);
    assert!(Path::new(&dir).join("webhook.log").is_file(), "the logs are kept in {dir}");

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(report.path()).unwrap()).unwrap();
    assert_eq!(report["runtime"], runtime);
    let statuses: Vec<(&str, &str)> = report["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(statuses, [("queue", "pass"), ("pr-success", "fail")]);
    assert!(report.get("stop").is_none(), "nothing is kept");
    // The same results as JUnit: the passing case empty, the failing one with its message
    // and the services' log tails.
    let junit = std::fs::read_to_string(junit.path()).unwrap();
    let classname = format!("classname=\"run-local.{runtime}\"");
    assert!(junit.contains("<testsuites name=\"run-local\" tests=\"2\" failures=\"1\" skipped=\"0\""), "{junit}");
    assert!(junit.contains(&format!("<testcase name=\"queue\" {classname} time=\"")), "{junit}");
    let failed = junit.split("<testcase name=\"pr-success\"").nth(1).expect("a pr-success case");
    assert!(failed.contains("<failure message=\"") && failed.contains("type=\"assertion\">"), "{junit}");
    assert!(failed.contains("webhook (") && failed.contains("worker-1 (") && failed.contains("last lines:"), "{junit}");
    // The HTML report: both scenarios, the failure, and the failed delivery's timeline across
    // the services; the same page in the run directory.
    let html = std::fs::read_to_string(page.path()).unwrap();
    for name in ["queue", "pr-success"] {
        assert!(html.contains(&format!("<section class=scenario id=\"{name}\">")), "{name}: {html}");
    }
    let failed = html.split("id=\"pr-success\"").nth(1).unwrap();
    assert!(failed.contains("<span class=fail>failed</span>") && failed.contains("<svg class=timeline"), "{html}");
    for service in ["webhook · delivery", "run-queue · scan", "job-runner · job-runner"] {
        assert!(failed.contains(service), "no {service} on the timeline: {html}");
    }
    assert_eq!(std::fs::read_to_string(Path::new(&dir).join("report.html")).unwrap(), html);
    let report_text = report.to_string();
    let private = local::Secrets::at(Path::new(&dir).join("secrets")).private_values().unwrap();
    for value in &private {
        assert!(
            !report_text.contains(value) && !html.contains(value) && !stderr.contains(value),
            "a secret is in the report or the output"
        );
    }
    assert_failure_bundle(&dir, &stderr, runtime, &private);

    assert_nothing_left(&dir, &report["endpoints"]);
}

/// The failure bundle is named on stderr and holds what a bug report needs (the services'
/// logs, the broker's queues, the mock GitHub's requests and statuses, the failed job's log in
/// S3, on podman the pod's state), and none of the run's private values.
fn assert_failure_bundle(dir: &str, stderr: &str, runtime: &str, private: &[String]) {
    let bundle = Path::new(dir).join("failure-bundle.tar.gz");
    assert!(
        stderr.contains(&format!(
            "failure bundle (logs, queues, GitHub requests and statuses, job logs): {}",
            bundle.display()
        )),
        "{stderr}"
    );
    let unpacked = tempfile::tempdir().unwrap();
    let untar = Command::new("tar").arg("-xzf").arg(&bundle).arg("-C").arg(unpacked.path()).status().unwrap();
    assert!(untar.success());
    let top = unpacked.path().join(Path::new(dir).file_name().unwrap());
    let mut files = Vec::new();
    let mut pending = vec![top.clone()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(at).unwrap().flatten() {
            match entry.file_type().unwrap().is_dir() {
                true => pending.push(entry.path()),
                false => files.push(entry.path().strip_prefix(&top).unwrap().display().to_string()),
            }
        }
    }
    let has = |name: &str| files.iter().any(|file| file == name);
    for wanted in [
        "webhook.log",
        "worker-1.log",
        "traces/webhook.jsonl",
        "endpoints.json",
        "state/rabbitmq-queues.txt",
        "state/github-requests.txt",
    ] {
        assert!(has(wanted), "{wanted} is not in the bundle: {files:?}");
    }
    assert!(has(if runtime == "podman" { "state/pod.txt" } else { "broker/rabbit.log" }), "{files:?}");
    assert!(files.iter().any(|f| f.starts_with("s3/logs/") && f.ends_with("/log")), "no job log: {files:?}");
    let queues = std::fs::read_to_string(top.join("state/rabbitmq-queues.txt")).unwrap();
    assert!(queues.lines().any(|line| line.starts_with("public\t")), "{queues}");
    let statuses = std::fs::read_to_string(top.join("state/github-statuses.json")).unwrap();
    assert!(statuses.contains("\"state\": \"failure\""), "{statuses}");
    for file in &files {
        let text = String::from_utf8_lossy(&std::fs::read(top.join(file)).unwrap()).into_owned();
        assert!(!private.iter().any(|value| text.contains(value)), "a private value is in {file}");
    }
}

/// No process, pod or container of the run in `dir` is left, nor any port it used open;
/// then the run directory goes.
fn assert_nothing_left(dir: &str, endpoints: &serde_json::Value) {
    assert_eq!(processes_of(dir), Vec::<String>::new(), "processes of the run outlived it");
    assert_ports_closed(endpoints);
    assert_no_pod(dir);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Neither the pod of the run in `dir` nor any of its containers exists.
fn assert_no_pod(dir: &str) {
    if Path::new("/usr/bin/podman").exists() {
        let pod = format!("workbench-{}", Path::new(dir).file_name().unwrap().to_string_lossy());
        let listed = Command::new("podman")
            .args(["ps", "--all", "--format", "{{.Names}}", "--filter", &format!("name={pod}")])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&listed.stdout), "", "containers of the run outlived it");
        let exists = Command::new("podman").args(["pod", "exists", &pod]).status().unwrap();
        assert!(!exists.success(), "pod {pod} outlived the run");
    }
}

/// Every port of a run's endpoints (the report's, or the run directory's endpoints.json) is free.
fn assert_ports_closed(endpoints: &serde_json::Value) {
    for name in ["amqp", "webhook", "github_api", "s3"] {
        let url = endpoints[name].as_str().unwrap_or_else(|| panic!("no {name} in {endpoints}"));
        let port: u16 = url.trim_end_matches('/').rsplit(':').next().unwrap().parse().unwrap();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "{name} port {port} is still open");
    }
}

#[test]
fn an_interrupted_run_leaves_nothing_behind() {
    interrupted_run_leaves_nothing_behind("process");
}

#[cfg_attr(not(ci), ignore = "needs podman: cargo xtask ci installs it and runs this")]
#[test]
fn an_interrupted_run_on_podman_leaves_no_pod_behind() {
    require_podman();
    interrupted_run_leaves_nothing_behind("podman");
}

fn interrupted_run_leaves_nothing_behind(runtime: &str) {
    let mut child = run_local(runtime).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    // Interrupt once the deployment is up, while the scenarios run.
    let mut seen = String::new();
    while !seen.contains("✔ scenario queue") {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() > 0, "run-local ended early:\n{seen}");
        seen.push_str(&line);
    }
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("interrupted"), "{stderr}");
    let dir = run_dir(&stderr);
    let endpoints = std::fs::read(Path::new(&dir).join("endpoints.json")).unwrap();
    assert_nothing_left(&dir, &serde_json::from_slice(&endpoints).unwrap());
}

/// `run-local -i` on `runtime`, driven under tmux: the shell reaches the deployment (the queue
/// tools, and the S3 store by the name Cockpit's tools use, resolved to `store_address`
/// without touching this machine's /etc/hosts), and `exit` tears it down.
/// `xtask run-local <args>` on a terminal: a tmux session of its own (200×60, in the
/// workspace, its window named `main`), killed when dropped. The pane outlives run-local and
/// ends with `run-local exited: <status>`, so that a run that ends early shows why, at once.
struct Pane {
    socket: String,
}

impl Pane {
    /// With the service binaries of this build (`--binaries`).
    fn start(name: &str, args: &str) -> Pane {
        Pane::start_with(name, "", &format!("{args} --binaries {}", binaries_dir()))
    }

    /// `xtask run-local <args>` with `env` (`NAME=VALUE `…) before the command.
    fn start_with(name: &str, env: &str, args: &str) -> Pane {
        assert!(Command::new("tmux").arg("-V").output().is_ok(), "tmux is not installed: cargo xtask ci installs it");
        let pane = Pane { socket: format!("workbench-{name}-{}", std::process::id()) };
        let command =
            format!("{env}{} run-local {args}; echo \"run-local exited: $?\"; sleep 600", env!("CARGO_BIN_EXE_xtask"));
        let started = Command::new("tmux")
            .args(["-L", &pane.socket, "new-session", "-d", "-s", "run", "-n", "main", "-x", "200", "-y", "60", "-c"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .arg(&command)
            .env("SHELL", "/bin/bash")
            .status()
            .unwrap();
        assert!(started.success());
        pane
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux").args(["-L", &self.socket]).args(args).output().unwrap()
    }

    /// What run-local's window shows, with 300 lines of history.
    fn shown(&self) -> String {
        self.shown_in("main")
    }

    /// What `window` shows, with 300 lines of history, wrapped lines joined.
    fn shown_in(&self, window: &str) -> String {
        let target = format!("run:{window}");
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-J", "-S", "-300", "-t", &target]).stdout)
            .into_owned()
    }

    /// Types `keys` and Enter in run-local's window.
    fn send(&self, keys: &str) {
        self.send_to("main", keys);
    }

    fn send_to(&self, window: &str, keys: &str) {
        self.tmux(&["send-keys", "-t", &format!("run:{window}"), keys, "Enter"]);
    }

    /// Waits until `window` shows `text`; returns what it shows. Fails at once if run-local
    /// ended, and after `within`.
    fn wait_for(&self, window: &str, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let shown = self.shown_in(window);
            if shown.contains(text) {
                return shown;
            }
            let main = self.shown();
            assert!(
                !main.contains("run-local exited:") || text.contains("run-local exited"),
                "run-local ended before {text:?}:\n{main}"
            );
            assert!(Instant::now() < deadline, "{text:?} never appeared in {window}:\n{shown}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

fn interactive(runtime: &str, store_address: &str) {
    let system_hosts = std::fs::read("/etc/hosts").unwrap();
    // On podman, the shell is in the tasks container, where the tools find everything alike.
    let pane = Pane::start(&format!("test-{runtime}"), &format!("--runtime {runtime} -i"));
    let wait_for = |text: &str| pane.wait_for("main", text, Duration::from_secs(600));
    wait_for("this shell reaches it");
    // The banner's lines come in several writes: its last tool's line, then the pane holds them.
    let banner = wait_for("tasks run-queue --hostname me");
    let dir = run_dir(&wait_for("  logs:"));
    assert!(banner.contains("tasks inspect-queue"), "{banner}");
    pane.send("tasks inspect-queue");
    let shown = wait_for("queue webhook does not exist or is empty");
    for queue in ["public", "rhel", "statistics", "webhook"] {
        assert!(shown.contains(&format!("{queue} queue:")), "{shown}");
    }
    let host = local::secrets::S3_HOST;
    pane.send(&format!("getent hosts {host} | sed 's/^/resolved: /'"));
    let shown = wait_for(&format!("resolved: {store_address}"));
    assert!(shown.contains(&format!("resolved: {store_address}")) && shown.contains(host), "{shown}");
    assert_eq!(std::fs::read("/etc/hosts").unwrap(), system_hosts, "this machine's /etc/hosts is left alone");
    pane.send("exit");
    let ended = wait_for("run-local exited:");
    drop(pane);
    assert!(ended.contains("run-local exited: 0"), "{ended}");
    assert_eq!(processes_of(&dir), Vec::<String>::new(), "processes of the run outlived it");
    assert_no_pod(&dir);
    assert!(!Path::new(&dir).exists(), "a run that succeeded removes its directory");
}

#[cfg_attr(not(ci), ignore = "needs tmux: cargo xtask ci installs it and runs this")]
#[test]
fn process_the_interactive_shell_reaches_the_deployment_and_exit_tears_it_down() {
    interactive("process", "127.0.0.1");
}

#[cfg_attr(not(ci), ignore = "needs podman and tmux: cargo xtask ci installs them and runs this")]
#[test]
fn podman_the_interactive_shell_reaches_the_deployment_and_exit_tears_it_down() {
    require_podman();
    interactive("podman", "10.0.2.2");
}

/// `run-local --hold-failed` on `runtime`, driven under tmux: pr-success fails (its project
/// broken), its job is held, the printed command opens a shell (in a second window) in the
/// job's checkout with its environment, and `cargo xtask down` tears the deployment down and
/// releases the held job (its directory and container gone, the failed run's logs kept).
fn hold_failed(runtime: &str) {
    let target = tempfile::tempdir().unwrap();
    let fixtures = broken_fixtures();
    let pane = Pane::start_with(
        &format!("hold-{runtime}"),
        &format!("CARGO_TARGET_DIR={} ", target.path().display()),
        &format!(
            "--runtime {runtime} --hold-failed --scenario pr-success --fixtures {} --binaries {}",
            fixtures.path().display(),
            binaries_dir()
        ),
    );
    let shown = pane.wait_for("main", "stays up until `cargo xtask down`", Duration::from_secs(600));
    let dir = run_dir(&pane.wait_for("main", "  logs:", Duration::from_secs(10)));
    let command = shown
        .lines()
        .skip_while(|line| !line.contains("is held. A shell in its environment:"))
        .nth(1)
        .unwrap_or_else(|| panic!("no command to open a shell in the held job:\n{shown}"))
        .trim()
        .to_owned();
    pane.tmux(&["new-window", "-t", "run", "-n", "shell", "bash --norc --noprofile"]);
    pane.send_to("shell", &command);
    pane.send_to("shell", "echo \"held: $TEST_OS $PWD $(ls .cockpit-ci)\"");
    let workdir = match runtime {
        "podman" => "/work/make-checkout-workdir".to_owned(),
        _ => format!("{dir}/jobs/"),
    };
    let seen = pane.wait_for("shell", &format!("held: unit-tests {workdir}"), Duration::from_secs(60));
    assert!(seen.lines().any(|line| line.starts_with("held: unit-tests") && line.ends_with(" run")), "{seen}");
    pane.send_to("shell", "exit");

    let down = xtask_in(target.path(), &["down"]).output().unwrap();
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    let ended = pane.wait_for("main", "run-local exited:", Duration::from_secs(120));
    drop(pane);
    assert!(ended.contains("run-local exited: 1"), "the run failed: {ended}");
    assert_eq!(processes_of(&dir), Vec::<String>::new(), "processes of the run outlived it");
    assert_no_pod(&dir);
    assert!(Path::new(&dir).join("webhook.log").is_file(), "a failed run keeps its logs in {dir}");
    let work_dir = match runtime {
        "podman" => Path::new(&dir).join("jobs/worker-1"),
        _ => Path::new(&dir).join("jobs"),
    };
    let left: Vec<String> = std::fs::read_dir(&work_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("job-") || name == "held.json")
        .collect();
    assert_eq!(left, Vec::<String>::new(), "the held job outlived down in {}", work_dir.display());
    if runtime == "podman" {
        let held = Command::new("podman")
            .args(["ps", "--all", "--format", "{{.Names}}", "--filter", "label=workbench.held"])
            .output()
            .unwrap();
        let slug = command.split_whitespace().find(|word| word.starts_with("held-")).expect("the held container");
        assert!(!String::from_utf8_lossy(&held.stdout).contains(slug), "{slug} outlived the deployment");
    }
}

#[cfg_attr(not(ci), ignore = "needs tmux: cargo xtask ci installs it and runs this")]
#[test]
fn process_a_held_failed_job_opens_a_shell_in_its_checkout_and_down_releases_it() {
    hold_failed("process");
}

#[cfg_attr(not(ci), ignore = "needs podman and tmux: cargo xtask ci installs them and runs this")]
#[test]
fn podman_a_held_failed_job_opens_a_shell_in_its_container_and_down_releases_it() {
    require_podman();
    hold_failed("podman");
}

/// The real GitHub mode does not run a stranger's pull request unsandboxed unless told to:
/// refused before anything starts, saying how to ask for it.
#[test]
fn a_real_pull_request_is_not_run_unsandboxed_unless_asked() {
    let token = tempfile::NamedTempFile::new().unwrap();
    let output = run_local("process")
        .args(["--pr", "1", "--repo", "workbench-ci/demo", "--github-token"])
        .arg(token.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("pass --allow-unsandboxed-pr if you trust that code"), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("starting"), "nothing started");
}

/// A deployment that does not come up (here: secrets that are not there) is one failed JUnit
/// case, `deployment`, saying why, so that CI shows the failure where it shows test results.
#[test]
fn a_deployment_that_does_not_come_up_is_a_failed_junit_case() {
    let secrets = tempfile::tempdir().unwrap();
    let junit = tempfile::NamedTempFile::new().unwrap();
    let output =
        run_local("process").arg("--secrets").arg(secrets.path()).arg("--junit").arg(junit.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let junit = std::fs::read_to_string(junit.path()).unwrap();
    assert!(junit.contains("<testsuites name=\"run-local\" tests=\"1\" failures=\"1\""), "{junit}");
    assert!(junit.contains("<testcase name=\"deployment\" classname=\"run-local.process\""), "{junit}");
    assert!(junit.contains("<failure message=\"the deployment did not come up: "), "{junit}");
    assert!(junit.contains("is not a secrets directory: it lacks s3-keys, s3-server, webhook/"), "{junit}");
    assert!(stderr.contains("write one with `cargo xtask secrets`"), "{stderr}");
    let dir = run_dir(&stderr);
    assert!(Path::new(&dir).join("failure-bundle.tar.gz").is_file(), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// `xtask` with its runs (and so its kept deployment) under `target`, not the checkout's.
fn xtask_in(target: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("..")).env("CARGO_TARGET_DIR", target).args(args);
    command
}

#[test]
fn attaching_without_a_kept_deployment_says_so() {
    let target = tempfile::tempdir().unwrap();
    let output = xtask_in(target.path(), &["run-local", "--attach"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("no kept deployment to attach to"), "{stderr}");
    assert!(stderr.contains("start one with `cargo xtask run-local --keep`"), "{stderr}");
}

/// A kept deployment runs the scenarios again for `--attach`, as often as asked (each run on
/// pull requests of its own), and `down` ends it.
#[test]
fn a_kept_deployment_runs_the_scenarios_again_for_attach() {
    let target = tempfile::tempdir().unwrap();
    let mut kept = run_local("process")
        .args(["--keep", "--scenario", "queue"])
        .env("CARGO_TARGET_DIR", target.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(kept.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("cargo xtask run-local --attach") {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() > 0, "run-local ended early:\n{seen}");
        seen.push_str(&line);
    }
    for _ in 0..2 {
        let args = ["run-local", "--attach", "--scenario", "pr-success", "--scenario", "direct-trigger"];
        let output = xtask_in(target.path(), &args).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
        for scenario in ["pr-success", "direct-trigger"] {
            assert!(stdout.lines().any(|l| l.starts_with(scenario) && l.contains(" pass ")), "{scenario}: {stdout}");
        }
    }
    let down = xtask_in(target.path(), &["down"]).output().unwrap();
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    let ended = kept.wait_with_output().unwrap();
    assert!(ended.status.success(), "{}", String::from_utf8_lossy(&ended.stderr));
    assert!(!target.path().join("workbench/kept.sock").exists(), "the socket is gone with the deployment");
}

/// A green run on a terminal, driven under tmux: each step ends as one finished line (no
/// spinner frame of a step left behind, however many ran at once, the build of the service
/// binaries beside the broker's start included), and nothing is logged as an error or a
/// warning. The build is a stand-in `cargo` that says what it compiles until the broker has
/// begun to start (so a build made before the deployment fails the run), then for a second
/// more; the binaries it "built" are this build's, in a target directory of the test's own.
#[cfg_attr(not(ci), ignore = "needs tmux: cargo xtask ci installs it and runs this")]
#[test]
fn a_green_run_on_a_terminal_shows_one_line_per_step_and_no_error() {
    let script = r#"#!/bin/sh
for i in $(seq 600); do
    echo "   Compiling step$i v0.1.0" >&2
    if ls -d "$CARGO_TARGET_DIR"/workbench/run-*/broker >/dev/null 2>&1; then sleep 1; exit 0; fi
    sleep 0.1
done
echo "error: the broker did not start beside the build" >&2
exit 1
"#;
    let (target, _) = with_stand_in_cargo(script);
    std::fs::create_dir(target.path().join("release")).unwrap();
    for binary in ["webhook", "tasks"] {
        let built = Path::new(&binaries_dir()).join(binary);
        std::os::unix::fs::symlink(built, target.path().join("release").join(binary)).unwrap();
    }
    let cargo = target.path().join("cargo");
    let env = format!("CARGO={} CARGO_TARGET_DIR={} ", cargo.display(), target.path().display());
    let pane = Pane::start_with("console", &env, "--runtime process");
    let deadline = Instant::now() + Duration::from_secs(600);
    let shown = loop {
        let shown = pane.shown();
        if shown.contains("run-local exited:") {
            break shown;
        }
        assert!(Instant::now() < deadline, "run-local did not end:\n{shown}");
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(pane);
    assert!(shown.contains("run-local exited: 0"), "{shown}");
    let finished: Vec<&str> = shown.lines().filter(|line| line.starts_with('✔')).collect();
    assert!(finished.iter().any(|line| line.contains("starting RabbitMQ")), "{shown}");
    assert!(finished.iter().any(|line| line.contains("building the service binaries (release)")), "{shown}");
    assert!(finished.iter().any(|line| line.contains("scenario pr-success")), "{shown}");
    for line in &finished {
        let step = line.rsplit_once(" (").map_or(*line, |(step, _)| step);
        assert_eq!(finished.iter().filter(|other| other.starts_with(step)).count(), 1, "{step} twice:\n{shown}");
    }
    // A spinner frame is a braille character; none may be left once every step is done.
    let stale: Vec<&str> =
        shown.lines().filter(|line| line.starts_with(|c| ('\u{2800}'..='\u{28ff}').contains(&c))).collect();
    assert!(stale.is_empty(), "spinner frames left behind: {stale:?}\n{shown}");
    let logged: Vec<&str> = shown.lines().filter(|line| line.contains(" ERROR ") || line.contains(" WARN ")).collect();
    assert!(logged.is_empty(), "errors or warnings on a green run's console: {logged:?}");
}

/// `--watch` on a copy of the tree (the checkout is never edited): after a one-line change of
/// a webhook source, only the webhook is rebuilt and restarted, the new code runs, and the
/// scenarios pass again; Ctrl-C tears everything down.
#[cfg_attr(not(ci), ignore = "builds a copy of the tree: cargo xtask ci runs this")]
#[test]
fn watch_restarts_only_the_webhook_after_its_source_changes() {
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tree = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&checkout).unwrap().flatten() {
        if ["target", ".git"].contains(&&*entry.file_name().to_string_lossy()) {
            continue;
        }
        let copied = Command::new("cp").arg("-a").arg(entry.path()).arg(tree.path()).status().unwrap();
        assert!(copied.success());
    }
    // The copy's own output directory (its binaries are not this build's), sharing this
    // build's intermediate files: the dependencies are not built again.
    let output = tempfile::tempdir().unwrap();
    let build_dir = Path::new(&binaries_dir()).parent().unwrap().to_owned();
    let mut watch = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["run-local", "--watch", "--runtime", "process", "--scenario", "queue", "--scenario", "pr-success"])
        .current_dir(tree.path())
        .env("CARGO_MANIFEST_DIR", tree.path().join("xtask"))
        .env("CARGO_TARGET_DIR", output.path())
        .env("CARGO_BUILD_BUILD_DIR", &build_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read on a thread of its own, to the end: run-local writes to it until it ends.
    let (lines, said) = std::sync::mpsc::channel();
    let stdout = std::io::BufReader::new(watch.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(stdout) {
            let _ = lines.send(line.unwrap_or_default());
        }
    });
    let mut seen = String::new();
    let mut wait_for = |start: &str| {
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = said.recv_timeout(left).unwrap_or_else(|_| panic!("no line {start:?} in:\n{seen}"));
            seen.push_str(&line);
            seen.push('\n');
            if line.starts_with(start) {
                return (line, seen.clone());
            }
        }
    };
    let (_, first) = wait_for("watching ");
    for scenario in ["queue", "pr-success"] {
        assert!(first.lines().any(|l| l.starts_with(scenario) && l.contains(" pass ")), "{scenario}: {first}");
    }
    let main = tree.path().join("services/webhook/src/main.rs");
    let source = std::fs::read_to_string(&main).unwrap();
    assert!(source.contains("\"webhook ready\""), "the webhook's start line moved: update this test");
    std::fs::write(&main, source.replace("\"webhook ready\"", "\"webhook ready, edited\"")).unwrap();
    let (summary, round) = wait_for("watch: ");
    assert!(summary.starts_with("watch: the webhook: build "), "only the webhook restarts: {summary}");
    assert!(summary.ends_with(", green"), "{round}");
    let after_change = round.rsplit("changed: ").next().unwrap();
    for scenario in ["queue", "pr-success"] {
        assert!(after_change.lines().any(|l| l.starts_with(scenario) && l.contains(" pass ")), "{scenario}: {round}");
    }
    let runs = output.path().join("workbench");
    let run = std::fs::read_dir(&runs).unwrap().flatten().find(|e| e.file_name().to_string_lossy().starts_with("run-"));
    let run = run.expect("a run directory").path();
    let log = std::fs::read_to_string(run.join("webhook.log")).unwrap();
    assert!(log.contains("webhook ready, edited"), "the rebuilt webhook runs:\n{log}");

    rustix::process::kill_process(rustix::process::Pid::from_child(&watch), rustix::process::Signal::INT).unwrap();
    let ended = watch.wait_with_output().unwrap();
    assert!(ended.status.success(), "Ctrl-C ends --watch normally: {}", String::from_utf8_lossy(&ended.stderr));
    let dir = run.display().to_string();
    assert_eq!(processes_of(&dir), Vec::<String>::new(), "processes of the run outlived it");
    assert!(!run.exists(), "a run that ended normally removes its directory");
}
