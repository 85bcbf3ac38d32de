//! The generated secrets, checked with openssl as a third party would.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use local::secrets::{self, AMQP_USER, S3_HOST, SecretsError};

fn openssl(args: &[&str], dir: &Path) -> String {
    let output = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn writes_cockpits_layout_with_certificates_our_ca_signed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("secrets");
    let (secrets, _) = secrets::generate(&root, false).unwrap();

    for cert in ["webhook/amqp-server.pem", "webhook/amqp-client.pem", "s3-server/s3-server.pem"] {
        assert_eq!(openssl(&["verify", "-x509_strict", "-CAfile", "ca.pem", cert], &root), format!("{cert}: OK\n"));
    }
    assert_eq!(std::fs::read(root.join("webhook/ca.pem")).unwrap(), std::fs::read(root.join("ca.pem")).unwrap());
    assert!(!root.join("webhook/ca.key").exists(), "the CA key stays out of what services mount");

    let subject =
        openssl(&["x509", "-in", "webhook/amqp-client.pem", "-noout", "-subject", "-nameopt", "RFC2253"], &root);
    assert_eq!(subject, format!("subject=O=client,CN={AMQP_USER}\n"));
    let text = openssl(
        &["x509", "-in", "webhook/amqp-server.pem", "-noout", "-ext", "subjectAltName,extendedKeyUsage"],
        &root,
    );
    assert!(text.contains("DNS:localhost, DNS:localhost.localdomain, IP Address:127.0.0.1"), "{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");

    let key = std::fs::read_to_string(secrets.s3_keys_dir().join(S3_HOST)).unwrap();
    let fields: Vec<&str> = key.split_whitespace().collect();
    assert_eq!(fields.len(), 2, "s3 key file is `ACCESS SECRET`: {key:?}");
    let token = std::fs::read_to_string(secrets.webhook_token()).unwrap();
    assert_eq!(token.len(), 64, "a 256-bit hex HMAC secret");
    assert!(std::fs::read_to_string(secrets.github_token()).unwrap().starts_with("workbench-fake-"));
}

#[test]
fn private_files_are_0600_in_0700_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("secrets");
    secrets::generate(&root, false).unwrap();
    for dir in ["", "webhook", "s3-keys", "s3-server"] {
        assert_eq!(mode(&root.join(dir)), 0o700, "{dir:?}");
    }
    for private in [
        "ca.key",
        "webhook/amqp-server.key",
        "webhook/amqp-client.key",
        "webhook/.config--github-webhook-token",
        "webhook/.config--github-token",
        "s3-server/s3-server.key",
        &format!("s3-keys/{S3_HOST}"),
    ] {
        assert_eq!(mode(&root.join(private)), 0o600, "{private}");
    }
}

#[test]
fn refuses_an_existing_directory_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, _) = secrets::generate(tmp.path(), false).unwrap();
    let token = std::fs::read(first.webhook_token()).unwrap();
    let err = secrets::generate(tmp.path(), false).err().unwrap();
    assert!(matches!(err, SecretsError::Exists(_)));
    assert!(err.to_string().contains("--force"), "{err}");

    let (second, _) = secrets::generate(tmp.path(), true).unwrap();
    assert_ne!(std::fs::read(second.webhook_token()).unwrap(), token, "forced generation makes fresh secrets");
    assert_eq!(
        openssl(&["verify", "-x509_strict", "-CAfile", "ca.pem", "webhook/amqp-client.pem"], tmp.path()),
        "webhook/amqp-client.pem: OK\n"
    );
}

/// What a certificate is for, as its extensions say.
#[derive(Debug, PartialEq)]
struct Extensions {
    ca: Option<bool>,
    basic_constraints_critical: bool,
    subject_key_id: Option<Vec<u8>>,
    authority_key_id: Option<Vec<u8>>,
    key_usage: Vec<&'static str>,
    extended: Vec<&'static str>,
}

