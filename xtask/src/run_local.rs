//! `cargo xtask run-local`: bring the deployment up on this machine (`local::Deployment`),
//! assert the flow through it (`local::scenario`), report, and tear everything down on every
//! exit path: success, failure, Ctrl-C, SIGTERM, a panicking scenario. `--keep` leaves it up
//! until `cargo xtask down`; `-i` opens a shell in it instead of running the scenarios.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use local::Deployment;
use local::deployment::{Binaries, DeployError, Options};
use local::scenario::{self, Ran};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::junit;
use crate::packages::{self, IPROUTE2, PODMAN, PROMETHEUS, RABBITMQ};
use crate::progress::{Spinner, Steps};
use crate::workspace::{CargoGroup, Profile};

#[derive(clap::Args, Default)]
pub struct Args {
    /// Where the services run: `podman` (containers of one pod, as in production), `process`
    /// (child processes of this command), or `auto`: podman when its packages are installed,
    /// else process.
    #[arg(long, value_enum, default_value_t = Runtime::Auto)]
    pub runtime: Runtime,
    /// On the podman runtime, make the pod with `podman kube play` of its Kubernetes manifest
    /// (as `cargo xtask kube` writes for production), rather than container by container.
    #[arg(long)]
    pub via_kube: bool,
    /// On the podman runtime, run this RabbitMQ image (present in podman's storage) instead of
    /// building localhost/workbench/rabbitmq.
    #[arg(long, value_name = "REF")]
    pub rabbitmq_image: Option<String>,
    /// On the podman runtime, run this tasks image (present in podman's storage) instead of
    /// building localhost/workbench/tasks.
    #[arg(long, value_name = "REF")]
    pub tasks_image: Option<String>,
    /// How many tasks workers to start.
    #[arg(long, default_value_t = 1)]
    pub workers: u16,
    /// Run the process runtime's services on hosts of their own, with N worker hosts: Linux
    /// network namespaces of this run with their own addresses and names (the broker's `amqp`,
    /// `webhook`, `services` for the mock GitHub and S3, `worker-1`...), joined by a bridge on a
    /// private range, nothing routed out; what `cargo xtask chaos partition` cuts. Needs root.
    #[arg(long, value_name = "N", conflicts_with_all = ["workers", "watch", "monitor", "pr", "via_kube", "attach"])]
    pub hosts: Option<u16>,
    /// Use the `webhook` and `tasks` binaries in DIR instead of building them (release).
    #[arg(long, value_name = "DIR")]
    pub binaries: Option<PathBuf>,
    /// Use these secrets (as written by `cargo xtask secrets`) instead of fresh ones.
    #[arg(long, value_name = "DIR")]
    pub secrets: Option<PathBuf>,
    /// Run only these scenarios (repeatable) [default: all of queue, amqp-refusals, s3,
    /// pr-success, pr-failure, cross-project, direct-trigger, bad-signature, kvm].
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
    /// Write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the results as JUnit XML to FILE: a test case per scenario, a failure with its
    /// message and the services' log tails; when the deployment does not come up, one failed
    /// case, `deployment`, saying why.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Also write the HTML report to FILE (it is always written into the run directory, as
    /// `report.html`): each scenario's result and what it asserts, and the timeline of each of
    /// its deliveries' traces across the webhook, the worker and the job's process, with links
    /// to the job logs. One file, readable offline.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Leave the deployment running after the scenarios, until `cargo xtask down` (or Ctrl-C).
    /// `--attach` runs the scenarios against it again.
    #[arg(long)]
    pub keep: bool,
    /// Run the scenarios (all, or those of `--scenario`) against the deployment a
    /// `run-local --keep` left running: nothing is built, started or torn down, so this takes
    /// as long as the scenarios do. Each run opens pull requests of its own.
    #[arg(long, conflicts_with_all = ["keep", "interactive", "pr", "via_kube", "binaries", "secrets", "json", "junit", "report"])]
    pub attach: bool,
    /// Keep the deployment up and, when a source of a service changes (under services/, or
    /// the workspace's Cargo.toml or Cargo.lock), rebuild the service binaries, restart only
    /// the services whose binary changed (the process, or on podman the container with the
    /// new binary copied in) and run the scenarios again; Ctrl-C tears down. Builds use the
    /// dev profile, as the tests do (unoptimised, incremental): a rebuild takes seconds.
    #[arg(long, conflicts_with_all = ["keep", "interactive", "pr", "binaries", "tasks_image", "json", "junit", "report"])]
    pub watch: bool,
    /// When a scenario fails, keep the first job whose tests failed (on the process runtime the
    /// deployment's first, on podman each worker's first): its checkout and, on podman, a
    /// container like its own, left running; keep the deployment up as `--keep` does, and
    /// print the command that opens a shell in the job's environment. `cargo xtask down`
    /// releases it. Run the failing scenario alone (`--scenario`): the others' fixtures fail on
    /// purpose (pr-failure). When every scenario passes, the run ends as without this.
    #[arg(long, conflicts_with_all = ["attach", "watch", "interactive", "pr"])]
    pub hold_failed: bool,
    /// Also run a real Prometheus (Debian's package) scraping the webhook, every worker and
    /// RabbitMQ (its `rabbitmq_prometheus` plugin), with the alert rules of
    /// deploy/prometheus/alerts.yml; its URL (on 127.0.0.1) is printed and linked from the
    /// webhook's status page. On the process runtime a process with its data in the run
    /// directory; on podman a container of the pod (its image built from Debian's packages).
    /// Useful with --keep or -i (not --watch: restarted workers listen on other ports).
    #[arg(long, conflicts_with_all = ["attach", "watch"])]
    pub monitor: bool,
    /// Bring the deployment up and open a shell in it instead of running the scenarios;
    /// leaving the shell tears it down.
    #[arg(short, long, conflicts_with_all = ["keep", "scenarios"])]
    pub interactive: bool,
    /// Real GitHub mode (Cockpit's `--pr` test): instead of the scenarios, scan this pull
    /// request of the real `--repo`, run its contexts on the local deployment and post real
    /// statuses with the token in `--github-token`. Needs internet access.
    #[arg(short = 'p', long = "pr", value_name = "PR", requires_all = ["repo", "github_token"], conflicts_with_all = ["scenarios", "interactive"])]
    pub pr: Option<u64>,
    /// The repository of `--pr`, OWNER/NAME.
    #[arg(long, value_name = "OWNER/NAME", requires = "pr")]
    pub repo: Option<String>,
    /// A file holding a GitHub token allowed to post statuses to `--repo`.
    #[arg(long, value_name = "FILE", requires = "pr")]
    pub github_token: Option<PathBuf>,
    /// Let `--pr` run the pull request's code unsandboxed: on the process runtime, its tests
    /// run as you, on this machine, next to the GitHub token and the CA key. Only for code you
    /// trust.
    #[arg(long, requires = "pr")]
    pub allow_unsandboxed_pr: bool,
    /// The fixture projects and test map the scenarios use [default: the repository's
    /// fixtures/]: copy the directory and change a project to see what the deployment makes
    /// of it.
    #[arg(long, value_name = "DIR")]
    pub fixtures: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Default, PartialEq, Eq)]
