//! The in-process S3 store through our SigV4 client: signatures, the access policy, content
//! types, large objects, and HTTPS with the generated certificate.

use local::S3Server;
use local::secrets::{self, S3_HOST, Secrets};
use s3::{Key, Store};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Fixture {
    server: S3Server,
    secrets: Secrets,
    _dir: TempDir,
}

async fn start(tls: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (secrets, _) = secrets::generate(&dir.path().join("secrets"), false).unwrap();
    let server = S3Server::start(&dir.path().join("s3"), &secrets, tls).await.unwrap();
    Fixture { server, secrets, _dir: dir }
}

impl Fixture {
    fn key(&self) -> Key {
        Key::for_host(&self.secrets.s3_keys_dir(), S3_HOST).expect("the secrets hold the store's key")
    }

    fn store(&self, bucket: &str, key: Option<Key>) -> Store {
        self.server.store(&format!("{bucket}/"), key).unwrap()
    }
}

fn status(err: s3::Error) -> u16 {
    match err {
        s3::Error::Status { status, .. } => status,
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn signed_requests_put_get_list_and_delete() {
    let fixture = start(false).await;
    let logs = fixture.store("logs", Some(fixture.key()));
    logs.put("pull-1-abc/log", b"Running on: host\n".to_vec(), "text/plain; charset=utf-8").await.unwrap();
    logs.put("pull-1-abc/data/subdir-file.txt", b"subdir-file\n".to_vec(), "text/plain").await.unwrap();
    assert_eq!(logs.get("pull-1-abc/log").await.unwrap().as_deref(), Some(&b"Running on: host\n"[..]));
    assert_eq!(logs.get("pull-1-abc/missing").await.unwrap(), None);
    let names: Vec<String> = logs.list().await.unwrap().into_iter().map(|object| object.name).collect();
    assert_eq!(names, ["pull-1-abc/data/subdir-file.txt", "pull-1-abc/log"]);
    logs.delete("pull-1-abc/log").await.unwrap();
    assert_eq!(logs.get("pull-1-abc/log").await.unwrap(), None);
}

/// As on Cockpit's test store (minio, `anonymous set download` on both buckets): anonymous
/// clients read and list both buckets, except objects uploaded with a restrictive ACL; writing
/// needs the key.
#[tokio::test]
async fn anonymous_clients_read_and_list_what_is_not_restricted() {
    let fixture = start(false).await;
    let (logs, images) = (fixture.store("logs", Some(fixture.key())), fixture.store("images", Some(fixture.key())));
    logs.put("public/log", b"log".to_vec(), "text/plain").await.unwrap();
    logs.clone().with_acl("authenticated-read").put("private/log", b"log".to_vec(), "text/plain").await.unwrap();
    images.put("testimage-0123.qcow2", b"world".to_vec(), "application/octet-stream").await.unwrap();
    images
        .clone()
        .with_acl("private")
        .put("rhel-0123.qcow2", b"rhel".to_vec(), "application/octet-stream")
        .await
        .unwrap();

    let (anonymous_logs, anonymous_images) = (fixture.store("logs", None), fixture.store("images", None));
    assert_eq!(anonymous_logs.get("public/log").await.unwrap().as_deref(), Some(&b"log"[..]));
    assert_eq!(status(anonymous_logs.get("private/log").await.unwrap_err()), 403);
    assert_eq!(anonymous_images.get("testimage-0123.qcow2").await.unwrap().as_deref(), Some(&b"world"[..]));
    assert_eq!(status(anonymous_images.get("rhel-0123.qcow2").await.unwrap_err()), 403);
    let names = |objects: Vec<s3::Object>| objects.into_iter().map(|object| object.name).collect::<Vec<_>>();
    assert_eq!(names(anonymous_logs.list().await.unwrap()), ["private/log", "public/log"]);
    assert_eq!(names(anonymous_images.list().await.unwrap()), ["rhel-0123.qcow2", "testimage-0123.qcow2"]);
    assert_eq!(status(anonymous_logs.put("x", b"x".to_vec(), "text/plain").await.unwrap_err()), 403);
    assert_eq!(status(anonymous_logs.delete("public/log").await.unwrap_err()), 403);
    // A restricted object deleted and uploaded again without an ACL is public again.
    logs.delete("private/log").await.unwrap();
    logs.put("private/log", b"log".to_vec(), "text/plain").await.unwrap();
    assert!(anonymous_logs.get("private/log").await.is_ok());
}

/// Sends `GET target` as it is, without a key; returns the status code.
async fn raw_get(fixture: &Fixture, target: &str) -> u16 {
    let url = fixture.server.url();
    let address = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("{response}"))
}

/// A key's `.`, `..` and empty segments, in any encoding, would let a request be judged as one
/// object (or bucket) and served as another: refused with 400 before any decision.
#[tokio::test]
async fn keys_that_name_another_object_are_refused() {
    let fixture = start(false).await;
    let (logs, images) = (fixture.store("logs", Some(fixture.key())), fixture.store("images", Some(fixture.key())));
    images
        .clone()
        .with_acl("private")
        .put("rhel-0123.qcow2", b"rhel".to_vec(), "application/octet-stream")
        .await
        .unwrap();
    logs.clone().with_acl("authenticated-read").put("x/private", b"log".to_vec(), "text/plain").await.unwrap();
    logs.put("x/public", b"log".to_vec(), "text/plain").await.unwrap();
    assert_eq!(raw_get(&fixture, "/images/rhel-0123.qcow2").await, 403);
    assert_eq!(raw_get(&fixture, "/logs/x/private").await, 403);
    assert_eq!(raw_get(&fixture, "/logs/x/public").await, 200);
    for target in [
        "/logs/../images/rhel-0123.qcow2",
        "/logs/..%2Fimages/rhel-0123.qcow2",
        "/logs/%2E%2E/images/rhel-0123.qcow2",
        "/logs/%2e%2e%2fimages%2frhel-0123.qcow2",
        "/logs/x/../../images/rhel-0123.qcow2",
        "/logs/x//private",
        "/logs/./x/private",
        "/logs/x/./private",
        "/logs/x/%2E/private",
        "/logs//x/private",
        "/logs/x/private/",
        "/logs/x/private/..",
    ] {
        assert_eq!(raw_get(&fixture, target).await, 400, "{target}");
    }
    let signed_odd = logs.put("a//b", b"x".to_vec(), "text/plain").await.unwrap_err();
    assert_eq!(status(signed_odd), 400, "with a key too");
}

#[test]
fn plain_keys() {
    for key in ["log", "pull-1/log.html", "data/subdir-file.txt", "a.b/..c/d..", "%2E%2E"] {
        assert!(local::s3_server::is_plain_key(key), "{key}");
    }
    for key in ["", "/a", "a/", "a//b", ".", "..", "./a", "a/.", "a/../b"] {
        assert!(!local::s3_server::is_plain_key(key), "{key}");
    }
}

#[tokio::test]
async fn a_wrong_secret_is_refused() {
    let fixture = start(false).await;
    let wrong = Key { access: fixture.key().access, secret: "not-the-secret".into() };
    let err = fixture.store("logs", Some(wrong)).put("log", b"x".to_vec(), "text/plain").await.unwrap_err();
    let text = err.to_string();
    assert_eq!(status(err), 403);
    assert!(text.contains("SignatureDoesNotMatch"), "{text}");
}

#[tokio::test]
async fn keeps_the_content_type_so_browsers_render_the_log_page() {
    let fixture = start(false).await;
    let logs = fixture.store("logs", Some(fixture.key()));
    logs.put("pull-1-abc/log.html", b"<html><body>log</body></html>".to_vec(), "text/html").await.unwrap();
    let url = fixture.server.url();
    let address = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET /logs/pull-1-abc/log.html HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.to_lowercase().contains("content-type: text/html"), "{response}");
    assert!(response.ends_with("<html><body>log</body></html>"), "{response}");
}

#[tokio::test]
async fn a_50_mb_object_round_trips_over_https() {
    let fixture = start(true).await;
    assert!(fixture.server.url().starts_with("https://localhost.localdomain:"), "{}", fixture.server.url());
    let images = fixture.store("images", Some(fixture.key()));
    let data: Vec<u8> = (0..50 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    images.put("big-image.qcow2", data.clone(), "application/octet-stream").await.unwrap();
    let back = images.get("big-image.qcow2").await.unwrap().expect("the image is stored");
    assert_eq!(back.len(), data.len());
    assert!(back == data, "same bytes back");
    let listed = images.list().await.unwrap();
    assert_eq!(
        listed.iter().map(|o| (o.name.as_str(), o.size)).collect::<Vec<_>>(),
        [("big-image.qcow2", 50 * 1024 * 1024)]
    );
}
