//! The fault runs of `local::chaos` in their short form (`cargo xtask chaos` runs the full
//! ones): nothing answered as stored is lost, whether the broker restarts or the webhook stops;
//! no job is lost or reported twice when its workers are killed, or cut off from the broker.

use std::time::Duration;

use local::chaos::Over;

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_under_load_loses_no_delivery_answered_200() {
    let dir = tempfile::tempdir().unwrap();
    let run = local::chaos::broker_restart_under_load(dir.path(), 100, 100, 25).await.unwrap();
    assert_eq!(run.sent, run.accepted + run.refused);
    assert!(run.stored >= run.accepted, "{run:?}");
    assert!(run.refused > 0, "the broker was away for some deliveries: {run:?}");
    // The run ends once 100 were stored after the restart.
    assert!(run.accepted >= 100, "deliveries after the restart were stored: {run:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_stopped_under_load_loses_no_delivery_answered_200() {
    let dir = tempfile::tempdir().unwrap();
    let run = local::chaos::webhook_shutdown_under_load(dir.path(), 200, 50).await.unwrap();
    assert!(run.stored >= run.accepted, "{run:?}");
    // Those in flight when the stop came may be finished or cut off: either is fine.
    assert!(run.accepted > 0, "deliveries before the stop were stored: {run:?}");
    assert!(run.unanswered > 0, "deliveries after the stop found no webhook: {run:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_killed_at_random_moments_end_every_job_with_exactly_one_final_status() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = local::Binaries::of_test_build().tasks;
    assert!(tasks.is_file(), "{} is missing: build it with `cargo build -p tasks`", tasks.display());
    // The run itself fails on a job without a final status, one with two, or a message left.
    let run = local::chaos::worker_crashes(dir.path(), &tasks, 20, 5, None).await.unwrap();
    assert_eq!((run.jobs, run.kills), (20, 5), "{run:?}");
}

/// GitHub refusing every request for longer than a request's own tries (so the scans are put
/// off and tried again later), then limiting the rate: once it is back, every pull request
/// opened meanwhile ends with exactly one final status per context, and every queue is empty.
#[tokio::test(flavor = "multi_thread")]
async fn a_github_outage_loses_no_pull_request() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = local::Binaries::of_test_build().tasks;
    let (refused, limited) = (std::time::Duration::from_secs(18), std::time::Duration::from_secs(5));
    // The run itself fails on a lost or duplicated status, or a message left in any queue.
    let run = local::chaos::github_outage(dir.path(), &tasks, 5, refused, limited).await.unwrap();
    assert_eq!((run.pulls, run.final_statuses, run.lost, run.duplicated), (5, 5, 0, 0), "{run:?}");
    assert!(run.put_off > 0, "the outage outlasted a request's own tries: {run:?}");
}

/// Two of three workers cut off from the broker by a silent relay (no FIN, no RST) while they
/// run jobs, one for 35 s, one for good (until the broker noticed, up to 45 s): every job ends
/// with exactly one final status, the cut workers post nothing once they noticed, the one
/// whose link came back takes work again, and the queue ends empty.
#[tokio::test(flavor = "multi_thread")]
async fn workers_cut_off_from_the_broker_lose_no_job_and_report_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = local::Binaries::of_test_build().tasks;
    // The run itself fails on a lost or duplicated job, a status from a worker cut off, a
    // worker back that takes no work, or a message left.
    let run = local::chaos::partition(dir.path(), &tasks, Over::Relays, 3, 8, Duration::from_secs(35)).await.unwrap();
    assert_eq!((run.jobs, run.final_statuses, run.lost, run.duplicated), (14, 14, 0, 0), "{run}");
    assert!(run.abandoned > 0, "the cut workers abandoned the jobs they ran: {run:?}");
    assert!(run.redelivered >= run.abandoned, "the abandoned jobs were delivered again: {run:?}");
}

/// The webhook's link to the broker cut silently for 12 s under load: every delivery answered
/// meanwhile is answered 503 (the broker cannot confirm it), none 200, and once the link is
/// back every delivery is stored, the refused ones when redelivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_cut_off_from_the_broker_answers_503_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let over = local::chaos::WebhookOver::Relay;
    let run = local::chaos::webhook_partition(dir.path(), over, 20, Duration::from_secs(12), 20, 10).await.unwrap();
    assert!(run.sent_during_cut > 0 && run.refused > 0, "{run:?}");
    assert_eq!((run.lost, run.stored), (0, run.sent), "{run:?}");
}

/// The same with the webhook on a host of its own and the broker's host cut off the network.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(ci), ignore = "needs root for network namespaces: cargo xtask ci runs it")]
async fn a_webhook_host_cut_off_from_the_broker_host_answers_503_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = local::Binaries::of_test_build().webhook;
    let over = local::chaos::WebhookOver::Hosts(&webhook);
    let run = local::chaos::webhook_partition(dir.path(), over, 20, Duration::from_secs(12), 20, 10).await.unwrap();
    assert!(run.sent_during_cut > 0 && run.refused > 0, "{run:?}");
    assert_eq!((run.lost, run.stored), (0, run.sent), "{run:?}");
}

/// The same on hosts of their own (network namespaces): two of three worker hosts taken off the
/// network while they run jobs (the broker, GitHub and S3 out of their reach), one for 35 s, one
/// for good: every job one final status, none twice, the queue empty.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(ci), ignore = "needs root for network namespaces: cargo xtask ci runs it")]
async fn worker_hosts_cut_off_the_network_lose_no_job_and_report_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = local::Binaries::of_test_build().tasks;
    let run = local::chaos::partition(dir.path(), &tasks, Over::Hosts, 3, 8, Duration::from_secs(35)).await.unwrap();
    assert_eq!((run.jobs, run.final_statuses, run.lost, run.duplicated), (14, 14, 0, 0), "{run}");
    assert!(run.abandoned > 0, "the cut workers abandoned the jobs they ran: {run:?}");
}