pub enum Runtime {
    #[default]
    Auto,
    Process,
    Podman,
}

impl Runtime {
    /// The runtime `auto` stands for on this machine, said out loud.
    fn resolve(self) -> Runtime {
        if self != Runtime::Auto {
            return self;
        }
        let missing = packages::missing(&PODMAN);
        if missing.is_empty() {
            println!("runtime: podman (auto)");
            Runtime::Podman
        } else {
            println!(
                "runtime: process (auto; the podman runtime needs {}: `--runtime podman` installs them)",
                missing.join(" ")
            );
            Runtime::Process
        }
    }

    fn name(self) -> &'static str {
        match self {
            Runtime::Auto => "auto",
            Runtime::Process => "process",
            Runtime::Podman => "podman",
        }
    }
}

/// One scenario's result.
struct Outcome {
    name: String,
    seconds: f64,
    ran: Result<Ran, String>,
    /// The ids of the deliveries it sent, whose traces the report draws.
    deliveries: Vec<String>,
}

/// The file that names the kept deployment's process, for `cargo xtask down`.
fn kept_file() -> PathBuf {
    crate::workspace::runs_dir().join("kept.pid")
}

/// The socket on which the kept deployment's process runs scenarios for `--attach`.
fn kept_socket() -> PathBuf {
    crate::workspace::runs_dir().join("kept.sock")
}

/// What `--attach` asks of the kept deployment: one line of JSON.
#[derive(serde::Serialize, serde::Deserialize)]
struct AttachRequest {
    scenarios: Vec<String>,
}

/// One scenario's result as the report and `--attach` carry it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Reported {
    name: String,
    /// `pass`, `skip` or `fail`.
    status: String,
    seconds: f64,
    detail: String,
}

impl From<&Outcome> for Reported {
    fn from(outcome: &Outcome) -> Reported {
        let (status, detail) = match &outcome.ran {
            Ok(Ran::Passed) => ("pass", String::new()),
            Ok(Ran::Skipped(reason)) => ("skip", reason.clone()),
            Err(err) => ("fail", err.clone()),
        };
        Reported { name: outcome.name.clone(), status: status.into(), seconds: outcome.seconds, detail }
    }
}

impl From<Reported> for Outcome {
    fn from(reported: Reported) -> Outcome {
        let ran = match reported.status.as_str() {
            "pass" => Ok(Ran::Passed),
            "skip" => Ok(Ran::Skipped(reported.detail)),
            _ => Err(reported.detail),
        };
        Outcome { name: reported.name, seconds: reported.seconds, ran, deliveries: Vec::new() }
    }
}

