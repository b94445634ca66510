//! The client side of the admin API, for `brokerctl` (blocking, std only).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Why a request failed before an HTTP answer arrived.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker's admin API could not be reached.
    #[error("cannot reach the broker's admin API at {addr}: {source} (is the broker running?)")]
    Connect {
        /// Address tried.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The answer was not HTTP.
    #[error("bad answer from the admin API: {0}")]
    Protocol(String),
}

/// Sends one request; returns the status code and body.
pub fn request(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<(u16, String), ClientError> {
    let connect = |source| ClientError::Connect { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(connect)?;
    stream.set_read_timeout(Some(timeout)).map_err(connect)?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).map_err(connect)?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ClientError::Protocol("no header end".into()))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Protocol(format!("bad status line {head:?}")))?;
    Ok((status, body.to_owned()))
}
