//! The private RabbitMQ broker of the `process` runtime: a child process with its own node
//! name, cookie, ports and epmd, listening only for TLS on 127.0.0.1, where the only way in is
//! a client certificate of our CA whose common name is the AMQP user.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::child::ProcessGroup;
use crate::port::free_port;
use crate::secrets::{AMQP_USER, Secrets};

/// Where Debian's package keeps the RabbitMQ tools themselves (/usr/sbin has wrappers that switch to
/// the rabbitmq user, and so to another Erlang cookie).
pub(crate) const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";
/// Where Debian's RabbitMQ keeps `rabbitmq_server-<version>/plugins`.
const RABBITMQ_LIB: &str = "/usr/lib/rabbitmq/lib";
/// The broker itself, its libraries, and the plugin for certificate login: all a broker of
/// ours loads (here and in the RabbitMQ image).
pub const NEEDED_PLUGINS: [&str; 22] = [
    "rabbit",
    "rabbit_common",
    "rabbitmq_prelaunch",
    "rabbitmq_auth_mechanism_ssl",
    "amqp10_common",
    "aten",
    "credentials_obfuscation",
    "cuttlefish",
    "enough",
    "gen_batch_server",
    "getopt",
    "jsx",
    "observer_cli",
    "osiris",
    "ra",
    "ranch",
    "recon",
    "seshat",
    "stdout_formatter",
    "syslog",
    "sysmon_handler",
    "systemd",
];
/// What the `rabbitmq_prometheus` plugin RabbitMQ ships needs besides [`NEEDED_PLUGINS`]: a
/// broker started with metrics ([`Broker::start_with_metrics`]) loads these too.
pub const METRICS_PLUGINS: [&str; 7] = [
    "rabbitmq_prometheus",
    "rabbitmq_management_agent",
    "rabbitmq_web_dispatch",
    "prometheus",
    "accept",
    "cowboy",
    "cowlib",
];
const EPMD: &str = "/usr/bin/epmd";
/// Erlang's own client for a running node (Debian's erlang-base, here and in the RabbitMQ
/// image): it asks the node over the distribution in milliseconds, where each `rabbitmqctl`
/// boots an Erlang VM and Elixir first (about a second of CPU on these machines).
pub(crate) const ERL_CALL: &str = "/usr/bin/erl_call";
/// How long `erl_call` waits for the node's answer.
pub(crate) const ERL_CALL_TIMEOUT_SECONDS: &str = "10";
/// How long a dropped broker's halt waits for its node: then it is stopped as any process.
const HALT_TIMEOUT_SECONDS: &str = "2";
/// RabbitMQ takes 4-5 s to start on these machines; allow for a slow, loaded one.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How often a start whose port was taken meanwhile is tried on other ports.
const PORT_TRIES: u32 = 3;
/// A clean stop takes about 3 s.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// The Erlang distribution listens on loopback only, like everything else we start.
const LOOPBACK_ONLY: &str = "-kernel inet_dist_use_interface {127,0,0,1}";

/// A running private broker. Dropping it stops the broker and everything it started.
pub struct Broker {
    dir: PathBuf,
    secrets: Secrets,
    port: u16,
    node: String,
    epmd_port: u16,
    dist_port: u16,
    /// Where `rabbitmq_prometheus` serves its metrics, if it runs.
    metrics_port: Option<u16>,
    processes: ProcessGroup,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("RabbitMQ is not installed ({} is missing): install the rabbitmq-server package (`cargo xtask` commands install it for you)", .0.display())]
    NotInstalled(PathBuf),
    #[error("cannot {what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("RabbitMQ exited during start-up ({status}); its log ({}) ends with:\n{tail}", log.display())]
    Exited { status: ExitStatus, log: PathBuf, tail: String },
    #[error("RabbitMQ did not accept a TLS connection within {} s (last attempt: {last_error}); its log ({}) ends with:\n{tail}", START_TIMEOUT.as_secs(), log.display())]
    NotReady { last_error: String, log: PathBuf, tail: String },
    #[error("rabbitmqctl {args} failed: {output}")]
    Ctl { args: String, output: String },
    #[error("erl_call of `{expr}` on the broker's node returned no string: {output}")]
    Eval { expr: String, output: String },
}

