//! The services' one HTTP connector: hyper-util's, with TLS by rustls (our CA's or the
//! system's roots), whose connections never deliver a request late.
//!
//! Why: a worker cut off the network may have a status or a log write in flight, its bytes in
//! its kernel's send queue, when it gives the job up; the broker then gives the job to another
//! worker. Were those bytes retransmitted once the link heals, GitHub would get the first
//! worker's status after the second one's (and S3 its stale log). So the connections made
//! here give up on bytes not acknowledged within [`UNACKNOWLEDGED_WITHIN`] (`TCP_USER_TIMEOUT`,
//! which holds for a closed socket too), and close abortively (`SO_LINGER` 0: what is unsent
//! is discarded, and the peer gets a reset), so that a request whose process gave it up or
//! ended never arrives afterwards. Both are a socket option each; hyper-util sets the first,
//! and this crate the second once connected (it has no setting for it).

use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::GaiResolver;
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpStream;

/// The longest a request's bytes may go unacknowledged before its connection is given up:
/// well within the 30 s a broker takes to give a silent worker's jobs to others.
pub const UNACKNOWLEDGED_WITHIN: Duration = Duration::from_secs(10);

/// A TCP connection made by [`HttpConnector`], made to close abortively.
pub type Tcp<R = GaiResolver> =
    tower::util::MapResponse<HttpConnector<R>, fn(TokioIo<TcpStream>) -> TokioIo<TcpStream>>;

/// HTTP or HTTPS over [`Tcp`].
pub type Https<R = GaiResolver> = HttpsConnector<Tcp<R>>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot set up TLS: {0} (the CA certificate must be PEM)")]
    Tls(String),
    #[error("no system CA certificates to verify servers with: install ca-certificates (or set SSL_CERT_FILE)")]
    NoSystemRoots,
}

/// A connector trusting `ca_pem` for HTTPS when given (our CA), the system's roots otherwise,
/// resolving names with `resolver`, giving up on connecting after `connect_timeout`.
pub fn https<R>(ca_pem: Option<&[u8]>, resolver: R, connect_timeout: Duration) -> Result<Https<R>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                roots.add(cert.map_err(|e| Error::Tls(e.to_string()))?).map_err(|e| Error::Tls(e.to_string()))?;
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if roots.is_empty() {
                return Err(Error::NoSystemRoots);
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new_with_resolver(resolver);
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_tcp_user_timeout(Some(UNACKNOWLEDGED_WITHIN));
    let tcp: Tcp<R> = tower::util::MapResponse::new(http, abortive);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp))
}

/// Makes `connection` close abortively. A connection that cannot be made so is used all the
/// same: the user timeout still bounds how late its bytes can arrive.
fn abortive(connection: TokioIo<TcpStream>) -> TokioIo<TcpStream> {
    let _ = connection.inner().set_zero_linger();
    connection
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options are on every connection made: a peer's view of them is the test in
    /// `local/tests/github.rs`, across a partition.
    #[tokio::test]
    async fn connections_close_abortively_and_give_up_on_unacknowledged_bytes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move { listener.accept().await.unwrap() });
        let mut connector = https(None, GaiResolver::new(), Duration::from_secs(5)).unwrap();
        let connection =
            tower::ServiceExt::oneshot(&mut connector, format!("http://{address}/").parse().unwrap()).await.unwrap();
        let hyper_rustls::MaybeHttpsStream::Http(tcp) = connection else { panic!("plain HTTP asked") };
        let socket = tcp.inner();
        assert_eq!(socket.linger().unwrap(), Some(Duration::ZERO));
        let fd = std::os::fd::AsFd::as_fd(socket);
        let user_timeout = rustix::net::sockopt::tcp_user_timeout(fd).unwrap();
        assert_eq!(user_timeout, UNACKNOWLEDGED_WITHIN.as_millis() as u32);
        accept.await.unwrap();
    }
}