/// `--attach`: asks the kept deployment's process to run `scenarios`, and prints their table.
fn attach(scenarios: &[String]) -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    let socket = kept_socket();
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).map_err(|err| {
        anyhow::anyhow!(
            "no kept deployment to attach to ({}: {err}): start one with `cargo xtask run-local --keep`",
            socket.display()
        )
    })?;
    let request = AttachRequest { scenarios: scenarios.to_vec() };
    writeln!(stream, "{}", serde_json::to_string(&request)?).context("asking the kept deployment")?;
    let spinner = Spinner::start("scenarios on the kept deployment");
    let mut outcomes = Vec::new();
    for line in std::io::BufReader::new(stream).lines() {
        let line = line.context("reading the kept deployment's answer")?;
        outcomes.push(Outcome::from(serde_json::from_str::<Reported>(&line).context("a malformed answer")?));
    }
    spinner.finish(outcomes.iter().all(|o| o.ran.is_ok()));
    if outcomes.is_empty() {
        bail!("the kept deployment ended before it answered (see its terminal)");
    }
    print_table(&outcomes);
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.ran.is_err()).collect();
    for outcome in &failed {
        eprintln!("\nscenario {} failed: {}", outcome.name, outcome.ran.as_ref().err().map_or("", String::as_str));
    }
    if !failed.is_empty() {
        let run_dir = std::fs::read_to_string(kept_file()).unwrap_or_default().lines().nth(1).unwrap_or("").to_owned();
        bail!("{} of {} scenarios failed; the services' logs are in {run_dir}", failed.len(), outcomes.len());
    }
    Ok(())
}

