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
        assert_eq!(openssl(&["verify", "-CAfile", "ca.pem", cert], &root), format!("{cert}: OK\n"));
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
        openssl(&["verify", "-CAfile", "ca.pem", "webhook/amqp-client.pem"], tmp.path()),
        "webhook/amqp-client.pem: OK\n"
    );
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
