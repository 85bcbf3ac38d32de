//! The broker and the S3 store as Cockpit's tools reach them today: Python's `ssl` with
//! `VERIFY_X509_STRICT` (the default of Python 3.13 and later, which bots requires), our CA as
//! the trust anchor, and for the broker our client certificate without a host name check (as
//! bots' `distributed_queue.py`); for S3 the store's name, checked. And rustls with webpki, as
//! our own clients connect.

use std::process::Command;

use local::{Broker, S3Server, secrets};

/// Connects with Python's `ssl` as strictly as Python 3.13 does by default; prints the
/// negotiated protocol and whether strict verification was on.
const PYTHON: &str = r#"
import socket, ssl, sys
kind, host, port, ca, cert, key = sys.argv[1:7]
context = ssl.create_default_context(cafile=ca)
context.verify_flags |= ssl.VERIFY_X509_STRICT
if kind == "amqp":
    context.check_hostname = False
    context.load_cert_chain(cert, key)
with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as sock:
    with context.wrap_socket(sock, server_hostname=host) as tls:
        strict = bool(context.verify_flags & ssl.VERIFY_X509_STRICT)
        print(tls.version(), "strict" if strict else "lax")
"#;

fn python(kind: &str, host: &str, port: u16, secrets: &secrets::Secrets) -> Result<String, String> {
    let webhook = secrets.webhook_dir();
    let output = Command::new("python3")
        .args(["-c", PYTHON, kind, host, &port.to_string()])
        .arg(secrets.ca_cert())
        .arg(webhook.join("amqp-client.pem"))
        .arg(webhook.join("amqp-client.key"))
        .output()
        .expect("python3 runs");
    match output.status.success() {
        true => Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned()),
        false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn python_with_strict_x509_verification_reaches_the_broker_and_the_s3_store() {
    let dir = tempfile::tempdir().unwrap();
    let (secrets, _) = secrets::generate(&dir.path().join("secrets"), false).unwrap();
    let broker = Broker::start(&dir.path().join("broker"), &secrets).await.unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"), &secrets, true).await.unwrap();

    let amqp::Address::Tls { port, .. } = broker.address() else { panic!("a TLS broker") };
    // A broker that offers TLS 1.3 gets it from Python's clients (Cockpit's offers 1.2 only).
    assert_eq!(python("amqp", "localhost", port, &secrets), Ok("TLSv1.3 strict".to_owned()));
    let s3_port: u16 = s3.url().trim_end_matches('/').rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(python("s3", secrets::S3_HOST, s3_port, &secrets), Ok("TLSv1.3 strict".to_owned()));
    let refused = python("s3", "not-the-store.localdomain", s3_port, &secrets).unwrap_err();
    assert!(refused.contains("certificate verify failed"), "a name the certificate lacks is refused: {refused}");

    // Our own clients: rustls with webpki.
    amqp::Session::connect(&broker.client_config()).await.unwrap().close().await;
    assert_eq!(s3.store("logs/", None).unwrap().list().await.unwrap(), vec![]);
}