impl BrokerError {
    /// Whether the broker did not start because one of its ports was in use.
    fn port_taken(&self) -> bool {
        match self {
            BrokerError::Exited { tail, .. } | BrokerError::NotReady { tail, .. } => {
                let tail = tail.to_ascii_lowercase();
                // The AMQP port: RabbitMQ logs that its listener could not start, and runs on.
                tail.contains(LISTENER_FAILED.to_ascii_lowercase().as_str()) ||
                // The distribution port (Erlang's `dist_port_already_used`) as well as AMQP's.
                ["eaddrinuse", "address already in use", "dist_port_already_used"].iter().any(|s| tail.contains(s))
            }
            _ => false,
        }
    }
}

/// What RabbitMQ logs when its AMQP listener cannot start (its port taken meanwhile); it does
/// not exit, so the readiness wait looks for this line.
const LISTENER_FAILED: &str = "Failed to start Ranch listener";

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> BrokerError {
    let what = what.into();
    move |source| BrokerError::Io { what, source }
}

impl Broker {
    /// Starts a broker keeping its state and logs in `dir` (created if needed), with the
    /// certificates of `secrets`, and returns once a client can log in over TLS.
    pub async fn start(dir: &Path, secrets: &Secrets) -> Result<Broker, BrokerError> {
        Broker::start_inner(dir, secrets, false).await
    }

    /// [`Broker::start`], with RabbitMQ's own metrics served on a port of 127.0.0.1
    /// ([`Broker::metrics_address`]) by its `rabbitmq_prometheus` plugin.
    pub async fn start_with_metrics(dir: &Path, secrets: &Secrets) -> Result<Broker, BrokerError> {
        Broker::start_inner(dir, secrets, true).await
    }

