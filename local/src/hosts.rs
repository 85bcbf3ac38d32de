//! The hosts runtime's network (`run-local --hosts N`): hosts that are Linux network namespaces
//! of this run, each with its own network stack, address and name, joined by a bridge in a
//! namespace of its own (the switch), on a private range used only between them; nothing is
//! routed out. A host's link (its port on the switch) can be cut, silently (no FIN, no RST:
//! its packets go nowhere, and none come), and restored, as a partition between machines does.
//!
//! Processes started on a host ([`Network::enter`]) live in its namespace, with the run's
//! hosts file over `/etc/hosts` in a mount namespace of their own (this machine's file is not
//! touched), so that they find the other hosts by name. Servers of this process (the broker,
//! the mock GitHub and S3 on 127.0.0.1) are relayed onto a host's address
//! ([`Network::relay_to_here`]), and a server on a host onto a port of 127.0.0.1 here
//! ([`Network::expose`]).
//!
//! The namespaces and links are made with iproute2's `ip`, the tool every Linux distribution
//! ships for it (the netlink crates would need the same namespace switching around every
//! call); sockets are made in a namespace from a thread of their own that enters it.

use std::ffi::CString;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tokio::task::JoinSet;

/// The hosts' range: 10.213.0.0/24, only between the namespaces of one run.
const SUBNET: [u8; 3] = [10, 213, 0];
/// The switch's own address on the bridge, from which this machine reaches the hosts.
const SWITCH_ADDRESS: u8 = 254;
/// Where `ip netns` keeps the namespaces it names.
const NETNS_DIR: &str = "/run/netns";
/// The name service configuration of processes on a host: this machine's files, host names
/// from the run's hosts file only.
const NSSWITCH: &str = "passwd: files\ngroup: files\nshadow: files\nhosts: files\n";
/// The prefix of every namespace this project makes, for finding leftovers.
pub const PREFIX: &str = "workbench-";
/// The broker's host, as the workers and the webhook reach it (`AMQP_SERVER`), Cockpit's
/// name for it; the broker's certificate names it.
pub const BROKER_HOST: &str = "amqp";
pub const BROKER: &str = "amqp:5671";
/// The webhook's host.
pub const WEBHOOK_HOST: &str = "webhook";
/// The host of the mock GitHub and S3 (this process's servers, relayed).
pub const SERVICES_HOST: &str = "services";
/// Where a worker on a host serves its metrics.
pub const METRICS_PORT: u16 = 9100;

#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("the hosts runtime makes network namespaces, which needs root: run as root (or use --runtime process)")]
    NotRoot,
    #[error("`ip {args}` failed: {output} (is iproute2 installed?)")]
    Ip { args: String, output: String },
    #[error("cannot {what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("no host {0} in this network")]
    NoHost(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HostsError {
    let what = what.into();
    move |source| HostsError::Io { what, source }
}

/// One host: a network namespace with an address on the switch.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub address: Ipv4Addr,
    /// Its network namespace.
    netns: String,
    /// Its port on the switch (the switch's end of its link).
    port: String,
}

/// The run's hosts and switch; dropping it stops the relays and deletes every namespace (the
/// links go with them).
pub struct Network {
    switch: String,
    hosts: Vec<Host>,
    hosts_file: CString,
    /// An `nsswitch.conf` looking host names up in `hosts_file` only: a system whose own looks
    /// them up elsewhere first (systemd-resolved) would ask this machine's resolver.
    nsswitch_file: CString,
    relays: std::sync::Mutex<JoinSet<()>>,
}

