//! The command line's side of the admin listener: one HTTP/1.1 request to
//! `admin.listen`, with the bearer token when the config has one. Blocking
//! and dependency-free on purpose: it runs in `sessiongate health` inside a
//! container's health check, where no runtime is needed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::config::Config;

/// Why an admin call failed, in words for the terminal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("admin.listen is \"off\": there is no admin listener to ask")]
    Off,
    #[error("cannot reach the admin listener at {addr}: {source}")]
    Unreachable {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the admin listener at {addr} sent a malformed answer")]
    Malformed { addr: SocketAddr },
}

/// A response: status and body.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// Sends `method path` to the admin listener and reads the whole answer.
pub fn call(config: &Config, method: &str, path: &str) -> Result<Answer, Error> {
    let mut addr = config.admin.listen.ok_or(Error::Off)?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let timeout = Duration::from_secs(5);
    let auth = config
        .admin
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {}\r\n", t.as_str()))
        .unwrap_or_default();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    let unreachable = |source| Error::Unreachable { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(unreachable)?;
    stream.write_all(request.as_bytes()).map_err(unreachable)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(unreachable)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(Error::Malformed { addr })?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(Error::Malformed { addr })?;
    Ok(Answer {
        status,
        body: body.to_owned(),
    })
}
