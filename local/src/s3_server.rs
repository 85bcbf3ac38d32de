//! The in-process S3 store of the local deployment: s3s over the run directory, on 127.0.0.1,
//! HTTPS with the generated S3 certificate (or plain HTTP for tests). Writes need a valid
//! Signature V4 of the key in the secrets; as on Cockpit's test store, both buckets are
//! anonymous-download (objects read and buckets listed without a key), except objects uploaded
//! with a restrictive ACL (`authenticated-read`, `private`). Object keys are checked before any
//! decision: a key with an empty, `.` or `..` segment (in any encoding) is refused, so that a
//! key names one object only, and its ACL.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::SimpleAuth;
use s3s::path::S3Path;
use s3s::service::S3ServiceBuilder;
use s3s::{S3Result, s3_error};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::secrets::{S3_HOST, Secrets};

/// The buckets Cockpit's deployment has: job logs and VM images.
pub const BUCKETS: [&str; 2] = ["logs", "images"];

/// A running store. Dropping it stops the server and closes its connections.
pub struct S3Server {
    address: SocketAddr,
    /// The CA of its certificate, when it serves HTTPS.
    ca: Option<Vec<u8>>,
    /// Stops the accept loop and every connection when the server is dropped.
    _stop: DropGuard,
}

#[derive(Debug, thiserror::Error)]
pub enum S3ServerError {
    #[error("S3 store: {what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("S3 store: no usable key in {}: expected `ACCESS SECRET`", .0.display())]
    Key(std::path::PathBuf),
    #[error("S3 store: TLS set-up failed: {0}")]
    Tls(String),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> S3ServerError {
    let what = what.into();
    move |source| S3ServerError::Io { what, source }
}

impl S3Server {
    /// Starts the store with its data in `root` (the buckets are created there).
    pub async fn start(root: &Path, secrets: &Secrets, tls: bool) -> Result<S3Server, S3ServerError> {
        for bucket in BUCKETS {
            std::fs::create_dir_all(root.join(bucket)).map_err(io_error(format!("create {}", root.display())))?;
        }
        let key_file = secrets.s3_keys_dir().join(S3_HOST);
        let key = std::fs::read_to_string(&key_file)
            .ok()
            .and_then(|text| s3::Key::parse(&text))
            .ok_or_else(|| S3ServerError::Key(key_file.clone()))?;
        let filesystem = s3s_fs::FileSystem::new(root).map_err(|e| S3ServerError::Io {
            what: format!("open {}", root.display()),
            source: std::io::Error::other(format!("{e:?}")),
        })?;
        let mut builder = S3ServiceBuilder::new(filesystem);
        builder.set_auth(SimpleAuth::from_single(key.access, key.secret));
        builder.set_access(Policy::default());
        let service = builder.build();

        let acceptor = if tls { Some(tls_acceptor(secrets)?) } else { None };
        let ca = match tls {
            true => Some(
                std::fs::read(secrets.ca_cert()).map_err(io_error(format!("read {}", secrets.ca_cert().display())))?,
            ),
            false => None,
        };
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.map_err(io_error("listen"))?;
        let address = listener.local_addr().map_err(io_error("listen"))?;
        // Stopping closes the open connections too: clients keep theirs alive between requests.
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    () = stopped.cancelled() => return,
                };
                let stopping = stopped.clone();
                let (service, acceptor) = (service.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let http = hyper::server::conn::http1::Builder::new();
                    let serve = async {
                        let _ = match acceptor {
                            Some(acceptor) => match acceptor.accept(stream).await {
                                Ok(stream) => http.serve_connection(TokioIo::new(stream), service).await,
                                Err(_) => return,
                            },
                            None => http.serve_connection(TokioIo::new(stream), service).await,
                        };
                    };
                    tokio::select! {
                        () = serve => {}
                        () = stopping.cancelled() => {}
                    }
                });
            }
        });
        Ok(S3Server { address, ca, _stop: stop.drop_guard() })
    }

    /// The store's base URL, by the name Cockpit's tools accept ([`S3_HOST`], under
    /// `.localdomain`, whose key file they find and to which they apply the custom CA); a
    /// bucket's store URL is this plus `<bucket>/`. Plain HTTP, for tests, is reached by address.
    pub fn url(&self) -> String {
        match self.ca {
            Some(_) => format!("https://{S3_HOST}:{}/", self.address.port()),
            None => format!("http://{}/", self.address),
        }
    }

    /// The base URL people on this machine read logs at (status links): `localhost`, which
    /// every machine resolves; the certificate names both.
    pub fn link_url(&self) -> String {
        match self.ca {
            Some(_) => format!("https://localhost:{}/", self.address.port()),
            None => self.url(),
        }
    }

    /// Where clients on this machine find [`S3_HOST`]: this machine's resolver need not know it.
    pub fn hosts(&self) -> BTreeMap<String, IpAddr> {
        [(S3_HOST.to_owned(), IpAddr::V4(Ipv4Addr::LOCALHOST))].into()
    }

    /// A client of `path` (a bucket, and a prefix ending in `/`) of this store, signing with
    /// `key` (anonymous without), trusting the store's CA, reaching it by [`S3Server::url`].
    pub fn store(&self, path: &str, key: Option<s3::Key>) -> Result<s3::Store, s3::Error> {
        s3::Store::new(&format!("{}{path}", self.url()), key, self.ca.as_deref())?.resolving(&self.hosts())
    }
}