impl Network {
    /// Makes a host for each of `hosts` (its name, and other names it answers to), in
    /// namespaces named after this process and `id` (unique in it), its hosts file written into
    /// `dir`. Namespaces left by runs killed hard (their process gone) are deleted first.
    pub fn create(dir: &Path, id: &str, hosts: &[(&str, &[&str])]) -> Result<Network, HostsError> {
        if !rustix::process::geteuid().is_root() {
            return Err(HostsError::NotRoot);
        }
        for orphan in orphans() {
            tracing::warn!(netns = orphan, "deleting a network namespace left by a run killed hard");
            let _ = ip(&["netns", "delete", &orphan]);
        }
        let id = format!("{}-{id}", std::process::id());
        let switch = format!("{PREFIX}{id}-switch");
        let mut network = Network {
            switch: switch.clone(),
            hosts: Vec::new(),
            hosts_file: CString::default(),
            nsswitch_file: CString::default(),
            relays: Default::default(),
        };
        ip(&["netns", "add", &switch])?;
        ip(&["-n", &switch, "link", "set", "lo", "up"])?;
        ip(&["-n", &switch, "link", "add", "switch", "type", "bridge"])?;
        let switch_address = format!("{}/24", address(SWITCH_ADDRESS));
        ip(&["-n", &switch, "addr", "add", &switch_address, "dev", "switch"])?;
        ip(&["-n", &switch, "link", "set", "switch", "up"])?;
        let mut lines = vec!["127.0.0.1 localhost".to_owned()];
        for (n, (name, aliases)) in (1..).zip(hosts) {
            let host = Host {
                name: name.to_string(),
                address: address(n),
                netns: format!("{PREFIX}{id}-{name}"),
                port: format!("port{n}"),
            };
            ip(&["netns", "add", &host.netns])?;
            network.hosts.push(host.clone());
            ip(&["-n", &host.netns, "link", "set", "lo", "up"])?;
            // Its end `eth0`, the switch's end on the bridge.
            ip(&[
                "-n",
                &host.netns,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &host.port,
                "netns",
                &switch,
            ])?;
            ip(&["-n", &host.netns, "addr", "add", &format!("{}/24", host.address), "dev", "eth0"])?;
            ip(&["-n", &host.netns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &switch, "link", "set", &host.port, "master", "switch", "up"])?;
            lines.push(format!("{} {name} {}", host.address, aliases.join(" ")));
        }
        let written = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(io(format!("write {}", path.display())))?;
            CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| HostsError::Io {
                what: format!("use {}", path.display()),
                source: std::io::ErrorKind::InvalidInput.into(),
            })
        };
        network.hosts_file = written("hosts", lines.join("\n") + "\n")?;
        network.nsswitch_file = written("nsswitch.conf", NSSWITCH.to_owned())?;
        Ok(network)
    }

    pub fn host(&self, name: &str) -> Result<&Host, HostsError> {
        self.hosts.iter().find(|host| host.name == name).ok_or_else(|| HostsError::NoHost(name.to_owned()))
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Cuts `host`'s link: its port leaves the switch, so that nothing it sends arrives and
    /// nothing reaches it, while its own end stays up (no FIN, no RST, no carrier loss).
    pub fn cut(&self, host: &str) -> Result<(), HostsError> {
        let port = &self.host(host)?.port;
        ip(&["-n", &self.switch, "link", "set", port, "nomaster"])
    }

    /// Restores `host`'s link.
    pub fn restore(&self, host: &str) -> Result<(), HostsError> {
        let port = &self.host(host)?.port;
        ip(&["-n", &self.switch, "link", "set", port, "master", "switch"])
    }

    /// Makes `command` start on `host`: in its network namespace, with the run's hosts file as
    /// its `/etc/hosts` (in a mount namespace of its own).
    pub fn enter(&self, host: &str, command: &mut Command) -> Result<(), HostsError> {
        let netns = open_netns(&self.host(host)?.netns)?;
        let (hosts_file, nsswitch_file) = (self.hosts_file.clone(), self.nsswitch_file.clone());
        // SAFETY: only system calls, on memory made before the fork.
        unsafe {
            command.pre_exec(move || {
                use rustix::mount::{MountPropagationFlags, mount_bind, mount_change};
                rustix::thread::move_into_link_name_space(
                    netns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS)?;
                mount_change(c"/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC)?;
                mount_bind(hosts_file.as_c_str(), c"/etc/hosts")?;
                mount_bind(nsswitch_file.as_c_str(), c"/etc/nsswitch.conf")?;
                Ok(())
            });
        }
        Ok(())
    }

    /// Starts `run` on a thread of its own on `host`: the sockets it makes (a runtime's it
    /// starts, say) are that host's. The thread is the caller's to join.
    pub fn spawn_on<T: Send + 'static>(
        &self,
        host: &str,
        run: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<std::thread::JoinHandle<std::io::Result<T>>, HostsError> {
        Ok(spawn_in(&self.host(host)?.netns, run))
    }

    /// Relays `port` of `host`'s address to `to`, a server of this machine (on 127.0.0.1): a
    /// server of this process seen as that host's.
    pub async fn relay_to_here(&self, host: &str, port: u16, to: SocketAddr) -> Result<(), HostsError> {
        let host = self.host(host)?.clone();
        let listen = SocketAddr::V4(SocketAddrV4::new(host.address, port));
        let listener = in_netns(&host.netns, move || std::net::TcpListener::bind(listen))
            .map_err(io(format!("listen on {listen} on host {}", host.name)))?;
        listener.set_nonblocking(true).map_err(io("make a listener non-blocking"))?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(io("use a listener"))?;
        self.relays().spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(())
    }

    /// A port of 127.0.0.1 here relayed to `port` of `host`, through the switch (so a cut
    /// link cuts it too).
    pub async fn expose(&self, host: &str, port: u16) -> Result<SocketAddr, HostsError> {
        let target = SocketAddr::V4(SocketAddrV4::new(self.host(host)?.address, port));
        let listener =
            tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.map_err(io("listen on 127.0.0.1"))?;
        let address = listener.local_addr().map_err(io("read a listener's address"))?;
        let switch = self.switch.clone();
        self.relays().spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let switch = switch.clone();
                connections.spawn(async move {
                    // A blocking connect, on a thread of its own in the switch's namespace.
                    let connected = tokio::task::spawn_blocking(move || {
                        in_netns(&switch, move || {
                            std::net::TcpStream::connect_timeout(&target, std::time::Duration::from_secs(5))
                        })
                    });
                    let Ok(Ok(outbound)) = connected.await else { return };
                    let Ok(()) = outbound.set_nonblocking(true) else { return };
                    let Ok(mut outbound) = tokio::net::TcpStream::from_std(outbound) else { return };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(address)
    }
}

impl Network {
    fn relays(&self) -> std::sync::MutexGuard<'_, JoinSet<()>> {
        self.relays.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.relays().abort_all();
        for netns in self.hosts.iter().map(|host| host.netns.as_str()).chain([self.switch.as_str()]) {
            if let Err(err) = ip(&["netns", "delete", netns]) {
                tracing::warn!(%err, netns, "cannot delete a network namespace of the run");
            }
        }
    }
}

/// The network namespaces this project made that are still there.
pub fn leftovers() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else { return Vec::new() };
    entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(PREFIX)).collect()
}