/// Reads the certificate at `path` (PEM) with an X.509 parser: its extensions, serial and
/// validity.
fn parsed(path: &Path) -> (Extensions, Vec<u8>, i64, i64) {
    use x509_parser::prelude::*;
    let pem = std::fs::read(path).unwrap();
    let (_, pem) = parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let mut extensions = Extensions {
        ca: None,
        basic_constraints_critical: false,
        subject_key_id: None,
        authority_key_id: None,
        key_usage: Vec::new(),
        extended: Vec::new(),
    };
    for extension in cert.extensions() {
        match extension.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) => {
                extensions.ca = Some(bc.ca);
                extensions.basic_constraints_critical = extension.critical;
            }
            ParsedExtension::SubjectKeyIdentifier(id) => extensions.subject_key_id = Some(id.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                extensions.authority_key_id = aki.key_identifier.as_ref().map(|id| id.0.to_vec());
            }
            ParsedExtension::KeyUsage(usage) => {
                let flags = [
                    (usage.digital_signature(), "digitalSignature"),
                    (usage.key_encipherment(), "keyEncipherment"),
                    (usage.key_cert_sign(), "keyCertSign"),
                    (usage.crl_sign(), "cRLSign"),
                ];
                extensions.key_usage = flags.into_iter().filter(|(set, _)| *set).map(|(_, name)| name).collect();
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                let purposes = [(eku.server_auth, "serverAuth"), (eku.client_auth, "clientAuth")];
                extensions.extended = purposes.into_iter().filter(|(set, _)| *set).map(|(_, name)| name).collect();
            }
            _ => {}
        }
    }
    let validity = cert.validity();
    (extensions, cert.raw_serial().to_vec(), validity.not_before.timestamp(), validity.not_after.timestamp())
}

/// RFC 5280, as strict verifiers read it (OpenSSL's `-x509_strict`, Python 3.13's default
/// `VERIFY_X509_STRICT`): key identifiers tying each certificate to its issuer's key, basic
/// constraints (the CA's critical), key usages that fit each use, random positive serials, and
/// a validity that has begun, also for a client whose clock is a little behind. Certificates
/// issued again from the CA's key (`Ca::load`) verify the same way.
#[test]
fn certificates_are_rfc_5280_conformant_for_strict_verifiers() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("secrets");
    let (secrets, _) = secrets::generate(&root, false).unwrap();
    let reissued = secrets::Ca::load(&secrets).unwrap().issue_client("stranger").unwrap();
    std::fs::write(root.join("reissued.pem"), &reissued.cert_pem).unwrap();
    let (ca, ca_serial, _, _) = parsed(&root.join("ca.pem"));
    assert_eq!((ca.ca, ca.basic_constraints_critical), (Some(true), true));
    assert_eq!(ca.key_usage, ["digitalSignature", "keyCertSign", "cRLSign"]);
    let ca_key_id = ca.subject_key_id.clone().expect("the CA has a subject key identifier");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut serials = vec![ca_serial];
    for (cert, purpose) in [
        ("webhook/amqp-server.pem", "serverAuth"),
        ("s3-server/s3-server.pem", "serverAuth"),
        ("webhook/amqp-client.pem", "clientAuth"),
        ("reissued.pem", "clientAuth"),
    ] {
        assert_eq!(openssl(&["verify", "-x509_strict", "-CAfile", "ca.pem", cert], &root), format!("{cert}: OK\n"));
        let (leaf, serial, not_before, not_after) = parsed(&root.join(cert));
        assert_eq!(leaf.ca, Some(false), "{cert}: basicConstraints CA:FALSE");
        assert_eq!(leaf.authority_key_id.as_ref(), Some(&ca_key_id), "{cert}: the issuer's key identifier");
        assert!(leaf.subject_key_id.is_some_and(|id| id != ca_key_id), "{cert}: a key identifier of its own");
        assert_eq!(leaf.key_usage, ["digitalSignature"], "{cert}");
        assert_eq!(leaf.extended, [purpose], "{cert}");
        assert!(serial.len() >= 8 && serial[0] & 0x80 == 0, "{cert}: a random, positive serial {serial:02x?}");
        assert!(not_before <= now - 30 * 60 && not_before > now - 2 * 3600, "{cert}: valid from an hour ago");
        assert!(not_after > now + 365 * 24 * 3600, "{cert}");
        serials.push(serial);
    }
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), 5, "every serial differs");
}

#[test]
fn the_private_values_are_every_token_secret_key_and_private_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (secrets, _) = secrets::generate(tmp.path(), false).unwrap();
    let values = secrets.private_values().unwrap();
    assert_eq!(values.len(), 7, "4 private keys, 2 tokens, 1 S3 secret key: {values:?}");
    let token = std::fs::read_to_string(secrets.github_token()).unwrap();
    assert!(values.contains(&token.trim().to_owned()));
    let key = std::fs::read_to_string(tmp.path().join("ca.key")).unwrap();
    assert!(values.iter().any(|value| key.contains(value.as_str()) && value.len() >= 60), "{values:?}");
}
