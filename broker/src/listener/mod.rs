//! Listeners: bind the configured addresses and accept connections.
//!
//! Each accepted socket needs a permit from the broker-wide semaphore
//! (`limits.max_connections`) and one from its listener's (`listener.max_connections`); without
//! both it is closed at once, before any byte is read, and counted in `connections_refused`.
//! Accept errors (e.g. out of file descriptors) back off exponentially up to one second instead
//! of spinning. On shutdown the accept loops stop first; the connections then close themselves.
//!
//! After binding, the actual addresses (useful with port 0) are written to
//! `<data_dir>/listeners.json` for tools and tests.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub mod tls;
pub mod ws;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use crate::broker::Broker;
use crate::config::{ListenerConfig, ListenerKind};
use crate::connection::{serve, ConnInfo, Transport};
use crate::metrics;

/// A listener whose socket is bound.
pub struct Bound {
    /// Its configuration.
    pub config: ListenerConfig,
    /// The address actually bound.
    pub addr: SocketAddr,
    socket: TcpListener,
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("name", &self.config.name)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The socket could not be bound.
    #[error("cannot bind listener {name:?} on {addr}: {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// Configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Its TLS files are missing or invalid.
    #[error("listener {name:?}: {source}")]
    Tls {
        /// Listener name.
        name: String,
        /// What is wrong, naming the file.
        source: tls::TlsError,
    },
}

/// Accept backlog: large enough that a burst of connections (thousands of devices coming back
/// after an outage) waits in the kernel's queue instead of being dropped and retried a second
/// later. The kernel caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Binds every configured listener.
pub async fn bind_all(configs: &[ListenerConfig]) -> Result<Vec<Bound>, BindError> {
    let mut bound = Vec::with_capacity(configs.len());
    for config in configs {
        let tls = match (&config.tls, config.kind.uses_tls()) {
            (Some(t), true) => Some(tls::acceptor(t).map_err(|source| BindError::Tls {
                name: config.name.clone(),
                source,
            })?),
            _ => None,
        };
        let bind_err = |source| BindError::Bind {
            name: config.name.clone(),
            addr: config.bind,
            source,
        };
        let socket = listen(config.bind).map_err(bind_err)?;
        let addr = socket.local_addr().map_err(bind_err)?;
        bound.push(Bound {
            config: config.clone(),
            addr,
            socket,
            tls,
        });
    }
    Ok(bound)
}

