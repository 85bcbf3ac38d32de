//! The end-to-end scenarios run-local asserts, each against the running deployment, each
//! through the real entry points: deliveries POSTed to the webhook, statuses read back from the
//! mock GitHub, logs read anonymously from S3 as a browser would.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use amqp::{ALL_QUEUES, Session};
use github::StatusUpdate;
use sha2::{Digest, Sha256};

use crate::client::Check;
use crate::deployment::Deployment;
use crate::secrets::Ca;
use crate::trace;

/// Every scenario, in the order run-local runs them.
/// Scenarios run side by side, each on pull requests of its own, except those of [`ALONE`].
pub const ALL: [&str; 9] = [
    "queue",
    "amqp-refusals",
    "s3",
    "pr-success",
    "pr-failure",
    "cross-project",
    "direct-trigger",
    "bad-signature",
    "kvm",
];

/// Scenarios that assert on the deployment as a whole (the webhook's count of published
/// deliveries must not move), run after the others, one at a time.
pub const ALONE: [&str; 1] = ["bad-signature"];

/// How long a job may take from delivery to final status.
const JOB_WITHIN: Duration = Duration::from_secs(120);

/// How long after a job's final status its process may take to write its last spans.
const TRACE_WITHIN: Duration = Duration::from_secs(10);