fn tls_acceptor(secrets: &Secrets) -> Result<tokio_rustls::TlsAcceptor, S3ServerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = secrets.s3_server_dir();
    let tls = |e: &dyn std::fmt::Display| S3ServerError::Tls(e.to_string());
    let chain = CertificateDer::pem_file_iter(dir.join("s3-server.pem"))
        .map_err(|e| tls(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(&e))?;
    let key = PrivateKeyDer::from_pem_file(dir.join("s3-server.key")).map_err(|e| tls(&e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| tls(&e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Who may do what: signed requests anything; anonymous ones read objects and list buckets,
/// unless an object was uploaded with a restrictive ACL.
#[derive(Default)]
struct Policy {
    /// `x-amz-acl` of each object as uploaded, by bucket and key.
    acls: Mutex<HashMap<(String, String), String>>,
}

impl Policy {
    fn anonymous_read(&self, bucket: &str, key: &str) -> bool {
        let acls = self.acls.lock().expect("ACL lock");
        match acls.get(&(bucket.to_owned(), key.to_owned())).map(String::as_str) {
            None | Some("public-read") | Some("public-read-write") => true,
            Some(_) => false,
        }
    }
}

/// Whether `key` names an object one way only: no empty, `.` or `..` segment (s3s hands over
/// keys percent-decoded, so `%2E%2E` is `..` here). s3s-fs would resolve such a key to a file
/// of another name, or of another bucket, than the one access was decided for.
pub fn is_plain_key(key: &str) -> bool {
    key.split('/').all(|segment| !matches!(segment, "" | "." | ".."))
}

#[async_trait::async_trait]
impl S3Access for Policy {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let operation = cx.s3_op().name();
        let denied = || Err(s3_error!(AccessDenied, "without a key, objects can only be read and buckets listed"));
        match cx.s3_path() {
            S3Path::Object { key, .. } if !is_plain_key(key) => {
                Err(s3_error!(InvalidArgument, "an object key may not have empty, \".\" or \"..\" segments"))
            }
            S3Path::Object { bucket, key } => {
                let object = (bucket.to_string(), key.to_string());
                if cx.credentials().is_some() {
                    let mut acls = self.acls.lock().expect("ACL lock");
                    match operation {
                        "PutObject" => match cx.headers().get("x-amz-acl").and_then(|value| value.to_str().ok()) {
                            Some(acl) => acls.insert(object, acl.to_owned()),
                            None => acls.remove(&object),
                        },
                        "DeleteObject" => acls.remove(&object),
                        _ => None,
                    };
                    return Ok(());
                }
                match operation {
                    "GetObject" | "HeadObject" if self.anonymous_read(&object.0, &object.1) => Ok(()),
                    _ => denied(),
                }
            }
            _ if cx.credentials().is_some() => Ok(()),
            S3Path::Bucket { .. } if matches!(operation, "ListObjects" | "ListObjectsV2" | "HeadBucket") => Ok(()),
            _ => denied(),
        }
    }
}
