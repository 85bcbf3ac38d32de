//! Free TCP ports on the loopback interface.

use std::io;
use std::net::{Ipv4Addr, TcpListener};

/// A port on 127.0.0.1 that nothing listens on right now (the kernel's pick).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}
