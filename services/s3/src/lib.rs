//! A small S3 client, enough for CI logs and images: PUT, GET, DELETE and listing against one
//! store URL (`https://host[:port]/bucket[/prefix]/`, path style), signed with AWS Signature V4
//! as Cockpit's tools sign, or anonymous. Keys come from Cockpit's `s3-keys` directory layout.

mod sigv4;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::{Method, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::TokioExecutor;

/// Credentials for a store.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    pub access: String,
    pub secret: String,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({}, <secret>)", self.access)
    }
}

impl Key {
    /// Cockpit's key file content: `ACCESS SECRET [TOKEN]`, whitespace separated.
    pub fn parse(text: &str) -> Option<Key> {
        let mut fields = text.split_whitespace();
        let (access, secret) = (fields.next()?, fields.next()?);
        Some(Key { access: access.to_owned(), secret: secret.to_owned() })
    }

    /// Cockpit's lookup in an `s3-keys` directory (`lib/s3.py`): a file named after the host,
    /// else after the host without its first label, and so on, while the name has a dot: a host
    /// without one (`localhost`) has no key.
    pub fn for_host(dir: &Path, host: &str) -> Option<Key> {
        let mut name = host;
        while name.contains('.') {
            if let Some(key) = std::fs::read_to_string(dir.join(name)).ok().and_then(|text| Key::parse(&text)) {
                return Some(key);
            }
            name = name.split_once('.')?.1;
        }
        None
    }
}

/// What a PUT sends: bytes in memory, or a byte range of an open file, read as it is sent (so
/// that a large object never sits in memory whole). Cheap to clone, for retries.
#[derive(Debug, Clone)]
pub enum Body {
    Bytes(Bytes),
    File { file: Arc<std::fs::File>, start: u64, len: u64 },
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Body {
        Body::Bytes(bytes.into())
    }
}

/// How much of a file is read at a time while it is sent.
const FILE_FRAME: usize = 64 * 1024;
/// How long a connection to the store may take to open.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Bytes(bytes) => bytes.len() as u64,
            Body::File { len, .. } => *len,
        }
    }

    /// The hyper body, and the payload hash to sign: the real one for bytes, `UNSIGNED-PAYLOAD`
    /// for a file (hashing it would mean reading it twice; TLS protects it on the way).
    fn into_http(self) -> (HttpBody, String) {
        match self {
            Body::Bytes(bytes) => {
                let hash = if bytes.is_empty() { sigv4::EMPTY_SHA256.to_owned() } else { sigv4::sha256_hex(&bytes) };
                (Full::new(bytes).map_err(|never| match never {}).boxed_unsync(), hash)
            }
            Body::File { file, start, len } => {
                let end = start + len;
                let frames = futures_util::stream::unfold(start, move |offset| {
                    let file = file.clone();
                    async move {
                        if offset >= end {
                            return None;
                        }
                        let size = FILE_FRAME.min((end - offset) as usize);
                        let read = tokio::task::spawn_blocking(move || {
                            let mut buffer = vec![0; size];
                            let n = file.read_at(&mut buffer, offset)?;
                            if n == 0 {
                                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file shrank"));
                            }
                            buffer.truncate(n);
                            Ok(buffer)
                        })
                        .await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                        Some(match read {
                            Ok(buffer) => (Ok(Frame::data(Bytes::from(buffer.clone()))), offset + buffer.len() as u64),
                            Err(err) => (Err(err), end),
                        })
                    }
                });
                (StreamBody::new(frames.boxed()).boxed_unsync(), sigv4::UNSIGNED_PAYLOAD.to_owned())
            }
        }
    }
}

type HttpBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// An object in a listing, its name relative to the store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub name: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid S3 store URL {0:?}: expected https://host[:port]/bucket[/prefix]/")]
    Url(String),
    #[error("S3 client TLS set-up failed: {0}")]
    Tls(String),
    #[error("S3 {method} {url}: {status} {body}")]
    Status { method: Method, url: String, status: u16, body: String },
    #[error("S3 {method} {url} failed: {detail}")]
    Transport { method: Method, url: String, detail: String },
    #[error("S3 listing of {url} is not a ListBucketResult: {detail}")]
    Listing { url: String, detail: String },
}

