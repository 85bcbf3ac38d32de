//! Streaming a job's log to S3 while it runs, in Cockpit's object layout (cockpit-protocol.md
//! 4.8), so that Cockpit's viewer and ours can follow it: growing ranges `log.<A>-<B>` listed in
//! `log.chunks`, then the complete `log`, the chunks deleted, and an `index.html`.

use std::time::{Duration, Instant};

use crate::retry;

/// Flush when this much is buffered...
const FLUSH_BYTES: usize = 1_000_000;
/// ...or this long after the first unflushed write.
const FLUSH_AFTER: Duration = Duration::from_secs(30);
const TEXT: &str = "text/plain; charset=utf-8";

/// The viewer page, written next to the log.
pub const VIEWER: &[u8] = include_bytes!("log.html");

/// Where the log's objects go (an S3 prefix, or a directory).
pub trait Sink {
    fn put(&self, name: &str, body: Vec<u8>, content_type: &str) -> impl Future<Output = Result<(), s3::Error>> + Send;
    fn delete(&self, name: &str) -> impl Future<Output = Result<(), s3::Error>> + Send;
}

/// A store URL that already ends in the job's `<slug>/`. Transient failures are retried.
impl Sink for s3::Store {
    async fn put(&self, name: &str, body: Vec<u8>, content_type: &str) -> Result<(), s3::Error> {
        retry::transient(name, retry::COCKPIT, s3::Error::is_transient, || {
            s3::Store::put(self, name, body.clone(), content_type)
        })
        .await
    }
    async fn delete(&self, name: &str) -> Result<(), s3::Error> {
        retry::transient(name, retry::COCKPIT, s3::Error::is_transient, || s3::Store::delete(self, name)).await
    }
}

/// A byte range of the log, made of `blocks` flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chunk {
    blocks: u32,
    start: usize,
    end: usize,
}

/// A log being written: everything so far, what is not flushed yet, and the chunks uploaded.
///
/// A store that fails (after retries) does not stop the job: the failure is kept, nothing more
/// is uploaded, and [`LogStream::close`] returns it, so the job can still report its outcome.
pub struct LogStream<S> {
    sink: S,
    log: Vec<u8>,
    flushed: usize,
    first_unflushed: Option<Instant>,
    chunks: Vec<Chunk>,
    /// Every range object ever written, deleted at close.
    ranges: Vec<String>,
    /// Files for `index.html`.
    files: Vec<String>,
    /// The first upload that failed.
    failure: Option<s3::Error>,
}

impl<S: Sink> LogStream<S> {
    /// Writes the viewer, then `header` (uploaded at once).
    pub async fn start(sink: S, header: &str) -> LogStream<S> {
        let mut stream = LogStream {
            sink,
            log: Vec::new(),
            flushed: 0,
            first_unflushed: None,
            chunks: Vec::new(),
            ranges: Vec::new(),
            files: Vec::new(),
            failure: None,
        };
        stream.attach("log.html", VIEWER.to_vec()).await;
        stream.log.extend_from_slice(header.as_bytes());
        stream.flush().await;
        stream
    }

    /// Appends output; uploads when enough is buffered or has waited long enough.
    pub async fn write(&mut self, data: &[u8]) {
        self.log.extend_from_slice(data);
        self.first_unflushed.get_or_insert_with(Instant::now);
        if self.log.len() - self.flushed > FLUSH_BYTES {
            self.flush().await;
        }
        self.flush_if_due().await
    }

    /// Uploads buffered output that has waited long enough; call this periodically.
    pub async fn flush_if_due(&mut self) {
        if self.first_unflushed.is_some_and(|since| since.elapsed() >= FLUSH_AFTER) {
            self.flush().await;
        }
    }

    /// Uploads what is buffered as a new chunk, merged with its predecessors like a binary
    /// counter, and the new chunk list.
    pub async fn flush(&mut self) {
        self.first_unflushed = None;
        if self.flushed == self.log.len() {
            return;
        }
        self.chunks.push(Chunk { blocks: 1, start: self.flushed, end: self.log.len() });
        self.flushed = self.log.len();
        while let [.., previous, last] = self.chunks[..]
            && previous.blocks == last.blocks
        {
            self.chunks.truncate(self.chunks.len() - 2);
            self.chunks.push(Chunk { blocks: previous.blocks + last.blocks, start: previous.start, end: last.end });
        }
        let last = *self.chunks.last().expect("a chunk was just pushed");
        let name = format!("log.{}-{}", last.start, last.end);
        self.put(&name, self.log[last.start..last.end].to_vec(), TEXT).await;
        self.ranges.push(name);
        let sizes: Vec<String> = self.chunks.iter().map(|chunk| (chunk.end - chunk.start).to_string()).collect();
        // Python's json.dumps spacing, as Cockpit writes it.
        self.put("log.chunks", format!("[{}]", sizes.join(", ")).into_bytes(), TEXT).await
    }

    /// Uploads an attachment (or the viewer) next to the log, listed in the index.
    pub async fn attach(&mut self, name: &str, body: Vec<u8>) {
        self.put(name, body, content_type(name)).await;
        self.files.push(name.to_owned());
    }

    /// The log so far.
    pub fn text(&self) -> &[u8] {
        &self.log
    }

    /// The upload that failed, if one did: nothing after it was stored.
    pub fn failure(&self) -> Option<&s3::Error> {
        self.failure.as_ref()
    }

