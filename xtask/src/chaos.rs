//! `cargo xtask chaos`: the fault runs of `local::chaos` in their full form, with the figures
//! docs/reliability.md records. Each run is bounded and stops by itself.

use std::time::Duration;

use anyhow::Context;

use crate::packages::{self, RABBITMQ};

#[derive(clap::Args)]
pub struct Args {
    /// The run to do [default: every one, in this order].
    #[arg(value_enum)]
    run: Option<Run>,
    /// Deliveries sent before the broker restarts.
    #[arg(long, default_value_t = 500)]
    before: usize,
    /// Deliveries that must be stored once the broker is back (sending goes on meanwhile).
    #[arg(long, default_value_t = 1_000)]
    after: usize,
    /// Deliveries per second.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Deliveries sent to a webhook told to stop halfway.
    #[arg(long, default_value_t = 2_000)]
    shutdown_deliveries: usize,
    /// Jobs queued: for workers killed at random moments [default: 50], or before a partition
    /// (as many again as twice the hosts come after) [default: 30].
    #[arg(long)]
    jobs: Option<usize>,
    /// How many times a worker is killed (SIGKILL) and restarted.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// Seed of the kills' moments and victims, to run the same again [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
    /// Pull requests opened while GitHub is away.
    #[arg(long, default_value_t = 20)]
    pulls: usize,
    /// Seconds GitHub answers every request with 502: longer than a request's own tries
    /// (about 15 s), so that scans are put off and tried again later.
    #[arg(long, default_value_t = 20)]
    refused: u64,
    /// Seconds GitHub then answers 403 with `x-ratelimit-remaining: 0`, its reset at the end.
    #[arg(long, default_value_t = 10)]
    limited: u64,
    /// Worker hosts of the partition run (3 or more: two are cut off).
    #[arg(long, default_value_t = 3)]
    hosts: usize,
    /// Partition runs on this machine, each worker (or the webhook) reaching the broker through
    /// a relay of its own, rather than on hosts of their own (network namespaces, which need
    /// root).
    #[arg(long)]
    relays: bool,
    /// Seconds a partition lasts (for the worker host cut for a while, or the webhook's link):
    /// past 45, the broker noticed a silent worker and gave its jobs to others.
    #[arg(long, default_value_t = 50)]
    cut: u64,
}

/// The fault runs.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Run {
    /// The broker restarted while deliveries arrive: every delivery answered 200 is stored.
    BrokerRestart,
    /// The webhook stopped while deliveries arrive: every delivery answered 200 is stored.
    WebhookStop,
    /// Workers killed at random moments: every job ends with exactly one final status.
    WorkerKills,
    /// GitHub refusing, then rate-limiting, while pull requests are opened: each ends with
    /// exactly one final status per context.
    GithubOutage,
    /// Worker hosts cut off from the broker by a silent link, one for a while, one for good:
    /// every job ends with exactly one final status.
    Partition,
    /// The webhook cut off from the broker by a silent link while deliveries arrive: each is
    /// answered 503 meanwhile, and stored once sent again.
    WebhookPartition,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    packages::ensure(&[RABBITMQ])?;
    let runs = crate::workspace::runs_dir();
    std::fs::create_dir_all(&runs).with_context(|| format!("creating {}", runs.display()))?;
    let scratch =
        || tempfile::Builder::new().prefix("chaos-").tempdir_in(&runs).context("creating a scratch directory");
    let wanted = |run: Run| args.run.is_none_or(|only| only == run);
    if wanted(Run::BrokerRestart) {
        broker_restart(&args, &scratch()?)?;
    }
    if wanted(Run::WebhookStop) {
        webhook_stop(&args, &scratch()?)?;
    }
    if wanted(Run::WorkerKills) {
        worker_kills(&args, &scratch()?)?;
    }
    if wanted(Run::GithubOutage) {
        github_outage(&args, &scratch()?)?;
    }
    if wanted(Run::Partition) {
        partition(&args, &scratch()?)?;
    }
    if wanted(Run::WebhookPartition) {
        webhook_partition(&args, &scratch()?)?;
    }
    Ok(())
}

fn webhook_partition(args: &Args, dir: &tempfile::TempDir) -> anyhow::Result<()> {
    let cut = Duration::from_secs(args.cut);
    let spinner = crate::progress::Spinner::start(&format!(
        "webhook partition: {} deliveries, the link cut for {} s, {} more, at {}/s",
        args.before, args.cut, args.before, args.rate
    ));
    let binaries;
    let over = match args.relays {
        true => local::chaos::WebhookOver::Relay,
        false => {
            binaries = crate::workspace::build_binaries(crate::workspace::Profile::Release)?;
            local::chaos::WebhookOver::Hosts(&binaries.webhook)
        }
    };
    let run = local::chaos::webhook_partition(dir.path(), over, args.before, cut, args.before, args.rate);
    let run = crate::workspace::runtime()?.block_on(run);
    spinner.finish(run.is_ok());
    let run = run?;
    println!(
        "webhook partition: {} deliveries, {} sent while cut off, {} answers 503 in all (none 200 while cut \
         off), {} stored, {} lost ({:.1} s)",
        run.sent, run.sent_during_cut, run.refused, run.stored, run.lost, run.seconds
    );
    Ok(())
}

