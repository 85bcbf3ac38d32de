//! Where the broker is and how we prove who we are: Cockpit's `AMQP_SERVER` address format and
//! its secrets directory layout.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::Error;

/// Cockpit's production secrets directory, mounted into its containers.
const SECRETS_DIR: &str = "/run/secrets/webhook";

/// A broker address as Cockpit writes it in `AMQP_SERVER`: `host:port`, TLS with a client
/// certificate. The bare word `localhost` is Cockpit's developer shortcut for plain AMQP on
/// port 5672 with the `guest` user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tls { host: String, port: u16 },
    PlainLocalhost,
}

impl FromStr for Address {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if s == "localhost" {
            return Ok(Address::PlainLocalhost);
        }
        let bad = || Error::Address(s.to_owned());
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        let port = port.parse().map_err(|_| bad())?;
        Ok(Address::Tls { host: host.to_owned(), port })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tls { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Address::Tls { host, port } => write!(f, "{host}:{port}"),
            Address::PlainLocalhost => f.write_str("localhost"),
        }
    }
}

/// How much of the broker's certificate is checked. The chain is always verified against our CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerVerification {
    /// Chain and host name: the certificate must name the host we connect to.
    #[default]
    Full,
    /// Chain only: for brokers whose certificate does not name the host they are reached by
    /// (Cockpit's clients connect to their production broker this way).
    ChainOnly,
}

/// The PEM files a client presents and trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFiles {
    /// CA certificate(s) the broker's certificate must chain to.
    pub ca: PathBuf,
    /// Client certificate and its PKCS#8 key; `None` connects without one (the broker refuses).
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl ClientFiles {
    /// The files of Cockpit's secrets layout: `ca.pem`, `amqp-client.pem`, `amqp-client.key`.
    pub fn in_secrets_dir(dir: &Path) -> ClientFiles {
        ClientFiles {
            ca: dir.join("ca.pem"),
            identity: Some((dir.join("amqp-client.pem"), dir.join("amqp-client.key"))),
        }
    }
}

/// Everything needed to open a session with the broker.
#[derive(Debug, Clone)]
pub struct Config {
    pub address: Address,
    pub files: ClientFiles,
    pub verification: ServerVerification,
    /// The AMQP heartbeat asked for, in seconds ([`HEARTBEAT_SECONDS`]; the broker may ask for
    /// less). Each side drops a connection silent for two of them.
    pub heartbeat: u16,
}

/// The heartbeat clients ask for: a link that goes silent (no FIN, no RST: a partition, a
/// frozen host) is noticed by lapin within 30 s and by RabbitMQ within 45 s, where RabbitMQ's
/// default of 60 s took up to three minutes, so that a silent worker's unacknowledged jobs go to another sooner. Not
/// shorter: heartbeats are sent by lapin's own I/O thread, not starved by jobs (they run in
/// processes of their own), but a loaded machine must not lose healthy connections (docs/protocol.md).
pub const HEARTBEAT_SECONDS: u16 = 15;

impl Config {
    /// A client of `address` using the certificates in a Cockpit secrets directory.
    pub fn new(address: Address, secrets_dir: &Path) -> Config {
        Config {
            address,
            files: ClientFiles::in_secrets_dir(secrets_dir),
            verification: ServerVerification::default(),
            heartbeat: HEARTBEAT_SECONDS,
        }
    }
}

/// Cockpit's secrets directory: `/run/secrets/webhook`, or `$XDG_RUNTIME_DIR/secrets/webhook`
/// when the former does not exist and the latter does.
pub fn default_secrets_dir() -> PathBuf {
    let production = PathBuf::from(SECRETS_DIR);
    if !production.exists()
        && let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR")
    {
        let user = Path::new(&runtime).join("secrets/webhook");
        if user.exists() {
            return user;
        }
    }
    production
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cockpit_addresses() {
        let tls = |host: &str, port| Address::Tls { host: host.into(), port };
        assert_eq!("localhost:5671".parse::<Address>().unwrap(), tls("localhost", 5671));
        assert_eq!(
            "amqp-cockpit.apps.ocp.cloud.ci.centos.org:443".parse::<Address>().unwrap(),
            tls("amqp-cockpit.apps.ocp.cloud.ci.centos.org", 443)
        );
        assert_eq!("[::1]:5671".parse::<Address>().unwrap(), tls("::1", 5671));
        assert_eq!("localhost".parse::<Address>().unwrap(), Address::PlainLocalhost);
    }

    #[test]
    fn refuses_addresses_without_port() {
        for bad in ["", "broker", ":5671", "broker:", "broker:port", "broker:70000"] {
            let err = bad.parse::<Address>().unwrap_err();
            assert!(err.to_string().contains("host:port"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn displays_as_parsed() {
        for s in ["localhost:5671", "[::1]:5671", "localhost"] {
            assert_eq!(s.parse::<Address>().unwrap().to_string(), s);
        }
    }
}