impl retry::Transient for Error {
    /// Whether retrying can help: the store was unreachable or answered 5xx.
    fn is_transient(&self) -> bool {
        match self {
            Error::Status { status, .. } => *status >= 500,
            Error::Transport { .. } => true,
            _ => false,
        }
    }
}

/// One S3 store: a bucket and an optional prefix.
#[derive(Clone)]
pub struct Store {
    scheme: String,
    host: String,
    bucket: String,
    prefix: String,
    key: Option<Key>,
    acl: Option<String>,
    user_agent: Option<String>,
    ca_pem: Option<Vec<u8>>,
    client: Client<connector::Https<Resolver>, HttpBody>,
}

impl Store {
    /// A client of the store at `url`, signing with `key` (anonymous without), trusting
    /// `ca_pem` for HTTPS when given and the system's roots otherwise.
    pub fn new(url: &str, key: Option<Key>, ca_pem: Option<&[u8]>) -> Result<Store, Error> {
        let uri: Uri = url.parse().map_err(|_| Error::Url(url.to_owned()))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(Error::Url(url.to_owned()));
        };
        let path = uri.path().trim_start_matches('/');
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() || !(scheme == "http" || scheme == "https") {
            return Err(Error::Url(url.to_owned()));
        }
        let prefix = if prefix.is_empty() || prefix.ends_with('/') { prefix.to_owned() } else { format!("{prefix}/") };
        Ok(Store {
            scheme: scheme.to_owned(),
            host: authority.to_string(),
            bucket: bucket.to_owned(),
            prefix,
            key,
            acl: None,
            user_agent: None,
            ca_pem: ca_pem.map(<[u8]>::to_vec),
            client: Client::builder(TokioExecutor::new()).build(connector(ca_pem, Resolver::default())?),
        })
    }

    /// Reaches each of `hosts` at its address, as an `/etc/hosts` of this client's own would,
    /// rather than asking the system's resolver: a store named `localhost.localdomain` (as
    /// Cockpit's tools want it) on a machine whose resolver does not know that name.
    pub fn resolving(mut self, hosts: &BTreeMap<String, IpAddr>) -> Result<Store, Error> {
        let resolver = Resolver { hosts: Arc::new(hosts.clone()), system: GaiResolver::new() };
        self.client = Client::builder(TokioExecutor::new()).build(connector(self.ca_pem.as_deref(), resolver)?);
        Ok(self)
    }

    /// Sends `x-amz-acl: <acl>` with every PUT.
    pub fn with_acl(mut self, acl: &str) -> Store {
        self.acl = Some(acl.to_owned());
        self
    }

    /// Sends `User-Agent: <agent>` with every request.
    pub fn with_user_agent(mut self, agent: &str) -> Store {
        self.user_agent = Some(agent.to_owned());
        self
    }

    /// The URL of an object.
    pub fn url(&self, name: &str) -> String {
        format!("{}://{}/{}/{}{name}", self.scheme, self.host, self.bucket, self.prefix)
    }

    pub async fn put(&self, name: &str, body: impl Into<Body>, content_type: &str) -> Result<(), Error> {
        let mut headers = vec![("content-type", content_type)];
        if let Some(acl) = &self.acl {
            headers.push(("x-amz-acl", acl));
        }
        self.send(Method::PUT, name, &[], &headers, body.into()).await.map(drop)
    }

    /// The object's content, or `None` if it does not exist.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        match self.send(Method::GET, name, &[], &[], Body::from(Vec::new())).await {
            Ok(body) => Ok(Some(body)),
            Err(Error::Status { status: 404, .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        match self.send(Method::DELETE, name, &[], &[], Body::from(Vec::new())).await {
            Ok(_) | Err(Error::Status { status: 404, .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Every object under the store URL, all pages.
    pub async fn list(&self) -> Result<Vec<Object>, Error> {
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("list-type", "2"), ("prefix", self.prefix.as_str())];
            if let Some(token) = &token {
                query.push(("continuation-token", token));
            }
            let body =
                self.send_to(Method::GET, &format!("/{}/", self.bucket), &query, &[], Body::from(Vec::new())).await?;
            let page = Listing::parse(&body).map_err(|detail| Error::Listing {
                url: format!("{}://{}/{}/", self.scheme, self.host, self.bucket),
                detail,
            })?;
            for Contents { key, size } in page.contents {
                objects.push(Object { name: key.strip_prefix(&self.prefix).unwrap_or(&key).to_owned(), size });
            }
            token = page.next_continuation_token;
            if !page.is_truncated || token.is_none() {
                return Ok(objects);
            }
        }
    }

    async fn send(
        &self,
        method: Method,
        name: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Body,
    ) -> Result<Vec<u8>, Error> {
        let path = format!("/{}/{}{name}", self.bucket, self.prefix);
        self.send_to(method, &path, query, headers, body).await
    }

    async fn send_to(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Body,
    ) -> Result<Vec<u8>, Error> {
        let path = sigv4::encode_path(path);
        let query = sigv4::encode_query(query);
        let target = if query.is_empty() { path.clone() } else { format!("{path}?{query}") };
        let url = format!("{}://{}{target}", self.scheme, self.host);
        let mut request = hyper::Request::builder().method(method.clone()).uri(&url).header("host", &self.host);
        if let Some(agent) = &self.user_agent {
            request = request.header("user-agent", agent);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if method == Method::PUT {
            request = request.header("content-length", body.len());
        }
        let (body, payload) = body.into_http();
        if let Some(key) = &self.key {
            let signed = sigv4::Request {
                method: method.as_str(),
                path: &path,
                query: &query,
                host: &self.host,
                headers,
                payload_sha256: &payload,
            };
            let region = sigv4::region(self.host.split(':').next().unwrap_or(&self.host));
            for (name, value) in
                sigv4::sign(&signed, &key.access, &key.secret, &region, time::OffsetDateTime::now_utc())
            {
                request = request.header(name, value);
            }
        }
        let transport = |detail: String| Error::Transport { method: method.clone(), url: url.clone(), detail };
        let request = request.body(body).map_err(|e| transport(e.to_string()))?;
        let response = self.client.request(request).await.map_err(|e| transport(format!("{e:?}")))?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.map_err(|e| transport(e.to_string()))?.to_bytes();
        if !(200..300).contains(&status) {
            let body = String::from_utf8_lossy(&bytes).chars().take(500).collect();
            return Err(Error::Status { method, url, status, body });
        }
        Ok(bytes.to_vec())
    }
}

/// Names resolved from a table first, then by the system.
#[derive(Clone)]
struct Resolver {
    hosts: Arc<BTreeMap<String, IpAddr>>,
    system: GaiResolver,
}

impl Default for Resolver {
    fn default() -> Resolver {
        Resolver { hosts: Arc::default(), system: GaiResolver::new() }
    }
}

type Resolved = Box<dyn Iterator<Item = SocketAddr> + Send>;

impl tower_service::Service<Name> for Resolver {
    type Response = Resolved;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Resolved, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        self.system.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        if let Some(address) = self.hosts.get(name.as_str()) {
            let resolved: Resolved = Box::new(std::iter::once(SocketAddr::new(*address, 0)));
            return Box::pin(std::future::ready(Ok(resolved)));
        }
        let lookup = self.system.call(name);
        Box::pin(async move { Ok(Box::new(lookup.await?) as Resolved) })
    }
}

/// The services' one connector ([`connector`]), resolving with `resolver`.
fn connector(ca_pem: Option<&[u8]>, resolver: Resolver) -> Result<connector::Https<Resolver>, Error> {
    connector::https(ca_pem, resolver, CONNECT_TIMEOUT).map_err(|err| Error::Tls(err.to_string()))
}

/// A page of `ListObjectsV2`'s answer (`ListBucketResult`), the parts we read.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Listing {
    #[serde(default)]
    contents: Vec<Contents>,
    #[serde(default)]
    is_truncated: bool,
    next_continuation_token: Option<String>,
}

#[derive(Debug, PartialEq, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Contents {
    key: String,
    size: u64,
}

