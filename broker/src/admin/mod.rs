//! The admin API: a small HTTP/1.1 JSON API on a loopback address, used by `brokerctl`.
//!
//! Security: the listener must bind a loopback address (checked by config validation) and every
//! request must carry `Authorization: Bearer <token>`, where the token is the content of the
//! token file (created with mode 0600 at first start, 32 random bytes in hex). Requests are
//! small and one per connection (`Connection: close`); headers and body are capped at 64 KiB
//! and must arrive within 10 seconds.
//!
//! Endpoints (JSON unless noted):
//! * `GET  /api/v1/status`
//! * `GET  /api/v1/plugins` — [`crate::plugin::PluginList`]
//! * `POST /api/v1/plugins/<name>/load|unload|reload`
//! * `GET  /api/v1/commands` — commands registered by plugins
//! * `POST /api/v1/command` — body: JSON array of arguments, forwarded to the owning plugin
//! * `GET  /api/v1/clients`, `POST /api/v1/clients/<id>/kick`
//! * `POST /api/v1/acl-cache/clean` — body: optional client id
//! * `GET  /metrics` — Prometheus text format ([`crate::sys::prometheus`])
//!
//! Errors come back as a non-2xx status with `{"error": "<one line>"}`.

pub mod client;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::broker::Broker;
use crate::plugin::PluginOpError;

/// Maximum request size (headers and body).
const MAX_REQUEST: usize = 64 * 1024;

/// `GET /api/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Node name.
    pub node: String,
    /// Broker version.
    pub version: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Sessions held.
    pub sessions: usize,
    /// Subscriptions in the router.
    pub subscriptions: usize,
    /// Counters.
    pub metrics: crate::metrics::MetricsSnapshot,
}

/// One line answers (`Plugin x loaded successfully.`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageReply {
    /// The line to print.
    pub message: String,
}

/// Error answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The line to print.
    pub error: String,
}

/// A plugin-registered command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandInfo {
    /// Command name (`brokerctl <name> …`).
    pub name: String,
    /// Usage line(s).
    pub usage: String,
    /// Plugin that answers it.
    pub plugin: String,
}

/// A connected client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientSummary {
    /// Client id.
    pub client_id: String,
    /// User name.
    pub username: Option<String>,
    /// Peer address.
    pub peer: String,
    /// Protocol level.
    pub proto_ver: u8,
    /// Connected since, epoch ms.
    pub connected_at_ms: u64,
    /// Queued deliveries.
    pub queued: usize,
    /// Subscriptions.
    pub subscriptions: usize,
}

/// A session, online or offline (`GET /api/v1/sessions`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionSummary {
    /// Client id.
    pub client_id: String,
    /// A connection is attached.
    pub online: bool,
    /// Session expiry interval in force, seconds (4294967295 = never).
    pub expiry_interval: u64,
    /// When it went offline, epoch ms (None while online).
    pub offline_since_ms: Option<u64>,
    /// Messages queued.
    pub queued: usize,
    /// Bytes queued (as the queue limits count them).
    pub queued_bytes: usize,
    /// Unacknowledged outgoing messages kept while offline.
    pub inflight: usize,
    /// Its subscriptions: filter as sent and granted QoS.
    pub subscriptions: Vec<(String, u8)>,
}

/// Reads the admin token, creating the file (mode 0600) with a fresh random token if absent.
///
/// An existing file that other users may read or write is refused, as sshd refuses a private
/// key with loose permissions: whoever reads the token controls the broker.
pub fn ensure_token(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => {
            check_private(path)?;
            return Ok(t.trim().to_owned());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact_sync(&mut raw)?;
    let token = crate::hex::encode(&raw);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    std::io::Write::write_all(&mut f, token.as_bytes())?;
    Ok(token)
}

/// Fails when `path` is readable or writable by anyone but its owner.
#[cfg(unix)]
pub fn check_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} has mode {mode:04o}: other users could read the admin token; run `chmod 600 {}`",
                path.display(),
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Permissions are not checked on systems without Unix modes.
#[cfg(not(unix))]
pub fn check_private(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

trait ReadExactSync {
    fn read_exact_sync(&mut self, buf: &mut [u8]) -> std::io::Result<()>;
}

impl ReadExactSync for std::fs::File {
    fn read_exact_sync(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        std::io::Read::read_exact(self, buf)
    }
}

/// Binds the admin API.
pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the admin API until the broker shuts down.
pub async fn serve(broker: Arc<Broker>, listener: TcpListener, token: String) {
    let token = Arc::new(token);
    let mut shutdown = broker.shutdown_signal();
    loop {
        let accepted = tokio::select! {
            _ = async { shutdown.wait_for(|s| *s).await.map(|_| ()) } => break,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let broker = broker.clone();
        let token = token.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(broker, stream, &token).await {
                tracing::debug!(error = %e, "admin request failed");
            }
        });
    }
}

struct Request {
    method: String,
    path: String,
    authorization: Option<String>,
    body: Vec<u8>,
}

