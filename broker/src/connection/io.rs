//! The socket side of a connection: the [`Transport`] it runs on and [`poll_io`], which writes
//! and reads in one future.
//!
//! An idle connection holds no buffers: the read buffer is allocated when the transport says
//! input is waiting ([`Transport::poll_read_ready`]; plain TCP can tell, TLS and WebSocket
//! streams cannot and read into a buffer), and both buffers are given back once empty (see the
//! driver). That is most of what a connection that sits idle for hours costs.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes reserved for reading when input is waiting and the read buffer has no room.
pub const READ_CHUNK: usize = 4 * 1024;

/// Bytes of read buffer a connection holds without charge against `limits.max_incoming_bytes`.
pub const INCOMING_ALLOWANCE: usize = 64 * 1024;

/// What one connection holds of its client's input beyond [`INCOMING_ALLOWANCE`] — its read
/// buffer, the topics the client's topic aliases name, its will and user name — charged to
/// the broker-wide gauge
/// `incoming_bytes`, bounded by `limits.max_incoming_bytes`.
///
/// Topic aliases: a v5 client may set `limits.topic_alias_maximum` (64) of them, each naming a
/// topic of up to 64 KiB, held as long as it stays connected — 300 connections doing so held
/// 1.1 GB. They count with the buffer, so ordinary aliases stay within the allowance.
///
/// A packet is buffered whole before it is acted on, so a client that sends all but the last
/// byte of a large packet holds that much of the broker's memory for as long as it likes; many
/// clients doing so at once would exhaust it. Each connection charges what its buffer holds
/// past the allowance (measured again once what arrived is decoded, and when the buffer is
/// given back), and a connection whose buffer would take the total past the limit is closed.
/// Ordinary packets never reach the allowance, so only large packets still arriving compete
/// for the budget, and the shared counter is touched only when a charge changes.
#[derive(Debug, Default)]
pub struct IncomingCharge(usize);

impl IncomingCharge {
    /// Charges a read buffer of `capacity` bytes to `gauge`. False, with nothing more
    /// charged, when that would take the gauge past `max` (0 = no limit).
    pub fn set(&mut self, gauge: &AtomicU64, capacity: usize, max: usize) -> bool {
        let want = capacity.saturating_sub(INCOMING_ALLOWANCE);
        if want == self.0 {
            // The common case, every turn of every connection: no shared counter touched.
            return true;
        }
        if want < self.0 {
            gauge.fetch_sub((self.0 - want) as u64, Ordering::Relaxed);
            self.0 = want;
            return true;
        }
        let more = (want - self.0) as u64;
        let before = gauge.fetch_add(more, Ordering::Relaxed);
        if max > 0 && before + more > max as u64 {
            gauge.fetch_sub(more, Ordering::Relaxed);
            return false;
        }
        self.0 = want;
        true
    }

    /// Lowers the charge to a read buffer of `capacity` bytes, if that is less.
    pub fn shrink(&mut self, gauge: &AtomicU64, capacity: usize) {
        if capacity.saturating_sub(INCOMING_ALLOWANCE) < self.0 {
            self.set(gauge, capacity, 0);
        }
    }

    /// Gives the whole charge back.
    pub fn clear(&mut self, gauge: &AtomicU64) {
        self.set(gauge, 0, 0);
    }
}

/// A byte stream an MQTT connection runs on.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {
    /// Ready once reading would not block, so that an idle connection can wait for input
    /// without holding a read buffer. The default (for streams that cannot tell) is "now":
    /// such a connection waits with a buffer.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
    }

    /// Closing the stream ends it for the peer: a TCP socket sends its FIN when it is closed.
    /// Streams that must say goodbye first (TLS's close_notify, WebSocket's close frame) are
    /// shut down before they are dropped; for a plain socket that would be one more system
    /// call per connection (2 % of a connection's CPU time in a connect-and-leave profile).
    const ENDS_ON_CLOSE: bool = false;
}

impl Transport for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }

    const ENDS_ON_CLOSE: bool = true;
}

/// In-memory pipes (tests, the fuzz target).
impl Transport for tokio::io::DuplexStream {}

/// Gives a buffer's memory back when it holds nothing.
pub fn release_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = BytesMut::new();
    }
}

/// What one wake-up of [`poll_io`] did.
pub struct IoEvent {
    /// Bytes read into the read buffer (`Some(0)`: the peer closed), if it read.
    pub read: Option<usize>,
    /// Bytes written from the write buffer.
    pub written: usize,
}

/// Writes as much of `wbuf` as the socket takes (then flushes), and reads if `reading`: one
/// future that borrows the stream once, so reading and writing proceed together and neither
/// waits for the other. Ready when something was read or written.
pub fn poll_io<'a, S>(
    stream: &'a mut S,
    wbuf: &'a mut BytesMut,
    need_flush: &'a mut bool,
    rbuf: &'a mut BytesMut,
    reading: bool,
) -> impl Future<Output = std::io::Result<IoEvent>> + 'a
where
    S: Transport,
{
    std::future::poll_fn(move |cx| {
        let mut written = 0;
        while !wbuf.is_empty() {
            match Pin::new(&mut *stream).poll_write(cx, wbuf) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    wbuf.advance(n);
                    written += n;
                    *need_flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        if wbuf.is_empty() && *need_flush {
            match Pin::new(&mut *stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => *need_flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        // This connection has written what it could: a publisher on this worker waiting for
        // its deliveries to go first may answer now (see `order`).
        super::order::let_answers_go();
        if reading && rbuf.len() == rbuf.capacity() {
            // No room: take memory only once there is something to read.
            match stream.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => rbuf.reserve(READ_CHUNK),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if reading && rbuf.len() < rbuf.capacity() {
            if let Poll::Ready(result) = pin!(stream.read_buf(&mut *rbuf)).poll(cx) {
                return Poll::Ready(result.map(|n| IoEvent {
                    read: Some(n),
                    written,
                }));
            }
        }
        if written > 0 {
            Poll::Ready(Ok(IoEvent {
                read: None,
                written,
            }))
        } else {
            Poll::Pending
        }
    })
}

/// How long a connection the broker closes keeps reading, at most (see [`linger`]).
pub const LINGER_TIME: Duration = Duration::from_secs(2);

/// How many bytes a closing connection reads and discards, at most (see [`linger`]).
pub const LINGER_BYTES: usize = 1024 * 1024;

/// A lingering close: ends the broker's side of the stream (FIN, or TLS close_notify), then
/// reads and discards what the client still sends until it closes too, for at most
/// [`LINGER_TIME`] and [`LINGER_BYTES`].
///
/// Closing a socket that has unread input makes the kernel answer with a reset, and a reset
/// makes the client's kernel throw away what it has received but not yet read: the DISCONNECT
/// (or CONNACK) that says why the connection ends would be lost exactly when a client was still
/// sending, for example one that went past Receive Maximum. Web servers linger for the same
/// reason. The connection's permit is held meanwhile, so lingering connections still count
/// towards `max_connections`.
pub async fn linger<S>(stream: &mut S, buf: &mut BytesMut)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(LINGER_TIME, async {
        // Already ended when the broker said goodbye; a second end is harmless (WebSocket
        // reports it as an error, and reading still works).
        let _ = stream.shutdown().await;
        let mut discarded = 0;
        while discarded < LINGER_BYTES {
            buf.clear();
            if buf.capacity() == 0 {
                buf.reserve(READ_CHUNK);
            }
            match stream.read_buf(buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
    *buf = BytesMut::new();
}
