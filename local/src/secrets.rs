//! Fake credentials in Cockpit's production secrets layout (cockpit-protocol.md 6.4), made with
//! rcgen. The CA key stays at the top of the directory, apart from what services mount.
//!
//! ```text
//! DIR/ca.pem, DIR/ca.key                    the fake CA
//! DIR/webhook/ca.pem                        trust anchor for AMQP clients and the broker
//! DIR/webhook/amqp-server.{pem,key}         the broker's certificate
//! DIR/webhook/amqp-client.{pem,key}         client certificate, CN = the AMQP user
//! DIR/webhook/.config--github-webhook-token HMAC secret of GitHub deliveries
//! DIR/webhook/.config--github-token         GitHub API token (fake)
//! DIR/s3-server/s3-server.{pem,key}         the S3 store's certificate
//! DIR/s3-keys/<host>                        "ACCESS SECRET" for the S3 store at <host>
//! ```

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};

/// The AMQP user: the common name of the client certificate, as in Cockpit.
pub const AMQP_USER: &str = "cockpit-amqp";
/// Host name of the deployment's pod; containers in it reach each other by this name.
pub const POD_HOSTNAME: &str = "workbench";
/// The name by which the pod reaches this machine's loopback (the S3 store, the mock GitHub).
pub const HOST_ALIAS: &str = "workbench-host";
/// Host name S3 clients use for the local store, and so the name of its key file: Cockpit's
/// test store's name. Cockpit's tools look a key up only for a name with a dot, and trust the
/// custom CA only for names under `.localdomain` (cockpit-protocol.md 6.4, 7.2).
pub const S3_HOST: &str = "localhost.localdomain";

/// Names every server certificate carries, so that clients on the host and in the pod can
/// check the host name.
const SERVER_NAMES: [&str; 7] =
    ["localhost", "localhost.localdomain", "127.0.0.1", "::1", POD_HOSTNAME, HOST_ALIAS, crate::hosts::BROKER_HOST];

/// A service of the deployment, as far as secrets go: each reads only its own files of
/// `webhook/`, mounted at Cockpit's path (`/run/secrets/webhook`) in its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// RabbitMQ: the CA and its server certificate.
    Broker,
    /// The webhook: the CA, the client certificate and the HMAC secret.
    Webhook,
    /// A tasks worker: the CA, the client certificate and the GitHub token (and the S3 keys,
    /// mounted apart).
    Worker,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Broker, Service::Webhook, Service::Worker];

    pub fn name(self) -> &'static str {
        match self {
            Service::Broker => "broker",
            Service::Webhook => "webhook",
            Service::Worker => "worker",
        }
    }

    /// The files of `webhook/` the service reads.
    pub fn files(self) -> &'static [&'static str] {
        match self {
            Service::Broker => &["ca.pem", "amqp-server.pem", "amqp-server.key"],
            Service::Webhook => &["ca.pem", "amqp-client.pem", "amqp-client.key", ".config--github-webhook-token"],
            Service::Worker => &["ca.pem", "amqp-client.pem", "amqp-client.key", ".config--github-token"],
        }
    }
}

/// A generated secrets directory, with the paths of its files.
#[derive(Debug, Clone)]
pub struct Secrets {
    root: PathBuf,
}

/// The fake CA, able to issue more certificates after the layout is written.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, both PEM (the key PKCS#8).
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{} already exists and is not empty; pass --force to overwrite the secrets in it", .0.display())]
    Exists(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("the system's random number generator failed: {0}")]
    Random(getrandom::Error),
    #[error("{} is not a secrets directory: it lacks {}; write one with `cargo xtask secrets`", dir.display(), missing.join(", "))]
    Missing { dir: PathBuf, missing: Vec<String> },
}

impl Secrets {
    /// An existing secrets directory.
    pub fn at(root: impl Into<PathBuf>) -> Secrets {
        Secrets { root: root.into() }
    }