/// Serves `--attach` until the future is dropped: one request at a time, each answered with
/// a line of JSON per scenario.
async fn serve_attach(listener: tokio::net::UnixListener, deployment: &Arc<Deployment>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (reader, mut writer) = stream.into_split();
        let mut line = String::new();
        // One request at a time: a client that connects and says nothing must not hold the rest.
        let mut reader = tokio::io::BufReader::new(reader);
        let read = reader.read_line(&mut line);
        if !matches!(tokio::time::timeout(std::time::Duration::from_secs(10), read).await, Ok(Ok(_))) {
            continue;
        }
        let Ok(request) = serde_json::from_str::<AttachRequest>(&line) else { continue };
        let names: Vec<String> = match request.scenarios.is_empty() {
            true => scenario::ALL.iter().map(|name| name.to_string()).collect(),
            false => request.scenarios,
        };
        let mut answer = String::new();
        for outcome in run_scenarios(deployment, &names).await {
            answer += &serde_json::to_string(&Reported::from(&outcome)).expect("an outcome encodes");
            answer.push('\n');
        }
        let _ = writer.write_all(answer.as_bytes()).await;
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    for name in &args.scenarios {
        if !scenario::ALL.contains(&name.as_str()) {
            bail!("no scenario {name:?}; the scenarios are {}", scenario::ALL.join(", "));
        }
    }
    if args.attach {
        return attach(&args.scenarios);
    }
    let runtime = match args.hosts {
        Some(_) if args.runtime == Runtime::Podman => {
            bail!("--hosts runs the process runtime's services on hosts of their own: drop --runtime podman")
        }
        Some(_) => Runtime::Process,
        None => args.runtime.resolve(),
    };
    if args.via_kube && runtime != Runtime::Podman {
        bail!("--via-kube plays the pod's manifest with podman: pass --runtime podman");
    }
    if args.pr.is_some() && runtime == Runtime::Process && !args.allow_unsandboxed_pr {
        bail!(
            "--pr on the process runtime would run the pull request's code as you, on this machine, next to \
             your GitHub token and the CA key: pass --allow-unsandboxed-pr if you trust that code"
        );
    }
    packages::ensure(match (runtime, args.monitor, args.hosts) {
        (Runtime::Podman, _, _) => &PODMAN[..],
        (_, true, _) => &[RABBITMQ, PROMETHEUS][..],
        (_, _, Some(_)) => &[RABBITMQ, IPROUTE2][..],
        _ => &[RABBITMQ][..],
    })?;
    // Built, like the tasks image, beside the broker's start (`Preparation`).
    let (binaries, build) = match &args.binaries {
        Some(dir) => (Binaries::in_dir(dir), None),
        None if args.watch => (crate::workspace::binaries(Profile::Dev), Some(Profile::Dev)),
        // A given tasks image brings its own.
        None if runtime == Runtime::Podman && args.tasks_image.is_some() => {
            (crate::workspace::binaries(Profile::Release), None)
        }
        None => (crate::workspace::binaries(Profile::Release), Some(Profile::Release)),
    };
    let preparation = Preparation {
        build,
        binaries: binaries.clone(),
        tasks_image: runtime == Runtime::Podman && args.tasks_image.is_none(),
    };
    let runtime = match runtime {
        Runtime::Podman => {
            if args.rabbitmq_image.is_none() || args.tasks_image.is_none() {
                crate::images::ensure_base()?;
            }
            let rabbitmq_image = crate::images::ensure_rabbitmq(args.rabbitmq_image.as_deref(), false)?;
            // A given image is checked before anything starts; ours is built beside the broker.
            let tasks_image = match &args.tasks_image {
                Some(given) => {
                    crate::images::check_tasks(given)?;
                    given.clone()
                }
                None => local::images::TASKS.to_owned(),
            };
            if args.monitor {
                crate::images::ensure_prometheus()?;
            }
            local::deployment::Runtime::Podman { rabbitmq_image, tasks_image, via_kube: args.via_kube }
        }
        _ if args.hosts.is_some() => local::deployment::Runtime::Hosts,
        _ => local::deployment::Runtime::Process,
    };
    let runs = crate::workspace::runs_dir();
    std::fs::create_dir_all(&runs).with_context(|| format!("creating {}", runs.display()))?;
    let run_dir = tempfile::Builder::new().prefix("run-").tempdir_in(&runs).context("creating the run directory")?;
    let options = Options {
        binaries,
        secrets: args.secrets.clone(),
        workers: args.hosts.unwrap_or(args.workers),
        fixtures: args.fixtures.clone().unwrap_or_else(|| crate::workspace::root().join("fixtures")),
        real_github_token: args.github_token.clone(),
        runtime,
        hold_failed: args.hold_failed,
        monitor: args.monitor.then(|| local::prometheus::Settings {
            rules: crate::workspace::root().join("deploy/prometheus/alerts.yml"),
            every: std::time::Duration::from_secs(5),
            alerts_after: None,
        }),
    };
    let result = crate::workspace::runtime()?.block_on(async {
        // One listener of the signal, one token: a kept deployment waits for the same token to
        // end normally, and sees it cancelled in the same poll as this select does.
        let stop = CancellationToken::new();
        let _listener = tokio_util::task::AbortOnDropHandle::new(tokio::spawn({
            let stop = stop.clone();
            async move {
                shutdown::requested().await;
                stop.cancel();
            }
        }));
        tokio::select! {
            // The kept deployment ending normally goes first.
            biased;
            result = deploy_and_check(run_dir.path(), &options, preparation, &args, &stop) => result,
            () = stop.cancelled() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // Every service has been stopped by now: their guards dropped with the future above. Only
    // a kept run wrote the pid file; another run must not remove a kept deployment's.
    let ours = std::fs::read_to_string(kept_file())
        .is_ok_and(|text| text.lines().next() == Some(&std::process::id().to_string()));
    if ours {
        let _ = std::fs::remove_file(kept_file());
    }
    if result.is_err() {
        let kept = run_dir.keep();
        eprintln!("the deployment was torn down; its logs are kept in {}", kept.display());
    }
    result
}

/// What the services need that is made beside the broker's start: their binaries' build, then
/// on podman the tasks image built from them (unless one was given).
struct Preparation {
    build: Option<Profile>,
    binaries: Binaries,
    /// Whether to build the tasks image.
    tasks_image: bool,
}

/// The preparation failed: what it said. The deployment never came up, and has nothing to
/// report on.
#[derive(Debug)]
struct PreparationFailed(String);

impl std::fmt::Display for PreparationFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PreparationFailed {}

impl Preparation {
    /// Brings the deployment up, making this beside it. A failed preparation ends the start at
    /// once, the broker's included, rather than once the broker answers.
    async fn deploy(self, run_dir: &Path, options: &Options) -> anyhow::Result<Deployment> {
        let steps = Steps::default();
        let display = steps.display().clone();
        let (said, mut result) = tokio::sync::watch::channel(None::<Result<(), String>>);
        // Aborted with the start: a dropped build stops cargo.
        let _preparing = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            let prepared = self.make(display).await.map_err(|err| format!("{err:#}"));
            let _ = said.send(Some(prepared));
        }));
        let mut failed = result.clone();
        let prepared = async move {
            let said = result
                .wait_for(Option::is_some)
                .await
                .map_err(|_| "preparing the services' binaries and image panicked (see above)".to_owned())?;
            said.clone().expect("waited for it")
        };
        tokio::select! {
            deployment = Deployment::start_beside(run_dir, options, &steps, prepared) => match deployment {
                Err(DeployError::Prepared(said)) => Err(PreparationFailed(said).into()),
                deployment => Ok(deployment?),
            },
            Ok(said) = failed.wait_for(|said| matches!(said, Some(Err(_)))) => {
                Err(PreparationFailed(said.clone().and_then(Result::err).unwrap_or_default()).into())
            }
        }
    }

    async fn make(self, display: indicatif::MultiProgress) -> anyhow::Result<()> {
        if let Some(profile) = self.build {
            crate::workspace::build(profile, CargoGroup::Own, Some(&display)).await?;
        }
        if self.tasks_image {
            // podman commands: a thread of their own, waited for if the start is dropped.
            tokio::task::spawn_blocking(move || crate::images::build_tasks(&self.binaries, false, Some(&display)))
                .await
                .expect("the image build does not panic")?;
        }
        Ok(())
    }
}

