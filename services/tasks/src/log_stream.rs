//! Streaming a job's log to its store (`log_store`) while it runs, in Cockpit's object layout (cockpit-protocol.md
//! 4.8), so that Cockpit's viewer and ours can follow it: growing ranges `log.<A>-<B>` listed in
//! `log.chunks`, then the complete `log`, the chunks deleted, and an `index.html`.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use s3::Body;

use crate::log_store::StoreError;

/// Flush when this much is buffered...
const FLUSH_BYTES: u64 = 1_000_000;
/// ...or this long after the first unflushed write.
const FLUSH_AFTER: Duration = Duration::from_secs(30);
const TEXT: &str = "text/plain; charset=utf-8";

/// The viewer page, written next to the log.
pub const VIEWER: &[u8] = include_bytes!("log.html");

/// The names of the log's own objects: an attachment may not take them.
pub fn is_reserved(name: &str) -> bool {
    let range = |rest: &str| rest.split_once('-').is_some_and(|(a, b)| is_number(a) && is_number(b));
    matches!(name, "log" | "log.html" | "log.chunks" | "index.html") || name.strip_prefix("log.").is_some_and(range)
}

fn is_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// Where the log's objects go (an S3 prefix, or a directory).
pub trait Sink {
    fn put(&self, name: &str, body: Body, content_type: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn delete(&self, name: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A byte range of the log, made of `blocks` flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chunk {
    blocks: u32,
    start: u64,
    end: u64,
}

/// A log being written: kept in a file of its own (unnamed, in the job's scratch directory), so
/// that whatever a job prints costs the worker disk up to a limit, never memory; uploaded from
/// that file in chunks as it grows.
///
/// A store that fails (after retries) does not stop the job: the failure is kept, nothing more
/// is uploaded, and [`LogStream::close`] returns it, so the job can still report its outcome.
pub struct LogStream<S> {
    sink: S,
    file: Arc<File>,
    /// Bytes in the file, and how many of them are uploaded.
    len: u64,
    flushed: u64,
    /// The most the file takes; output beyond it is counted, not kept.
    max: u64,
    dropped: u64,
    first_unflushed: Option<Instant>,
    chunks: Vec<Chunk>,
    /// Every range object ever written, deleted at close.
    ranges: Vec<String>,
    /// Files for `index.html`.
    files: Vec<String>,
    /// The first upload that failed.
    failure: Option<StoreError>,
}

impl<S: Sink> LogStream<S> {
    /// Writes the viewer, then `header` (uploaded at once). The log's file is made in `dir`, and
    /// holds at most `max` bytes.
    pub async fn start(sink: S, header: &str, dir: &Path, max: u64) -> std::io::Result<LogStream<S>> {
        let mut stream = LogStream {
            sink,
            file: Arc::new(tempfile::tempfile_in(dir)?),
            len: 0,
            flushed: 0,
            max,
            dropped: 0,
            first_unflushed: None,
            chunks: Vec::new(),
            ranges: Vec::new(),
            files: Vec::new(),
            failure: None,
        };
        stream.attach("log.html", Body::from(VIEWER.to_vec())).await;
        stream.append(header.as_bytes());
        stream.flush().await;
        Ok(stream)
    }

    /// Appends the job's output, up to the log's limit; uploads when enough is buffered or has
    /// waited long enough.
    pub async fn write(&mut self, data: &[u8]) {
        self.append(data);
        self.buffered().await
    }

    /// Appends a line of the worker's own (what it refused, how the job ended), whatever the
    /// limit: a full log still says how its job ended.
    pub async fn note(&mut self, text: &str) {
        self.write_file(text.as_bytes());
        self.buffered().await
    }

    async fn buffered(&mut self) {
        self.first_unflushed.get_or_insert_with(Instant::now);
        if self.len - self.flushed > FLUSH_BYTES {
            self.flush().await;
        }
        self.flush_if_due().await
    }

    /// Adds `data` to the file, up to the limit; past it, says so once and counts the rest.
    fn append(&mut self, data: &[u8]) {
        let room = self.max.saturating_sub(self.len);
        let (kept, dropped) = data.split_at(data.len().min(usize::try_from(room).unwrap_or(usize::MAX)));
        if !dropped.is_empty() && self.dropped == 0 {
            let note =
                format!("\n*** The log reached its limit of {} bytes: the rest of the output is not kept\n", self.max);
            self.write_file(&[kept, note.as_bytes()].concat());
        } else {
            self.write_file(kept);
        }
        self.dropped += dropped.len() as u64;
    }

    // A blocking write, to the page cache: cheaper than a trip to the blocking pool per line.
    fn write_file(&mut self, data: &[u8]) {
        match (&*self.file).write_all(data) {
            Ok(()) => self.len += data.len() as u64,
            Err(err) => {
                // A full disk: nothing more is kept, as past the limit.
                tracing::error!(%err, "cannot write the job's log file");
                self.len = self.file.metadata().map_or(self.len, |meta| meta.len());
                self.max = self.len;
            }
        }
    }

    /// How many bytes of output were not kept because the log was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
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
        if self.flushed == self.len {
            return;
        }
        self.chunks.push(Chunk { blocks: 1, start: self.flushed, end: self.len });
        self.flushed = self.len;
        while let [.., previous, last] = self.chunks[..]
            && previous.blocks == last.blocks
        {
            self.chunks.truncate(self.chunks.len() - 2);
            self.chunks.push(Chunk { blocks: previous.blocks + last.blocks, start: previous.start, end: last.end });
        }
        let last = *self.chunks.last().expect("a chunk was just pushed");
        tracing::info!(length = self.len, "log chunk");
        let name = format!("log.{}-{}", last.start, last.end);
        self.put(&name, self.range(last.start, last.end), TEXT).await;
        self.ranges.push(name);
        let sizes: Vec<String> = self.chunks.iter().map(|chunk| (chunk.end - chunk.start).to_string()).collect();
        // Python's json.dumps spacing, as Cockpit writes it.
        self.put("log.chunks", Body::from(format!("[{}]", sizes.join(", ")).into_bytes()), TEXT).await
    }

    fn range(&self, start: u64, end: u64) -> Body {
        Body::File { file: self.file.clone(), start, len: end - start }
    }

    /// Uploads an attachment (or the viewer) next to the log, listed in the index.
    pub async fn attach(&mut self, name: &str, body: Body) {
        self.put(name, body, content_type(name)).await;
        self.files.push(name.to_owned());
    }

    /// The upload that failed, if one did: nothing after it was stored.
    pub fn failure(&self) -> Option<&StoreError> {
        self.failure.as_ref()
    }

    /// Writes the complete `log`, deletes the chunk list and ranges (the viewer's sign that the
    /// log is complete), then the index. Fails if any upload of the log failed.
    pub async fn close(mut self) -> Result<(), StoreError> {
        self.put("log", self.range(0, self.len), TEXT).await;
        self.files.push("log".to_owned());
        self.delete("log.chunks").await;
        for range in std::mem::take(&mut self.ranges) {
            self.delete(&range).await;
        }
        let index = index(&mut self.files);
        self.put("index.html", Body::from(index.into_bytes()), "text/html").await;
        self.failure.map_or(Ok(()), Err)
    }

    async fn put(&mut self, name: &str, body: Body, content_type: &str) {
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

/// What a link to an object may keep unencoded: its path separators and what plain names use.
const IN_LINK: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');

/// Cockpit's directory listing of the job's objects. Names come from the tested project: each
/// is percent-encoded in its link and escaped as text, so that no name is markup.
fn index(files: &mut [String]) -> String {
    files.sort();
    let items: String = files
        .iter()
        .map(|name| format!("<li><a href={}>{}</a></li>", utf8_percent_encode(name, IN_LINK), escape_html(name)))
        .collect();
    format!("<html><body><h1>Directory listing for /</h1><hr><ul>{items}</ul></body></html>")
}

/// `text` as HTML text or attribute value.
pub fn escape_html(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '&' => "&amp;".to_owned(),
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
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

    const MAX: u64 = 1 << 30;

    /// Records operations instead of uploading.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    /// The bytes a body sends.
    fn bytes(body: &Body) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        match body {
            Body::Bytes(bytes) => bytes.to_vec(),
            Body::File { file, start, len } => {
                let mut buffer = vec![0; *len as usize];
                file.read_exact_at(&mut buffer, *start).unwrap();
                buffer
            }
        }
    }

    impl Sink for &Recorder {
        async fn put(&self, name: &str, body: Body, content_type: &str) -> Result<(), StoreError> {
            let body = bytes(&body);
            let body = String::from_utf8_lossy(&body);
            let shown = if name == "log.html" { "<viewer>".into() } else { body.into_owned() };
            self.0.lock().unwrap().push(format!("PUT {name} ({content_type}) {shown}"));
            Ok(())
        }
        async fn delete(&self, name: &str) -> Result<(), StoreError> {
            self.0.lock().unwrap().push(format!("DELETE {name}"));
            Ok(())
        }
    }

    #[tokio::test]
    async fn writes_cockpits_object_sequence() {
        let recorder = Recorder::default();
        let mut stream = LogStream::start(&recorder, "title\n", &std::env::temp_dir(), MAX).await.unwrap();
        for part in ["aa", "bbb", "c"] {
            stream.write(part.as_bytes()).await;
            stream.flush().await;
        }
        stream.attach("bogus.log", Body::from(b"heisenberg".to_vec())).await;
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
        async fn put(&self, name: &str, body: Body, content_type: &str) -> Result<(), StoreError> {
            self.fail()?;
            (&self.1).put(name, body, content_type).await
        }
        async fn delete(&self, name: &str) -> Result<(), StoreError> {
            self.fail()?;
            (&self.1).delete(name).await
        }
    }

    impl FailingFrom {
        fn fail(&self) -> Result<(), StoreError> {
            if self.1.0.lock().unwrap().len() < self.0 {
                return Ok(());
            }
            Err(StoreError::Name { name: "refused".into() })
        }
    }

    #[tokio::test]
    async fn a_failed_upload_is_kept_nothing_is_uploaded_after_it_and_close_returns_it() {
        let failing = FailingFrom(3, Recorder::default());
        let mut stream = LogStream::start(&failing, "title\n", &std::env::temp_dir(), MAX).await.unwrap();
        assert!(stream.failure().is_none());
        stream.write(b"output").await;
        stream.flush().await;
        assert!(stream.failure().is_some_and(|err| err.to_string().contains("refused")));
        stream.write(b"more").await;
        stream.attach("bogus.log", Body::from(b"x".to_vec())).await;
        assert!(stream.close().await.is_err());
        assert_eq!(failing.1.0.lock().unwrap().len(), 3, "log.html, the first range, the chunk list");
    }

    #[tokio::test]
    async fn a_big_write_is_flushed_at_once() {
        let recorder = Recorder::default();
        let mut stream = LogStream::start(&recorder, "", &std::env::temp_dir(), MAX).await.unwrap();
        stream.write(&vec![b'x'; FLUSH_BYTES as usize + 1]).await;
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

    #[tokio::test]
    async fn output_past_the_limit_is_counted_not_kept() {
        let recorder = Recorder::default();
        let mut stream = LogStream::start(&recorder, "head\n", &std::env::temp_dir(), 10).await.unwrap();
        stream.write(b"0123456789").await;
        stream.write(b"more").await;
        assert_eq!(stream.dropped(), 5 + 4);
        stream.close().await.unwrap();
        let operations = recorder.0.into_inner().unwrap();
        let log = operations.iter().find(|op| op.starts_with("PUT log (")).unwrap();
        assert_eq!(
            log,
            "PUT log (text/plain; charset=utf-8) head\n01234\n*** The log reached its limit of 10 bytes: the rest of the output is not kept\n"
        );
    }

    #[test]
    fn the_logs_own_names_are_reserved() {
        for name in ["log", "log.html", "log.chunks", "index.html", "log.0-12", "log.100-2000"] {
            assert!(is_reserved(name), "{name}");
        }
        for name in ["log.txt", "logs", "data/log", "log.0-", "log.a-1", "index.htm", "bogus.log"] {
            assert!(!is_reserved(name), "{name}");
        }
    }

    #[test]
    fn the_index_keeps_names_as_text() {
        let mut files = vec!["<img src=x onerror=alert(1)>".to_owned(), "data/a b&c.txt".to_owned(), "log".to_owned()];
        assert_eq!(
            index(&mut files),
            "<html><body><h1>Directory listing for /</h1><hr><ul>\
             <li><a href=%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E>&lt;img src=x onerror=alert(1)&gt;</a></li>\
             <li><a href=data/a%20b%26c.txt>data/a b&amp;c.txt</a></li>\
             <li><a href=log>log</a></li></ul></body></html>"
        );
    }
}