/// Those of [`leftovers`] whose process (named after [`PREFIX`]) is gone: a run killed hard
/// (SIGKILL) could not delete them.
fn orphans() -> Vec<String> {
    leftovers()
        .into_iter()
        .filter(|name| {
            let pid = name[PREFIX.len()..].split('-').next().and_then(|pid| pid.parse::<u32>().ok());
            pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect()
}

/// The hosts of a deployment: the broker's (relaying `broker`, a server here), the webhook's,
/// the services' (relaying the servers of `urls`, here, on their ports), and one per worker of
/// `workers`, in namespaces named after `id`, the hosts file in `dir`.
pub async fn deployment(
    dir: &Path,
    id: &str,
    workers: &[String],
    broker: SocketAddr,
    urls: &[String],
) -> Result<Network, HostsError> {
    let services_names = [crate::secrets::HOST_ALIAS, crate::secrets::S3_HOST];
    let mut hosts: Vec<(&str, &[&str])> =
        vec![(BROKER_HOST, &[]), (WEBHOOK_HOST, &[]), (SERVICES_HOST, &services_names)];
    hosts.extend(workers.iter().map(|name| (name.as_str(), &[] as &[&str])));
    let network = Network::create(dir, id, &hosts)?;
    network.relay_to_here(BROKER_HOST, crate::pod::AMQP_PORT, broker).await?;
    for url in urls {
        let port = port_of(url).ok_or_else(|| HostsError::Io {
            what: format!("relay {url}, which names no port"),
            source: std::io::ErrorKind::InvalidInput.into(),
        })?;
        network.relay_to_here(SERVICES_HOST, port, SocketAddr::from(([127, 0, 0, 1], port))).await?;
    }
    Ok(network)
}

/// The port `url` names.
fn port_of(url: &str) -> Option<u16> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    authority.rsplit_once(':')?.1.parse().ok()
}

/// `url` (of a server of this machine) as the hosts reach it: on the services host, by the
/// name its certificate has ([`crate::secrets::HOST_ALIAS`]), on the same port.
pub fn seen_from_hosts(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let alias = crate::secrets::HOST_ALIAS;
    match authority.rsplit_once(':') {
        Some((_, port)) => format!("{scheme}://{alias}:{port}{path}"),
        None => format!("{scheme}://{alias}{path}"),
    }
}

fn address(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], n)
}

