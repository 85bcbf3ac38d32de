//! A network link that can be cut: a TCP relay on 127.0.0.1 in front of a server, which, cut,
//! stops carrying bytes either way while every connection stays open (no FIN, no RST), as a
//! partition between two hosts does; restored, it carries again what was held back. The
//! partition chaos run puts one in front of the broker for each worker.
//!
//! Written here because no maintained crate relays TCP with a switch to go silent: fault
//! proxies (toxiproxy and the like) are separate servers speaking their own API.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

/// A running link to one server; dropping it closes every connection through it.
pub struct Link {
    address: SocketAddr,
    cut: watch::Sender<bool>,
    _relay: AbortOnDropHandle<()>,
}

impl Link {
    /// A link to `server`, taking connections on a free port of 127.0.0.1.
    pub async fn start(server: SocketAddr) -> std::io::Result<Link> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
        let (cut, is_cut) = watch::channel(false);
        let relay = tokio::spawn(async move {
            // Every connection's relay, stopped with the link.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let is_cut = is_cut.clone();
                connections.spawn(async move {
                    let Ok(upstream) = TcpStream::connect(server).await else { return };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = upstream.into_split();
                    tokio::join!(
                        carry(client_read, server_write, is_cut.clone()),
                        carry(server_read, client_write, is_cut),
                    );
                });
                // Ended relays are not kept.
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Link { address, cut, _relay: AbortOnDropHandle::new(relay) })
    }

    /// Where clients connect instead of the server.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops carrying anything, either way, on every connection, new ones included.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Carries again, what was held back first.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }
}

/// Copies `from` to `to` while the link is not cut; an end of `from` is passed on as one.
async fn carry(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut is_cut: watch::Receiver<bool>,
) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        // Nothing is read while cut: what the sender sends waits in the kernel's buffers, as
        // on a silent link, and its sender's TCP retries.
        if is_cut.wait_for(|cut| !cut).await.is_err() {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            // Cut while waiting: read nothing until restored.
            _ = is_cut.wait_for(|cut| *cut) => continue,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // Read just before a cut: held until the link is back.
        if is_cut.wait_for(|cut| !cut).await.is_err() || to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_cut_link_carries_nothing_and_closes_nothing_until_restored() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let link = Link::start(server.local_addr().unwrap()).await.unwrap();
        let mut client = TcpStream::connect(link.address()).await.unwrap();
        let (mut served, _) = server.accept().await.unwrap();
        client.write_all(b"one").await.unwrap();
        let mut got = [0; 3];
        served.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one");

        link.cut();
        client.write_all(b"two").await.unwrap();
        served.write_all(b"back").await.unwrap();
        let mut byte = [0; 1];
        // Neither side hears anything, nor an end.
        assert!(tokio::time::timeout(Duration::from_millis(300), served.read(&mut byte)).await.is_err());
        assert!(tokio::time::timeout(Duration::from_millis(300), client.read(&mut byte)).await.is_err());

        link.restore();
        served.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"two");
        let mut back = [0; 4];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }
}