async fn deploy_and_check(
    run_dir: &Path,
    options: &Options,
    preparation: Preparation,
    args: &Args,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let deployment = match preparation.deploy(run_dir, options).await {
        Ok(deployment) => deployment,
        Err(err) => {
            if let Some(path) = &args.junit {
                let message = format!("the deployment did not come up: {err}");
                let failed = junit::Verdict::Failed { message: message.clone(), detail: message };
                let case = junit::Case {
                    name: "deployment".into(),
                    seconds: started.elapsed().as_secs_f64(),
                    verdict: failed,
                };
                junit::write(path, runtime_name(&options.runtime), case.seconds, &[case])?;
            }
            // A failed build or image: nothing ran that a bundle could show.
            if !err.is::<PreparationFailed>() {
                print_bundle(local::bundle::write(None, run_dir));
            }
            return Err(err);
        }
    };
    let mut deployment = Arc::new(deployment);
    let result = match args.watch {
        true => watch(&mut deployment, &scenario_names(args), stop).await,
        false => check(&deployment, run_dir, runtime_name(&options.runtime), args, started, stop).await,
    };
    // Scenario tasks have ended, so this is the last reference: dropping it tears down.
    let spinner = Spinner::start("tearing the deployment down");
    drop(deployment);
    spinner.finish(true);
    result
}

/// What run-local does with the deployment up: the shell, the real GitHub mode, or the
/// scenarios and their report (and with `--keep`, waiting).
async fn check(
    deployment: &Arc<Deployment>,
    run_dir: &Path,
    runtime: &str,
    args: &Args,
    started: Instant,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    if args.interactive {
        return shell(deployment).await;
    }
    let names = scenario_names(args);
    if let (Some(number), Some(repo)) = (args.pr, &args.repo) {
        return real_pull_request(deployment, repo, number).await;
    }
    let outcomes = run_scenarios(deployment, &names).await;
    let seconds = started.elapsed().as_secs_f64();
    print_table(&outcomes);
    let endpoints = deployment.endpoints();
    let mut report = json!({
        "runtime": runtime,
        "seconds": seconds,
        "scenarios": outcomes.iter().map(Reported::from).collect::<Vec<_>>(),
    });
    // Where the services were (or, with --keep, are), and how to stop a kept deployment.
    report["endpoints"] = endpoints.to_json();
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.ran.is_err()).collect();
    // Held for a failed run only: the scenarios' fixtures fail on purpose too (pr-failure).
    let held = match args.hold_failed && !failed.is_empty() {
        true => deployment.held().into_iter().next(),
        false => None,
    };
    // A held job keeps the failed run's deployment up: it is there to be seen.
    let keeping = (args.keep && failed.is_empty()) || held.is_some();
    let shell = held.as_ref().map(|held| deployment.held_shell(held));
    if keeping {
        report["stop"] = json!("cargo xtask down");
    }
    if let Some(held) = &held {
        report["held"] = json!({ "slug": held.slug, "shell": shell.as_ref().and_then(|shell| shell.as_ref().ok()) });
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    // Read once: on podman each service's log is fetched through the podman service.
    let tails = failure_tails(deployment, &outcomes);
    if let Some(path) = &args.junit {
        write_junit(path, runtime, seconds, &outcomes, tails.as_deref())?;
    }
    write_report(deployment, runtime, seconds, &outcomes, args.report.as_deref()).await;
    if !failed.is_empty() {
        print_failures(&outcomes, tails.as_deref());
        print_bundle(local::bundle::write(Some(deployment), run_dir));
    }
    match (&held, shell) {
        (Some(held), Some(shell)) => match shell {
            Ok(shell) => println!("\nThe failed job {} is held. A shell in its environment:\n  {shell}", held.slug),
            Err(why) => println!(
                "\nThe failed job {} is held, in {}; no shell command: {why}",
                held.slug,
                held.scratch.display()
            ),
        },
        _ if args.hold_failed && failed.is_empty() => {
            println!("\n--hold-failed: every scenario passed; what failed jobs left is released")
        }
        _ if args.hold_failed => println!("\n--hold-failed: no job failed, none is held"),
        _ => {}
    }
    if keeping {
        let socket = kept_socket();
        let _ = std::fs::remove_file(&socket);
        let listener =
            tokio::net::UnixListener::bind(&socket).with_context(|| format!("listening on {}", socket.display()))?;
        std::fs::write(kept_file(), format!("{}\n{}\n", std::process::id(), run_dir.display()))
            .with_context(|| format!("writing {}", kept_file().display()))?;
        println!("\nThe deployment stays up until `cargo xtask down` (or Ctrl-C here):");
        print_endpoints(deployment);
        println!("  again:       cargo xtask run-local --attach [--scenario NAME]...");
        tokio::select! {
            () = stop.cancelled() => {}
            () = serve_attach(listener, deployment) => {}
        }
        let _ = std::fs::remove_file(&socket);
    }
    if !failed.is_empty() {
        bail!("{} of {} scenarios failed", failed.len(), outcomes.len());
    }
    Ok(())
}

/// The scenarios to run: those of `--scenario`, else all.
fn scenario_names(args: &Args) -> Vec<String> {
    match args.scenarios.is_empty() {
        true => scenario::ALL.iter().map(|name| name.to_string()).collect(),
        false => args.scenarios.clone(),
    }
}