impl Listing {
    fn parse(xml: &[u8]) -> Result<Listing, String> {
        let text = std::str::from_utf8(xml).map_err(|err| err.to_string())?;
        // Every field may be absent, so another document (an <Error>) would read as an empty
        // page: the root element is checked first.
        let mut reader = quick_xml::Reader::from_str(text);
        let root = loop {
            match reader.read_event().map_err(|err| err.to_string())? {
                quick_xml::events::Event::Start(start) => break start.local_name().as_ref().to_vec(),
                quick_xml::events::Event::Eof => return Err("no element".into()),
                _ => {}
            }
        };
        if root != b"ListBucketResult" {
            return Err(format!("the root element is <{}>", String::from_utf8_lossy(&root)));
        }
        quick_xml::de::from_str(text).map_err(|err| err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_files_and_finds_them_like_cockpit() {
        let dir = std::env::temp_dir().join(format!("s3-keys-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("s3.us-east-1.amazonaws.com"), "AKID SECRET token\n").unwrap();
        let key = Key::for_host(&dir, "cockpit-ci-logs.s3.us-east-1.amazonaws.com").unwrap();
        assert_eq!((key.access.as_str(), key.secret.as_str()), ("AKID", "SECRET"));
        // As Cockpit's lookup: only names with a dot are tried, so `localhost` never is.
        std::fs::write(dir.join("localhost"), "A S\n").unwrap();
        assert!(Key::for_host(&dir, "localhost").is_none());
        std::fs::write(dir.join("localhost.localdomain"), "B T\n").unwrap();
        assert_eq!(Key::for_host(&dir, "localhost.localdomain").unwrap().access, "B");
        assert!(Key::for_host(&dir, "s3.localdomain").is_none(), "`localdomain` has no dot: not tried");
        assert!(Key::parse("only-one-field").is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reads_a_listing_page_as_s3_writes_it() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>logs</Name><Prefix>ci/</Prefix>
<KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated>
<Contents><Key>ci/a&amp;b &lt;c&gt;.txt</Key><LastModified>2026-11-30T00:00:00.000Z</LastModified>
<ETag>&quot;x&quot;</ETag><Size>12</Size><StorageClass>STANDARD</StorageClass></Contents>
<Contents><Key>ci/log</Key><Size>0</Size></Contents>
<NextContinuationToken>a&amp;b</NextContinuationToken></ListBucketResult>"#;
        let page = Listing::parse(xml).unwrap();
        let keys: Vec<(&str, u64)> = page.contents.iter().map(|c| (c.key.as_str(), c.size)).collect();
        assert_eq!(keys, [("ci/a&b <c>.txt", 12), ("ci/log", 0)]);
        assert!(page.is_truncated);
        assert_eq!(page.next_continuation_token.as_deref(), Some("a&b"));
        let empty = Listing::parse(b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>").unwrap();
        assert!(empty.contents.is_empty() && !empty.is_truncated);
        let error = Listing::parse(b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code></Error>").unwrap_err();
        assert_eq!(error, "the root element is <Error>");
    }

    #[test]
    fn splits_store_urls() {
        let store = Store::new("https://localhost:9000/logs/", None, None).unwrap();
        assert_eq!(store.url("pull-1/log"), "https://localhost:9000/logs/pull-1/log");
        let prefixed = Store::new("http://127.0.0.1:9000/logs/ci", None, None).unwrap();
        assert_eq!(prefixed.url("log"), "http://127.0.0.1:9000/logs/ci/log");
        for bad in ["localhost:9000/logs", "https://localhost:9000/", "ftp://host/bucket/"] {
            assert!(Store::new(bad, None, None).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod resolving_tests {
    use super::*;

    #[tokio::test]
    async fn requests_carry_the_user_agent() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/logs/", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = vec![0; 4096];
            let read = stream.read(&mut head).await.unwrap();
            stream.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await.unwrap();
            String::from_utf8_lossy(&head[..read]).into_owned()
        });
        let store = Store::new(&url, None, None).unwrap().with_user_agent("job-runner (test)");
        assert_eq!(store.get("x").await.unwrap(), None);
        let head = server.await.unwrap().to_ascii_lowercase();
        assert!(head.contains("\r\nuser-agent: job-runner (test)\r\n"), "{head}");
    }

    #[tokio::test]
    async fn a_name_from_the_table_is_not_asked_of_the_system() {
        let hosts = [("no-such-name.localdomain".to_owned(), IpAddr::from([127, 0, 0, 1]))].into();
        let store =
            Store::new("https://no-such-name.localdomain:9/logs/", None, None).unwrap().resolving(&hosts).unwrap();
        let err = store.get("x").await.unwrap_err().to_string();
        assert!(!err.contains("dns error"), "{err}");
    }
}
