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
        retry::transient(name, s3::Error::is_transient, || s3::Store::put(self, name, body.clone(), content_type)).await
    }
    async fn delete(&self, name: &str) -> Result<(), s3::Error> {
        retry::transient(name, s3::Error::is_transient, || s3::Store::delete(self, name)).await
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
}

impl<S: Sink> LogStream<S> {
    /// Writes the viewer, then `header` (uploaded at once).
    pub async fn start(sink: S, header: &str) -> Result<LogStream<S>, s3::Error> {
        let mut stream = LogStream {
            sink,
            log: Vec::new(),
            flushed: 0,
            first_unflushed: None,
            chunks: Vec::new(),
            ranges: Vec::new(),
            files: Vec::new(),
        };
        stream.attach("log.html", VIEWER.to_vec()).await?;
        stream.log.extend_from_slice(header.as_bytes());
        stream.flush().await?;
        Ok(stream)
    }

    /// Appends output; uploads when enough is buffered or has waited long enough.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), s3::Error> {
        self.log.extend_from_slice(data);
        self.first_unflushed.get_or_insert_with(Instant::now);
        if self.log.len() - self.flushed > FLUSH_BYTES {
            self.flush().await?;
        }
        self.flush_if_due().await
    }

    /// Uploads buffered output that has waited long enough; call this periodically.
    pub async fn flush_if_due(&mut self) -> Result<(), s3::Error> {
        match self.first_unflushed {
            Some(since) if since.elapsed() >= FLUSH_AFTER => self.flush().await,
            _ => Ok(()),
        }
    }

    /// Uploads what is buffered as a new chunk, merged with its predecessors like a binary
    /// counter, and the new chunk list.
    pub async fn flush(&mut self) -> Result<(), s3::Error> {
        self.first_unflushed = None;
        if self.flushed == self.log.len() {
            return Ok(());
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
        self.sink.put(&name, self.log[last.start..last.end].to_vec(), TEXT).await?;
        self.ranges.push(name);
        let sizes: Vec<String> = self.chunks.iter().map(|chunk| (chunk.end - chunk.start).to_string()).collect();
        // Python's json.dumps spacing, as Cockpit writes it.
        self.sink.put("log.chunks", format!("[{}]", sizes.join(", ")).into_bytes(), TEXT).await
    }

    /// Uploads an attachment (or the viewer) next to the log, listed in the index.
    pub async fn attach(&mut self, name: &str, body: Vec<u8>) -> Result<(), s3::Error> {
        self.sink.put(name, body, content_type(name)).await?;
        self.files.push(name.to_owned());
        Ok(())
    }

    /// The log so far.
    pub fn text(&self) -> &[u8] {
        &self.log
    }

    /// Writes the complete `log`, deletes the chunk list and ranges (the viewer's sign that the
    /// log is complete), then the index.
    pub async fn close(mut self) -> Result<(), s3::Error> {
        self.sink.put("log", self.log.clone(), TEXT).await?;
        self.files.push("log".to_owned());
        self.sink.delete("log.chunks").await?;
        for range in &self.ranges {
            self.sink.delete(range).await?;
        }
        self.files.sort();
        let items: String = self.files.iter().map(|name| format!("<li><a href={name}>{name}</a></li>")).collect();
        let index = format!("<html><body><h1>Directory listing for /</h1><hr><ul>{items}</ul></body></html>");
        self.sink.put("index.html", index.into_bytes(), "text/html").await
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
        let mut stream = LogStream::start(&recorder, "title\n").await.unwrap();
        for part in ["aa", "bbb", "c"] {
            stream.write(part.as_bytes()).await.unwrap();
            stream.flush().await.unwrap();
        }
        stream.attach("bogus.log", b"heisenberg".to_vec()).await.unwrap();
        stream.write(b"done\n").await.unwrap();
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

    #[tokio::test]
    async fn a_big_write_is_flushed_at_once() {
        let recorder = Recorder::default();
        let mut stream = LogStream::start(&recorder, "").await.unwrap();
        stream.write(&vec![b'x'; FLUSH_BYTES + 1]).await.unwrap();
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