/// `--watch`: the scenarios, then, for every change of the services' sources, a build, a
/// restart of the services whose binary changed, and the scenarios again, until Ctrl-C. A
/// failed build or restart is reported and waits for the next change: the developer fixes it.
async fn watch(deployment: &mut Arc<Deployment>, names: &[String], stop: &CancellationToken) -> anyhow::Result<()> {
    use crate::watch::{Sources, Stamps};
    let root = crate::workspace::root();
    let mut sources = Sources::watch(&root)?;
    let round = |outcomes: &[Outcome], deployment: &Deployment, summary: Option<String>| {
        print_table(outcomes);
        print_failures(outcomes, failure_tails(deployment, outcomes).as_deref());
        if let Some(summary) = summary {
            println!("{summary}");
        }
        println!("\nwatching {} for changes (Ctrl-C tears the deployment down)", root.join("services").display());
    };
    let Some(outcomes) = stop.run_until_cancelled(run_scenarios(deployment, names)).await else { return Ok(()) };
    round(&outcomes, deployment, None);
    loop {
        let Some(changed) = stop.run_until_cancelled(sources.changed()).await else { return Ok(()) };
        let changed = changed?;
        let shown: Vec<String> = changed.iter().map(|path| path.display().to_string()).collect();
        println!("\nchanged: {}", shown.join(", "));
        let before = Stamps::of(&deployment.binaries);
        let began = Instant::now();
        let build = crate::workspace::build(Profile::Dev, CargoGroup::Own, None);
        let Some(built) = stop.run_until_cancelled(build).await else { return Ok(()) };
        let build_seconds = began.elapsed().as_secs_f64();
        let binaries = match built {
            Ok(binaries) => binaries,
            Err(err) => {
                eprintln!("{err:#}\nwatching for the next change");
                continue;
            }
        };
        let restart = Stamps::of(&binaries).changed_since(&before);
        if restart.is_empty() {
            println!("watch: no service binary changed (build {build_seconds:.2} s)");
            continue;
        }
        let began = Instant::now();
        // The scenarios' tasks hold the only other references, and they have ended.
        let deployment_now = Arc::get_mut(deployment).expect("no scenario runs between rounds");
        let mut restarted = Vec::new();
        for &service in &restart {
            let step = Spinner::start(&format!("restarting {}", restart_name(service)));
            let result = stop.run_until_cancelled(deployment_now.restart(service, &binaries)).await;
            let Some(result) = result else { return Ok(()) };
            step.finish(result.is_ok());
            if let Err(err) = result {
                eprintln!("restarting {} failed: {err}\nwatching for the next change", restart_name(service));
                break;
            }
            restarted.push(restart_name(service));
        }
        if restarted.len() < restart.len() {
            continue;
        }
        let restart_seconds = began.elapsed().as_secs_f64();
        let began = Instant::now();
        let Some(outcomes) = stop.run_until_cancelled(run_scenarios(deployment, names)).await else { return Ok(()) };
        let scenario_seconds = began.elapsed().as_secs_f64();
        let failed = outcomes.iter().filter(|outcome| outcome.ran.is_err()).count();
        let summary = format!(
            "watch: {}: build {build_seconds:.2} s, restart {restart_seconds:.2} s, scenarios {scenario_seconds:.2} s, {}",
            restarted.join(" and "),
            if failed == 0 { "green".to_owned() } else { format!("{failed} failed") },
        );
        round(&outcomes, deployment, Some(summary));
    }
}

/// The runtime's name, as the report and JUnit give it.
fn runtime_name(runtime: &local::deployment::Runtime) -> &'static str {
    match runtime {
        local::deployment::Runtime::Process => Runtime::Process.name(),
        local::deployment::Runtime::Podman { .. } => Runtime::Podman.name(),
        local::deployment::Runtime::Hosts => "hosts",
    }
}

fn restart_name(service: local::deployment::Restart) -> &'static str {
    match service {
        local::deployment::Restart::Webhook => "the webhook",
        local::deployment::Restart::Workers => "the tasks workers",
    }
}

/// The scenarios' results as JUnit XML; a failure carries the services' log tails.
fn write_junit(
    path: &Path,
    runtime: &str,
    seconds: f64,
    outcomes: &[Outcome],
    tails: Option<&str>,
) -> anyhow::Result<()> {
    let tails = tails.unwrap_or_default();
    let cases: Vec<junit::Case> = outcomes
        .iter()
        .map(|outcome| junit::Case {
            name: outcome.name.clone(),
            seconds: outcome.seconds,
            verdict: match &outcome.ran {
                Ok(Ran::Passed) => junit::Verdict::Passed,
                Ok(Ran::Skipped(reason)) => junit::Verdict::Skipped(reason.clone()),
                Err(err) => junit::Verdict::Failed { message: err.clone(), detail: format!("{err}\n\n{tails}") },
            },
        })
        .collect();
    junit::write(path, runtime, seconds, &cases)
}

/// For each failed scenario, why; then the services' log `tails` (nothing when all passed).
fn print_failures(outcomes: &[Outcome], tails: Option<&str>) {
    for outcome in outcomes.iter().filter(|o| o.ran.is_err()) {
        eprintln!("\nscenario {} failed: {}", outcome.name, outcome.ran.as_ref().err().map_or("", String::as_str));
    }
    if let Some(tails) = tails {
        eprintln!("\n{tails}");
    }
}

