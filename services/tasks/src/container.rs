//! The container sandbox: a job's test command in a podman container, created through the
//! podman REST API as Cockpit's `podman run --init` (cockpit-protocol.md 4.5): the job's
//! environment, `TEST_ATTACHMENTS=/var/tmp/attachments`, `/dev/kvm` when the host has it, the
//! configured limits and the secrets the job asked for; nothing else of the worker.
//!
//! Unlike Cockpit, the checkout is made on the worker and mounted at the image's work
//! directory, and attachments are a mounted directory rather than a `podman cp`, so the image
//! needs no git and the git steps are the same in both sandboxes.

use std::path::Path;

use futures_util::StreamExt;
use podman_api::Podman;
use podman_api::conn::{Multiplexer, TtyChunk};
use podman_api::models::{ContainerMount, ContainerStatus, LinuxDevice, LinuxResources};
use podman_api::opts::{
    ContainerCreateOpts, ContainerDeleteOpts, ContainerListFilter, ContainerListOpts, ContainerWaitOpts,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::log_store::LogStore;
use crate::log_stream::LogStream;
use crate::sandbox::{Ended, RunArgs, expiry, pump};

/// Where the checkout is, inside the container (Cockpit's checkout-and-run directory).
pub const CHECKOUT: &str = "/work/make-checkout-workdir";
/// `TEST_ATTACHMENTS` inside the container, as in Cockpit.
pub const ATTACHMENTS: &str = "/var/tmp/attachments";
/// The labels of job containers: the job's slug, the worker that runs it, and the checkout it
/// mounts (in that worker's work directory), so that teardown and a restarted worker find
/// theirs, and only theirs: two deployments on one machine may both have a `worker-1`.
pub const JOB_LABEL: &str = "workbench.job";
pub const WORKER_LABEL: &str = "workbench.worker";
pub const CHECKOUT_LABEL: &str = "workbench.checkout";

/// A job container's process limit unless `run-args` set one: Cockpit's production value.
pub const DEFAULT_PIDS: i64 = 16384;

/// A job container's memory limit unless `run-args` set one: half of this machine's memory, so
/// that a runaway job leaves the worker and the other slots the rest. Cockpit's production
/// configuration sets its own (`--memory=24g`).
pub fn default_memory() -> i64 {
    let info = rustix::system::sysinfo();
    i64::try_from(u64::from(info.mem_unit).saturating_mul(info.totalram as u64) / 2).unwrap_or(i64::MAX)
}

/// One job's container.
#[derive(Clone, Copy)]
pub struct Spec<'a> {
    pub image: &'a str,
    pub argv: &'a [String],
    /// Host directories mounted at [`CHECKOUT`] and [`ATTACHMENTS`].
    pub checkout: &'a Path,
    pub attachments: &'a Path,
    pub env: &'a [(String, String)],
    pub args: &'a RunArgs,
    /// The job's slug and the worker's host name, as the values of the labels.
    pub slug: &'a str,
    pub worker: &'a str,
}

/// Runs the container to its end, the deadline, or cancellation; it is removed in every case.
/// A container that exited by itself is removed by a task put in `removals`: the job's end
/// (its attachments, log and status) does not wait for podman's quarter of a second of
/// removal, and the job waits for `removals` before it ends. One killed, or in an unknown
/// state, is removed before this returns: nothing of the job may run on while the worker reads
/// what it left. `Err` is an infrastructure failure (no podman, no such image).
pub async fn run(
    socket: &Path,
    spec: &Spec<'_>,
    log: &mut LogStream<LogStore>,
    deadline: Option<Instant>,
    cancel: &CancellationToken,
    removals: &mut JoinSet<()>,
) -> Result<Ended, String> {
    let podman = Podman::unix(socket);
    let created = podman.containers().create(&options(spec, None)).await.map_err(|e| {
        format!("Failed to create container from {}: {e} (podman API at {})", spec.image, socket.display())
    })?;
    let container = podman.containers().get(&created.id);
    let ended = async {
        // Attached before it starts, the output comes straight from the container's monitor,
        // all of it: following its log file loses the end of a long log (podman issue 21914).
        let attached =
            attach(socket, &created.id).await.map_err(|e| format!("Failed to attach to the container: {e}"))?;
        container.start(None).await.map_err(|e| format!("Failed to start container: {e}"))?;
        let (sender, output) = mpsc::channel(16);
        let (mut reader, _writer) = attached.split();
        let forwarder = tokio::spawn(async move {
            while let Some(Ok(TtyChunk::StdOut(bytes) | TtyChunk::StdErr(bytes))) = reader.next().await {
                if sender.send(bytes).await.is_err() {
                    break;
                }
            }
        });
        let pumped = pump(output, log, deadline, cancel).await;
        forwarder.abort();
        if let Some(ended) = pumped? {
            let _ = container.kill().await;
            return Ok(ended);
        }
        exit_status(&podman, &created.id, deadline, cancel).await
    }
    .await;
    match ended {
        // Its first process exited, and with it every process of its PID namespace.
        Ok(Ended::Exited(_)) => {
            let (socket, id) = (socket.to_owned(), created.id);
            removals.spawn(async move { remove(&socket, &id).await }.in_current_span());
        }
        _ => remove(socket, &created.id).await,
    }
    ended
}

