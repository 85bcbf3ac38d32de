//! `cargo xtask bench <what>`: measurements, printed as recorded in docs/benchmarks.md.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use local::Broker;

use crate::packages::{self, RABBITMQ};
use crate::progress::step;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Private broker start: launch to the first successful TLS + EXTERNAL login.
    BrokerStart {
        /// How many starts to measure.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Webhook throughput and latency with publisher confirms, against the raw broker rate.
    Webhook {
        /// Concurrent HTTP clients (each on one keep-alive connection).
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Deliveries sent in the throughput run, and messages in the raw broker run.
        #[arg(long, default_value_t = 10_000)]
        deliveries: usize,
        /// Deliveries per second of the latency run (which lasts 5 s): below what the webhook
        /// sustains, so that the latency is not that of a queue.
        #[arg(long, default_value_t = 500)]
        rate: usize,
    },
    /// `cargo xtask run-local` end to end, as a whole process, with the binaries (and images)
    /// already built.
    RunLocal {
        /// How many runs to measure.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// The runtime to measure: process or podman.
        #[arg(long, default_value = "process")]
        runtime: String,
        /// On podman, make the pod with `podman kube play`.
        #[arg(long)]
        via_kube: bool,
    },
    /// The inner loop (process runtime): `run-local --attach` of every scenario against a kept
    /// deployment, timed as a whole command; then `run-local --watch` on a copy of the tree,
    /// timed from a one-line change of a webhook source to the scenarios green again.
    InnerLoop {
        /// How many attaches, and changes under `--watch`, to measure.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// The tasks worker (release build, process sandbox): latency from a pull_request event in
    /// `webhook` to "Not yet tested" and from a job in `public` to "In progress", one at a time;
    /// then no-op jobs per second with 1 and with 2 workers.
    Worker {
        /// Events, and jobs, of the latency runs.
        #[arg(long, default_value_t = 100)]
        events: usize,
        /// Jobs of each throughput run.
        #[arg(long, default_value_t = 100)]
        jobs: usize,
    },
    /// Jobs per second with 1, 2 and 4 worker hosts (`run-local --hosts`, release build), the
    /// jobs waiting rather than computing (each sleeps): throughput against the 1-host run.
    /// Needs root.
    Hosts {
        /// Jobs of each run.
        #[arg(long, default_value_t = 48)]
        jobs: usize,
        /// Seconds each job sleeps.
        #[arg(long, default_value_t = 2)]
        sleep: u64,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    packages::ensure(&[RABBITMQ])?;
    match args.what {
        What::BrokerStart { runs } => broker_start(runs),
        What::Webhook { clients, deliveries, rate } => {
            let binaries = crate::workspace::build_binaries(crate::workspace::Profile::Release)?;
            crate::workspace::runtime()?.block_on(webhook(&binaries.webhook, clients, deliveries, rate))
        }
        What::RunLocal { runs, runtime, via_kube } => run_local(runs, &runtime, via_kube),
        What::InnerLoop { runs } => inner_loop(runs),
        What::Worker { events, jobs } => {
            let binaries = crate::workspace::build_binaries(crate::workspace::Profile::Release)?;
            crate::workspace::runtime()?.block_on(worker(&binaries.tasks, events, jobs))
        }
        What::Hosts { jobs, sleep } => {
            packages::ensure(&[crate::packages::IPROUTE2])?;
            let binaries = crate::workspace::build_binaries(crate::workspace::Profile::Release)?;
            crate::workspace::runtime()?.block_on(hosts(binaries, jobs, sleep))
        }
    }
}

/// Jobs per second on 1, 2 and 4 worker hosts, each job sleeping `sleep` seconds.
async fn hosts(binaries: local::Binaries, jobs: usize, sleep: u64) -> anyhow::Result<()> {
    let mut figures = Vec::new();
    for (run, hosts) in [1u16, 2, 4].into_iter().enumerate() {
        let runs = crate::workspace::runs_dir();
        std::fs::create_dir_all(&runs).with_context(|| format!("creating {}", runs.display()))?;
        let dir =
            tempfile::Builder::new().prefix("bench-").tempdir_in(&runs).context("creating a scratch directory")?;
        let options = local::deployment::Options {
            binaries: binaries.clone(),
            secrets: None,
            workers: hosts,
            fixtures: crate::workspace::root().join("fixtures"),
            real_github_token: None,
            runtime: local::deployment::Runtime::Hosts,
            hold_failed: false,
            monitor: None,
        };
        let steps = crate::progress::Steps::default();
        let deployment = local::Deployment::start(dir.path(), &options, &steps).await?;
        let head = deployment.github.open_pull(REPO, 20_000 + run as u64, "Sleeping jobs", "workbench-ci")?;
        let session = amqp::Session::connect(&deployment.amqp).await?;
        let started = Instant::now();
        for n in 0..jobs {
            session.publish(amqp::PUBLIC.name, &job(&head, n, &["sleep", &sleep.to_string()]), Some(5)).await?;
        }
        let what = format!("{jobs} jobs on {hosts} host(s)");
        step(&what, async {
            local::client::wait_until(&what, Duration::from_secs(60 + jobs as u64 * sleep), || async {
                let done = deployment.github.statuses(REPO, &head).iter().filter(|s| s.state == "success").count();
                Ok::<_, local::client::TimedOut>(match done >= jobs {
                    true => local::client::Check::Done(()),
                    false => local::client::Check::NotYet(format!("{done} done")),
                })
            })
            .await
        })
        .await?;
        let per_second = jobs as f64 / started.elapsed().as_secs_f64();
        session.close().await;
        drop(deployment);
        let against = figures.first().map_or(1.0, |(_, first)| per_second / first);
        println!(
            "{hosts} worker host(s): {jobs} jobs of {sleep} s in {:.1} s: {per_second:.2} jobs/s ({against:.2}x 1 host)",
            started.elapsed().as_secs_f64()
        );
        figures.push((hosts, per_second));
    }
    let line: Vec<String> = figures.iter().map(|(hosts, rate)| format!("{hosts}: {rate:.2}")).collect();
    println!("hosts: jobs/s by worker hosts {}, jobs of {sleep} s, 4 slots a host", line.join(", "));
    Ok(())
}

fn broker_start(runs: usize) -> anyhow::Result<()> {
    let runtime = crate::workspace::runtime()?;
    let (mut times, mut cpus) = (Vec::new(), Vec::new());
    let stolen_before = machine_steal();
    for run in 1..=runs {
        let dir = tempfile::tempdir().context("creating a scratch directory")?;
        let (secrets, _) = local::secrets::generate(&dir.path().join("secrets"), false)?;
        let started = Instant::now();
        let mut broker = runtime.block_on(Broker::start(&dir.path().join("broker"), &secrets))?;
        let elapsed = started.elapsed();
        // CPU time is steadier than wall time on a shared machine, and shows what the start costs.
        let cpu: f64 = broker.process_ids().into_iter().map(cpu_seconds).sum();
        runtime.block_on(broker.stop());
        println!("run {run}: {:.2} s, {cpu:.2} s of CPU", elapsed.as_secs_f64());
        times.push(elapsed);
        cpus.push(Duration::from_secs_f64(cpu));
    }
    // A probe that hangs is wall time without CPU; a slower machine (a busy host) is both.
    let mut ratios: Vec<f64> =
        times.iter().zip(&cpus).map(|(time, cpu)| time.as_secs_f64() / cpu.as_secs_f64()).collect();
    ratios.sort_by(f64::total_cmp);
    let stolen = stolen_before.zip(machine_steal()).map(|((steal, total), (steal_after, total_after))| {
        100.0 * (steal_after - steal) as f64 / (total_after - total).max(1) as f64
    });
    println!(
        "wall time over CPU time per run: median {:.2}, max {:.2}; CPU time taken by the machine's host meanwhile: {}",
        ratios[runs / 2],
        ratios[runs - 1],
        stolen.map_or("unknown".to_owned(), |stolen| format!("{stolen:.0} %"))
    );
    times.sort();
    cpus.sort();
    println!(
        "broker-start: median {:.2} s over {runs} runs (min {:.2} s, max {:.2} s), median CPU {:.2} s",
        percentile(&times, 50).as_secs_f64(),
        times[0].as_secs_f64(),
        times[runs - 1].as_secs_f64(),
        percentile(&cpus, 50).as_secs_f64()
    );
    Ok(())
}

/// What one webhook process sustained: throughput, latency at a fixed rate, peak memory.
struct WebhookRound {
    rate: f64,
    p99: Duration,
    rss: f64,
}

/// The webhook against the raw broker, then the webhook untraced and traced (its spans written
/// as OTLP JSON, as run-local runs it), alternating, three times each: tracing's cost is
/// stated against the untraced webhook of the same run, median against median.
async fn webhook(binary: &Path, clients: usize, deliveries: usize, rate: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a scratch directory")?;
    let (secrets, _) = local::secrets::generate(&dir.path().join("secrets"), false)?;
    let broker = step("starting RabbitMQ", Broker::start(&dir.path().join("broker"), &secrets)).await?;
    let payload = std::fs::read(crate::workspace::root().join("fixtures/payloads/pull_request-opened.json"))?;
    let session = amqp::Session::connect(&broker.client_config()).await?;
    session.declare(amqp::WEBHOOK).await?;
    println!("payload: {} bytes, {clients} clients", payload.len());

    let message = amqp::WebhookMessage::encode("pull_request", &payload);
    let (elapsed, _) = raw_publish(&broker.client_config(), &message, clients, deliveries, None).await?;
    let raw_rate = deliveries as f64 / elapsed.as_secs_f64();
    println!(
        "raw broker: {deliveries} confirmed publishes in {:.2} s: {raw_rate:.0} messages/s",
        elapsed.as_secs_f64()
    );
    session.purge(amqp::WEBHOOK.name).await?;
    let (_, mut raw) = raw_publish(&broker.client_config(), &message, clients, rate * 5, Some(rate)).await?;
    raw.sort();
    let (raw_p50, raw_p99) = (percentile(&raw, 50), percentile(&raw, 99));
    println!("raw broker confirm latency at {rate} messages/s: p50 {:.2} ms, p99 {:.2} ms", ms(raw_p50), ms(raw_p99));
    session.purge(amqp::WEBHOOK.name).await?;

    let (mut plain, mut traced) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let traces = dir.path().join(format!("traces-{round}.jsonl"));
        for (tracing, rounds) in [(None, &mut plain), (Some(traces.as_path()), &mut traced)] {
            let measured =
                webhook_round(binary, dir.path(), &secrets, &broker, tracing, &payload, clients, deliveries, rate)
                    .await?;
            session.purge(amqp::WEBHOOK.name).await?;
            rounds.push(measured);
        }
        let written = std::fs::read_to_string(&traces).unwrap_or_default().lines().count();
        anyhow::ensure!(written > 0, "the traced webhook wrote no spans to {}", traces.display());
    }
    session.close().await;
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let rate = |rounds: &[WebhookRound]| median(rounds.iter().map(|r| r.rate).collect());
    let p99 =
        |rounds: &[WebhookRound]| Duration::from_secs_f64(median(rounds.iter().map(|r| r.p99.as_secs_f64()).collect()));
    let rss = |rounds: &[WebhookRound]| rounds.iter().map(|r| r.rss).fold(0.0, f64::max);
    println!(
        "webhook: {:.0} deliveries/s, {:.2} of raw broker, p99 {:.2} ms, rss {:.1} MB",
        rate(&plain),
        rate(&plain) / raw_rate,
        ms(p99(&plain)),
        rss(&plain)
    );
    println!(
        "webhook traced: {:.0} deliveries/s ({:.2} of untraced), p99 {:.2} ms ({:.2} of untraced), rss {:.1} MB",
        rate(&traced),
        rate(&traced) / rate(&plain),
        ms(p99(&traced)),
        p99(&traced).as_secs_f64() / p99(&plain).as_secs_f64(),
        rss(&traced)
    );
    Ok(())
}

/// One webhook process (appending its spans to `traces`, if given): its throughput over
/// `deliveries`, its latency at `rate` deliveries a second, its peak memory.
#[allow(clippy::too_many_arguments)]
async fn webhook_round(
    binary: &Path,
    dir: &Path,
    secrets: &local::Secrets,
    broker: &Broker,
    traces: Option<&Path>,
    payload: &[u8],
    clients: usize,
    deliveries: usize,
    rate: usize,
) -> anyhow::Result<WebhookRound> {
    let what = if traces.is_some() { "starting the webhook, traced" } else { "starting the webhook" };
    let mut webhook = step(what, local::service::Webhook::start(binary, dir, secrets, broker, 0, traces, None)).await?;
    let pid = *webhook.service.process_ids().first().context("the webhook exited at once")?;
    let secret = webhook::read_secret(&secrets.webhook_token())?;
    let loaded = load(webhook.address, payload, &secret, clients, deliveries, None).await;
    let (elapsed, _) = loaded.with_context(|| format!("the webhook's log ends:\n{}", webhook.service.log_tail(20)))?;
    let throughput = deliveries as f64 / elapsed.as_secs_f64();
    let (_, mut latencies) = load(webhook.address, payload, &secret, clients, rate * 5, Some(rate)).await?;
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 50), percentile(&latencies, 99));
    let rss = peak_rss_mb(pid)?;
    webhook.service.stop().await;
    println!(
        "  {}: {throughput:.0} deliveries/s; at {rate}/s p50 {:.2} ms, p99 {:.2} ms",
        if traces.is_some() { "traced  " } else { "untraced" },
        ms(p50),
        ms(p99)
    );
    Ok(WebhookRound { rate: throughput, p99, rss })
}