/// The services' log tails when a scenario failed: what a failure report shows.
fn failure_tails(deployment: &Deployment, outcomes: &[Outcome]) -> Option<String> {
    outcomes.iter().any(|o| o.ran.is_err()).then(|| log_tails(deployment))
}

/// Says where the failure bundle is, or why there is none.
fn print_bundle(written: Result<PathBuf, local::bundle::BundleError>) {
    match written {
        Ok(path) => {
            eprintln!("\nfailure bundle (logs, queues, GitHub requests and statuses, job logs): {}", path.display())
        }
        Err(err) => eprintln!("\n{err}"),
    }
}

/// The last lines of each service's log, under its name and path.
fn log_tails(deployment: &Deployment) -> String {
    let tails = deployment.log_tails(15).into_iter();
    let tails = tails.map(|(name, path, tail)| format!("{name} ({}), last lines:\n{tail}", path.display()));
    tails.collect::<Vec<_>>().join("\n\n")
}

/// Runs the scenarios `names`: side by side (each on pull requests of its own), then those of
/// [`scenario::ALONE`] one at a time. The outcomes come in the order of `names`.
async fn run_scenarios(deployment: &Arc<Deployment>, names: &[String]) -> Vec<Outcome> {
    use local::deployment::Progress;
    let steps = Arc::new(Steps::default());
    let run = |name: String| {
        let (deployment, steps) = (deployment.clone(), steps.clone());
        async move {
            let step = steps.start(&format!("scenario {name}"));
            let began = Instant::now();
            // In a task of its own: a scenario that panics fails alone, and teardown still runs.
            let task = tokio::spawn({
                let name = name.clone();
                async move {
                    let (ran, deliveries) = scenario::run_recorded(&name, &deployment).await;
                    (ran.map_err(|err| err.to_string()), deliveries)
                }
            });
            let (ran, deliveries) =
                task.await.unwrap_or_else(|panic| (Err(format!("the scenario panicked: {panic}")), Vec::new()));
            steps.done(step, ran.is_ok());
            Outcome { name, seconds: began.elapsed().as_secs_f64(), ran, deliveries }
        }
    };
    let (alone, together): (Vec<String>, Vec<String>) =
        names.iter().cloned().partition(|name| scenario::ALONE.contains(&name.as_str()));
    let mut side_by_side = tokio::task::JoinSet::new();
    for name in together {
        side_by_side.spawn(run(name));
    }
    let mut outcomes = side_by_side.join_all().await;
    for name in alone {
        outcomes.push(run(name).await);
    }
    outcomes.sort_by_key(|outcome| names.iter().position(|name| *name == outcome.name));
    outcomes
}

/// The HTML report, into the run directory and to `also`; best effort: a report that cannot be
/// written is a warning, and must not hide the run's results.
async fn write_report(deployment: &Deployment, runtime: &str, seconds: f64, outcomes: &[Outcome], also: Option<&Path>) {
    use local::report::{Run, Scenario, Verdict};
    let scenarios: Vec<Scenario> = outcomes
        .iter()
        .map(|outcome| Scenario {
            name: &outcome.name,
            seconds: outcome.seconds,
            verdict: match &outcome.ran {
                Ok(Ran::Passed) => Verdict::Passed,
                Ok(Ran::Skipped(why)) => Verdict::Skipped(why),
                Err(why) => Verdict::Failed(why),
            },
            deliveries: &outcome.deliveries,
        })
        .collect();
    let logs_url = format!("{}logs", deployment.s3.link_url());
    let run = Run { runtime, seconds, run_dir: &deployment.run_dir, logs_url: &logs_url, scenarios: &scenarios };
    match (local::report::write(&run, also).await, also) {
        (Err(err), _) => eprintln!("warning: no HTML report: {err}"),
        (Ok(_), Some(also)) => println!("report: {}", also.display()),
        (Ok(path), None) if outcomes.iter().any(|outcome| outcome.ran.is_err()) => {
            println!("report: {}", path.display())
        }
        (Ok(_), None) => {}
    }
}

fn print_table(outcomes: &[Outcome]) {
    println!("\n{:<16} {:<6} {:>9}", "scenario", "result", "time");
    for outcome in outcomes {
        let status = match &outcome.ran {
            Ok(Ran::Passed) => "pass".to_owned(),
            Ok(Ran::Skipped(reason)) => format!("skip   ({reason})"),
            Err(_) => "FAIL".to_owned(),
        };
        println!("{:<16} {:<6} {:>7.2} s", outcome.name, status, outcome.seconds);
    }
}