/// Attaches to the output of the container `id`, as podman-api's `Container::attach` does
/// without its first step: an `inspect` asking for the container's size, which podman computes
/// by walking every file of the image (0.15 s of the podman service's CPU for the tasks image,
/// before every job could start). The same request through the crate podman-api is built on.
async fn attach(socket: &Path, id: &str) -> Result<Multiplexer, podman_api::Error> {
    use containers_api::conn::{Payload, RequestClient, Transport, get_unix_connector, hyper, tty};
    let client = hyper::Client::builder().pool_max_idle_per_host(0).build(get_unix_connector());
    // Any answer but the upgrade is an error of the request itself.
    let requests = RequestClient::<podman_api::Error>::new(
        Transport::Unix { client, path: socket.to_owned() },
        Box::new(|answer| Box::pin(async move { Ok(answer) })),
    );
    let version = podman_api::LATEST_API_VERSION;
    let endpoint = version.make_endpoint(format!("/libpod/containers/{id}/attach?stdout=true&stderr=true&stream=true"));
    let upgraded = requests.post_upgrade_stream(endpoint, Payload::empty()).await?;
    Ok(Multiplexer::new(upgraded, tty::decode_chunk))
}

/// How often, and how many times, [`exit_status`] asks podman whether the container has
/// stopped before it leaves that to podman's `wait`: for a second.
const STOPPED_POLL: std::time::Duration = std::time::Duration::from_millis(20);
const STOPPED_POLLS: u32 = 50;

/// The exit status of a container whose output has ended, as soon as podman has read it: the
/// state `stopped`. The API's `wait` answers only once the container's monitor is gone, after
/// the `podman container cleanup` it runs, and looks every quarter of a second: 0.2-0.4 s later
/// a job on a two-core machine (docs/benchmarks.md). The output ends when the container's first
/// process has, so this takes milliseconds; should it have ended otherwise (a lost attach
/// connection), podman's `wait` takes over after a second, and the deadline and cancellation
/// still hold.
async fn exit_status(
    podman: &Podman,
    id: &str,
    deadline: Option<Instant>,
    cancel: &CancellationToken,
) -> Result<Ended, String> {
    let container = podman.containers().get(id);
    let stopped = async {
        for _ in 0..STOPPED_POLLS {
            if let Some(code) = stopped_with(podman, id).await? {
                return Ok(Ended::Exited(code));
            }
            tokio::time::sleep(STOPPED_POLL).await;
        }
        let wait = ContainerWaitOpts::builder().conditions([ContainerStatus::Exited]).build();
        container.wait(&wait).await.map_err(|e| format!("Failed to wait for the container: {e}"))?;
        Ok(Ended::Exited(stopped_with(podman, id).await?.unwrap_or(128)))
    };
    tokio::select! {
        stopped = stopped => stopped,
        () = expiry(deadline) => {
            let _ = container.kill().await;
            Ok(Ended::TimedOut)
        }
        () = cancel.cancelled() => {
            let _ = container.kill().await;
            Ok(Ended::Cancelled)
        }
    }
}

/// The container's exit code once it has stopped (`stopped`, or `exited` once cleaned up).
/// Read from the container list, not `inspect`: podman-api's `inspect` asks for the container's
/// size, which podman computes by walking every file of the image (0.15 s of the service's CPU
/// for the tasks image, on each call). `sync`, as `inspect` does: the state as the runtime has it
/// now, not as podman last recorded it.
async fn stopped_with(podman: &Podman, id: &str) -> Result<Option<i32>, String> {
    let only = ContainerListFilter::Id(id.into());
    let only = ContainerListOpts::builder().all(true).sync(true).filter([only]).build();
    let listed = podman.containers().list(&only).await.map_err(|e| format!("Failed to inspect the container: {e}"))?;
    let container =
        listed.into_iter().next().ok_or_else(|| format!("Failed to inspect the container: {id} is gone"))?;
    let stopped = matches!(container.state.as_deref(), Some("stopped" | "exited"));
    Ok(stopped.then(|| container.exit_code.unwrap_or(128)))
}

/// Leaves a container like `spec`'s running `sleep infinity`, named after the job and labelled
/// [`crate::hold::HELD_LABEL`]: a held failed job's environment to open a shell in. Returns its
/// name.
pub async fn hold(socket: &Path, spec: &Spec<'_>) -> Result<String, String> {
    let slug: String =
        spec.slug.chars().map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '-' }).collect();
    let name = format!("held-{slug}");
    let sleep = ["sleep".to_owned(), "infinity".to_owned()];
    let held = Spec { argv: &sleep, ..*spec };
    let podman = Podman::unix(socket);
    let created = podman
        .containers()
        .create(&options(&held, Some(&name)))
        .await
        .map_err(|e| format!("cannot create the held container {name}: {e}"))?;
    podman.containers().get(&created.id).start(None).await.map_err(|e| format!("cannot start {name}: {e}"))?;
    Ok(name)
}

