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

use crate::broker::Broker;
use crate::config::{ListenerConfig, ListenerKind};
use crate::metrics;
use crate::session::connection::{serve, ConnInfo};

/// A listener whose socket is bound.
#[derive(Debug)]
pub struct Bound {
    /// Its configuration.
    pub config: ListenerConfig,
    /// The address actually bound.
    pub addr: SocketAddr,
    socket: TcpListener,
}

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind listener {name:?} on {addr}: {source}")]
pub struct BindError {
    /// Listener name.
    pub name: String,
    /// Configured address.
    pub addr: SocketAddr,
    /// The OS error.
    pub source: std::io::Error,
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
        let socket = listen(config.bind).map_err(|source| BindError {
            name: config.name.clone(),
            addr: config.bind,
            source,
        })?;
        let addr = socket.local_addr().map_err(|source| BindError {
            name: config.name.clone(),
            addr: config.bind,
            source,
        })?;
        bound.push(Bound {
            config: config.clone(),
            addr,
            socket,
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
                .map(|b| {
                    let kind = match b.config.kind {
                        ListenerKind::Tcp => "tcp",
                    };
                    (b.config.name.clone(), kind, b.addr)
                })
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

/// Accepts connections on `bound` until the broker shuts down.
pub async fn run(broker: Arc<Broker>, bound: Bound) {
    let local_permits = Arc::new(Semaphore::new(bound.config.max_connections));
    let name: Arc<str> = Arc::from(bound.config.name.as_str());
    let mut shutdown = broker.shutdown_signal();
    let mut backoff = Duration::from_millis(5);
    tracing::info!(listener = %name, addr = %bound.addr, "listener started");
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            a = bound.socket.accept() => a,
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
        let permits = (
            broker.connection_permits.clone().try_acquire_owned(),
            local_permits.clone().try_acquire_owned(),
        );
        let (Ok(global), Ok(local)) = permits else {
            metrics::add(&broker.metrics.connections_refused, 1);
            tracing::warn!(listener = %name, %peer, "connection refused: connection limit reached");
            drop(stream);
            continue;
        };
        metrics::add(&broker.metrics.connections_accepted, 1);
        let _ = stream.set_nodelay(true);
        let info = ConnInfo {
            peer,
            listener: name.clone(),
            local_port: bound.addr.port(),
            transport: "mqtt",
        };
        let broker = broker.clone();
        tokio::spawn(async move {
            serve(broker, stream, info).await;
            drop(local);
            drop(global);
        });
    }
    tracing::info!(listener = %name, "listener stopped");
}
