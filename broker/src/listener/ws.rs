//! MQTT over WebSocket (ws / wss listeners), with tokio-tungstenite.
//!
//! [`accept`] performs the HTTP upgrade: the request path must be the listener's `ws_path`
//! (default `/mqtt`, else 404), the subprotocol `mqtt` (or the older `mqttv3.1`) is echoed back,
//! and, when the listener sits behind a proxy, the client address is taken from the first entry
//! of `X-Forwarded-For`. [`WsStream`] then presents the WebSocket as a byte stream: MQTT
//! packets may span binary frames or share one, exactly as the codec expects from TCP; each
//! batch the connection writes goes out as one binary frame. A text frame is a protocol error
//! ([MQTT-6.0.0-1]).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A WebSocket carrying MQTT, as a byte stream.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    pending: Bytes,
}

/// Bytes tungstenite reads the socket with. It allocates this buffer for every connection up
/// front, 128 KiB by default: 136 KiB per idle WebSocket connection where an idle TCP one costs
/// under 2 KiB. The broker's own read buffer takes 4 KiB at a time too.
const WS_READ_BUFFER: usize = 4 * 1024;

/// Upgrades `stream` to a WebSocket. Returns the stream and the forwarded client address, if
/// `trust_forwarded_for` and the request carried one.
///
/// A frame or message larger than `max_packet_size` plus 64 KiB is refused (tungstenite would
/// otherwise buffer up to 64 MiB of one before the broker sees a byte of it, outside
/// `limits.max_incoming_bytes`); MQTT packets may span frames, and a frame may hold several
/// small packets.
// The handshake callback's error type is tungstenite's (a whole HTTP response).
#[allow(clippy::result_large_err)]
pub async fn accept<S>(
    stream: S,
    path: &str,
    trust_forwarded_for: bool,
    max_packet_size: usize,
) -> io::Result<(WsStream<S>, Option<IpAddr>)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut forwarded = None;
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != path {
            let mut e =
                ErrorResponse::new(Some(format!("no MQTT endpoint at {}", req.uri().path())));
            *e.status_mut() = StatusCode::NOT_FOUND;
            return Err(e);
        }
        let offered: Vec<String> = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|p| p.trim().to_owned()))
            .collect();
        if let Some(p) = ["mqtt", "mqttv3.1"]
            .iter()
            .find(|p| offered.iter().any(|o| o == *p))
        {
            resp.headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static(p));
        }
        if trust_forwarded_for {
            forwarded = req
                .headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|ip| ip.trim().parse().ok());
        }
        Ok(resp)
    };
    let max_frame = max_packet_size.saturating_add(64 * 1024);
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .max_frame_size(Some(max_frame))
        .max_message_size(Some(max_frame));
    let inner = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config))
        .await
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    Ok((
        WsStream {
            inner,
            pending: Bytes::new(),
        },
        forwarded,
    ))
}

fn to_io(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(e.to_string())
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(to_io(e))),
                Poll::Ready(Some(Ok(Message::Binary(data)))) => self.pending = data,
                Poll::Ready(Some(Ok(Message::Close(_)))) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Ok(Message::Text(_)))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "[MQTT-6.0.0-1] MQTT over WebSocket must use binary frames",
                    )))
                }
                // Pings are answered by tungstenite; pongs and raw frames carry no MQTT.
                Poll::Ready(Some(Ok(_))) => {}
            }
        }
    }
}

/// A WebSocket stream cannot tell whether a whole frame waits: it reads into a buffer.
impl<S: AsyncRead + AsyncWrite + Unpin + Send> crate::connection::Transport for WsStream<S> {}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(to_io(e))),
            Poll::Ready(Ok(())) => {}
        }
        Pin::new(&mut self.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(to_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx).map_err(to_io)
    }
}

/// The peer address to report: the forwarded one (same port) when trusted and present.
pub fn effective_peer(peer: SocketAddr, forwarded: Option<IpAddr>) -> SocketAddr {
    forwarded.map_or(peer, |ip| SocketAddr::new(ip, peer.port()))
}