async fn read_request(stream: &mut TcpStream) -> std::io::Result<Request> {
    let mut buf = Vec::with_capacity(1024);
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_REQUEST {
            return Err(bad("request too large"));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("closed before the end of the headers"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..header_end]).map_err(|_| bad("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let path = first.next().unwrap_or("").to_owned();
    let mut content_length = 0usize;
    let mut authorization = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim();
            if k == "content-length" {
                content_length = v.parse().map_err(|_| bad("bad content-length"))?;
            } else if k == "authorization" {
                authorization = Some(v.to_owned());
            }
        }
    }
    if content_length > MAX_REQUEST {
        return Err(bad("body too large"));
    }
    let mut body = buf[header_end + 4..].to_vec();
    while body.len() < content_length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("closed before the end of the body"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(content_length);
    Ok(Request {
        method,
        path,
        authorization,
        body,
    })
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn respond(stream: &mut TcpStream, status: u16, body: String) -> std::io::Result<()> {
    respond_with(stream, status, "application/json", body).await
}

async fn respond_with(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: String,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v)
        .unwrap_or_else(|e| format!("{{\"error\":\"serialisation failed: {e}\"}}"))
}

fn error(status: u16, message: impl Into<String>) -> (u16, String) {
    (
        status,
        json(&ErrorReply {
            error: message.into(),
        }),
    )
}

fn op_error(e: PluginOpError) -> (u16, String) {
    let status = match e {
        PluginOpError::InvalidName(_) => 400,
        PluginOpError::NotLoaded(_) => 404,
        PluginOpError::AlreadyLoaded(_) => 409,
        PluginOpError::Load(crate::plugin::LoadError::NotFound { .. }) => 404,
        _ => 422,
    };
    error(status, e.to_string())
}

async fn handle(broker: Arc<Broker>, mut stream: TcpStream, token: &str) -> std::io::Result<()> {
    let request =
        match tokio::time::timeout(Duration::from_secs(10), read_request(&mut stream)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let (s, b) = error(400, e.to_string());
                return respond(&mut stream, s, b).await;
            }
            Err(_) => return Ok(()),
        };
    let authorized = request
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|t| same(t.trim().as_bytes(), token.as_bytes()));
    if !authorized {
        let (s, b) = error(401, "missing or wrong admin token");
        return respond(&mut stream, s, b).await;
    }
    if request.method == "GET" && request.path == "/metrics" {
        let body = crate::sys::prometheus(&broker);
        return respond_with(&mut stream, 200, PROMETHEUS_TEXT, body).await;
    }
    let (status, body) = route(&broker, &request).await;
    respond(&mut stream, status, body).await
}

async fn route(broker: &Arc<Broker>, r: &Request) -> (u16, String) {
    let parts: Vec<&str> = r.path.trim_start_matches("/api/v1/").split('/').collect();
    match (r.method.as_str(), parts.as_slice()) {
        ("GET", ["status"]) => (
            200,
            json(&Status {
                node: broker.config.node_name.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                uptime_secs: broker.started.elapsed().as_secs(),
                sessions: broker.session_count(),
                subscriptions: broker.router.read().len(),
                metrics: broker.metrics_snapshot(),
            }),
        ),
        ("GET", ["plugins"]) => (200, json(&broker.plugins.list())),
        ("POST", ["plugins", name, action]) => {
            let result = match *action {
                "load" => broker.plugins.load(name).await.map(|_| "loaded"),
                "unload" => broker.plugins.unload(name).await.map(|_| "unloaded"),
                "reload" => broker.plugins.reload(name).await.map(|_| "reloaded"),
                other => return error(404, format!("unknown plugin action {other:?}")),
            };
            match result {
                Ok(done) => (
                    200,
                    json(&MessageReply {
                        message: format!("Plugin {name} {done} successfully."),
                    }),
                ),
                Err(e) => op_error(e),
            }
        }
        ("GET", ["commands"]) => {
            let list: Vec<CommandInfo> = broker
                .plugins
                .commands()
                .into_iter()
                .map(|(name, usage, plugin)| CommandInfo {
                    name,
                    usage,
                    plugin,
                })
                .collect();
            (200, json(&list))
        }
        ("POST", ["command"]) => {
            let args: Vec<String> = match serde_json::from_slice(&r.body) {
                Ok(a) => a,
                Err(e) => return error(400, format!("body must be a JSON array of strings: {e}")),
            };
            let Some(first) = args.first() else {
                return error(400, "no command given");
            };
            let Some(owner) = broker.plugins.command_owner(first) else {
                return error(
                    404,
                    format!("unknown command {first:?} (no loaded plugin registers it)"),
                );
            };
            match broker.hooks.command(&owner, args).await {
                Ok(output) => (200, json(&MessageReply { message: output })),
                Err(e) => error(422, e),
            }
        }
        ("GET", ["clients"]) => (200, json(&broker.client_summaries())),
        ("GET", ["sessions"]) => (200, json(&broker.session_summaries(None))),
        ("GET", ["sessions", id]) => match broker.session_summaries(Some(id)).pop() {
            Some(s) => (200, json(&s)),
            None => error(404, format!("no session for client {id}")),
        },
        ("DELETE", ["sessions", id]) => {
            if broker.drop_session(id).await {
                (
                    200,
                    json(&MessageReply {
                        message: format!("Session {id} dropped."),
                    }),
                )
            } else {
                error(404, format!("no session for client {id}"))
            }
        }
        ("POST", ["clients", id, "kick"]) => {
            if broker.kick(id).await {
                (
                    200,
                    json(&MessageReply {
                        message: format!("Client {id} kicked."),
                    }),
                )
            } else {
                error(404, format!("client {id} is not connected"))
            }
        }
        ("POST", ["acl-cache", "clean"]) => {
            let id = String::from_utf8_lossy(&r.body).trim().to_owned();
            let n = broker.clean_acl_cache((!id.is_empty()).then_some(id.as_str()));
            (
                200,
                json(&MessageReply {
                    message: format!("ACL cache cleaned for {n} client(s)."),
                }),
            )
        }
        _ => error(404, format!("no such endpoint: {} {}", r.method, r.path)),
    }
}
