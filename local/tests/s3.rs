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
        let ca = std::fs::read(self.secrets.ca_cert()).unwrap();
        Store::new(&format!("{}{bucket}/", self.server.url()), key, Some(&ca)).unwrap()
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

#[tokio::test]
async fn anonymous_reads_only_what_is_public() {
    let fixture = start(false).await;
    let (logs, images) = (fixture.store("logs", Some(fixture.key())), fixture.store("images", Some(fixture.key())));
    logs.put("public/log", b"log".to_vec(), "text/plain").await.unwrap();
    logs.clone().with_acl("authenticated-read").put("private/log", b"log".to_vec(), "text/plain").await.unwrap();
    images.put("testimage-0123.qcow2", b"world".to_vec(), "application/octet-stream").await.unwrap();
    images
        .clone()
        .with_acl("public-read")
        .put("shared-0123.qcow2", b"world".to_vec(), "application/octet-stream")
        .await
        .unwrap();

    let (anonymous_logs, anonymous_images) = (fixture.store("logs", None), fixture.store("images", None));
    assert_eq!(anonymous_logs.get("public/log").await.unwrap().as_deref(), Some(&b"log"[..]));
    assert_eq!(status(anonymous_logs.get("private/log").await.unwrap_err()), 403);
    assert_eq!(status(anonymous_images.get("testimage-0123.qcow2").await.unwrap_err()), 403);
    assert_eq!(anonymous_images.get("shared-0123.qcow2").await.unwrap().as_deref(), Some(&b"world"[..]));
    assert_eq!(status(anonymous_logs.list().await.unwrap_err()), 403, "listing needs a signature");
    assert_eq!(status(anonymous_logs.put("x", b"x".to_vec(), "text/plain").await.unwrap_err()), 403);
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
    assert!(fixture.server.url().starts_with("https://localhost:"));
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