fn partition(args: &Args, dir: &tempfile::TempDir) -> anyhow::Result<()> {
    let binaries = crate::workspace::build_binaries(crate::workspace::Profile::Release)?;
    let what = format!(
        "partition: {} hosts, {} jobs, one host cut for {} s, one for good",
        args.hosts,
        args.jobs.unwrap_or(30),
        args.cut
    );
    let spinner = crate::progress::Spinner::start(&what);
    let cut = Duration::from_secs(args.cut);
    let over = if args.relays { local::chaos::Over::Relays } else { local::chaos::Over::Hosts };
    let jobs = args.jobs.unwrap_or(30);
    let run = local::chaos::partition(dir.path(), &binaries.tasks, over, args.hosts, jobs, cut);
    let run = crate::workspace::runtime()?.block_on(run);
    spinner.finish(run.is_ok());
    let run = run?;
    println!("{} jobs abandoned by the hosts cut off", run.abandoned);
    println!("{run}");
    Ok(())
}

fn broker_restart(args: &Args, dir: &tempfile::TempDir) -> anyhow::Result<()> {
    let spinner = crate::progress::Spinner::start(&format!(
        "broker restart under load: {} deliveries before, {} stored after, {}/s",
        args.before, args.after, args.rate
    ));
    let run = local::chaos::broker_restart_under_load(dir.path(), args.before, args.after, args.rate);
    let run = crate::workspace::runtime()?.block_on(run);
    spinner.finish(run.is_ok());
    let run = run?;
    println!(
        "broker restart under load: {} sent ({} once the broker was back), {} answered 200, all stored; \
         {} answered 503, of which {} stored all the same; lost 0 ({:.1} s)",
        run.sent,
        run.sent_after,
        run.accepted,
        run.refused,
        run.stored - run.accepted,
        run.seconds
    );
    Ok(())
}

fn webhook_stop(args: &Args, dir: &tempfile::TempDir) -> anyhow::Result<()> {
    let spinner = crate::progress::Spinner::start(&format!(
        "webhook stopped under load: {} deliveries, {}/s",
        args.shutdown_deliveries, args.rate
    ));
    let run = local::chaos::webhook_shutdown_under_load(dir.path(), args.shutdown_deliveries, args.rate);
    let run = crate::workspace::runtime()?.block_on(run);
    spinner.finish(run.is_ok());
    let run = run?;
    println!(
        "webhook stopped under load: {} sent, {} answered 200 and all stored ({} in the queue), {} unanswered \
         after the stop, lost 0 ({:.1} s)",
        run.sent, run.accepted, run.stored, run.unanswered, run.seconds
    );
    Ok(())
}

fn worker_kills(args: &Args, dir: &tempfile::TempDir) -> anyhow::Result<()> {
    let binaries = crate::workspace::build_binaries(crate::workspace::Profile::Release)?;
    let jobs = args.jobs.unwrap_or(50);
    let spinner = crate::progress::Spinner::start(&format!("workers killed: {jobs} jobs, {} kills", args.kills));
    let run = local::chaos::worker_crashes(dir.path(), &binaries.tasks, jobs, args.kills, args.seed);
    let run = crate::workspace::runtime()?.block_on(run);
    spinner.finish(run.is_ok());
    let run = run?;
    println!(
        "workers killed: {} jobs, {} kills (seed {}), each job one final status; {} jobs run again after a kill, \
         {} redelivered after their final status and not run again; nothing left in the queue ({:.1} s)",
        run.jobs, run.kills, run.seed, run.reruns, run.already_reported, run.seconds
    );
    Ok(())
}

fn github_outage(args: &Args, dir: &tempfile::TempDir) -> anyhow::Result<()> {
    let binaries = crate::workspace::build_binaries(crate::workspace::Profile::Release)?;
    let spinner = crate::progress::Spinner::start(&format!(
        "GitHub outage: {} pull requests, {} s of 502, {} s rate-limited",
        args.pulls, args.refused, args.limited
    ));
    let (refused, limited) = (Duration::from_secs(args.refused), Duration::from_secs(args.limited));
    let run = local::chaos::github_outage(dir.path(), &binaries.tasks, args.pulls, refused, limited);
    let run = crate::workspace::runtime()?.block_on(run);
    spinner.finish(run.is_ok());
    let run = run?;
    println!(
        "github-outage: {} requests refused for the rate, {} messages put off and tried again later, \
         {} jobs queued twice stopped for their twin",
        run.rate_limited, run.put_off, run.superseded
    );
    println!(
        "github-outage: {} pull requests, {} final statuses, {} lost, {} duplicated, {:.1} s",
        run.pulls, run.final_statuses, run.lost, run.duplicated, run.seconds
    );
    Ok(())
}