fn print_endpoints(deployment: &Deployment) {
    let endpoints = deployment.endpoints();
    println!("  AMQP:        {} (TLS; client certificate in {})", endpoints.amqp, endpoints.secrets.display());
    println!("  webhook:     {} (status page: {}status)", endpoints.webhook, endpoints.webhook);
    println!("  GitHub API:  {} (mock)", endpoints.github_api);
    println!("  S3:          {} (logs: {}logs/)", endpoints.s3, endpoints.s3);
    if let Some(url) = &endpoints.prometheus {
        println!("  Prometheus:  {url} (alerts: {url}alerts, targets: {url}targets)");
    }
    println!("  logs:        {}", deployment.run_dir.display());
    if let Some(pod) = deployment.pod() {
        let podman = pod.podman();
        let podman = [podman.get_program()].into_iter().chain(podman.get_args()).map(|arg| arg.to_string_lossy());
        let podman = podman.collect::<Vec<_>>().join(" ");
        let worker = pod.container(&local::pod::worker_name(1));
        println!("  pod:         {}", pod.name());
        println!("    {podman} ps --all --pod --filter pod={}", pod.name());
        println!("    {podman} logs --follow {worker}");
        println!("    {podman} exec -it {worker} bash");
    }
}

/// A shell that reaches the deployment: in the first tasks container on the podman runtime,
/// else in the run directory with the environment the tasks tools read.
async fn shell(deployment: &Deployment) -> anyhow::Result<()> {
    println!("\nThe deployment is up; this shell reaches it. Leave it (exit) to tear it down.");
    print_endpoints(deployment);
    println!(
        "\n  tasks inspect-queue                          each queue's messages, without taking them\n  \
         tasks tests-scan --repo workbench-ci/demo -v  what a scan of the open pull requests would queue\n  \
         tasks run-queue --hostname me                 one more worker, in the foreground\n"
    );
    let mut command = match deployment.pod() {
        Some(pod) => {
            let container = pod.container(&local::pod::worker_name(1));
            println!("  (a shell in container {container})\n");
            let mut command = tokio::process::Command::from(pod.podman());
            command.args(["exec", "-it", &container, "bash"]);
            command
        }
        None => {
            println!(
                "  cargo xtask payload pull_request --repo workbench-ci/demo --sha SHA | tasks publish-queue --queue webhook\n"
            );
            // Cockpit's tools reach the S3 store by its name, which this machine's resolver need
            // not know: the shell gets an /etc/hosts of its own that does, in a mount namespace
            // of its own (this machine's file is left alone).
            let hosts = deployment.run_dir.join("hosts");
            let system = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
            let line = format!("127.0.0.1\t{}\n", local::secrets::S3_HOST);
            std::fs::write(&hosts, format!("{system}{line}"))
                .with_context(|| format!("writing {}", hosts.display()))?;
            let program = std::env::var("SHELL").unwrap_or_else(|_| "/bin/bash".into());
            let mut command = tokio::process::Command::new("unshare");
            if !rustix::process::geteuid().is_root() {
                // A user namespace lets a user mount in it, as its root.
                command.arg("--map-root-user");
            }
            command
                .args([
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    "sh",
                    "-c",
                    "mount --bind \"$0\" /etc/hosts && exec \"$1\"",
                ])
                .arg(&hosts)
                .arg(program)
                .current_dir(&deployment.run_dir)
                .envs(deployment.shell_env());
            command
        }
    };
    let mut child = command.kill_on_drop(true).spawn().context("starting the shell")?;
    child.wait().await?;
    Ok(())
}

/// The real GitHub mode: one pull request scanned and tested, its statuses printed.
async fn real_pull_request(deployment: &Deployment, repo: &str, number: u64) -> anyhow::Result<()> {
    let spinner = Spinner::start(&format!("testing {repo}#{number} (statuses on GitHub)"));
    // Cockpit's default job timeout, and some.
    let within = std::time::Duration::from_secs(130 * 60);
    let result = scenario::scan_pull_request(deployment, repo, number, within).await;
    spinner.finish(result.is_ok());
    let statuses = result?;
    println!("\n{:<32} {:<8} description", "context", "state");
    for status in &statuses {
        println!("{:<32} {:<8} {}", status.context, status.state, status.description.as_deref().unwrap_or_default());
    }
    if statuses.iter().any(|s| s.state != "success") {
        bail!("not every context of {repo}#{number} succeeded; logs: {}", deployment.run_dir.display());
    }
    Ok(())
}

/// `cargo xtask down`: stops the deployment a `run-local --keep` left running.
pub fn down() -> anyhow::Result<()> {
    let file = kept_file();
    let Ok(text) = std::fs::read_to_string(&file) else {
        println!("no kept deployment ({} does not exist)", file.display());
        return Ok(());
    };
    let pid: i32 = text.lines().next().and_then(|line| line.parse().ok()).context("a malformed kept.pid")?;
    let Some(pid) = rustix::process::Pid::from_raw(pid) else { bail!("a malformed kept.pid") };
    if rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_err() {
        let _ = std::fs::remove_file(&file);
        println!("the kept deployment was already gone");
        return Ok(());
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    // The kept run removes its pid file once torn down, the last thing it does: a process that
    // ended but was not yet reaped by its parent (a zombie) still answers the test below.
    while file.exists() && rustix::process::test_kill_process(pid).is_ok() {
        if Instant::now() > deadline {
            bail!("run-local (pid {}) did not stop within 60 s", pid.as_raw_nonzero());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    println!("the kept deployment is torn down");
    Ok(())
}