    /// An existing secrets directory given by a user, checked to hold what the services read:
    /// a wrong directory is said at once, not as a broker that never answers.
    pub fn existing(root: impl Into<PathBuf>) -> Result<Secrets, SecretsError> {
        let secrets = Secrets::at(root);
        let mut wanted: Vec<PathBuf> = Service::ALL
            .iter()
            .flat_map(|service| service.files())
            .map(|file| Path::new("webhook").join(file))
            .collect();
        wanted.extend([PathBuf::from("s3-keys"), PathBuf::from("s3-server")]);
        wanted.sort();
        wanted.dedup();
        let missing: Vec<String> = wanted
            .iter()
            .filter(|path| !secrets.root.join(path).exists())
            .map(|path| path.display().to_string())
            .collect();
        match missing.is_empty() {
            true => Ok(secrets),
            false => Err(SecretsError::Missing { dir: secrets.root, missing }),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    /// What the webhook, the broker and the tasks containers mount at `/run/secrets/webhook`.
    pub fn webhook_dir(&self) -> PathBuf {
        self.root.join("webhook")
    }
    pub fn webhook_token(&self) -> PathBuf {
        self.webhook_dir().join(".config--github-webhook-token")
    }
    pub fn github_token(&self) -> PathBuf {
        self.webhook_dir().join(".config--github-token")
    }
    pub fn s3_keys_dir(&self) -> PathBuf {
        self.root.join("s3-keys")
    }
    pub fn s3_server_dir(&self) -> PathBuf {
        self.root.join("s3-server")
    }

    /// Writes under `dir` one directory per service (`dir/<service>`) holding only the files of
    /// `webhook/` that service reads, private to its owner; returns `dir`.
    pub fn split(&self, dir: &Path) -> Result<PathBuf, SecretsError> {
        for service in Service::ALL {
            let into = dir.join(service.name());
            remove(&into, |p| std::fs::remove_dir_all(p))?;
            make_private_dir(&into)?;
            for file in service.files() {
                let from = self.webhook_dir().join(file);
                let text =
                    std::fs::read_to_string(&from).map_err(|source| SecretsError::Read { path: from, source })?;
                write_file(&into.join(file), &text, !file.ends_with(".pem"))?;
            }
        }
        Ok(dir.to_owned())
    }

    /// The values that must never leave this directory: the tokens, the S3 secret keys, and
    /// for each private key its longest line. Tests look for them where they must not be.
    pub fn private_values(&self) -> io::Result<Vec<String>> {
        let mut values = Vec::new();
        for dir in [self.root.clone(), self.webhook_dir(), self.s3_keys_dir(), self.s3_server_dir()] {
            for entry in std::fs::read_dir(&dir)?.flatten().filter(|entry| entry.path().is_file()) {
                let text = std::fs::read_to_string(entry.path())?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let value = if name.ends_with(".key") {
                    text.lines().max_by_key(|line| line.len()).map(str::to_owned)
                } else if name.starts_with(".config--") {
                    Some(text.trim().to_owned())
                } else if dir == self.s3_keys_dir() {
                    text.split_whitespace().nth(1).map(str::to_owned)
                } else {
                    None
                };
                values.extend(value.filter(|value| !value.is_empty()));
            }
        }
        Ok(values)
    }
}

/// Writes a fresh set of fake secrets into `root`. An existing non-empty directory is refused
/// unless `overwrite`, in which case our files in it are replaced.
pub fn generate(root: &Path, overwrite: bool) -> Result<(Secrets, Ca), SecretsError> {
    let secrets = Secrets::at(root);
    let occupied = std::fs::read_dir(root).map(|mut entries| entries.next().is_some()).unwrap_or(false);
    if occupied && !overwrite {
        return Err(SecretsError::Exists(root.to_owned()));
    }
    for path in [secrets.webhook_dir(), secrets.s3_keys_dir(), secrets.s3_server_dir()] {
        remove(&path, |p| std::fs::remove_dir_all(p))?;
    }
    for path in [secrets.ca_cert(), root.join("ca.key")] {
        remove(&path, |p| std::fs::remove_file(p))?;
    }
    for dir in [root.to_owned(), secrets.webhook_dir(), secrets.s3_keys_dir(), secrets.s3_server_dir()] {
        make_private_dir(&dir)?;
    }

    let ca = Ca::new()?;
    write_file(&secrets.ca_cert(), &ca.pem(), false)?;
    write_file(&root.join("ca.key"), &ca.issuer.key().serialize_pem(), true)?;

    let webhook = secrets.webhook_dir();
    write_file(&webhook.join("ca.pem"), &ca.pem(), false)?;
    let server = ca.issue_server("cockpit-amqp-server", "amqp-server")?;
    write_issued(&webhook, "amqp-server", &server)?;
    write_issued(&webhook, "amqp-client", &ca.issue_client(AMQP_USER)?)?;
    write_file(&secrets.webhook_token(), &random_hex(32)?, true)?;
    write_file(&secrets.github_token(), &format!("workbench-fake-{}", random_hex(20)?), true)?;

    let s3 = ca.issue_server("cockpit-tests", "Cockpit")?;
    write_issued(&secrets.s3_server_dir(), "s3-server", &s3)?;
    let s3_key = format!("{} {}\n", random_hex(10)?.to_uppercase(), random_hex(20)?);
    write_file(&secrets.s3_keys_dir().join(S3_HOST), &s3_key, true)?;

    Ok((secrets, ca))
}

impl Ca {
    fn new() -> Result<Ca, SecretsError> {
        Ok(Ca { issuer: CertifiedIssuer::self_signed(Ca::params()?, KeyPair::generate()?)? })
    }

    /// The CA of `secrets`, from its key: what it issues verifies against its `ca.pem`.
    pub fn load(secrets: &Secrets) -> Result<Ca, SecretsError> {
        let path = secrets.root().join("ca.key");
        let pem = std::fs::read_to_string(&path).map_err(|source| SecretsError::Read { path, source })?;
        Ok(Ca { issuer: CertifiedIssuer::self_signed(Ca::params()?, KeyPair::from_pem(&pem)?)? })
    }

    fn params() -> Result<CertificateParams, SecretsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&[
            (DnType::OrganizationName, "Workbench"),
            (DnType::OrganizationalUnitName, "Workbench fake CA"),
            (DnType::CommonName, "CA"),
        ]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        conformant(&mut params, CA_VALIDITY)?;
        Ok(params)
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A client certificate whose common name is the AMQP user it logs in as.
    pub fn issue_client(&self, common_name: &str) -> Result<Issued, SecretsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&[(DnType::CommonName, common_name), (DnType::OrganizationName, "client")]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue_server(&self, common_name: &str, organization: &str) -> Result<Issued, SecretsError> {
        let names: Vec<String> = SERVER_NAMES.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name =
            name(&[(DnType::CommonName, common_name), (DnType::OrganizationName, organization)]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    fn issue(&self, mut params: CertificateParams) -> Result<Issued, SecretsError> {
        // ECDSA keys sign (the handshake); they encipher nothing.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.is_ca = IsCa::ExplicitNoCa;
        conformant(&mut params, LEAF_VALIDITY)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// How long the CA and the certificates it issues are valid: the CA outlives its leaves, which
/// `Ca::load` can issue again from its key.
const CA_VALIDITY: time::Duration = time::Duration::days(20 * 365);
const LEAF_VALIDITY: time::Duration = time::Duration::days(825);

/// What strict verifiers (OpenSSL's `-x509_strict`, Python's `VERIFY_X509_STRICT`) and RFC 5280
/// ask of every certificate: key identifiers (the subject's, and the issuer's, which rcgen
/// derives from the issuer's key), a random positive serial number, and a validity that starts
/// an hour ago (a client's clock a little behind still accepts it) and ends after `validity`.
fn conformant(params: &mut CertificateParams, validity: time::Duration) -> Result<(), SecretsError> {
    params.use_authority_key_identifier_extension = true;
    let mut serial = [0u8; 16];
    getrandom::getrandom(&mut serial).map_err(SecretsError::Random)?;
    // Positive (the top bit clear) and of its full length (the first byte not zero).
    serial[0] = (serial[0] & 0x7f) | 0x01;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let now = time::OffsetDateTime::now_utc().replace_nanosecond(0).expect("zero nanoseconds");
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + validity;
    Ok(())
}

fn name(parts: &[(DnType, &str)]) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    for (kind, value) in parts {
        name.push(kind.clone(), *value);
    }
    name
}

fn write_issued(dir: &Path, stem: &str, issued: &Issued) -> Result<(), SecretsError> {
    write_file(&dir.join(format!("{stem}.pem")), &issued.cert_pem, false)?;
    write_file(&dir.join(format!("{stem}.key")), &issued.key_pem, true)
}

fn remove(path: &Path, remove: fn(&Path) -> io::Result<()>) -> Result<(), SecretsError> {
    match remove(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(SecretsError::Write { path: path.to_owned(), source: e }),
        _ => Ok(()),
    }
}

fn make_private_dir(path: &Path) -> Result<(), SecretsError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .and_then(|()| std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700)))
        .map_err(|source| SecretsError::Write { path: path.to_owned(), source })
}

/// Writes a file; private ones (keys, tokens) are created with mode 0600.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), SecretsError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .map_err(|source| SecretsError::Write { path: path.to_owned(), source })
}

fn random_hex(bytes: usize) -> Result<String, SecretsError> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).map_err(SecretsError::Random)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_without_the_secrets_is_refused_naming_what_it_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let err = Secrets::existing(dir.path()).unwrap_err().to_string();
        assert!(err.contains("webhook/ca.pem") && err.contains("s3-keys"), "{err}");
        assert!(err.ends_with("write one with `cargo xtask secrets`"), "{err}");
        generate(dir.path(), true).unwrap();
        Secrets::existing(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join("webhook/amqp-client.key")).unwrap();
        let err = Secrets::existing(dir.path()).unwrap_err().to_string();
        assert!(err.contains("lacks webhook/amqp-client.key;"), "{err}");
    }
}
