//! A job log streamed into the in-process S3 store, read back as the viewer and a browser do.

#[path = "support/browser.rs"]
mod browser;

use local::S3Server;
use local::secrets::{self, S3_HOST};
use s3::{Key, Store};
use tasks::log_stream::{LogStream, VIEWER};

/// The log's header, as job-runner writes it.
const HEADER: &str = "unit-tests@workbench-ci/demo#5f3a9d2c\n\nRunning on: worker\n\n";

/// The in-process S3 store (kept running by the returned server), a job's log directory in it,
/// and a log stream writing there with the worker's key.
async fn stream_into_s3(dir: &std::path::Path) -> (S3Server, String, LogStream<tasks::log_store::LogStore>) {
    let (secrets, _) = secrets::generate(&dir.join("secrets"), false).unwrap();
    let server = S3Server::start(&dir.join("s3"), &secrets, false).await.unwrap();
    let key = Key::for_host(&secrets.s3_keys_dir(), S3_HOST).unwrap();
    let url = format!("{}logs/pull-1-5f3a9d2c-20261123-120000-unit-tests/", server.url());
    let writer = Store::new(&url, Some(key), None).unwrap();
    let sink = tasks::log_store::LogStore::S3(Box::new(writer));
    let stream = LogStream::start(sink, HEADER, dir, 1 << 20).await.unwrap();
    (server, url, stream)
}

#[tokio::test]
async fn streams_ranges_then_leaves_the_complete_log() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, url, mut stream) = stream_into_s3(dir.path()).await;
    let reader = Store::new(&url, None, None).unwrap();
    let header = HEADER;
    let output = b"1..1\nok 1 demo\n";
    let length = header.len() + output.len();
    stream.write(output).await;
    stream.flush().await;
    // While running, a reader finds the chunk list and the ranges it names.
    let chunks = String::from_utf8(reader.get("log.chunks").await.unwrap().unwrap()).unwrap();
    // The header's chunk and this one merged into one of two blocks.
    assert_eq!(chunks, format!("[{length}]"));
    let range = reader.get(&format!("log.0-{length}")).await.unwrap().unwrap();
    assert!(range.ends_with(b"ok 1 demo\n"));
    assert_eq!(reader.get("log.html").await.unwrap().as_deref(), Some(VIEWER));

    stream.write(b"\n\nJob ran successfully.  :)\n").await;
    stream.close().await.unwrap();
    let log = String::from_utf8(reader.get("log").await.unwrap().unwrap()).unwrap();
    assert!(log.starts_with("unit-tests@workbench-ci/demo#5f3a9d2c\n\nRunning on: worker\n"), "{log}");
    assert!(log.ends_with("Job ran successfully.  :)\n"), "{log}");
    assert_eq!(
        reader.get("log.chunks").await.unwrap(),
        None,
        "a 404 on log.chunks tells the viewer the log is complete"
    );
    assert_eq!(reader.get(&format!("log.0-{length}")).await.unwrap(), None);
    let index = String::from_utf8(reader.get("index.html").await.unwrap().unwrap()).unwrap();
    assert!(index.contains("<li><a href=log>log</a></li><li><a href=log.html>log.html</a></li>"), "{index}");
}

/// The viewer in Chromium, opened while the job still writes: the log grows on the page, then
/// ends with the job's last line and "finished"; the page's text is the log, byte for byte.
#[tokio::test]
async fn the_viewer_in_a_browser_follows_a_growing_log_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, url, mut stream) = stream_into_s3(dir.path()).await;
    stream.write(b"1..2\nok 1 first\n").await;
    stream.flush().await;

    let browser = browser::Browser::start().await;
    browser.open(&format!("{url}log.html")).await;
    browser.wait_for_text("#log", "the first test's line", |log| log.contains("ok 1 first")).await;
    assert_eq!(browser.text("#state").await, "running…");
    stream.write(b"ok 2 second\n").await;
    stream.flush().await;
    let log = browser.wait_for_text("#log", "the second test's line", |log| log.contains("ok 2 second")).await;
    assert!(!log.contains("Job ran successfully"), "{log}");
    browser.screenshot("log-viewer-running").await;

    stream.write(b"\n\nJob ran successfully.  :)\n").await;
    stream.close().await.unwrap();
    browser.wait_for_text("#state", "finished", |state| state == "finished").await;
    let shown = browser.eval("return document.getElementById('log').textContent").await;
    let whole = format!("{HEADER}1..2\nok 1 first\nok 2 second\n\n\nJob ran successfully.  :)\n");
    assert_eq!(shown, serde_json::json!(whole), "the page shows the log, each byte once");
    let passed =
        browser.eval("return [...document.querySelectorAll('#log span.ok')].map(line => line.textContent)").await;
    assert_eq!(passed, serde_json::json!(["ok 1 first\n", "ok 2 second\n"]));
    browser.screenshot("log-viewer-finished").await;
    browser.close().await;
}