/// The bound addresses of the listeners, kept for `listeners.json`.
#[derive(Debug, Clone)]
pub struct Addresses(Vec<(String, &'static str, SocketAddr)>);

impl Addresses {
    /// Records name, kind and address of each bound listener.
    pub fn of(bound: &[Bound]) -> Addresses {
        Addresses(
            bound
                .iter()
                .map(|b| (b.config.name.clone(), b.config.kind.name(), b.addr))
                .collect(),
        )
    }
}

/// Writes `<data_dir>/listeners.json`: one object per listener with name, kind and address,
/// then the admin API (`kind = "admin"`) if it is served. Written once everything accepts, so
/// its presence means the broker is ready.
pub fn write_address_file(
    data_dir: &Path,
    addresses: &Addresses,
    admin: Option<SocketAddr>,
) -> std::io::Result<()> {
    let mut list: Vec<serde_json::Value> = addresses
        .0
        .iter()
        .map(|(name, kind, addr)| serde_json::json!({"name": name, "kind": kind, "addr": addr.to_string()}))
        .collect();
    if let Some(addr) = admin {
        list.push(serde_json::json!({"name": "admin", "kind": "admin", "addr": addr.to_string()}));
    }
    let text = serde_json::to_string_pretty(&list).map_err(std::io::Error::other)?;
    let tmp = data_dir.join("listeners.json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, data_dir.join("listeners.json"))
}

/// `max_connection_rate`: a token bucket of one second's worth of connections, refilled
/// continuously. The accept loop waits for a token before it accepts, so connections beyond
/// the rate wait in the kernel's accept queue (and, when that is full, clients retry their SYN).
struct AcceptPace {
    /// Connections per second; 0 = no limit.
    rate: u32,
    tokens: f64,
    at: tokio::time::Instant,
}

impl AcceptPace {
    fn new(rate: u32) -> AcceptPace {
        AcceptPace {
            rate,
            tokens: f64::from(rate),
            at: tokio::time::Instant::now(),
        }
    }

    /// Waits until one more connection may be accepted, and takes it.
    async fn wait(&mut self) {
        if self.rate == 0 {
            return;
        }
        let rate = f64::from(self.rate);
        let now = tokio::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(rate);
        self.at = now;
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / rate);
            tokio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.at = tokio::time::Instant::now();
        }
        self.tokens -= 1.0;
    }
}

/// Logs connections refused for the connection limit: the first at once, then at most one line
/// per [`RefusalLog::EVERY`] with how many were refused meanwhile. A client reconnecting in a
/// loop against a full broker would otherwise write a warning per attempt, thousands a second.
#[derive(Default)]
struct RefusalLog {
    next: Option<std::time::Instant>,
    held: u64,
}

impl RefusalLog {
    const EVERY: Duration = Duration::from_secs(10);

    fn refused(&mut self, listener: &str, peer: std::net::SocketAddr) {
        let now = std::time::Instant::now();
        if self.next.is_some_and(|next| now < next) {
            self.held += 1;
            return;
        }
        let also = std::mem::take(&mut self.held);
        self.next = Some(now + Self::EVERY);
        tracing::warn!(listener, %peer, refused_since_last_report = also,
            "connection refused: connection limit reached (logged at most every 10 s; see the connections_refused metric)");
    }
}

/// Accepts connections on `bound` until the broker shuts down.
pub async fn run(broker: Arc<Broker>, bound: Bound) {
    let permits = Arc::new(Permits {
        global: broker.connection_permits.clone(),
        local: Semaphore::new(bound.config.max_connections),
    });
    let name: Arc<str> = Arc::from(bound.config.name.as_str());
    let shared = Arc::new(ListenerShared {
        kind: bound.config.kind,
        tls: bound.tls.clone(),
        ws_path: bound.config.ws_path.clone(),
        forwarded: bound.config.proxy_forwarded_for,
        timeout: Duration::from_secs(broker.config.limits.connect_timeout),
    });
    let mut shutdown = broker.shutdown_signal();
    let mut backoff = Duration::from_millis(5);
    let mut refusals = RefusalLog::default();
    let mut pace = AcceptPace::new(bound.config.max_connection_rate);
    tracing::info!(listener = %name, addr = %bound.addr, "listener started");
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            a = async {
                pace.wait().await;
                bound.socket.accept().await
            } => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                tracing::warn!(listener = %name, error = %e, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Some(held) = Permits::take(&permits) else {
            metrics::add(&broker.metrics.connections_refused, 1);
            refusals.refused(&name, peer);
            drop(stream);
            continue;
        };
        metrics::add(&broker.metrics.connections_accepted, 1);
        let _ = stream.set_nodelay(true);
        // Boxed: every layer of the connection's task that owns it keeps a slot for it.
        let info = Box::new(ConnInfo {
            peer,
            listener: name.clone(),
            local_port: bound.addr.port(),
            transport: if bound.config.kind.uses_websocket() {
                "mqtt-ws"
            } else {
                "mqtt"
            },
            cert_common_name: None,
            cert_subject: None,
        });
        // Plain TCP is served by the smallest task there can be: the TLS and WebSocket
        // state machines are several KiB, and a task is as large as the largest way it could
        // go, so only those connections pay for them.
        let broker = broker.clone();
        if shared.kind == ListenerKind::Tcp {
            tokio::spawn(serve(broker, stream, info, held));
        } else {
            tokio::spawn(other_transports(broker, stream, info, shared.clone(), held));
        }
    }
    tracing::info!(listener = %name, "listener stopped");
}

/// The connection limits of one listener: the broker-wide semaphore and the listener's own.
struct Permits {
    global: Arc<Semaphore>,
    local: Semaphore,
}

impl Permits {
    /// One permit of each, or `None` when either limit is reached.
    fn take(permits: &Arc<Permits>) -> Option<HeldPermits> {
        let global = permits.global.try_acquire().ok()?;
        let local = permits.local.try_acquire().ok()?;
        global.forget();
        local.forget();
        Some(HeldPermits(permits.clone()))
    }
}

/// A connection's permits, given back to both semaphores when it is dropped: one pointer in
/// the connection's task, where two owned permits took 32 bytes.
struct HeldPermits(Arc<Permits>);

impl Drop for HeldPermits {
    fn drop(&mut self) {
        self.0.global.add_permits(1);
        self.0.local.add_permits(1);
    }
}

/// What every connection of one listener needs from it: one allocation per listener, so a
/// connection's task holds a pointer instead of copies.
struct ListenerShared {
    kind: ListenerKind,
    tls: Option<TlsAcceptor>,
    ws_path: String,
    forwarded: bool,
    /// The connect timeout, which bounds the TLS and WebSocket handshakes too.
    timeout: Duration,
}

/// The handshakes of the TLS, WebSocket and secure WebSocket listeners (within the connect
/// timeout), then MQTT; the connection permits are held until it closes.
async fn other_transports(
    broker: Arc<Broker>,
    stream: tokio::net::TcpStream,
    mut info: Box<ConnInfo>,
    listener: Arc<ListenerShared>,
    _held: HeldPermits,
) {
    async fn over_ws<S>(
        broker: Arc<Broker>,
        stream: S,
        mut info: Box<ConnInfo>,
        path: &str,
        forwarded: bool,
        timeout: Duration,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send,
        ws::WsStream<S>: Transport,
    {
        let max_packet = broker.config.limits.max_packet_size;
        match tokio::time::timeout(timeout, ws::accept(stream, path, forwarded, max_packet)).await {
            Ok(Ok((ws, ip))) => {
                info.peer = ws::effective_peer(info.peer, ip);
                serve(broker, ws, info, ()).await
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = %info.peer, listener = %info.listener, error = %e, "WebSocket handshake failed")
            }
            Err(_) => {
                tracing::debug!(peer = %info.peer, listener = %info.listener, "WebSocket handshake timed out")
            }
        }
    }
    let (timeout, forwarded, ws_path) = (listener.timeout, listener.forwarded, &listener.ws_path);
    // Each way boxed apart, so that a connection's allocation is the size of its own
    // transport's state machines (a WebSocket one does not pay for TLS).
    match (listener.kind, listener.tls.clone()) {
        // Spawned as `serve` directly by `run`; here for completeness.
        (ListenerKind::Tcp, _) => Box::pin(serve(broker, stream, info, ())).await,
        (ListenerKind::Ws, _) => {
            Box::pin(over_ws(broker, stream, info, ws_path, forwarded, timeout)).await
        }
        (kind @ (ListenerKind::Tls | ListenerKind::Wss), Some(acceptor)) => Box::pin(async move {
            let tls_stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(peer = %info.peer, listener = %info.listener, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(peer = %info.peer, listener = %info.listener, "TLS handshake timed out");
                    return;
                }
            };
            let (cn, subject) = tls::client_identity(tls_stream.get_ref().1);
            info.cert_common_name = cn;
            info.cert_subject = subject;
            if kind == ListenerKind::Wss {
                over_ws(broker, tls_stream, info, ws_path, forwarded, timeout).await
            } else {
                serve(broker, tls_stream, info, ()).await
            }
        })
        .await,
        (_, None) => {
            tracing::error!(listener = %info.listener, "TLS listener without TLS settings")
        }
    }
}
