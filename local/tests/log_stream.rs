//! A job log streamed into the in-process S3 store, read back as the viewer and a browser do.

use local::S3Server;
use local::secrets::{self, S3_HOST};
use s3::{Key, Store};
use tasks::log_stream::{LogStream, VIEWER};

#[tokio::test]
async fn streams_ranges_then_leaves_the_complete_log() {
    let dir = tempfile::tempdir().unwrap();
    let (secrets, _) = secrets::generate(&dir.path().join("secrets"), false).unwrap();
    let server = S3Server::start(&dir.path().join("s3"), &secrets, false).await.unwrap();
    let key = Key::for_host(&secrets.s3_keys_dir(), S3_HOST).unwrap();
    let slug = "pull-1-5f3a9d2c-20261123-120000-unit-tests";
    let url = format!("{}logs/{slug}/", server.url());
    let writer = Store::new(&url, Some(key), None).unwrap();
    let reader = Store::new(&url, None, None).unwrap();

    let header = "unit-tests@workbench-ci/demo#5f3a9d2c\n\nRunning on: worker\n\n";
    let output = b"1..1\nok 1 demo\n";
    let length = header.len() + output.len();
    let mut stream =
        LogStream::start(tasks::log_store::LogStore::S3(Box::new(writer)), header, dir.path(), 1 << 20).await.unwrap();
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