    /// Writes the complete `log`, deletes the chunk list and ranges (the viewer's sign that the
    /// log is complete), then the index. Fails if any upload of the log failed.
    pub async fn close(mut self) -> Result<(), s3::Error> {
        self.put("log", self.log.clone(), TEXT).await;
        self.files.push("log".to_owned());
        self.delete("log.chunks").await;
        for range in std::mem::take(&mut self.ranges) {
            self.delete(&range).await;
        }
        self.files.sort();
        let items: String = self.files.iter().map(|name| format!("<li><a href={name}>{name}</a></li>")).collect();
        let index = format!("<html><body><h1>Directory listing for /</h1><hr><ul>{items}</ul></body></html>");
        self.put("index.html", index.into_bytes(), "text/html").await;
        self.failure.map_or(Ok(()), Err)
    }

    async fn put(&mut self, name: &str, body: Vec<u8>, content_type: &str) {
        if self.failure.is_none() {
            self.failure = self.sink.put(name, body, content_type).await.err();
        }
    }

    async fn delete(&mut self, name: &str) {
        if self.failure.is_none() {
            self.failure = self.sink.delete(name).await.err();
        }
    }
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, extension)| extension) {
        Some("html") => "text/html",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => TEXT,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records operations instead of uploading.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Sink for &Recorder {
        async fn put(&self, name: &str, body: Vec<u8>, content_type: &str) -> Result<(), s3::Error> {
            let body = String::from_utf8_lossy(&body);
            let shown = if name == "log.html" { "<viewer>".into() } else { body.into_owned() };
            self.0.lock().unwrap().push(format!("PUT {name} ({content_type}) {shown}"));
            Ok(())
        }
        async fn delete(&self, name: &str) -> Result<(), s3::Error> {
            self.0.lock().unwrap().push(format!("DELETE {name}"));
            Ok(())
        }
    }

    #[tokio::test]
    async fn writes_cockpits_object_sequence() {
        let recorder = Recorder::default();
        let mut stream = LogStream::start(&recorder, "title\n").await;
        for part in ["aa", "bbb", "c"] {
            stream.write(part.as_bytes()).await;
            stream.flush().await;
        }
        stream.attach("bogus.log", b"heisenberg".to_vec()).await;
        stream.write(b"done\n").await;
        stream.close().await.unwrap();
        let text = "text/plain; charset=utf-8";
        assert_eq!(
            recorder.0.into_inner().unwrap(),
            [
                "PUT log.html (text/html) <viewer>".to_owned(),
                format!("PUT log.0-6 ({text}) title\n"),
                format!("PUT log.chunks ({text}) [6]"),
                // The second flush merges with the first: a chunk of two blocks.
                format!("PUT log.0-8 ({text}) title\naa"),
                format!("PUT log.chunks ({text}) [8]"),
                format!("PUT log.8-11 ({text}) bbb"),
                format!("PUT log.chunks ({text}) [8, 3]"),
                // One block merges with one block, then two with two.
                format!("PUT log.0-12 ({text}) title\naabbbc"),
                format!("PUT log.chunks ({text}) [12]"),
                format!("PUT bogus.log ({text}) heisenberg"),
                format!("PUT log ({text}) title\naabbbcdone\n"),
                "DELETE log.chunks".to_owned(),
                "DELETE log.0-6".to_owned(),
                "DELETE log.0-8".to_owned(),
                "DELETE log.8-11".to_owned(),
                "DELETE log.0-12".to_owned(),
                "PUT index.html (text/html) <html><body><h1>Directory listing for /</h1><hr><ul><li><a href=bogus.log>bogus.log</a></li><li><a href=log>log</a></li><li><a href=log.html>log.html</a></li></ul></body></html>".to_owned(),
            ]
        );
    }

    /// Fails every operation from the `n`th on.
    struct FailingFrom(usize, Recorder);

    impl Sink for &FailingFrom {
        async fn put(&self, name: &str, body: Vec<u8>, content_type: &str) -> Result<(), s3::Error> {
            self.fail()?;
            (&self.1).put(name, body, content_type).await
        }
        async fn delete(&self, name: &str) -> Result<(), s3::Error> {
            self.fail()?;
            (&self.1).delete(name).await
        }
    }

    impl FailingFrom {
        fn fail(&self) -> Result<(), s3::Error> {
            if self.1.0.lock().unwrap().len() < self.0 {
                return Ok(());
            }
            Err(s3::Error::Url("refused".into()))
        }
    }

    #[tokio::test]
    async fn a_failed_upload_is_kept_nothing_is_uploaded_after_it_and_close_returns_it() {
        let failing = FailingFrom(3, Recorder::default());
        let mut stream = LogStream::start(&failing, "title\n").await;
        assert!(stream.failure().is_none());
        stream.write(b"output").await;
        stream.flush().await;
        assert!(stream.failure().is_some_and(|err| err.to_string().contains("refused")));
        stream.write(b"more").await;
        stream.attach("bogus.log", b"x".to_vec()).await;
        assert!(stream.close().await.is_err());
        assert_eq!(failing.1.0.lock().unwrap().len(), 3, "log.html, the first range, the chunk list");
    }

    #[tokio::test]
    async fn a_big_write_is_flushed_at_once() {
        let recorder = Recorder::default();
        let mut stream = LogStream::start(&recorder, "").await;
        stream.write(&vec![b'x'; FLUSH_BYTES + 1]).await;
        let operations =
            recorder.0.lock().unwrap().iter().map(|op| op.chars().take(40).collect::<String>()).collect::<Vec<_>>();
        assert_eq!(
            operations[1..],
            [
                "PUT log.0-1000001 (text/plain; charset=utf-8) x".chars().take(40).collect::<String>(),
                "PUT log.chunks (text/plain; charset=utf-8) [1000001]".chars().take(40).collect()
            ]
        );
    }
}