fn run_local(runs: usize, runtime: &str, via_kube: bool) -> anyhow::Result<()> {
    crate::workspace::build_binaries(crate::workspace::Profile::Release)?;
    let xtask = std::env::current_exe().context("finding the xtask binary")?;
    let report = tempfile::NamedTempFile::new()?;
    let (mut times, mut greens, mut brokers) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let started = Instant::now();
        let mut command = Command::new(&xtask);
        command.args(["run-local", "--runtime", runtime, "--json"]).arg(report.path());
        if via_kube {
            command.arg("--via-kube");
        }
        let output = command.output()?;
        let elapsed = started.elapsed();
        if !output.status.success() {
            bail!("run-local failed:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(report.path())?)?;
        // The time of a step, from its progress line: "✔ <step> ... (1.2 s)".
        let stdout = String::from_utf8_lossy(&output.stdout);
        let step = |name: &str| {
            stdout
                .lines()
                .find(|line| line.contains(name))
                .and_then(|line| line.rsplit('(').next())
                .map(|time| time.trim_end_matches(" s)").to_owned())
                .unwrap_or_default()
        };
        println!(
            "run {run}: {:.2} s (deployment and scenarios {:.2} s; broker start {} s; teardown {} s)",
            elapsed.as_secs_f64(),
            report["seconds"].as_f64().unwrap_or_default(),
            step("RabbitMQ"),
            step("tearing the deployment down"),
        );
        times.push(elapsed);
        greens.push(Duration::from_secs_f64(report["seconds"].as_f64().unwrap_or_default()));
        brokers.push(Duration::from_secs_f64(step("RabbitMQ").parse().unwrap_or_default()));
    }
    // On a machine whose speed varies from run to run, each run's own difference says more
    // than the difference of two medians taken from different runs.
    let over = |list: &[Duration]| {
        let mut over: Vec<Duration> =
            list.iter().zip(&brokers).map(|(time, broker)| time.saturating_sub(*broker)).collect();
        over.sort();
        percentile(&over, 50).as_secs_f64()
    };
    println!(
        "over each run's broker start: time to green median {:.2} s, whole command median {:.2} s",
        over(&greens),
        over(&times)
    );
    for list in [&mut times, &mut greens, &mut brokers] {
        list.sort();
    }
    // Time to green is the deployment and the scenarios, measured by run-local itself; the
    // broker's start is its floor, measured in the same runs.
    println!(
        "run-local ({runtime}{}): median {:.2} s, time to green median {:.2} s, broker start median {:.2} s over {runs} runs",
        if via_kube { ", via kube" } else { "" },
        percentile(&times, 50).as_secs_f64(),
        percentile(&greens, 50).as_secs_f64(),
        percentile(&brokers, 50).as_secs_f64(),
    );
    Ok(())
}

/// Keeps a deployment (its own runs directory, so that none of the user's is touched), times
/// `run-local --attach` of every scenario `runs` times, and ends it with `down`.
fn inner_loop(runs: usize) -> anyhow::Result<()> {
    use std::io::BufRead;
    anyhow::ensure!(runs > 0, "--runs must be at least 1");
    let binaries = crate::workspace::build_binaries(crate::workspace::Profile::Release)?;
    let xtask = std::env::current_exe().context("finding the xtask binary")?;
    let target = tempfile::tempdir().context("creating a runs directory")?;
    let xtask_in_target = |args: &[&str]| {
        let mut command = Command::new(&xtask);
        command.env("CARGO_TARGET_DIR", target.path()).args(args);
        command
    };
    let binaries_dir = binaries.dir().display().to_string();
    let mut kept = xtask_in_target(&["run-local", "--runtime", "process", "--keep", "--binaries", &binaries_dir])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting the kept deployment")?;
    // Up once it says how to attach (or gone, if it failed: then the attaches say so).
    // Read on while it runs: a closed pipe would end it at its next line.
    let mut stdout = std::io::BufReader::new(kept.stdout.take().expect("piped"));
    let _ = (&mut stdout).lines().map_while(Result::ok).find(|line| line.contains("run-local --attach"));
    let mut times = Vec::new();
    // Whatever happens, the kept deployment is ended below.
    let attached = (1..=runs).try_for_each(|run| {
        let started = Instant::now();
        let output = xtask_in_target(&["run-local", "--attach"]).output()?;
        let elapsed = started.elapsed();
        if !output.status.success() {
            bail!("run-local --attach failed:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        println!("attach {run}: {:.2} s", elapsed.as_secs_f64());
        times.push(elapsed);
        Ok(())
    });
    let down = xtask_in_target(&["down"]).output();
    let _ = kept.wait();
    attached?;
    down.context("running cargo xtask down")?;
    times.sort();
    let attach = format!(
        "inner-loop (process): run-local --attach of all scenarios median {:.2} s over {runs} runs (min {:.2} s, max {:.2} s)",
        percentile(&times, 50).as_secs_f64(),
        times[0].as_secs_f64(),
        times[runs - 1].as_secs_f64()
    );
    println!("{attach}");
    let watch = watch_loop(runs)?;
    println!("{attach}\n{watch}");
    Ok(())
}

/// `run-local --watch` (all scenarios) on a copy of the tree, its output apart and its
/// intermediate build files this workspace's; `runs` times a one-line change of the webhook's
/// routes, timed from the write to the `watch:` line, which splits it into build, restart and
/// scenarios. Returns the summary line.
fn watch_loop(runs: usize) -> anyhow::Result<String> {
    let tree = tempfile::tempdir().context("creating a directory for a copy of the tree")?;
    let root = crate::workspace::root();
    for entry in std::fs::read_dir(&root).with_context(|| format!("reading {}", root.display()))? {
        let entry = entry?;
        if entry.file_name() == "target" || entry.file_name() == ".git" {
            continue;
        }
        let copied = Command::new("cp").arg("-a").arg(entry.path()).arg(tree.path()).status()?;
        anyhow::ensure!(copied.success(), "copying {} failed", entry.path().display());
    }
    let output = tempfile::tempdir().context("creating an output directory")?;
    let build_dir = crate::workspace::runs_dir().parent().expect("runs live in the target directory").to_owned();
    let mut watch = Command::new(std::env::current_exe().context("finding the xtask binary")?)
        .args(["run-local", "--watch", "--runtime", "process"])
        .env("CARGO_MANIFEST_DIR", tree.path().join("xtask"))
        .env("CARGO_TARGET_DIR", output.path())
        .env("CARGO_BUILD_BUILD_DIR", &build_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting run-local --watch")?;
    // Read to the end on a thread of its own: a closed pipe would end run-local.
    let (lines, said) = std::sync::mpsc::channel();
    let stdout = std::io::BufReader::new(watch.stdout.take().expect("piped"));
    let _reader = std::thread::spawn(move || {
        for line in std::io::BufRead::lines(stdout).map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let wait_for = |start: &str| -> anyhow::Result<String> {
        loop {
            let line = said
                .recv_timeout(std::time::Duration::from_secs(900))
                .with_context(|| format!("run-local --watch ended or hung before a line {start:?}"))?;
            if line.starts_with(start) {
                return Ok(line);
            }
        }
    };
    let measured = (|| {
        wait_for("watching ")?;
        let routes = tree.path().join("services/webhook/src/routes.rs");
        let (mut total, mut build, mut restart, mut scenarios) = (vec![], vec![], vec![], vec![]);
        let mut restart_and_scenarios = vec![];
        for run in 1..=runs {
            let source = std::fs::read_to_string(&routes)?;
            let (from, to) = match run % 2 {
                1 => ("\"not found\\n\"", "\"not found.\\n\""),
                _ => ("\"not found.\\n\"", "\"not found\\n\""),
            };
            anyhow::ensure!(source.contains(from), "{} no longer has {from}: update the bench", routes.display());
            let started = Instant::now();
            std::fs::write(&routes, source.replace(from, to))?;
            let summary = wait_for("watch: ")?;
            let elapsed = started.elapsed();
            anyhow::ensure!(summary.ends_with(", green"), "the scenarios failed after a change: {summary}");
            let seconds = |what: &str| -> anyhow::Result<Duration> {
                let value = summary.split(&format!("{what} ")).nth(1).and_then(|rest| rest.split(' ').next());
                let value = value.and_then(|value| value.parse::<f64>().ok());
                Ok(Duration::from_secs_f64(value.with_context(|| format!("no {what} time in {summary:?}"))?))
            };
            println!("watch {run}: {:.2} s ({summary})", elapsed.as_secs_f64());
            let (b, r, s) = (seconds("build")?, seconds("restart")?, seconds("scenarios")?);
            total.push(elapsed);
            build.push(b);
            restart.push(r);
            scenarios.push(s);
            restart_and_scenarios.push(r + s);
        }
        for times in [&mut total, &mut build, &mut restart, &mut scenarios, &mut restart_and_scenarios] {
            times.sort();
        }
        Ok(format!(
            "inner-loop (process): run-local --watch from a one-line webhook change to green median {:.2} s over {runs} runs: build {:.2} s, restart {:.2} s, scenarios {:.2} s (restart + scenarios median {:.2} s, max {:.2} s)",
            percentile(&total, 50).as_secs_f64(),
            percentile(&build, 50).as_secs_f64(),
            percentile(&restart, 50).as_secs_f64(),
            percentile(&scenarios, 50).as_secs_f64(),
            percentile(&restart_and_scenarios, 50).as_secs_f64(),
            restart_and_scenarios[runs - 1].as_secs_f64(),
        ))
    })();
    // Ctrl-C is how --watch ends: it tears the deployment down.
    let _ = rustix::process::kill_process(rustix::process::Pid::from_child(&watch), rustix::process::Signal::INT);
    let _ = watch.wait();
    measured
}

const REPO: &str = "workbench-ci/demo";

async fn worker(binary: &Path, events: usize, jobs: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a scratch directory")?;
    let (secrets, _) = local::secrets::generate(&dir.path().join("secrets"), false)?;
    let broker = step("starting RabbitMQ", Broker::start(&dir.path().join("broker"), &secrets)).await?;
    let token = std::fs::read_to_string(secrets.github_token())?;
    let github = local::MockGitHub::start(&dir.path().join("github"), &token).await?;
    let s3 = local::S3Server::start(&dir.path().join("s3"), &secrets, false).await?;
    github.add_repo(REPO, &crate::workspace::root().join("fixtures/repos/passing"))?;
    let forge = local::worker::Forge::mock(&github, &secrets);
    let runner_config =
        local::worker::RunnerConfig::local(&forge, &s3, &secrets, local::worker::Sandbox::Process).write(dir.path())?;
    let session = amqp::Session::connect(&broker.client_config()).await?;
    for queue in amqp::ALL_QUEUES {
        session.declare(queue).await?;
    }
    let test_map = crate::workspace::root().join("fixtures/testmap.toml");
    let config = local::service::WorkerConfig {
        broker: &broker,
        secrets: &secrets,
        test_map: &test_map,
        forge: &forge,
        runner_config: &runner_config,
        work_dir: dir.path(),
        jobs: 1,
        rescan_interval: Some(0),
        ready_after_rescan: false,
    };
    let run_dir = dir.path();
    let start_worker = |name: String| {
        let config = &config;
        async move { local::service::Worker::start(binary, run_dir, &name, config).await }
    };
    // Each status the mock received, by commit and description prefix, and when.
    let posted = |sha: &str, prefix: &str| -> Vec<Instant> {
        github
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with(&format!("/statuses/{sha}")))
            .filter(|r| r.body.contains(&format!("\"description\":\"{prefix}")))
            .map(|r| r.at)
            .collect()
    };
    let wait_for = |sha: String, prefix: &'static str, count: usize| {
        let posted = &posted;
        async move {
            let what = format!("{count} \"{prefix}\" statuses on {sha}");
            // Looking often: the figures are these statuses' times.
            local::client::wait_until_every(&what, Duration::from_secs(120), Duration::from_millis(5), || async {
                let times = posted(&sha, prefix);
                Ok::<_, local::client::TimedOut>(match times.len() >= count {
                    true => local::client::Check::Done(times),
                    false => local::client::Check::NotYet(format!("{} of them", times.len())),
                })
            })
            .await
        }
    };

    let mut first = start_worker("bench-1".into()).await?;
    let (mut to_scan, mut to_start) = (Vec::new(), Vec::new());
    for number in 1..=events as u64 {
        let head = github.open_pull(REPO, number, "A change", "workbench-ci")?;
        let event = github.pull_request_event(REPO, number, "opened")?;
        let published = Instant::now();
        session.publish(amqp::WEBHOOK.name, &event.queue_message(), None).await?;
        let scanned = wait_for(head.clone(), "Not yet tested", 1).await?[0];
        to_scan.push(scanned.saturating_duration_since(published));
        wait_for(head, "Success", 1).await?;
    }
    for n in 0..events {
        let head = github.open_pull(REPO, 1000 + n as u64, "A job", "workbench-ci")?;
        let published = Instant::now();
        session.publish(amqp::PUBLIC.name, &noop_job(&head, n), Some(5)).await?;
        let started = wait_for(head.clone(), "In progress", 1).await?[0];
        to_start.push(started.saturating_duration_since(published));
        wait_for(head, "Success", 1).await?;
    }
    first.service.kill();
    for (what, mut latencies) in
        [("webhook event to \"Not yet tested\"", to_scan), ("public job to \"In progress\"", to_start)]
    {
        latencies.sort();
        println!(
            "worker latency, {what}: median {:.1} ms, p99 {:.1} ms over {events}",
            ms(percentile(&latencies, 50)),
            ms(percentile(&latencies, 99))
        );
    }

    for workers in [1, 2] {
        let head = github.open_pull(REPO, 10_000 + workers, "Many jobs", "workbench-ci")?;
        for n in 0..jobs {
            session.publish(amqp::PUBLIC.name, &noop_job(&head, n), Some(5)).await?;
        }
        let started = Instant::now();
        let mut running = Vec::new();
        for n in 0..workers {
            running.push(start_worker(format!("bench-{workers}-{n}")).await?);
        }
        wait_for(head, "Success", jobs).await?;
        let elapsed = started.elapsed();
        for mut worker in running {
            worker.service.kill();
        }
        println!(
            "worker throughput, {workers} worker(s): {jobs} no-op jobs in {:.1} s: {:.1} jobs/s",
            elapsed.as_secs_f64(),
            jobs as f64 / elapsed.as_secs_f64()
        );
    }
    session.close().await;
    Ok(())
}

/// A job whose test is `true`: clone, checkout, log and two statuses, nothing else.
fn noop_job(sha: &str, n: usize) -> Vec<u8> {
    job(sha, n, &["true"])
}

/// Job `n` on commit `sha`, its test `command`.
fn job(sha: &str, n: usize, command: &[&str]) -> Vec<u8> {
    let context = format!("bench/{n}");
    let job = amqp::Job {
        command: Some(command.iter().map(|arg| arg.to_string()).collect()),
        slug: Some(format!("bench-{}-{n}", &sha[..8])),
        ..amqp::Job::for_pull(REPO, sha, 0, &context, "")
    };
    serde_json::to_vec(&job.message(&context)).expect("a job encodes")
}

/// Hands out numbered operations to concurrent workers, each at its due time when paced.
#[derive(Clone)]
struct Tickets {
    next: Arc<AtomicUsize>,
    count: usize,
    rate: Option<usize>,
    started: Instant,
}

impl Tickets {
    /// The next operation's number, once it is due; `None` when all are handed out.
    async fn next(&self) -> Option<usize> {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        if ticket >= self.count {
            return None;
        }
        if let Some(rate) = self.rate {
            let due = self.started + Duration::from_secs_f64(ticket as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        Some(ticket)
    }
}

/// Runs `count` operations from `workers` concurrent tasks, optionally paced at `rate` per
/// second; each task runs `worker` with the shared tickets and returns its latencies. Returns
/// the wall time and every operation's latency.
async fn drive<F, Fut>(
    workers: usize,
    count: usize,
    rate: Option<usize>,
    worker: F,
) -> anyhow::Result<(Duration, Vec<Duration>)>
where
    F: Fn(Tickets) -> Fut,
    Fut: Future<Output = anyhow::Result<Vec<Duration>>> + Send + 'static,
{
    let tickets = Tickets { next: Arc::new(AtomicUsize::new(0)), count, rate, started: Instant::now() };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        tasks.spawn(worker(tickets.clone()));
    }
    let mut latencies = Vec::with_capacity(count);
    while let Some(result) = tasks.join_next().await {
        latencies.extend(result??);
    }
    Ok((tickets.started.elapsed(), latencies))
}

/// Sends `count` deliveries from `clients` concurrent clients, each delivery on a connection of
/// its own as GitHub sends them (the webhook serves one request per connection), each body
/// unique (a body the webhook stored before is answered without being published again) and
/// signed with `secret`. Latency runs from the connect to the end of the response.
async fn load(
    addr: SocketAddr,
    payload: &[u8],
    secret: &[u8],
    clients: usize,
    count: usize,
    rate: Option<usize>,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    static SERIAL: AtomicUsize = AtomicUsize::new(0);
    let (payload, secret): (Arc<[u8]>, Arc<[u8]>) = (payload.into(), secret.into());
    drive(clients, count, rate, |tickets| {
        let (payload, secret) = (payload.clone(), secret.clone());
        async move {
            let mut latencies = Vec::new();
            while let Some(ticket) = tickets.next().await {
                let body = unique(&payload, SERIAL.fetch_add(1, Ordering::Relaxed));
                let request = hyper::Request::post("/")
                    .header("content-type", "application/json")
                    .header("x-github-event", "pull_request")
                    .header("x-github-delivery", ticket.to_string())
                    .header("x-hub-signature-256", webhook::sign_sha256(&secret, &body))
                    .body(Full::new(body))?;
                let sent = Instant::now();
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(connection);
                let response = sender.send_request(request).await?;
                let status = response.status();
                response.into_body().collect().await?;
                latencies.push(sent.elapsed());
                if status != 200 {
                    bail!("delivery {ticket} answered {status}");
                }
            }
            Ok(latencies)
        }
    })
    .await
}

/// `payload` (a JSON object) with a member of its own, numbered `serial`: another body.
fn unique(payload: &[u8], serial: usize) -> Bytes {
    let end = payload.iter().rposition(|byte| *byte == b'}').unwrap_or(payload.len());
    let mut body = Vec::with_capacity(payload.len() + 32);
    body.extend_from_slice(&payload[..end]);
    body.extend_from_slice(format!(r#","workbench_bench":{serial}"#).as_bytes());
    body.extend_from_slice(&payload[end..]);
    Bytes::from(body)
}

/// Publishes `count` copies of `message` to the `webhook` queue from `publishers` concurrent
/// tasks on one session, each waiting for its confirm, as the webhook does.
async fn raw_publish(
    config: &amqp::Config,
    message: &[u8],
    publishers: usize,
    count: usize,
    rate: Option<usize>,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let session = Arc::new(amqp::Session::connect(config).await?);
    let message: Arc<[u8]> = message.into();
    drive(publishers, count, rate, |tickets| {
        let (session, message) = (session.clone(), message.clone());
        async move {
            let mut latencies = Vec::new();
            while tickets.next().await.is_some() {
                let sent = Instant::now();
                session.publish(amqp::WEBHOOK.name, &message, None).await?;
                latencies.push(sent.elapsed());
            }
            Ok(latencies)
        }
    })
    .await
}

/// User and system CPU time a process has used so far (fields 14 and 15 of /proc/PID/stat, in
/// clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|value| value.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory of a process, from /proc (VmHWM).
fn peak_rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc status")?;
    Ok(kb / 1024.0)
}

/// The machine's CPU time stolen by its host (a virtual machine's), and all its CPU time, in
/// clock ticks since boot (`/proc/stat`: user to steal; guest time is counted in user's).
fn machine_steal() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> =
        stat.lines().next()?.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>().ok()?;
    Some((*fields.get(7)?, fields.iter().take(8).sum()))
}

/// The `pct`-th percentile of sorted values.
fn percentile(sorted: &[Duration], pct: usize) -> Duration {
    sorted[(sorted.len() * pct / 100).min(sorted.len() - 1)]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}