/// A scenario that did not hold: what was expected and what happened.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error(transparent)]
    Amqp(#[from] amqp::Error),
    #[error(transparent)]
    S3(#[from] s3::Error),
    #[error(transparent)]
    GitHub(#[from] github::Error),
    #[error(transparent)]
    Mock(#[from] crate::github::MockError),
    #[error(transparent)]
    Http(#[from] crate::client::ClientError),
    #[error("{0}")]
    Assertion(String),
}

/// What was awaited did not come: the scenario failed.
impl From<crate::client::TimedOut> for ScenarioError {
    fn from(timed_out: crate::client::TimedOut) -> ScenarioError {
        ScenarioError::Assertion(timed_out.to_string())
    }
}

/// How a scenario that did not fail ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ran {
    Passed,
    /// It cannot run here, for this reason.
    Skipped(String),
}

fn check(holds: bool, what: impl FnOnce() -> String) -> Result<(), ScenarioError> {
    if holds { Ok(()) } else { Err(ScenarioError::Assertion(what())) }
}

tokio::task_local! {
    /// The ids of the deliveries the scenario of this task sent ([`run_recorded`]).
    static SENT: std::cell::RefCell<Vec<String>>;
}

/// [`run`], with the ids of the deliveries the scenario sent to the webhook: each one's trace
/// is the scenario's ([`crate::trace::of_delivery`]).
pub async fn run_recorded(name: &str, deployment: &Deployment) -> (Result<Ran, ScenarioError>, Vec<String>) {
    let recorded = async { (run(name, deployment).await, SENT.with(|sent| sent.take())) };
    SENT.scope(std::cell::RefCell::new(Vec::new()), recorded).await
}

/// Delivers `event` to the webhook, signed with `secret`; recorded for [`run_recorded`].
async fn deliver(deployment: &Deployment, event: &crate::Delivery, secret: &[u8]) -> Result<u16, ScenarioError> {
    let _ = SENT.try_with(|sent| sent.borrow_mut().push(event.id.clone()));
    Ok(crate::client::deliver(deployment.webhook, event, secret).await?)
}

/// Runs scenario `name` (one of [`ALL`]).
pub async fn run(name: &str, deployment: &Deployment) -> Result<Ran, ScenarioError> {
    match name {
        "queue" => queue(&deployment.amqp).await,
        "amqp-refusals" => {
            let ca = Ca::load(&deployment.secrets)
                .map_err(|e| ScenarioError::Assertion(format!("the CA of the deployment: {e}")))?;
            let metrics = deployment.prometheus().is_some();
            let eval = |expr: &str| deployment.broker_eval(expr).map_err(|e| e.to_string());
            amqp_refusals(&deployment.amqp, &ca, metrics, eval).await
        }
        "s3" => s3(deployment).await,
        "pr-success" => pr_success(deployment).await,
        "pr-failure" => pr_failure(deployment).await,
        "cross-project" => cross_project(deployment).await,
        "direct-trigger" => direct_trigger(deployment).await,
        "bad-signature" => bad_signature(deployment).await,
        "kvm" => kvm(deployment).await,
        other => Err(ScenarioError::Assertion(format!("no scenario {other:?}; the scenarios are {}", ALL.join(", ")))),
    }
    .map(|skipped| skipped.map_or(Ran::Passed, Ran::Skipped))
}

/// `queue`: a persistent message round-trips through each of the four Cockpit queues, declared
/// with Cockpit's arguments, confirmed by the broker, and acknowledged.
pub async fn queue(config: &amqp::Config) -> Result<Option<String>, ScenarioError> {
    let session = Session::connect(config).await?;
    for queue in ALL_QUEUES {
        session.declare(queue).await?;
        let body = format!(r#"{{"command":"echo round trip through {}"}}"#, queue.name);
        // A queue no worker consumes, with the same arguments, so no worker takes the message.
        let probe = amqp::Queue { name: "workbench-scenario-queue", ..queue };
        session.declare(probe).await?;
        session.publish(probe.name, body.as_bytes(), queue.max_priority).await?;
        let delivery = session.get(probe.name).await?.ok_or_else(|| {
            ScenarioError::Assertion(format!("queue {}: the published message is missing", queue.name))
        })?;
        let (got, persistent, priority) = (delivery.body.clone(), delivery.persistent, delivery.priority);
        delivery.ack().await?;
        session.delete(probe.name).await?;
        check(got == body.as_bytes(), || {
            format!("queue {}: expected {body}, got {}", queue.name, String::from_utf8_lossy(&got))
        })?;
        check(persistent, || format!("queue {}: the message came back non-persistent", queue.name))?;
        check(priority == queue.max_priority, || {
            format!("queue {}: priority {priority:?}, expected {:?}", queue.name, queue.max_priority)
        })?;
    }
    session.close().await;
    Ok(None)
}

/// `amqp-refusals`: the broker `config` logs in to lets nobody else in: not a client without a
/// certificate (refused by TLS, before any AMQP login), not one with a certificate of another
/// CA, not one of our `ca` whose common name is no user, and not plain AMQP (no handshake ever
/// starts). Asked on its node (by `eval`, an Erlang expression evaluated there, with
/// [`BROKER_FACTS`]: what `rabbitmqctl list_users` and `status` report, without their second of
/// CPU each), it has one user (no guest), listens for AMQP over TLS only, and runs no plugin
/// but certificate login (no management interface); with `metrics` (`run-local --monitor`),
/// also `rabbitmq_prometheus` and its HTTP listener. Runs on a multi-threaded runtime.
pub async fn amqp_refusals(
    config: &amqp::Config,
    ca: &Ca,
    metrics: bool,
    eval: impl Fn(&str) -> Result<String, String>,
) -> Result<Option<String>, ScenarioError> {
    let anonymous =
        amqp::Config { files: amqp::ClientFiles { ca: config.files.ca.clone(), identity: None }, ..config.clone() };
    match Session::connect(&anonymous).await {
        Ok(_) => return Err(ScenarioError::Assertion("a client without a certificate got in".into())),
        Err(err) => {
            let text = err.to_string().to_lowercase();
            check(matches!(err, amqp::Error::Connect { .. }) && !text.contains("access_refused"), || {
                format!("a client without a certificate was not refused by TLS: {err}")
            })?;
        }
    }
    let other = tempfile::tempdir().map_err(|e| ScenarioError::Assertion(format!("a scratch directory: {e}")))?;
    let (stranger, _) = crate::secrets::generate(other.path(), false)
        .map_err(|e| ScenarioError::Assertion(format!("secrets of another CA: {e}")))?;
    let stranger = amqp::Config {
        files: amqp::ClientFiles {
            ca: config.files.ca.clone(),
            identity: Some((
                stranger.webhook_dir().join("amqp-client.pem"),
                stranger.webhook_dir().join("amqp-client.key"),
            )),
        },
        ..config.clone()
    };
    check(Session::connect(&stranger).await.is_err(), || "a certificate of another CA got in".into())?;

    let nobody = ca.issue_client("nobody").map_err(|e| ScenarioError::Assertion(format!("a certificate: {e}")))?;
    let (cert, key) = (other.path().join("nobody.pem"), other.path().join("nobody.key"));
    let written = std::fs::write(&cert, nobody.cert_pem).and_then(|()| std::fs::write(&key, nobody.key_pem));
    written.map_err(|e| ScenarioError::Assertion(format!("writing a certificate: {e}")))?;
    let nobody = amqp::Config {
        files: amqp::ClientFiles { ca: config.files.ca.clone(), identity: Some((cert, key)) },
        ..config.clone()
    };
    match Session::connect(&nobody).await {
        Ok(_) => return Err(ScenarioError::Assertion("a certificate of our CA for no user got in".into())),
        Err(err) => check(err.to_string().contains("ACCESS_REFUSED") || err.to_string().contains("403"), || {
            format!("a certificate of our CA for no user was not refused at login: {err}")
        })?,
    }

    let amqp::Address::Tls { host, port } = &config.address else {
        return Err(ScenarioError::Assertion(format!("{} is not a TLS address", config.address)));
    };
    let plain = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
        stream.write_all(b"AMQP\x00\x00\x09\x01").await?;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        Ok::<_, std::io::Error>(answer)
    };
    let answer =
        tokio::time::timeout(Duration::from_secs(10), plain).await.ok().and_then(Result::ok).unwrap_or_default();
    check(!answer.starts_with(b"\x01\x00\x00"), || format!("the broker answered plain AMQP: {answer:?}"))?;

    let facts = tokio::task::block_in_place(|| eval(BROKER_FACTS))
        .map_err(|e| ScenarioError::Assertion(format!("asking the broker's node: {e}")))?;
    let BrokerFacts { users, listeners, plugins } = serde_json::from_str(&facts)
        .map_err(|e| ScenarioError::Assertion(format!("the broker's answer {facts:?} is not what was asked: {e}")))?;
    check(users == [crate::secrets::AMQP_USER], || format!("the broker's users are {users:?}"))?;
    let mut wanted: BTreeSet<String> = ["amqp/ssl", "clustering"].map(str::to_owned).into();
    if metrics {
        wanted.insert("http/prometheus".to_owned());
    }
    check(listeners == wanted, || format!("the broker listens for {listeners:?}, not only AMQP over TLS"))?;
    let mut wanted: BTreeSet<String> = ["rabbitmq_auth_mechanism_ssl".to_owned()].into();
    if metrics {
        wanted.extend(crate::broker::METRICS_PLUGINS.map(str::to_owned));
    }
    check(plugins == wanted, || format!("the broker runs the plugins {plugins:?}"))?;
    Ok(None)
}

/// The Erlang expression [`amqp_refusals`] evaluates on the broker's node: as JSON, the users
/// (`rabbitmqctl list_users`), this node's listeners' protocols and the active plugins (those of
/// `rabbitmqctl status`), from the functions those commands call.
pub const BROKER_FACTS: &str = "binary_to_list(rabbit_json:encode(#{\
    users => [proplists:get_value(user, User) || User <- rabbit_auth_backend_internal:list_users()], \
    listeners => [element(3, Listener) || Listener <- rabbit_networking:node_listeners(node())], \
    plugins => rabbit_plugins:active()})).\n";

/// The answer to [`BROKER_FACTS`].
#[derive(serde::Deserialize)]
struct BrokerFacts {
    users: Vec<String>,
    listeners: BTreeSet<String>,
    plugins: BTreeSet<String>,
}

/// `s3`: Cockpit's conventions hold against the store (cockpit-protocol.md 6.4, 7): its name is
/// one Cockpit's tools trust the custom CA for, its key is found by Cockpit's lookup for that
/// name, and, where the tools run in the pod, the name reaches this machine. As on Cockpit's test
/// store, a log and an image named as Cockpit names them (`name-<sha256>.qcow2`) are listed and
/// downloaded intact without credentials, a log uploaded `authenticated-read` is not, and the
/// image is pruned.
async fn s3(deployment: &Deployment) -> Result<Option<String>, ScenarioError> {
    let url = deployment.s3.url();
    let host = url.split("://").nth(1).and_then(|rest| rest.split([':', '/']).next()).unwrap_or_default().to_owned();
    check(cockpit_trusts_custom_ca(&host), || format!("Cockpit's tools trust no custom CA for {host} (of {url})"))?;
    let key = s3::Key::for_host(&deployment.secrets.s3_keys_dir(), &host).ok_or_else(|| {
        ScenarioError::Assertion(format!("Cockpit's key lookup finds no key for {host} in the secrets"))
    })?;
    if let Some(pod) = deployment.pod() {
        // The name, and where /etc/hosts comes from: the mount's source and options.
        let script = r#"getent hosts "$1"; awk '$5 == "/etc/hosts" { print $4, $6 }' /proc/self/mountinfo"#;
        let output = pod
            .exec(&crate::pod::worker_name(1), &["sh", "-c", script, "sh", &host], "")
            .map_err(|e| ScenarioError::Assertion(format!("podman exec getent: {e}")))?;
        let said = String::from_utf8_lossy(&output.stdout);
        let mut lines = said.lines();
        let resolved = lines.next().unwrap_or_default();
        check(resolved.split_whitespace().next() == Some(crate::pod::HOST_LOOPBACK), || {
            format!("in the pod, {host} is {resolved:?}, not this machine ({})", crate::pod::HOST_LOOPBACK)
        })?;
        // The pod's own hosts file, which podman's rewrites of its own do not reach.
        let mounted = lines.next().unwrap_or_default();
        check(mounted.starts_with('/') && mounted.contains("/pod/hosts ro,"), || {
            format!("in the pod, /etc/hosts is not the deployment's own read-only file (pod/hosts): {mounted:?}")
        })?;
    }
    let logs = deployment.s3.store("logs/scenario/", Some(key.clone()))?.with_acl("public-read");
    logs.put("log", b"scenario log\n".to_vec(), "text/plain; charset=utf-8").await?;
    let listed = logs.list().await?;
    check(listed.iter().any(|o| o.name == "log"), || format!("logs/scenario/log is not listed: {listed:?}"))?;
    let anonymous = deployment.s3.store("logs/scenario/", None)?;
    let listed = anonymous.list().await?;
    check(listed.iter().any(|o| o.name == "log"), || {
        format!("logs/scenario/log is not listed anonymously: {listed:?}")
    })?;
    let got = anonymous.get("log").await?;
    check(got.as_deref() == Some(b"scenario log\n"), || format!("anonymous download of the log gave {got:?}"))?;
    logs.clone().with_acl("authenticated-read").put("private", b"private\n".to_vec(), "text/plain").await?;
    let refused = anonymous.get("private").await;
    check(matches!(refused, Err(s3::Error::Status { status: 403, .. })), || {
        format!("an anonymous download of an authenticated-read object was not refused: {refused:?}")
    })?;
    logs.delete("private").await?;

    let image: Vec<u8> = (0..1_000_000u32).map(|n| (n % 251) as u8).collect();
    let name = format!("scenario-{}.qcow2", hex(&Sha256::digest(&image)));
    let images = deployment.s3.store("images/", Some(key))?;
    images.put(&name, image.clone(), "application/octet-stream").await?;
    let anonymous_images = deployment.s3.store("images/", None)?;
    let listed = anonymous_images.list().await?;
    check(listed.iter().any(|o| o.name == name), || format!("{name} is not listed anonymously: {listed:?}"))?;
    let downloaded = anonymous_images.get(&name).await?.unwrap_or_default();
    let expected = name.trim_start_matches("scenario-").trim_end_matches(".qcow2");
    check(hex(&Sha256::digest(&downloaded)) == expected, || format!("{name} downloaded with another checksum"))?;
    images.delete(&name).await?;
    let left = images.list().await?;
    check(!left.iter().any(|o| o.name == name), || format!("{name} is still there after pruning"))?;
    logs.delete("log").await?;
    Ok(None)
}

/// `pr-success`: a signed pull_request delivery ends in exactly Cockpit's three statuses, and
/// the log and attachment are in S3, the log URL answering with the log page.
async fn pr_success(deployment: &Deployment) -> Result<Option<String>, ScenarioError> {
    let repo = "workbench-ci/demo";
    let (head, all, delivery) = open_and_deliver(deployment, repo, "unit-tests").await?;
    let (statuses, twin_posted) = one_run(&all)?;
    let bodies: Vec<String> = statuses.iter().map(|s| serde_json::to_string(s).unwrap_or_default()).collect();
    check(bodies.len() == 3, || format!("expected 3 statuses on {repo}@{head}, got {bodies:#?}"))?;
    check(bodies[0] == r#"{"context":"unit-tests","state":"pending","description":"Not yet tested"}"#, || {
        format!("first status: {}", bodies[0])
    })?;
    let target = statuses[1].target_url.clone().unwrap_or_default();
    let host = statuses[1].description.trim_start_matches("In progress ");
    check(statuses[1].state == "pending" && statuses[1].description.starts_with("In progress [worker-"), || {
        format!("second status: {}", bodies[1])
    })?;
    check(
        statuses[2].state == "success"
            && statuses[2].description == format!("Success {host}")
            && statuses[2].target_url.as_deref() == Some(target.as_str()),
        || format!("third status: {}", bodies[2]),
    )?;
    let log = read_log(deployment, &target).await?;
    check(log.contains("\n\nRunning on: worker-") && log.ends_with("\n\nJob ran successfully.  :)\n"), || {
        format!("the log at {target} is not a successful job's:\n{log}")
    })?;
    let attachment = log_object(deployment, &target, "bogus.log").await?;
    check(attachment.as_deref() == Some(&b"heisenberg compensator at 99.8% efficiency\n"[..]), || {
        format!("the attachment bogus.log next to {target} is {attachment:?}")
    })?;
    let page = log_object(deployment, &target, "log.html").await?.unwrap_or_default();
    check(String::from_utf8_lossy(&page).contains("<html>"), || format!("{target} is not the log page"))?;
    // A job that started before this delivery's scan ran (a rescan's twin) leaves the scan
    // nothing to queue: the trace then ends there.
    let links = match twin_posted {
        true => &trace::JOB_CHAIN[..1],
        false => &trace::JOB_CHAIN[..],
    };
    let dir = crate::deployment::traces_dir(&deployment.run_dir);
    let what = format!("the trace of delivery {delivery} through the webhook, the scan and the job");
    crate::client::wait_until(&what, TRACE_WITHIN, || async {
        let spans = trace::read(&dir).map_err(|e| ScenarioError::Assertion(e.to_string()))?;
        let trace = trace::of_delivery(&spans, &delivery);
        // Or the job it queued found the twin's "In progress" before posting its own: that
        // job's process ends there, and the twin's statuses are the run's.
        let to_the_job = &trace::JOB_CHAIN[..trace::JOB_CHAIN.len() - 1];
        let stopped = || trace::check_chain(&trace, to_the_job).is_ok() && trace::stopped_for_twin(&trace);
        Ok::<_, ScenarioError>(match trace::check_chain(&trace, links) {
            Ok(()) => Check::Done(()),
            Err(_) if stopped() => Check::Done(()),
            Err(why) => Check::NotYet(why),
        })
    })
    .await?;
    Ok(None)
}

/// `pr-failure`: the failing project's pull request ends in state failure, with its log.
async fn pr_failure(deployment: &Deployment) -> Result<Option<String>, ScenarioError> {
    let (_, statuses, _) = open_and_deliver(deployment, "workbench-ci/failing", "unit-tests").await?;
    let last = statuses.last().cloned().unwrap_or_else(|| status("", "", ""));
    check(last.state == "failure" && last.description.starts_with("Container exited with code 1 [worker-"), || {
        format!("final status: {last:?}")
    })?;
    let log = read_log(deployment, last.target_url.as_deref().unwrap_or_default()).await?;
    check(
        log.contains("not ok 1 the frobnicator is broken")
            && log.ends_with("*** Failure: Container exited with code 1\n"),
        || format!("the log does not show the failure:\n{log}"),
    )?;
    Ok(None)
}

/// `cross-project`: the library's context `unit-tests@workbench-ci/demo` runs demo's (passing)
/// tests against the library's pull request, whose own tests fail; statuses go to the library.
async fn cross_project(deployment: &Deployment) -> Result<Option<String>, ScenarioError> {
    let context = "unit-tests@workbench-ci/demo";
    let (_, statuses, _) = open_and_deliver(deployment, "workbench-ci/library", context).await?;
    let last = statuses.last().cloned().unwrap_or_else(|| status("", "", ""));
    check(last.state == "success", || format!("final status of {context} on the library: {last:?}"))?;
    let log = read_log(deployment, last.target_url.as_deref().unwrap_or_default()).await?;
    check(log.contains("workbench-ci/demo") && log.contains("ok 2 checkout has README.md"), || {
        format!("the log does not show demo's tests:\n{log}")
    })?;
    Ok(None)
}

/// `direct-trigger`: a status event "Not yet tested (direct trigger)", as Cockpit's
/// tests-trigger causes, runs that (manual) context.
async fn direct_trigger(deployment: &Deployment) -> Result<Option<String>, ScenarioError> {
    let (repo, context) = ("workbench-ci/demo", "unit-tests/devel");
    let (_, head) = deployment.github.open_next_pull(repo, "Trigger by hand", "workbench-ci")?;
    let trigger = status(context, "pending", "Not yet tested (direct trigger)");
    let token = std::fs::read_to_string(deployment.secrets.github_token()).unwrap_or_default();
    github::GitHub::new(&deployment.github.api_url(), token.trim())?.post_status(repo, &head, &trigger).await?;
    let event = deployment.github.status_event(repo, &head, &trigger)?;
    let answer = deliver(deployment, &event, &webhook_secret(deployment)?).await?;
    check(answer == 200, || format!("the webhook answered the status event with {answer}"))?;
    let all = final_statuses(deployment, repo, &head, context).await?;
    let (statuses, _) = one_run(&all)?;
    let states: Vec<(&str, &str)> = statuses.iter().map(|s| (s.state.as_str(), s.description.as_str())).collect();
    check(
        states.len() == 3
            && states[0] == ("pending", "Not yet tested (direct trigger)")
            && states[1].0 == "pending"
            && states[1].1.starts_with("In progress [worker-")
            && states[2] == ("success", &states[1].1.replacen("In progress", "Success", 1)),
        || format!("statuses of {context}: {states:?}"),
    )?;
    Ok(None)
}

/// The statuses of one run of a context, from all of them: the first (what queued the run)
/// and those linking to the final status's log; and whether a twin job posted besides. An
/// event's scan and a worker's rescan may both queue a run (Cockpit's rule): the twin posts at
/// most "Not yet tested" and its own "In progress", then stops (`tasks::status::owner`).
/// Anything else fails.
fn one_run(all: &[StatusUpdate]) -> Result<(Vec<&StatusUpdate>, bool), ScenarioError> {
    let final_url = all.last().and_then(|s| s.target_url.clone());
    let twin =
        |s: &StatusUpdate| s.state == "pending" && (s.description == "Not yet tested" || s.target_url != final_url);
    check(all.iter().skip(1).all(|s| s.target_url == final_url || twin(s)), || format!("statuses: {all:#?}"))?;
    let run = all.iter().enumerate().filter(|(n, s)| *n == 0 || s.target_url == final_url).map(|(_, s)| s);
    Ok((run.collect(), all.iter().skip(1).any(twin)))
}

/// `bad-signature`: a delivery signed with another secret is refused and nothing is
/// published (the webhook's own count of published deliveries does not move).
async fn bad_signature(deployment: &Deployment) -> Result<Option<String>, ScenarioError> {
    let repo = "workbench-ci/demo";
    let (number, _) = deployment.github.open_next_pull(repo, "Forged", "workbench-ci")?;
    let event = deployment.github.pull_request_event(repo, number, "opened")?;
    let published = r#"webhook_deliveries_total{event="pull_request",outcome="published"}"#;
    let before = crate::client::metric(deployment.webhook, published).await?;
    let answer = deliver(deployment, &event, b"not the webhook's secret").await?;
    let after = crate::client::metric(deployment.webhook, published).await?;
    check(answer == 403, || format!("a mis-signed delivery was answered {answer}, not 403"))?;
    check(before == after, || format!("published deliveries went from {before} to {after}"))?;
    // Left open with no status, it would be queued by the next rescan (after a restart under
    // `--watch`, say), taking a job slot the scenarios count on.
    deployment.github.close_pull(repo, number, false)?;
    Ok(None)
}

/// `kvm`: inside a job, /dev/kvm opens and answers the KVM API version.
async fn kvm(deployment: &Deployment) -> Result<Option<String>, ScenarioError> {
    if !Path::new("/dev/kvm").exists() {
        return Ok(Some("this host has no /dev/kvm".into()));
    }
    let (_, statuses, _) = open_and_deliver(deployment, "workbench-ci/kvm", "kvm").await?;
    let last = statuses.last().cloned().unwrap_or_else(|| status("", "", ""));
    let log = read_log(deployment, last.target_url.as_deref().unwrap_or_default()).await?;
    check(last.state == "success" && log.contains("KVM API version 12"), || {
        format!("final status {last:?}; log:\n{log}")
    })?;
    Ok(None)
}

/// What run-local's real GitHub mode does (Cockpit's `--pr` test): tests-scan of pull request
/// `number` of `repo`, with the context `unit-tests` injected for its base branch (so any
/// repository can be tried), publishing to the deployment; then waits until every context it
/// queued has its final status, read back from the forge. Returns those statuses.
pub async fn scan_pull_request(
    deployment: &Deployment,
    repo: &str,
    number: u64,
    within: Duration,
) -> Result<Vec<github::Status>, ScenarioError> {
    let forge = &deployment.forge;
    let token = github::read_token(&forge.token_file)?;
    let client = github::GitHub::new(&forge.api_url, &token)?;
    let pull = client
        .pull(repo, number)
        .await?
        .ok_or_else(|| ScenarioError::Assertion(format!("{repo} has no pull request #{number}")))?;
    let scanned = tokio::process::Command::new(&deployment.binaries.tasks)
        .args(["tests-scan", "--publish", "--repo", repo, "-p", &number.to_string()])
        .envs(deployment.shell_env())
        .env("COCKPIT_TESTMAP_INJECT", format!("{}/unit-tests", pull.base.branch))
        .output()
        .await
        .map_err(|e| ScenarioError::Assertion(format!("cannot run tasks tests-scan: {e}")))?;
    check(scanned.status.success(), || {
        format!("tests-scan failed: {}", String::from_utf8_lossy(&scanned.stderr).trim())
    })?;
    // Ours are the statuses tests-scan and job-runner post; other CI systems' are left alone.
    let ours = |s: &github::Status| {
        let description = s.description.as_deref().unwrap_or_default();
        description.starts_with("Not yet tested") || description.ends_with(']')
    };
    let what = format!("final statuses of {repo}#{number}");
    crate::client::wait_until_every(&what, within, Duration::from_secs(1), || async {
        let statuses: Vec<github::Status> =
            client.statuses(repo, &pull.head.sha).await?.into_iter().filter(ours).collect();
        Ok(match !statuses.is_empty() && statuses.iter().all(|s| s.state != "pending") {
            true => Check::Done(statuses),
            false => Check::NotYet(format!("{statuses:?}")),
        })
    })
    .await
}

fn status(context: &str, state: &str, description: &str) -> StatusUpdate {
    StatusUpdate { context: context.into(), state: state.into(), description: description.into(), target_url: None }
}

fn webhook_secret(deployment: &Deployment) -> Result<Vec<u8>, ScenarioError> {
    webhook::read_secret(&deployment.secrets.webhook_token()).map_err(|e| ScenarioError::Assertion(e.to_string()))
}

/// Opens the next pull request on `repo`, delivers its `opened` event to the webhook, and
/// returns its head, the statuses of `context` once final, and the delivery's id.
async fn open_and_deliver(
    deployment: &Deployment,
    repo: &str,
    context: &str,
) -> Result<(String, Vec<StatusUpdate>, String), ScenarioError> {
    let (number, head) = deployment.github.open_next_pull(repo, "A change", "workbench-ci")?;
    let event = deployment.github.pull_request_event(repo, number, "opened")?;
    let answer = deliver(deployment, &event, &webhook_secret(deployment)?).await?;
    check(answer == 200, || format!("the webhook answered the pull_request delivery with {answer}"))?;
    let statuses = final_statuses(deployment, repo, &head, context).await?;
    Ok((head, statuses, event.id))
}

/// The statuses of `context` on `repo@sha`, once the last one is no longer pending.
async fn final_statuses(
    deployment: &Deployment,
    repo: &str,
    sha: &str,
    context: &str,
) -> Result<Vec<StatusUpdate>, ScenarioError> {
    let what = format!("a final status of {context} on {repo}@{sha}");
    crate::client::wait_until(&what, JOB_WITHIN, || async {
        let statuses: Vec<StatusUpdate> =
            deployment.github.statuses(repo, sha).into_iter().filter(|s| s.context == context).collect();
        Ok::<_, ScenarioError>(match statuses.last().is_some_and(|s| s.state != "pending") {
            true => Check::Done(statuses),
            false => Check::NotYet(format!("statuses so far: {statuses:?}")),
        })
    })
    .await
}

/// Whether Cockpit's tools trust the custom CA (`COCKPIT_CA_PEM`) for `host`: only for names
/// under `.localdomain` or `.e2e.bos.redhat.com` (bots' `lib/network.py`, `CA_PEM_DOMAINS`).
pub fn cockpit_trusts_custom_ca(host: &str) -> bool {
    ["localdomain", "e2e.bos.redhat.com"]
        .iter()
        .any(|domain| host == *domain || host.strip_suffix(domain).is_some_and(|rest| rest.ends_with('.')))
}

/// An object next to the log page `target` (a status' target_url), read without credentials.
async fn log_object(deployment: &Deployment, target: &str, name: &str) -> Result<Option<Vec<u8>>, ScenarioError> {
    let dir = target
        .strip_suffix("log.html")
        .ok_or_else(|| ScenarioError::Assertion(format!("the status' target_url {target:?} is not a log page")))?;
    let ca = std::fs::read(deployment.secrets.ca_cert()).map_err(|e| ScenarioError::Assertion(e.to_string()))?;
    Ok(s3::Store::new(dir, None, Some(&ca))?.get(name).await?)
}

async fn read_log(deployment: &Deployment, target: &str) -> Result<String, ScenarioError> {
    let log = log_object(deployment, target, "log").await?;
    let log = log.ok_or_else(|| ScenarioError::Assertion(format!("no log next to {target}")))?;
    Ok(String::from_utf8_lossy(&log).into_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cockpit_trusts_its_custom_ca_under_its_domains_only() {
        for host in ["localhost.localdomain", "s3.localdomain", "localdomain", "x.e2e.bos.redhat.com"] {
            assert!(cockpit_trusts_custom_ca(host), "{host}");
        }
        for host in ["localhost", "evil-localdomain", "localdomain.example.com", "127.0.0.1"] {
            assert!(!cockpit_trusts_custom_ca(host), "{host}");
        }
    }

    #[test]
    fn one_run_is_told_from_a_twin_and_nothing_else_is_let_through() {
        let at = |state: &str, description: &str, url: Option<&str>| StatusUpdate {
            target_url: url.map(str::to_owned),
            ..status("c", state, description)
        };
        let (a, b) = (Some("https://s3/a/log.html"), Some("https://s3/b/log.html"));
        let trigger = at("pending", "Not yet tested (direct trigger)", None);
        let twin = [
            trigger.clone(),
            at("pending", "In progress [worker-1]", a),
            at("pending", "In progress [worker-1]", b),
            at("success", "Success [worker-1]", a),
        ];
        let (run, twinned) = one_run(&twin).unwrap();
        assert_eq!((run, twinned), (vec![&twin[0], &twin[1], &twin[3]], true));
        let alone =
            [trigger.clone(), at("pending", "In progress [worker-1]", a), at("success", "Success [worker-1]", a)];
        assert_eq!(one_run(&alone).unwrap(), (alone.iter().collect(), false));
        // Another final status, or a twin's outcome, is a second run: never one.
        let twice = [trigger, at("failure", "Failed [worker-1]", b), at("success", "Success [worker-1]", a)];
        assert!(one_run(&twice).is_err());
    }
}