/// Removes the container `name`, whatever its state; a failure is logged.
pub async fn remove(socket: &Path, name: &str) {
    let options = ContainerDeleteOpts::builder().force(true).build();
    if let Err(err) = Podman::unix(socket).containers().get(name).delete(&options).await {
        tracing::warn!(%err, name, "cannot remove the container");
    }
}

/// Removes the job containers a previous run of the worker `worker`, working in `work_dir`,
/// left behind when it was killed (their messages went back to the queue). Returns how many.
pub async fn remove_leftovers(socket: &Path, worker: &str, work_dir: &Path) -> Result<usize, String> {
    let podman = Podman::unix(socket);
    let filter = ContainerListFilter::LabelKeyVal(WORKER_LABEL.into(), worker.into());
    let listed = podman
        .containers()
        .list(&ContainerListOpts::builder().all(true).filter([filter]).build())
        .await
        .map_err(|e| format!("cannot list containers at {}: {e}", socket.display()))?;
    let mut removed = 0;
    // A held job's container stays until whoever held it releases it (`crate::hold`).
    let ours = |labels: &std::collections::HashMap<String, String>| {
        labels.get(CHECKOUT_LABEL).is_some_and(|checkout| Path::new(checkout).starts_with(work_dir))
            && !labels.contains_key(crate::hold::HELD_LABEL)
    };
    let listed = listed.into_iter().filter(|container| container.labels.as_ref().is_some_and(ours));
    for id in listed.filter_map(|container| container.id) {
        let deleted = podman.containers().get(&id).delete(&ContainerDeleteOpts::builder().force(true).build()).await;
        removed += usize::from(deleted.is_ok());
    }
    Ok(removed)
}

/// The container's options; `held`: the name of a held job's container.
fn options(spec: &Spec, held: Option<&str>) -> ContainerCreateOpts {
    let args = spec.args;
    let bind = |source: &Path, destination: &str, read_only: bool| ContainerMount {
        destination: Some(destination.to_owned()),
        options: Some(vec!["rbind".into(), if read_only { "ro" } else { "rw" }.into()]),
        source: Some(source.to_string_lossy().into_owned()),
        _type: Some("bind".into()),
        uid_mappings: None,
        gid_mappings: None,
    };
    let mut mounts = vec![bind(spec.checkout, CHECKOUT, false), bind(spec.attachments, ATTACHMENTS, false)];
    mounts.extend(args.volumes.iter().map(|v| bind(Path::new(&v.source), &v.destination, v.read_only)));
    mounts.extend(args.tmpfs.iter().map(|(destination, options)| ContainerMount {
        destination: Some(destination.clone()),
        options: Some(options.split(',').filter(|o| !o.is_empty()).map(str::to_owned).collect()),
        source: Some("tmpfs".into()),
        _type: Some("tmpfs".into()),
        uid_mappings: None,
        gid_mappings: None,
    }));
    let mut devices: Vec<String> = args.devices.clone();
    if Path::new("/dev/kvm").exists() && !devices.iter().any(|d| d == "/dev/kvm") {
        devices.push("/dev/kvm".into());
    }
    let env = spec.env.iter().cloned().chain(args.env.iter().cloned());
    let mut builder = ContainerCreateOpts::builder()
        .image(spec.image)
        .command(spec.argv)
        .work_dir(CHECKOUT)
        .init(true)
        .env(env)
        .labels(
            [(JOB_LABEL, spec.slug), (WORKER_LABEL, spec.worker), (CHECKOUT_LABEL, &*spec.checkout.to_string_lossy())]
                .into_iter()
                .chain(held.map(|_| (crate::hold::HELD_LABEL, "true"))),
        )
        .mounts(mounts)
        .devices(devices.into_iter().map(|path| model::<LinuxDevice>(serde_json::json!({ "path": path }))))
        .resource_limits(model::<LinuxResources>(serde_json::json!({
            "memory": { "limit": args.memory.unwrap_or_else(default_memory) },
            "pids": { "limit": args.pids_limit.unwrap_or(DEFAULT_PIDS) },
        })));
    if let Some(size) = args.shm_size {
        builder = builder.shm_size(size);
    }
    if let Some(pod) = &args.pod {
        builder = builder.pod(pod);
    }
    if let Some(name) = held {
        builder = builder.name(name);
    }
    builder.build()
}

/// A podman API model with only the given fields set (the models have no `Default`).
fn model<T: serde::de::DeserializeOwned>(fields: serde_json::Value) -> T {
    serde_json::from_value(fields).expect("the fields match the podman API model")
}