    async fn start_inner(dir: &Path, secrets: &Secrets, metrics: bool) -> Result<Broker, BrokerError> {
        for program in [Path::new(RABBITMQ_BIN).join("rabbitmq-server"), PathBuf::from(EPMD)] {
            if !program.exists() {
                return Err(BrokerError::NotInstalled(program));
            }
        }
        std::fs::create_dir_all(dir.join("home")).map_err(io_error(format!("create {}", dir.display())))?;
        // The ports are configuration, not a bind of ours: picked free, they can be taken by
        // someone else before RabbitMQ binds them. Then it is started again on others.
        let mut tries = 1;
        loop {
            let port = free_port().map_err(io_error("find a free port"))?;
            let mut broker = Broker {
                dir: dir.to_owned(),
                secrets: secrets.clone(),
                port,
                node: format!("workbench-{port}@localhost"),
                epmd_port: free_port().map_err(io_error("find a free port"))?,
                dist_port: free_port().map_err(io_error("find a free port"))?,
                metrics_port: match metrics {
                    true => Some(free_port().map_err(io_error("find a free port"))?),
                    false => None,
                },
                processes: ProcessGroup::new(),
            };
            broker.write_config()?;
            match broker.launch().await {
                Ok(()) => return Ok(broker),
                Err(err) if tries < PORT_TRIES && err.port_taken() => {
                    tracing::warn!(port, tries, "a port of RabbitMQ was taken meanwhile; starting it on others");
                    broker.stop().await;
                    tries += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Stops the broker and starts it again on the same port with the same data: durable
    /// queues and persistent messages survive, as in a production restart.
    pub async fn restart(&mut self) -> Result<(), BrokerError> {
        self.stop().await;
        self.processes = ProcessGroup::new();
        self.launch().await
    }

    async fn launch(&mut self) -> Result<(), BrokerError> {
        // Our own epmd, so that the node does not start (and leave behind) a shared one.
        let mut epmd = Command::new(EPMD);
        epmd.args(["-port", &self.epmd_port.to_string(), "-address", "127.0.0.1"]);
        self.spawn(&mut epmd, "epmd.log")?;

        let mut server = self.command(&Path::new(RABBITMQ_BIN).join("rabbitmq-server"));
        server
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", LOOPBACK_ONLY);
        // The log is appended to across a start on other ports and a restart: only what this
        // node writes tells about its listener.
        let log_from = std::fs::metadata(self.log_path()).map_or(0, |meta| meta.len());
        let server = self.spawn(&mut server, "stdout.log")?;
        self.wait_until_ready(server, log_from).await
    }

    /// Where Prometheus scrapes the broker (`/metrics`, and per queue `/metrics/per-object`),
    /// if it was started with metrics.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.metrics_port.map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Where it takes AMQP connections, on this machine.
    pub fn socket_address(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Where clients connect (Cockpit's `AMQP_SERVER` form).
    pub fn address(&self) -> amqp::Address {
        amqp::Address::Tls { host: "127.0.0.1".into(), port: self.port }
    }

    /// A client configuration that logs in as the AMQP user of the secrets.
    pub fn client_config(&self) -> amqp::Config {
        amqp::Config::new(self.address(), &self.secrets.webhook_dir())
    }

    /// The broker's own log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("rabbit.log")
    }

    /// The broker's Erlang node, `name@host`.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Every live process the broker started (the node, its helpers, its epmd).
    pub fn process_ids(&self) -> Vec<u32> {
        self.processes.process_ids()
    }

    /// Runs `rabbitmqctl` against this node and returns its standard output.
    pub fn ctl(&self, args: &[&str]) -> Result<String, BrokerError> {
        let mut command = self.command(&Path::new(RABBITMQ_BIN).join("rabbitmqctl"));
        command.env("RABBITMQ_CTL_ERL_ARGS", LOOPBACK_ONLY).args(["--node", &self.node]).args(args);
        ctl_output(args, command.stdin(Stdio::null()).output().map_err(io_error("run rabbitmqctl"))?)
    }

    /// Evaluates the Erlang expression `expr`, which returns a string, on this node (see
    /// [`eval_argv`]); returns that string.
    pub fn eval(&self, expr: &str) -> Result<String, BrokerError> {
        let [program, args @ ..] = eval_argv(&self.node, ERL_CALL_TIMEOUT_SECONDS);
        let mut command = self.command(Path::new(program));
        eval_output(
            expr,
            crate::child::run_with_input(command.args(args), expr.as_bytes()).map_err(io_error("run erl_call"))?,
        )
    }

    /// Halts the node at once (`erlang:halt()`, `erl_call`: milliseconds), without a clean
    /// stop. Its VM then exits as any process does: the script that started it reaps it, and
    /// its helpers see it go. Killing the whole group at once instead left orphans, which stayed
    /// zombies until this machine's init reaped them, and once the AMQP port open past the
    /// stop. A node that does not answer (stopped, not yet up) is left to the group's stop.
    pub fn halt(&self) {
        let [program, args @ ..] = eval_argv(&self.node, HALT_TIMEOUT_SECONDS);
        let _ = crate::child::run_with_input(self.command(Path::new(program)).args(args), b"erlang:halt().\n");
    }

    /// How many messages `queue` holds, ready and unacknowledged, per the broker; `None` if it
    /// does not exist.
    pub fn messages(&self, queue: &str) -> Result<Option<(u64, u64)>, BrokerError> {
        let listing =
            self.ctl(&["list_queues", "--quiet", "--no-table-headers", "name", "messages", "messages_unacknowledged"])?;
        Ok(listing.lines().find_map(|line| match line.split_whitespace().collect::<Vec<_>>()[..] {
            [name, ready, unacknowledged] if name == queue => Some((ready.parse().ok()?, unacknowledged.parse().ok()?)),
            _ => None,
        }))
    }

    /// Stops the broker (SIGTERM, then SIGKILL after a grace period) and its epmd.
    pub async fn stop(&mut self) {
        self.processes.stop_async(STOP_GRACE).await;
    }

    fn write_config(&self) -> Result<(), BrokerError> {
        let listener = Listener::Loopback(self.port);
        let definitions = self.dir.join("definitions.json");
        let mut files = config_files(listener, &self.secrets.webhook_dir(), &definitions, self.metrics_port).to_vec();
        files.push(("rabbitmq-env.conf", String::new()));
        for (name, contents) in files {
            let path = self.dir.join(name);
            std::fs::write(&path, contents).map_err(io_error(format!("write {}", path.display())))?;
        }
        self.link_plugins()
    }

    /// A plugins directory with only what this broker runs. At start RabbitMQ loads every
    /// application of its plugins directory to scan their modules (feature flags, boot steps),
    /// which is most of its CPU-bound start with Debian's seventy; these are the ones it needs.
    fn link_plugins(&self) -> Result<(), BrokerError> {
        let lib = std::fs::read_dir(RABBITMQ_LIB).map_err(io_error(format!("read {RABBITMQ_LIB}")))?;
        let source = lib
            .flatten()
            .map(|entry| entry.path().join("plugins"))
            .find(|plugins| plugins.parent().is_some_and(|p| p.to_string_lossy().contains("rabbitmq_server-")))
            .ok_or_else(|| BrokerError::Io {
                what: format!("find RabbitMQ's plugins in {RABBITMQ_LIB}"),
                source: std::io::ErrorKind::NotFound.into(),
            })?;
        let source = source.as_path();
        let target = self.dir.join("plugins");
        // Made anew: a start tried again on other ports links them again.
        match std::fs::remove_dir_all(&target) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_error(format!("remove {}", target.display()))(err));
            }
            _ => {}
        }
        std::fs::create_dir_all(&target).map_err(io_error(format!("create {}", target.display())))?;
        let entries = std::fs::read_dir(source).map_err(io_error(format!("read {}", source.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let application = name.rsplit_once('-').map_or(name.as_str(), |(application, _)| application);
            let metrics = self.metrics_port.is_some() && METRICS_PLUGINS.contains(&application);
            if NEEDED_PLUGINS.contains(&application) || metrics {
                let link = target.join(&name);
                std::os::unix::fs::symlink(entry.path(), &link)
                    .map_err(io_error(format!("link {}", link.display())))?;
            }
        }
        Ok(())
    }

    /// A RabbitMQ command (server or ctl) isolated from the system's installation.
    fn command(&self, program: &Path) -> Command {
        let dir = &self.dir;
        let mut command = Command::new(program);
        command
            .current_dir(dir)
            .env("HOME", dir.join("home"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.config"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PLUGINS_DIR", dir.join("plugins"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir)
            .env("RABBITMQ_LOGS", self.log_path())
            .env("RABBITMQ_PID_FILE", dir.join("rabbit.pid"))
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            // Any value of this, even "false", makes the node exit at once.
            .env_remove("RABBITMQ_ALLOW_INPUT");
        command
    }

    fn spawn(&mut self, command: &mut Command, log: &str) -> Result<usize, BrokerError> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(log))
            .map_err(io_error(format!("open {log}")))?;
        let stderr = log.try_clone().map_err(io_error("duplicate a log file handle"))?;
        command.stdin(Stdio::null()).stdout(log).stderr(stderr);
        self.processes.spawn(command).map_err(io_error(format!("start {}", command.get_program().to_string_lossy())))
    }

    /// Waits until a client gets in, reading the broker's log from byte `log_from` on.
    async fn wait_until_ready(&mut self, server: usize, log_from: u64) -> Result<(), BrokerError> {
        let probe = crate::client::BrokerProbe::new(self.client_config());
        let started = Instant::now();
        loop {
            if let Some(status) = self.processes.exited(server) {
                return Err(BrokerError::Exited { status, log: self.log_path(), tail: self.log_tail() });
            }
            let log = std::fs::read(self.log_path()).unwrap_or_default();
            let log = String::from_utf8_lossy(log.get(log_from as usize..).unwrap_or_default());
            if let Some(line) = log.lines().find(|line| line.contains(LISTENER_FAILED)) {
                return Err(BrokerError::NotReady {
                    last_error: "its AMQP listener did not start".into(),
                    log: self.log_path(),
                    tail: line.to_owned(),
                });
            }
            match probe.answers().await {
                Ok(()) => return Ok(()),
                Err(err) if started.elapsed() > START_TIMEOUT => {
                    return Err(BrokerError::NotReady {
                        last_error: err.to_string(),
                        log: self.log_path(),
                        tail: self.log_tail(),
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The last lines of the broker's log and of its console output.
    pub fn log_tail(&self) -> String {
        [self.log_path(), self.dir.join("stdout.log")]
            .iter()
            .map(|path| crate::child::tail(path, 20))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The standard output of a `rabbitmqctl` run with `args`, or its whole output as the error.
pub(crate) fn ctl_output(args: &[&str], output: std::process::Output) -> Result<String, BrokerError> {
    if !output.status.success() {
        return Err(BrokerError::Ctl {
            args: args.join(" "),
            output: String::from_utf8_lossy(&[output.stdout, output.stderr].concat()).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The `erl_call` that evaluates the expression on its standard input on `node` (`name@host`,
/// or `name` on this host; the cookie is the one in `$HOME`, as for the node), waiting for
/// its answer up to `timeout_seconds`.
pub(crate) fn eval_argv<'a>(node: &'a str, timeout_seconds: &'a str) -> [&'a str; 6] {
    [ERL_CALL, "-sname", node, "-timeout", timeout_seconds, "-e"]
}

/// The string an `erl_call -e` of `expr` returned: its output, `{ok, "..."}` (the string as is,
/// not escaped), from a successful run; anything else is an error.
pub(crate) fn eval_output(expr: &str, output: std::process::Output) -> Result<String, BrokerError> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = stdout.trim_end().strip_prefix("{ok, \"").and_then(|rest| rest.strip_suffix("\"}"));
    match value.filter(|_| output.status.success()) {
        Some(value) => Ok(value.to_owned()),
        None => Err(BrokerError::Eval {
            expr: expr.trim().to_owned(),
            output: String::from_utf8_lossy(&[output.stdout, output.stderr].concat()).into_owned(),
        }),
    }
}

/// Where a broker takes connections.
#[derive(Debug, Clone, Copy)]
pub enum Listener {
    /// A private broker on this machine: 127.0.0.1 only, logging to its file.
    Loopback(u16),
    /// The broker of the pod: every address of the pod's own network, logging to the console
    /// so that `podman logs` has it.
    Pod(u16),
}

/// The broker's `rabbitmq.config`, `definitions.json` (read from `definitions`) and
/// `enabled_plugins`, with the certificates of `certs` (a secrets `webhook` directory, as seen
/// by the broker): TLS only, a client certificate of the CA required, its common name the user;
/// with `metrics_port`, `rabbitmq_prometheus` serving plain HTTP on that port (where the
/// listener says).
pub fn config_files(
    listener: Listener,
    certs: &Path,
    definitions: &Path,
    metrics_port: Option<u16>,
) -> [(&'static str, String); 3] {
    let path = |name: &str| certs.join(name).display().to_string();
    let (listen, log) = match listener {
        Listener::Loopback(port) => {
            (format!("{{\"127.0.0.1\", {port}}}"), "{console, [{enabled, false}]}, {file, [{level, info}]}")
        }
        Listener::Pod(port) => {
            (port.to_string(), "{console, [{enabled, true}, {level, info}]}, {file, [{file, false}]}")
        }
    };
    // Erlang terms rather than the new-style format: RabbitMQ then skips translating the
    // configuration through every plugin's schema (cuttlefish), part of its slow start.
    let string = |value: &str| format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""));
    let conf = format!(
        "[{{rabbit, [
  {{tcp_listeners, []}},
  {{ssl_listeners, [{listen}]}},
  {{ssl_options, [{{cacertfile, {ca}}}, {{certfile, {cert}}}, {{keyfile, {key}}},
                 {{verify, verify_peer}}, {{fail_if_no_peer_cert, true}}, {{versions, ['tlsv1.3', 'tlsv1.2']}}]}},
  {{auth_mechanisms, ['EXTERNAL']}},
  {{ssl_cert_login_from, common_name}},
  {{load_definitions, {definitions}}},
  {{consumer_timeout, 9000000}},
  {{log, [{log}]}}
]}}{metrics}].
",
        ca = string(&path("ca.pem")),
        cert = string(&path("amqp-server.pem")),
        key = string(&path("amqp-server.key")),
        definitions = string(&definitions.display().to_string()),
        metrics = metrics_port.map_or(String::new(), |port| {
            // Like AMQP: 127.0.0.1 on this machine, every address of the pod's own network in it.
            let ip = match listener {
                Listener::Loopback(_) => "{ip, \"127.0.0.1\"}, ",
                Listener::Pod(_) => "",
            };
            format!(",\n {{rabbitmq_prometheus, [{{tcp_config, [{ip}{{port, {port}}}]}}]}}")
        }),
    );
    let plugins = match metrics_port {
        Some(_) => "[rabbitmq_auth_mechanism_ssl,rabbitmq_prometheus].\n",
        None => "[rabbitmq_auth_mechanism_ssl].\n",
    };
    // The certificate user, with no usable password; no guest.
    let definitions = serde_json::json!({
        "users": [{"name": AMQP_USER, "password_hash": "", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""}],
        "vhosts": [{"name": "/"}],
        "permissions": [{"user": AMQP_USER, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}],
    });
    [("rabbitmq.config", conf), ("definitions.json", definitions.to_string()), ("enabled_plugins", plugins.to_owned())]
}

/// Halted, not killed: killed with the script that started it, the VM was left to this
/// machine's init (a zombie until reaped, its port once still open after the drop).
impl Drop for Broker {
    /// A dropped broker's data is thrown away, not worth the second or more a clean stop
    /// takes: the node is halted first ([`Broker::halt`]). [`Broker::stop`] and
    /// [`Broker::restart`] stop it cleanly.
    fn drop(&mut self) {
        self.halt();
        self.processes.stop(STOP_GRACE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(code: i32, stdout: &str) -> std::process::Output {
        use std::os::unix::process::ExitStatusExt;
        let status = ExitStatus::from_raw(code << 8);
        std::process::Output { status, stdout: stdout.into(), stderr: b"error text".to_vec() }
    }

    /// Only `{ok, "..."}` of a successful run is an answer, taken as printed (quotes inside
    /// and all).
    #[test]
    fn an_eval_answer_is_the_string_erl_call_printed() {
        let answer = eval_output("e.", output(0, "{ok, \"{\"users\":[\"a\"]}\"}\n")).unwrap();
        assert_eq!(answer, r#"{"users":["a"]}"#);
        let wrong = ["{ok, [1,2]}", "{badrpc, nodedown}", "", "{ok, \"x\"", "ok, \"x\"}"].map(|text| (0, text));
        for (code, text) in wrong.into_iter().chain([(1, "{ok, \"x\"}")]) {
            let err = eval_output("e.", output(code, text)).unwrap_err().to_string();
            assert!(err.contains("`e.`") && err.contains("error text"), "{text:?}: {err}");
        }
    }

    /// A start tried again (a port taken meanwhile) writes the configuration again in the same
    /// directory: the plugins are linked anew, not refused as already there (seen failing so).
    #[test]
    fn the_configuration_is_written_again_for_a_start_on_other_ports() {
        let dir = tempfile::tempdir().unwrap();
        let (secrets, _) = crate::secrets::generate(&dir.path().join("secrets"), false).unwrap();
        let broker = |port| Broker {
            dir: dir.path().join("broker"),
            secrets: secrets.clone(),
            port,
            node: format!("workbench-{port}@localhost"),
            epmd_port: port + 1,
            dist_port: port + 2,
            metrics_port: None,
            processes: ProcessGroup::new(),
        };
        std::fs::create_dir_all(dir.path().join("broker")).unwrap();
        broker(5000).write_config().unwrap();
        broker(6000).write_config().unwrap();
        let mut linked: Vec<String> = std::fs::read_dir(dir.path().join("broker/plugins"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        linked.sort();
        let applications: Vec<&str> =
            linked.iter().map(|name| name.rsplit_once('-').map_or(name.as_str(), |(app, _)| app)).collect();
        assert!(applications.iter().all(|app| NEEDED_PLUGINS.contains(app)), "{linked:?}");
        assert!(applications.contains(&"rabbitmq_auth_mechanism_ssl"), "{linked:?}");
    }
}