fn ip(args: &[&str]) -> Result<(), HostsError> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| HostsError::Io { what: "run ip (install iproute2)".into(), source })?;
    match output.status.success() {
        true => Ok(()),
        false => Err(HostsError::Ip {
            args: args.join(" "),
            output: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        }),
    }
}

fn open_netns(netns: &str) -> Result<OwnedFd, HostsError> {
    let path = PathBuf::from(NETNS_DIR).join(netns);
    let file = std::fs::File::open(&path).map_err(io(format!("open {}", path.display())))?;
    Ok(file.into())
}

/// Runs `make` on a thread of its own that entered network namespace `netns`: the sockets it
/// makes belong to that namespace.
fn in_netns<T: Send + 'static>(
    netns: &str,
    make: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    spawn_in(netns, make)
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("a thread making a socket in a namespace panicked")))
}

/// Starts `run` on a thread of its own in network namespace `netns`.
fn spawn_in<T: Send + 'static>(
    netns: &str,
    run: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::thread::JoinHandle<std::io::Result<T>> {
    let path = PathBuf::from(NETNS_DIR).join(netns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(path)?;
        rustix::thread::move_into_link_name_space(file.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))?;
        run()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server here relayed onto one host, reached from another host's process by name; the
    /// cut link carries nothing until restored; nothing is left after the drop.
    #[test]
    fn the_hosts_reach_this_machines_servers_on_the_services_host_by_name() {
        assert_eq!(port_of("https://localhost.localdomain:4431/"), Some(4431));
        assert_eq!(port_of("http://127.0.0.1:80/git/"), Some(80));
        assert_eq!(port_of("http://127.0.0.1/"), None);
        assert_eq!(seen_from_hosts("http://127.0.0.1:4321"), "http://workbench-host:4321");
        assert_eq!(seen_from_hosts("http://127.0.0.1:80/git/"), "http://workbench-host:80/git/");
        assert_eq!(BROKER, format!("{BROKER_HOST}:{}", crate::pod::AMQP_PORT));
    }

    #[tokio::test(flavor = "multi_thread")]
    #[cfg_attr(not(ci), ignore = "needs root for network namespaces: cargo xtask ci runs it")]
    async fn hosts_reach_each_other_by_name_until_a_link_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let id = format!("test{}", std::process::id());
        let network = Network::create(dir.path(), &id, &[("server", &["server.example"]), ("client", &[])]).unwrap();
        let here = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        network.relay_to_here("server", 7000, here.local_addr().unwrap()).await.unwrap();
        let echo = tokio::spawn(async move {
            loop {
                let (mut stream, _) = here.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buffer = [0; 64];
                    while let Ok(n) = stream.read(&mut buffer).await {
                        if n == 0 || stream.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        // bash's /dev/tcp, by the server's other name, from the client host.
        let talk = |network: &Network| {
            let mut command = Command::new("timeout");
            let script = "exec 3<>/dev/tcp/server.example/7000 && echo hello >&3 && head -c 6 <&3";
            command.args(["3", "bash", "-c", script]);
            network.enter("client", &mut command).unwrap();
            command.output().unwrap()
        };
        let output = talk(&network);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(String::from_utf8_lossy(&output.stdout), "hello\n");
        // This machine's /etc/hosts does not name the hosts.
        assert!(!std::fs::read_to_string("/etc/hosts").unwrap().contains("server.example"));

        network.cut("client").unwrap();
        let output = talk(&network);
        assert!(!output.status.success(), "a cut link carried: {}", String::from_utf8_lossy(&output.stdout));
        network.restore("client").unwrap();
        assert_eq!(String::from_utf8_lossy(&talk(&network).stdout), "hello\n");

        echo.abort();
        drop(network);
        assert!(leftovers().iter().all(|name| !name.contains(&id)), "{:?}", leftovers());

        // A run killed hard leaves its namespaces: the next run deletes them, not the others'.
        let gone = format!("{PREFIX}999999999-{id}-switch");
        ip(&["netns", "add", &gone]).unwrap();
        let alive = format!("{PREFIX}{}-{id}-other-switch", std::process::id());
        ip(&["netns", "add", &alive]).unwrap();
        assert!(!orphans().contains(&alive));
        let network = Network::create(dir.path(), &id, &[("one", &[])]).unwrap();
        assert!(!leftovers().contains(&gone) && leftovers().contains(&alive), "{:?}", leftovers());
        drop(network);
        ip(&["netns", "delete", &alive]).unwrap();
    }
}
