//! One network connection, from its first byte to close.
//!
//! [`serve`] reads CONNECT (within `limits.connect_timeout`), validates it, binds the connection
//! to a session through [`Broker::attach`], answers CONNACK, restores the session's parked state
//! (redelivering unacknowledged messages with DUP set, [MQTT-4.4.0-1]) and then loops:
//!
//! * decode every complete packet that has arrived and act on it;
//! * drain the session queue up to the inflight window into the write buffer;
//! * wait for the socket (readable, or writable while the buffer holds data — the buffer is
//!   written without blocking, so a client that stops reading never stalls the loop), the
//!   session queue, a control request (takeover, kick), shutdown, or the next deadline.
//!
//! Bounds, so that no client can make the broker grow or stall:
//! * at most [`WRITE_BUFFER_HIGH`] (plus one message) waits in the write buffer: above it the
//!   session queue is not drained into it (messages wait there, bounded by the queue limits)
//!   and the client is not read (its requests would only add answers). A client that leaves
//!   the buffer unread for `limits.slow_consumer_timeout` is disconnected (`slow_consumer`);
//! * keep-alive (1.5 × keep alive, [MQTT-3.1.2-24]) is enforced whatever the write side does;
//! * control packets (PINGREQ, SUBSCRIBE, UNSUBSCRIBE) beyond `limits.max_control_rate` per
//!   second are not read until the next second: a client flooding them costs the broker a
//!   bounded amount of work, and others keep their latency ([`ControlRate`]);
//! * back-pressure: a connection that publishes while the broker-wide queued bytes are over
//!   `limits.memory_high_watermark` is not read from again until they fall below 90 % of it.
//!   Connections that only subscribe and acknowledge keep being read, so queues drain;
//! * payloads are copied out of the read buffer ([`own_bytes`]), so a queued message holds
//!   its own bytes and not the whole buffer it arrived in (a 10-byte message could otherwise
//!   pin a 64 KiB read buffer, and a 100 KiB one a 256 KiB buffer, beyond what the queue
//!   limits count);
//! * topics and filters deeper than `limits.max_topic_levels` are refused before they reach
//!   the router or a plugin.
//!
//! When the loop ends it tells a v5 client why (DISCONNECT with a reason code), hands the
//! session state back, publishes or schedules the will unless the client disconnected normally
//! ([MQTT-3.1.2-8], [MQTT-3.14.4-3]), and ends the session when its expiry interval is 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::broker::Broker;
use crate::codec::{
    self, reason, ConnAck, Connect, DecodeError, Disconnect, Packet, PacketId, Properties,
    ProtocolVersion, PubResp, Publish, PublishHeader, QoS, RetainHandling, SubAck, Subscribe,
    UnsubAck, Unsubscribe,
};
use crate::config::{Decision, DenyAction};
use crate::hooks::{AclDecision, AuthDecision};
use crate::metrics;
use crate::router::{TopicFilter, TopicName};
use abi_stable::std_types::RString;
use plugin_api::{
    Access, AclRequest, AuthRequest, ClientInfo, ClientView, DenyReason, EventView, HookPoint,
    MessageEventView, SubOptions, SubscribeView, SubscriptionView,
};

use super::{sub_options, Control, Delivery, KickReason, Message, Outgoing, Session};

/// Above this many bytes waiting to be written, the session queue is not drained into the
/// write buffer and the client is not read (see the module docs).
pub const WRITE_BUFFER_HIGH: usize = 64 * 1024;

/// How often a connection paused by the memory high-water mark looks whether to resume.
const BACKPRESSURE_RECHECK: Duration = Duration::from_millis(50);

/// How long closing a connection waits to hand the client its last packets.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Per-connection budget of control packets (PINGREQ, SUBSCRIBE, UNSUBSCRIBE): `limit` per
/// one-second window; once spent, the connection is not read until the window ends.
#[derive(Debug)]
struct ControlRate {
    limit: u32,
    left: u32,
    window_end: Instant,
}

impl ControlRate {
    fn new(limit: u32) -> Self {
        ControlRate {
            limit,
            left: limit,
            window_end: Instant::now() + Duration::from_secs(1),
        }
    }

    /// Spends one packet's worth of this window's budget.
    fn spend(&mut self) {
        if self.limit == 0 {
            return;
        }
        let now = Instant::now();
        if now >= self.window_end {
            self.left = self.limit;
            self.window_end = now + Duration::from_secs(1);
        }
        self.left = self.left.saturating_sub(1);
    }

    /// When reading may resume, if the budget is spent.
    fn blocked_until(&self) -> Option<Instant> {
        (self.limit > 0 && self.left == 0).then_some(self.window_end)
    }

    /// Refills the budget once its window has ended.
    fn refresh(&mut self, now: Instant) {
        if self.left == 0 && now >= self.window_end {
            self.left = self.limit;
            self.window_end = now + Duration::from_secs(1);
        }
    }
}

/// A deadline so far away that it never fires (keep alive 0).
const NEVER: Duration = Duration::from_secs(86_400 * 365);

/// Where a connection came from; passed down from the listener.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Peer address.
    pub peer: SocketAddr,
    /// Listener name.
    pub listener: Arc<str>,
    /// Local (listener) port.
    pub local_port: u16,
    /// `mqtt` or `mqtt-ws`.
    pub transport: &'static str,
    /// TLS client certificate common name.
    pub cert_common_name: Option<String>,
    /// TLS client certificate subject.
    pub cert_subject: Option<String>,
}

/// Why the connection loop ended.
#[derive(Debug)]
enum Exit {
    /// The client sent DISCONNECT; `with_will` for v5 reason 0x04.
    Disconnect { with_will: bool },
    /// The peer closed the socket without DISCONNECT.
    Closed,
    /// No packet within 1.5 × keep alive.
    KeepAliveTimeout,
    /// The client left the broker's output unread for `limits.slow_consumer_timeout`.
    SlowConsumer,
    /// The session store failed: what this connection was about to acknowledge is not durable.
    StoreFailed(String),
    /// The client broke the protocol.
    Protocol { reason: u8, message: String },
    /// Another connection or an administrator took the session.
    Kicked {
        reason: KickReason,
        done: oneshot::Sender<()>,
    },
    /// The broker is shutting down.
    Shutdown,
    /// Reading or writing the socket failed.
    Io(std::io::Error),
}

impl Exit {
    fn protocol(reason: u8, message: impl Into<String>) -> Exit {
        Exit::Protocol {
            reason,
            message: message.into(),
        }
    }

    /// The reason code of the DISCONNECT a v5 client is sent, if any.
    fn disconnect_reason(&self) -> Option<u8> {
        match self {
            Exit::KeepAliveTimeout => Some(reason::KEEP_ALIVE_TIMEOUT),
            Exit::Protocol { reason, .. } => Some(*reason),
            Exit::Kicked {
                reason: KickReason::TakenOver,
                ..
            } => Some(reason::SESSION_TAKEN_OVER),
            Exit::Kicked {
                reason: KickReason::Kicked,
                ..
            } => Some(reason::ADMINISTRATIVE_ACTION),
            Exit::Kicked {
                reason: KickReason::Plugin(code),
                ..
            } => Some(*code),
            Exit::Shutdown => Some(reason::SERVER_SHUTTING_DOWN),
            Exit::StoreFailed(_) => Some(reason::UNSPECIFIED_ERROR),
            _ => None,
        }
    }

    /// The disconnect reason as operators see it in logs (and presence events).
    fn label(&self) -> &'static str {
        match self {
            Exit::Disconnect { .. } => "normal",
            Exit::Closed => "tcp_closed",
            Exit::KeepAliveTimeout => "keepalive_timeout",
            Exit::SlowConsumer => "slow_consumer",
            Exit::StoreFailed(_) => "store_failed",
            Exit::Protocol { .. } => "protocol_error",
            Exit::Kicked {
                reason: KickReason::TakenOver,
                ..
            } => "takenover",
            Exit::Kicked {
                reason: KickReason::Kicked,
                ..
            } => "kicked",
            Exit::Kicked {
                reason: KickReason::Plugin(_),
                ..
            } => "closed_by_plugin",
            Exit::Shutdown => "server_shutdown",
            Exit::Io(_) => "io_error",
        }
    }
}

impl From<DecodeError> for Exit {
    fn from(e: DecodeError) -> Exit {
        Exit::protocol(e.reason_code(), e.to_string())
    }
}

/// Serves one connection until it closes. Never panics on network input.
pub async fn serve<S>(broker: Arc<Broker>, mut stream: S, info: ConnInfo)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut rbuf = BytesMut::with_capacity(4 * 1024);
    let connect = match read_connect(&broker, &mut stream, &mut rbuf, &info).await {
        Some(c) => c,
        None => return,
    };
    let mut conn = match Connection::accept(&broker, &mut stream, &mut rbuf, connect, &info).await {
        Some(c) => c,
        None => return,
    };
    metrics::add(&broker.metrics.connections, 1);
    let exit = conn.run(&mut stream, &mut rbuf).await;
    conn.finish(&mut stream, exit).await;
    metrics::sub(&broker.metrics.connections, 1);
}

/// Reads the first packet; it must be CONNECT ([MQTT-3.1.0-1]). Answers an unsupported protocol
/// level with CONNACK 0x01 ([MQTT-3.1.2-2]).
async fn read_connect<S>(
    broker: &Broker,
    stream: &mut S,
    rbuf: &mut BytesMut,
    info: &ConnInfo,
) -> Option<Box<Connect>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max = broker.config.limits.max_packet_size;
    let timeout = Duration::from_secs(broker.config.limits.connect_timeout);
    let read = async {
        loop {
            if let Some(&b) = rbuf.first() {
                if b >> 4 != 1 {
                    return Err(format!(
                        "[MQTT-3.1.0-1] first packet is of type {}, not CONNECT",
                        b >> 4
                    ));
                }
            }
            match codec::decode(rbuf, None, max) {
                Ok(Some(Packet::Connect(c))) => return Ok(c),
                Ok(Some(p)) => {
                    return Err(format!("[MQTT-3.1.0-1] first packet is {}", p.name()));
                }
                Ok(None) => {}
                Err(DecodeError::UnsupportedProtocolLevel(level)) => {
                    let mut out = BytesMut::new();
                    let ack = Packet::ConnAck(ConnAck {
                        session_present: false,
                        reason_code: reason::UNSUPPORTED_PROTOCOL_VERSION,
                        properties: Properties::default(),
                    });
                    let version = if level == 5 {
                        ProtocolVersion::V5
                    } else {
                        ProtocolVersion::V3_1_1
                    };
                    codec::encode(&ack, version, &mut out);
                    let _ = stream.write_all(&out).await;
                    let _ = stream.flush().await;
                    return Err(DecodeError::UnsupportedProtocolLevel(level).to_string());
                }
                Err(e) => return Err(e.to_string()),
            }
            match stream.read_buf(rbuf).await {
                Ok(0) => return Err("closed before CONNECT".to_string()),
                Ok(n) => metrics::add(&broker.metrics.bytes_received, n as u64),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(reason)) => {
            tracing::info!(peer = %info.peer, listener = %info.listener, %reason, "connection refused");
            None
        }
        Err(_) => {
            tracing::info!(peer = %info.peer, listener = %info.listener, "no CONNECT within connect_timeout");
            None
        }
    }
}

/// The key a subscription is stored under in its session: the filter, or
/// `$share/<group>/<filter>` for a shared one.
fn subscription_key(group: Option<&str>, filter: &TopicFilter) -> String {
    match group {
        Some(g) => format!("$share/{g}/{filter}"),
        None => filter.to_string(),
    }
}

/// State of an attached connection. Owned by the connection's task.
struct Connection {
    broker: Arc<Broker>,
    session: Arc<Session>,
    generation: u64,
    client_id: Arc<str>,
    version: ProtocolVersion,
    peer: SocketAddr,
    keep_alive: Duration,
    will: Option<crate::codec::LastWill>,
    session_expiry: u32,
    control_rx: mpsc::Receiver<Control>,
    wbuf: BytesMut,
    outgoing: std::collections::VecDeque<Outgoing>,
    incoming_qos2: Vec<u16>,
    last_packet_id: u16,
    window: usize,
    client_max_packet: usize,
    topic_aliases: Vec<Option<TopicName>>,
    /// Topic aliases this broker assigns in what it sends (v5 clients that accept some).
    out_aliases: Option<super::alias::OutAliases>,
    problem_information: bool,
    drained: Vec<Delivery>,
    /// Who the client is, as plugins see it; fixed at CONNECT.
    identity: ClientInfo,
    /// Bytes were written since the last flush (TLS and WebSocket streams buffer).
    need_flush: bool,
    /// Not reading: this client published while the broker was over its high-water mark.
    paused: bool,
    /// Control packets left in this second.
    control_rate: ControlRate,
    /// A message was routed since the high-water mark was last looked at.
    published: bool,
    /// Answers in the write buffer promise changes submitted to the live session store: wait
    /// for their commit before the buffer may be written.
    needs_commit: bool,
    /// MQTT 5 enhanced authentication in force (for re-authentication).
    enhanced: Option<EnhancedAuth>,
}

/// The enhanced authentication a connection was accepted with.
struct EnhancedAuth {
    /// The Authentication Method.
    method: String,
    /// The plugin that answered it.
    handler: Arc<crate::hooks::PluginHandle>,
    /// The next step of a re-authentication in progress.
    step: Option<u32>,
}

fn auth_packet(reason_code: u8, method: &str, data: &[u8]) -> Packet {
    let properties = Properties {
        authentication_method: Some(method.to_owned()),
        authentication_data: (!data.is_empty()).then(|| data.to_vec().into()),
        ..Properties::default()
    };
    Packet::Auth(codec::Auth {
        reason_code,
        properties,
    })
}

/// Runs the CONNECT / AUTH exchange of MQTT 5 enhanced authentication (section 4.12) until a
/// plugin decides, within `limits.connect_timeout`. Returns the plugin and its final answer, or
/// the CONNACK refusal.
async fn enhanced_exchange<S>(
    broker: &Broker,
    stream: &mut S,
    rbuf: &mut BytesMut,
    identity: &ClientInfo,
    method: &str,
    first: Vec<u8>,
) -> Result<
    (
        Arc<crate::hooks::PluginHandle>,
        plugin_api::EnhancedAuthResult,
    ),
    (u8, String),
>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use plugin_api::{EnhancedAuthOutcome, EnhancedAuthRequest};
    let max = broker.config.limits.max_packet_size;
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(broker.config.limits.connect_timeout);
    let mut handler: Option<Arc<crate::hooks::PluginHandle>> = None;
    let mut data = first;
    let mut step = 0u32;
    loop {
        let request = EnhancedAuthRequest {
            client: identity.clone(),
            method: method.into(),
            data: std::mem::take(&mut data).into(),
            step,
            reauthenticate: false,
        };
        let Some((plugin, result)) = broker.hooks.enhanced_auth(&request, handler.as_ref()).await
        else {
            return Err((
                reason::BAD_AUTHENTICATION_METHOD,
                format!("no loaded plugin handles authentication method {method:?}"),
            ));
        };
        match result.outcome {
            EnhancedAuthOutcome::SUCCESS => return Ok((plugin, result)),
            EnhancedAuthOutcome::CONTINUE => {}
            EnhancedAuthOutcome::FAILURE => {
                let code = result.reason_code.max(0x80);
                let code = if code == 0x80 {
                    reason::NOT_AUTHORIZED
                } else {
                    code
                };
                return Err((code, format!("{method} authentication failed")));
            }
            _ => {
                return Err((
                    reason::BAD_AUTHENTICATION_METHOD,
                    format!("no loaded plugin handles authentication method {method:?}"),
                ))
            }
        }
        handler = Some(plugin);
        let mut out = BytesMut::new();
        codec::encode(
            &auth_packet(reason::CONTINUE_AUTHENTICATION, method, &result.data),
            ProtocolVersion::V5,
            &mut out,
        );
        if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
            return Err((
                reason::UNSPECIFIED_ERROR,
                "closed during authentication".into(),
            ));
        }
        // The client's answer: an AUTH continuing with the same method.
        let answer = loop {
            match codec::decode(rbuf, Some(ProtocolVersion::V5), max) {
                Ok(Some(Packet::Auth(a))) => break a,
                Ok(Some(p)) => {
                    return Err((
                        reason::PROTOCOL_ERROR,
                        format!("{} during the authentication exchange", p.name()),
                    ))
                }
                Ok(None) => {}
                Err(e) => return Err((reason::MALFORMED_PACKET, e.to_string())),
            }
            match tokio::time::timeout_at(deadline, stream.read_buf(rbuf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return Err((
                        reason::UNSPECIFIED_ERROR,
                        "closed during authentication".into(),
                    ))
                }
                Ok(Ok(n)) => metrics::add(&broker.metrics.bytes_received, n as u64),
                Err(_) => {
                    return Err((
                        reason::NOT_AUTHORIZED,
                        "authentication exchange not finished within limits.connect_timeout".into(),
                    ))
                }
            }
        };
        if answer.reason_code != reason::CONTINUE_AUTHENTICATION
            || answer.properties.authentication_method.as_deref() != Some(method)
        {
            return Err((
                reason::PROTOCOL_ERROR,
                "[MQTT-4.12.0-4] AUTH must continue (0x18) with the CONNECT's method".into(),
            ));
        }
        data = answer
            .properties
            .authentication_data
            .map(|d| d.to_vec())
            .unwrap_or_default();
        step += 1;
    }
}

fn event<'a>(client: ClientView<'a>, reason: &'a str, reason_code: u8) -> EventView<'a> {
    EventView {
        client,
        reason: reason.into(),
        reason_code,
        subscription: None.into(),
    }
}

/// Encodes a CONNACK refusing the connection and writes it.
async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    version: ProtocolVersion,
    reason_code: u8,
    info: &ConnInfo,
    client_id: &str,
    why: &str,
) {
    tracing::info!(peer = %info.peer, client_id = %client_id, reason_code, %why, "connection refused");
    let mut out = BytesMut::new();
    let mut properties = Properties::default();
    if version.is_v5() {
        properties.reason_string = Some(why.to_owned());
    }
    let ack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code,
        properties,
    });
    codec::encode(&ack, version, &mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

fn assigned_client_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("auto-{nanos:x}-{n:x}")
}

/// Runs the authentication chain for a CONNECT. `Ok(superuser)` lets the client in;
/// `Err((v5 reason code, why))` refuses it.
async fn authenticate(
    broker: &Broker,
    identity: &ClientInfo,
    connect: &Connect,
) -> Result<bool, (u8, &'static str)> {
    let auth = &broker.config.auth;
    let decision = if broker.hooks.enabled(HookPoint::CLIENT_AUTHENTICATE) {
        let request = AuthRequest {
            client: identity.clone(),
            password: connect.password.as_ref().map(|p| p.to_vec().into()).into(),
        };
        broker.hooks.authenticate(&request).await
    } else {
        AuthDecision::NoPlugin
    };
    match decision {
        AuthDecision::Allow { superuser } => Ok(superuser),
        AuthDecision::NoPlugin if auth.allow_anonymous => Ok(false),
        AuthDecision::NoPlugin => Err((
            reason::NOT_AUTHORIZED,
            "auth.allow_anonymous is false and no authentication plugin is loaded",
        )),
        AuthDecision::NoMatch if auth.no_match == Decision::Allow => Ok(false),
        AuthDecision::NoMatch => Err((
            reason::NOT_AUTHORIZED,
            "no authentication plugin accepted the client (auth.no_match = deny)",
        )),
        AuthDecision::Deny(DenyReason::BadCredentials) => Err((
            reason::BAD_USER_NAME_OR_PASSWORD,
            "bad user name or password",
        )),
        AuthDecision::Deny(DenyReason::NotAuthorized) => {
            Err((reason::NOT_AUTHORIZED, "not authorized"))
        }
        AuthDecision::Deny(DenyReason::ServerUnavailable) => Err((
            reason::SERVER_UNAVAILABLE,
            "authentication backend unavailable",
        )),
    }
}

impl Connection {
    /// Validates CONNECT, attaches the session and answers CONNACK.
    async fn accept<S>(
        broker: &Arc<Broker>,
        stream: &mut S,
        rbuf: &mut BytesMut,
        connect: Box<Connect>,
        info: &ConnInfo,
    ) -> Option<Connection>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let limits = &broker.config.limits;
        let version = connect.protocol;
        let v5 = version.is_v5();
        let mut assigned = None;
        let client_id: Arc<str> = if connect.client_id.is_empty() {
            // [MQTT-3.1.3-8]: 3.1.1 allows an empty id only with clean session; 3.1 never.
            if version == ProtocolVersion::V3_1
                || (version == ProtocolVersion::V3_1_1 && !connect.clean_start)
            {
                refuse(
                    stream,
                    version,
                    reason::CLIENT_IDENTIFIER_NOT_VALID,
                    info,
                    "",
                    "[MQTT-3.1.3-8] empty client identifier requires clean session",
                )
                .await;
                return None;
            }
            let id = assigned_client_id();
            assigned = Some(id.clone());
            Arc::from(id)
        } else {
            Arc::from(connect.client_id.as_str())
        };
        if client_id.len() > limits.max_client_id_len {
            refuse(
                stream,
                version,
                reason::CLIENT_IDENTIFIER_NOT_VALID,
                info,
                &client_id,
                "client identifier longer than limits.max_client_id_len",
            )
            .await;
            return None;
        }
        if v5
            && connect.properties.authentication_method.is_some()
            && !broker.hooks.enabled(HookPoint::CLIENT_ENHANCED_AUTH)
        {
            refuse(
                stream,
                version,
                reason::BAD_AUTHENTICATION_METHOD,
                info,
                &client_id,
                "enhanced authentication is not supported by any loaded plugin",
            )
            .await;
            return None;
        }
        if let Some(will) = &connect.will {
            let refusal = if !within_levels(&will.topic, limits.max_topic_levels) {
                Some((
                    reason::TOPIC_NAME_INVALID,
                    "will topic has more than limits.max_topic_levels levels",
                ))
            } else if is_sys_topic(&will.topic) && !broker.config.acl.client_publish_sys {
                Some((
                    reason::NOT_AUTHORIZED,
                    "will topic is a $SYS topic (acl.client_publish_sys = false)",
                ))
            } else if will.qos as u8 > broker.config.mqtt.maximum_qos {
                Some((
                    reason::QOS_NOT_SUPPORTED,
                    "[MQTT-3.2.2-12] will QoS above mqtt.maximum_qos",
                ))
            } else if will.retain && !broker.config.mqtt.retain_available {
                Some((
                    reason::RETAIN_NOT_SUPPORTED,
                    "[MQTT-3.2.2-13] will with RETAIN, and mqtt.retain_available = false",
                ))
            } else {
                None
            };
            if let Some((code, why)) = refusal {
                if v5 || code == reason::NOT_AUTHORIZED {
                    refuse(stream, version, code, info, &client_id, why).await;
                } else {
                    // MQTT 3 has no return code for a bad topic: close without CONNACK.
                    tracing::info!(peer = %info.peer, client_id = %client_id, why, "connection refused");
                }
                return None;
            }
        }
        let max_expiry = broker.config.session.max_session_expiry_interval;
        let requested_expiry = if v5 {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        let session_expiry = requested_expiry.min(max_expiry);

        let mut keep_alive = connect.keep_alive;
        let mut server_keep_alive = None;
        if v5
            && limits.max_keep_alive > 0
            && (keep_alive == 0 || keep_alive > limits.max_keep_alive)
        {
            keep_alive = limits.max_keep_alive;
            server_keep_alive = Some(keep_alive);
        }

        let mut identity = ClientInfo {
            client_id: (*client_id).into(),
            username: connect.username.as_deref().map(RString::from).into(),
            peer_ip: info.peer.ip().to_string().into(),
            peer_port: info.peer.port(),
            sock_port: info.local_port,
            listener: (*info.listener).into(),
            transport: info.transport.into(),
            proto_ver: version.level(),
            proto_name: version.protocol_name().into(),
            keep_alive,
            clean_start: connect.clean_start,
            expiry_interval: session_expiry,
            // When the CONNECT arrived: authentication plugins see the same value the
            // connected client later has, so they can name this very connection.
            connected_at_ms: crate::broker::now_ms(),
            cert_common_name: info.cert_common_name.as_deref().map(RString::from).into(),
            cert_subject: info.cert_subject.as_deref().map(RString::from).into(),
            is_superuser: false,
        };
        let hooks = &broker.hooks;
        hooks.notify(HookPoint::CLIENT_CONNECT, &event(identity.view(), "", 0));

        // Authentication: MQTT 5 enhanced authentication when the client names a method, else
        // the authentication chain (README, "Plugins and brokerctl": access control).
        let mut enhanced = None;
        let refusal = match &connect.properties.authentication_method {
            Some(method) if v5 => {
                let data = connect
                    .properties
                    .authentication_data
                    .as_ref()
                    .map(|d| d.to_vec())
                    .unwrap_or_default();
                match enhanced_exchange(broker, stream, rbuf, &identity, method, data).await {
                    Ok((handler, result)) => {
                        identity.is_superuser = result.superuser;
                        enhanced = Some((
                            EnhancedAuth {
                                method: method.clone(),
                                handler,
                                step: None,
                            },
                            result.data,
                        ));
                        None
                    }
                    Err(refusal) => Some(refusal),
                }
            }
            _ => match authenticate(broker, &identity, &connect).await {
                Ok(superuser) => {
                    identity.is_superuser = superuser;
                    None
                }
                Err((code, why)) => Some((code, why.to_owned())),
            },
        };
        if let Some((code, why)) = refusal {
            hooks.notify(HookPoint::CLIENT_CONNACK, &event(identity.view(), "", code));
            refuse(stream, version, code, info, &client_id, &why).await;
            return None;
        }

        let (control_tx, control_rx) = mpsc::channel(4);
        let attached = broker
            .attach(&client_id, connect.clean_start, control_tx)
            .await;
        attached
            .session
            .expiry_interval
            .store(session_expiry as u64, std::sync::atomic::Ordering::Relaxed);

        let mut properties = Properties::default();
        if v5 {
            if session_expiry != requested_expiry {
                properties.session_expiry_interval = Some(session_expiry);
            }
            properties.receive_maximum = Some(limits.receive_maximum);
            properties.maximum_packet_size = Some(limits.max_packet_size as u32);
            if limits.topic_alias_maximum > 0 {
                properties.topic_alias_maximum = Some(limits.topic_alias_maximum);
            }
            properties.assigned_client_identifier = assigned;
            properties.server_keep_alive = server_keep_alive;
            let mqtt = &broker.config.mqtt;
            if mqtt.maximum_qos < 2 {
                properties.maximum_qos = Some(mqtt.maximum_qos);
            }
            let off = |on: bool| (!on).then_some(0);
            properties.retain_available = off(mqtt.retain_available);
            properties.wildcard_subscription_available = off(mqtt.wildcard_subscription_available);
            properties.subscription_identifier_available =
                off(mqtt.subscription_identifiers_available);
            properties.shared_subscription_available = off(mqtt.shared_subscription_available);
            if connect.properties.request_response_information == Some(1)
                && !mqtt.response_information.is_empty()
            {
                properties.response_information =
                    Some(mqtt.response_information.replace("%c", &client_id));
            }
            if let Some((auth, data)) = &enhanced {
                properties.authentication_method = Some(auth.method.clone());
                if !data.is_empty() {
                    properties.authentication_data = Some(data.to_vec().into());
                }
            }
        }
        let client_receive_max = connect.properties.receive_maximum.unwrap_or(u16::MAX);
        let mut conn = Connection {
            broker: broker.clone(),
            session: attached.session.clone(),
            generation: attached.generation,
            client_id: client_id.clone(),
            version,
            peer: info.peer,
            keep_alive: Duration::from_millis(keep_alive as u64 * 1500),
            will: connect.will.clone(),
            session_expiry,
            control_rx,
            wbuf: BytesMut::with_capacity(8 * 1024),
            outgoing: Default::default(),
            incoming_qos2: Vec::new(),
            last_packet_id: 0,
            window: (limits.max_inflight.min(client_receive_max)) as usize,
            client_max_packet: connect
                .properties
                .maximum_packet_size
                .map_or(usize::MAX, |m| m as usize),
            topic_aliases: vec![
                None;
                if v5 {
                    limits.topic_alias_maximum as usize
                } else {
                    0
                }
            ],
            out_aliases: if v5 {
                super::alias::OutAliases::new(
                    connect.properties.topic_alias_maximum.unwrap_or(0),
                    limits.topic_alias_maximum,
                )
            } else {
                None
            },
            problem_information: connect.properties.request_problem_information != Some(0),
            drained: Vec::new(),
            identity,
            need_flush: false,
            paused: false,
            control_rate: ControlRate::new(limits.max_control_rate),
            published: false,
            needs_commit: false,
            enhanced: enhanced.map(|(auth, _)| auth),
        };
        conn.push(&Packet::ConnAck(ConnAck {
            session_present: attached.session_present,
            reason_code: reason::SUCCESS,
            properties,
        }));
        {
            let mut parked = conn.session.parked.lock();
            conn.outgoing = std::mem::take(&mut parked.outgoing);
            conn.incoming_qos2 = std::mem::take(&mut parked.incoming_qos2);
            conn.last_packet_id = parked.last_packet_id;
        }
        // Redeliver what the previous connection left unacknowledged, in order.
        for i in 0..conn.outgoing.len() {
            let o = conn.outgoing[i].clone();
            if o.released {
                conn.push(&Packet::PubRel(PubResp::new(o.packet_id)));
            } else {
                conn.write_publish(&o.delivery, Some(o.packet_id), true);
            }
        }
        conn.session.acl_cache.lock().clear();
        *conn.session.info.lock() = Some(conn.identity.clone());
        conn.session.set_online(true);
        broker.store_session(&conn.session);
        let view = conn.identity.view();
        if attached.discarded {
            hooks.notify(HookPoint::SESSION_DISCARDED, &event(view, "", 0));
        }
        let created = if attached.session_present {
            HookPoint::SESSION_RESUMED
        } else {
            HookPoint::SESSION_CREATED
        };
        hooks.notify(created, &event(view, "", 0));
        hooks.notify(HookPoint::CLIENT_CONNACK, &event(view, "", reason::SUCCESS));
        hooks.notify(HookPoint::CLIENT_CONNECTED, &event(view, "", 0));
        tracing::info!(
            client_id = %client_id,
            peer = %info.peer,
            listener = %info.listener,
            protocol = ?version,
            keep_alive,
            clean_start = connect.clean_start,
            session_present = attached.session_present,
            "client connected"
        );
        Some(conn)
    }

    /// Appends an encoded packet to the write buffer.
    fn push(&mut self, packet: &Packet) {
        codec::encode(packet, self.version, &mut self.wbuf);
    }

    /// Encodes one delivery as PUBLISH into the write buffer. Returns false if the client's
    /// Maximum Packet Size forbids it ([MQTT-3.1.2-25]).
    fn write_publish(&mut self, d: &Delivery, packet_id: Option<PacketId>, dup: bool) -> bool {
        let msg = &d.message;
        // v5: per-delivery properties (expiry left, subscription ids, a topic alias) on a copy.
        let needs_copy = self.version.is_v5()
            && (msg.expires_at.is_some()
                || !d.subscription_ids.is_empty()
                || self.out_aliases.is_some());
        let mut extra = needs_copy.then(|| {
            let mut e = Properties::clone(&msg.properties);
            e.message_expiry_interval = msg
                .expires_at
                .map(|t| (t.saturating_duration_since(Instant::now()).as_secs() as u32).max(1));
            e.subscription_identifiers = d.subscription_ids.clone();
            // Sized with the full topic and an alias: the largest this PUBLISH can be.
            e.topic_alias = self.out_aliases.as_ref().map(|_| u16::MAX);
            e
        });
        let mut topic = msg.topic.as_str();
        let size = codec::publish_len(
            self.version,
            packet_id.is_some(),
            topic,
            extra.as_ref().unwrap_or(&msg.properties),
            msg.payload.len(),
        );
        if size > self.client_max_packet {
            return false;
        }
        // Only a PUBLISH that is sent may set an alias: the client must see every assignment.
        if let (Some(aliases), Some(e)) = (self.out_aliases.as_mut(), extra.as_mut()) {
            let alias = aliases.alias(topic);
            e.topic_alias = Some(alias.id());
            if let super::alias::Alias::Use(_) = alias {
                topic = "";
            }
        }
        let properties = extra.as_ref().unwrap_or(&msg.properties);
        codec::encode_publish(
            &mut self.wbuf,
            self.version,
            PublishHeader {
                dup,
                qos: d.qos,
                retain: d.retain,
                packet_id,
            },
            topic,
            properties,
            &msg.payload,
        );
        true
    }

    fn next_packet_id(&mut self) -> PacketId {
        loop {
            self.last_packet_id = self.last_packet_id.wrapping_add(1);
            if let Some(id) = PacketId::new(self.last_packet_id) {
                if !self.outgoing.iter().any(|o| o.packet_id == id) {
                    return id;
                }
            }
        }
    }

    /// Moves deliveries from the session queue into the write buffer while the inflight window
    /// has room.
    fn drain_queue(&mut self) {
        let room = self.window.saturating_sub(self.outgoing.len());
        let mut batch = std::mem::take(&mut self.drained);
        let space = WRITE_BUFFER_HIGH.saturating_sub(self.wbuf.len());
        self.session.drain(&mut batch, room, space);
        let now = Instant::now();
        let mut sent = 0u64;
        for d in batch.drain(..) {
            if d.message.expires_at.is_some_and(|t| t <= now) {
                self.dropped(&d, "expired");
                continue;
            }
            let seq = d.seq;
            if d.qos == QoS::AtMostOnce {
                if self.write_publish(&d, None, false) {
                    sent += 1;
                    self.message_event(HookPoint::MESSAGE_DELIVERED, &d, "");
                } else {
                    self.dropped(&d, "too_large");
                }
                continue;
            }
            let packet_id = self.next_packet_id();
            if self.write_publish(&d, Some(packet_id), false) {
                sent += 1;
                self.message_event(HookPoint::MESSAGE_DELIVERED, &d, "");
                if seq > 0 {
                    self.store(super::store::Op::SetInflight {
                        client_id: self.client_id.clone(),
                        seq,
                        packet_id: packet_id.get(),
                        released: false,
                    });
                }
                self.outgoing.push_back(Outgoing {
                    packet_id,
                    delivery: d,
                    released: false,
                });
            } else {
                self.dropped(&d, "too_large");
            }
        }
        self.drained = batch;
        if sent > 0 {
            metrics::add(&self.broker.metrics.messages_sent, sent);
        }
    }

    fn dropped(&self, d: &Delivery, why: &str) {
        metrics::add(&self.broker.metrics.messages_dropped, 1);
        self.forget(d);
        if self.broker.hooks.wants_dropped() {
            let ups = d.message.user_property_views();
            let view = MessageEventView {
                client_id: (*self.client_id).into(),
                message: d.message.view(&ups),
                reason: why.into(),
            };
            self.broker.hooks.dropped(&view);
        }
    }

    /// Removes a delivery from the live store once it is acknowledged or dropped.
    fn forget(&self, d: &Delivery) {
        if d.seq > 0 {
            self.store(super::store::Op::DeleteMessage {
                client_id: self.client_id.clone(),
                seq: d.seq,
            });
        }
    }

    /// Fires `message.delivered` / `message.acked` / `message.dropped` if any plugin listens.
    fn message_event(&self, point: HookPoint, d: &Delivery, why: &str) {
        if !self.broker.hooks.enabled(point) {
            return;
        }
        let ups = d.message.user_property_views();
        let view = MessageEventView {
            client_id: (*self.client_id).into(),
            message: d.message.view(&ups),
            reason: why.into(),
        };
        self.broker.hooks.message_event(point, &view);
    }

    /// Writes the whole buffer, waiting as long as it takes: only for closing, under a timeout.
    async fn flush_all<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) -> std::io::Result<()> {
        stream.write_all(&self.wbuf).await?;
        metrics::add(&self.broker.metrics.bytes_sent, self.wbuf.len() as u64);
        self.wbuf.clear();
        stream.flush().await
    }

    async fn run<S>(&mut self, stream: &mut S, rbuf: &mut BytesMut) -> Exit
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut shutdown = self.broker.shutdown_signal();
        let limits = &self.broker.config.limits;
        let max_packet = limits.max_packet_size;
        let stall_limit = Duration::from_secs(limits.slow_consumer_timeout);
        let keep_alive = self.keep_alive;
        let mut last_read = Instant::now();
        // Since when the write buffer has held data without the client taking any of it.
        let mut write_waiting_since: Option<Instant> = None;
        let deadline = tokio::time::sleep(if keep_alive.is_zero() {
            NEVER
        } else {
            keep_alive
        });
        tokio::pin!(deadline);
        // Packets that arrived together with CONNECT are waiting in `rbuf`.
        let mut input_pending = true;
        loop {
            if self.paused && self.broker.below_low_watermark() {
                self.paused = false;
            }
            let now = Instant::now();
            self.control_rate.refresh(now);
            let throttled = self.control_rate.blocked_until();
            if input_pending && !self.paused && throttled.is_none() {
                match self.decode_all(rbuf, max_packet).await {
                    Ok(done) => input_pending = !done,
                    Err(exit) => return exit,
                }
            }
            if self.wbuf.len() < WRITE_BUFFER_HIGH {
                self.drain_queue();
            }
            if self.wbuf.is_empty() {
                write_waiting_since = None;
            } else if write_waiting_since.is_none() {
                write_waiting_since = Some(Instant::now());
            }
            let below_high = self.wbuf.len() < WRITE_BUFFER_HIGH;
            let reading = below_high && !self.paused && !input_pending && throttled.is_none();
            // New deliveries are taken when the buffer is empty: while the socket is full, the
            // queue fills up and the next drain takes a large batch, instead of waking up for
            // every message.
            let room = self.wbuf.is_empty() && self.outgoing.len() < self.window;
            // Wake up early enough for whichever limit comes first.
            let mut due = (!keep_alive.is_zero()).then(|| last_read + keep_alive);
            if let Some(since) = write_waiting_since {
                due = Some(due.map_or(since + stall_limit, |d| d.min(since + stall_limit)));
            }
            if self.paused {
                let recheck = now + BACKPRESSURE_RECHECK;
                due = Some(due.map_or(recheck, |d| d.min(recheck)));
            }
            if let Some(until) = throttled {
                due = Some(due.map_or(until, |d| d.min(until)));
            }
            if let Some(due) = due.filter(|d| *d < deadline.deadline()) {
                deadline.as_mut().reset(due);
            }
            let io = poll_io(stream, &mut self.wbuf, &mut self.need_flush, rbuf, reading);
            tokio::select! {
                biased;
                ctrl = self.control_rx.recv() => match ctrl {
                    Some(Control::Kick { reason, done }) => return Exit::Kicked { reason, done },
                    // The session was taken by someone who dropped the sender: treat as takeover.
                    None => {
                        let (done, _) = oneshot::channel();
                        return Exit::Kicked { reason: KickReason::TakenOver, done };
                    }
                },
                // The guard `wait_for` returns is not Send: drop it inside the branch future.
                _ = async { shutdown.wait_for(|s| *s).await.map(|_| ()) } => return Exit::Shutdown,
                event = io => match event {
                    Ok(IoEvent { read, written }) => {
                        if written > 0 {
                            metrics::add(&self.broker.metrics.bytes_sent, written as u64);
                            write_waiting_since = None;
                        }
                        match read {
                            Some(0) => return Exit::Closed,
                            Some(n) => {
                                metrics::add(&self.broker.metrics.bytes_received, n as u64);
                                last_read = Instant::now();
                                input_pending = true;
                            }
                            None => {}
                        }
                    }
                    Err(e) => return Exit::Io(e),
                },
                _ = self.session.notified(), if room => {}
                _ = &mut deadline => {
                    let now = Instant::now();
                    if self.paused || input_pending || self.control_rate.blocked_until().is_some() {
                        // Not reading is the broker's choice: it is not the client's silence.
                        last_read = now;
                    }
                    if !keep_alive.is_zero() && now >= last_read + keep_alive {
                        return Exit::KeepAliveTimeout;
                    }
                    if write_waiting_since.is_some_and(|since| now >= since + stall_limit) {
                        return Exit::SlowConsumer;
                    }
                    let next = if keep_alive.is_zero() { now + NEVER } else { last_read + keep_alive };
                    deadline.as_mut().reset(next);
                }
            }
        }
    }

    /// Decodes and handles the complete packets in `rbuf`. `Ok(true)` when none is left,
    /// `Ok(false)` when it stopped early because the connection was paused (back-pressure).
    ///
    /// With `durability = "ack"`, answers that promise durability (PUBACK, PUBREC, SUBACK,
    /// UNSUBACK for a persistent session) wait in the write buffer until the session store has
    /// committed what they acknowledge: one wait per batch of packets, not per packet, and on
    /// every way out — a protocol error later in the batch must not flush them early.
    async fn decode_all(&mut self, rbuf: &mut BytesMut, max_packet: usize) -> Result<bool, Exit> {
        // The high-water mark is looked at every BACKPRESSURE_BATCH routed messages (reading the
        // broker-wide total costs a sum over its shards), so a batch may overshoot it by that.
        const BACKPRESSURE_BATCH: u32 = 64;
        let mut routed = 0;
        let submitted_before = self.broker.store_submitted();
        let result = async {
            while !self.paused && self.control_rate.blocked_until().is_none() {
                match codec::decode(rbuf, Some(self.version), max_packet)? {
                    Some(packet) => {
                        self.handle(packet).await?;
                        if std::mem::take(&mut self.published) {
                            routed += 1;
                            if routed % BACKPRESSURE_BATCH == 0 {
                                self.check_high_watermark();
                            }
                        }
                    }
                    None => return Ok(true),
                }
            }
            Ok(false)
        }
        .await;
        if routed % BACKPRESSURE_BATCH != 0 {
            self.check_high_watermark();
        }
        if std::mem::take(&mut self.needs_commit) {
            if let Err(e) = self.broker.store_committed(submitted_before).await {
                // Nothing that promised durability may go out.
                self.wbuf.clear();
                return Err(Exit::StoreFailed(e.to_string()));
            }
        }
        result
    }

    /// Pauses reading from this publisher while the broker is over its high-water mark.
    fn check_high_watermark(&mut self) {
        if self.broker.over_high_watermark() {
            if !self.paused {
                tracing::debug!(client_id = %self.client_id, queued_bytes = self.broker.queue_limits.total(), "memory high-water mark reached: pausing reads from this publisher");
                metrics::add(&self.broker.metrics.publishers_paused, 1);
            }
            self.paused = true;
        }
    }

    /// Submits a change of this session to the live store (persistent sessions only).
    fn store(&self, op: super::store::Op) {
        if let Some(store) = self.session.live_store() {
            store.submit(op);
        }
    }

    async fn handle(&mut self, packet: Packet) -> Result<(), Exit> {
        match packet {
            Packet::Publish(p) => self.on_publish(p).await,
            Packet::PubAck(r) => {
                if let Some(pos) = self
                    .outgoing
                    .iter()
                    .position(|o| o.packet_id == r.packet_id && o.delivery.qos == QoS::AtLeastOnce)
                {
                    if let Some(o) = self.outgoing.remove(pos) {
                        self.forget(&o.delivery);
                        self.message_event(HookPoint::MESSAGE_ACKED, &o.delivery, "");
                    }
                }
                Ok(())
            }
            Packet::PubRec(r) => {
                let pos = self
                    .outgoing
                    .iter()
                    .position(|o| o.packet_id == r.packet_id && o.delivery.qos == QoS::ExactlyOnce);
                match pos {
                    // A failure reason ends the exchange (section 4.3.3).
                    Some(pos) if r.reason_code >= 0x80 => {
                        if let Some(o) = self.outgoing.remove(pos) {
                            self.forget(&o.delivery);
                        }
                    }
                    Some(pos) => {
                        self.outgoing[pos].released = true;
                        let seq = self.outgoing[pos].delivery.seq;
                        if seq > 0 {
                            self.store(super::store::Op::SetInflight {
                                client_id: self.client_id.clone(),
                                seq,
                                packet_id: r.packet_id.get(),
                                released: true,
                            });
                        }
                        self.push(&Packet::PubRel(PubResp::new(r.packet_id)));
                    }
                    None => {
                        let mut rel = PubResp::new(r.packet_id);
                        rel.reason_code = reason::PACKET_IDENTIFIER_NOT_FOUND;
                        self.push(&Packet::PubRel(rel));
                    }
                }
                Ok(())
            }
            Packet::PubComp(r) => {
                if let Some(pos) = self
                    .outgoing
                    .iter()
                    .position(|o| o.packet_id == r.packet_id && o.released)
                {
                    if let Some(o) = self.outgoing.remove(pos) {
                        self.forget(&o.delivery);
                        self.message_event(HookPoint::MESSAGE_ACKED, &o.delivery, "");
                    }
                }
                Ok(())
            }
            Packet::PubRel(r) => {
                let mut comp = PubResp::new(r.packet_id);
                match self
                    .incoming_qos2
                    .iter()
                    .position(|id| *id == r.packet_id.get())
                {
                    Some(pos) => {
                        self.incoming_qos2.swap_remove(pos);
                        self.store(super::store::Op::DeleteQos2 {
                            client_id: self.client_id.clone(),
                            packet_id: r.packet_id.get(),
                        });
                    }
                    None => comp.reason_code = reason::PACKET_IDENTIFIER_NOT_FOUND,
                }
                self.push(&Packet::PubComp(comp));
                Ok(())
            }
            Packet::Subscribe(s) => {
                self.control_rate.spend();
                self.on_subscribe(s).await
            }
            Packet::Unsubscribe(u) => {
                self.control_rate.spend();
                self.on_unsubscribe(u)
            }
            Packet::PingReq => {
                self.control_rate.spend();
                self.push(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => self.on_disconnect(d),
            Packet::Connect(_) => Err(Exit::protocol(
                reason::PROTOCOL_ERROR,
                "[MQTT-3.1.0-2] second CONNECT on a connection",
            )),
            Packet::Auth(a) => {
                self.control_rate.spend();
                self.on_auth(a).await
            }
            other => Err(Exit::protocol(
                reason::PROTOCOL_ERROR,
                format!("[MQTT-2.1.2] a client may not send {}", other.name()),
            )),
        }
    }

    /// An AUTH from a connected client: re-authentication (section 4.12.1) with the method the
    /// connection was accepted with.
    async fn on_auth(&mut self, a: codec::Auth) -> Result<(), Exit> {
        use plugin_api::{EnhancedAuthOutcome, EnhancedAuthRequest};
        let Some(auth) = &mut self.enhanced else {
            return Err(Exit::protocol(
                reason::PROTOCOL_ERROR,
                "[MQTT-4.12.0-7] AUTH on a connection without enhanced authentication",
            ));
        };
        if a.properties.authentication_method.as_deref() != Some(auth.method.as_str()) {
            return Err(Exit::protocol(
                reason::PROTOCOL_ERROR,
                "[MQTT-4.12.1-1] re-authentication must use the CONNECT's method",
            ));
        }
        let step = match (a.reason_code, auth.step) {
            (reason::RE_AUTHENTICATE, None) => 0,
            (reason::CONTINUE_AUTHENTICATION, Some(step)) => step,
            _ => {
                return Err(Exit::protocol(
                    reason::PROTOCOL_ERROR,
                    "AUTH reason code out of sequence",
                ))
            }
        };
        let request = EnhancedAuthRequest {
            client: self.identity.clone(),
            method: auth.method.as_str().into(),
            data: a
                .properties
                .authentication_data
                .map(|d| d.to_vec())
                .unwrap_or_default()
                .into(),
            step,
            reauthenticate: true,
        };
        let handler = auth.handler.clone();
        let answer = self
            .broker
            .hooks
            .enhanced_auth(&request, Some(&handler))
            .await
            .map(|(_, r)| r);
        let method = auth.method.clone();
        match answer {
            Some(r) if r.outcome == EnhancedAuthOutcome::CONTINUE => {
                auth.step = Some(step + 1);
                self.push(&auth_packet(
                    reason::CONTINUE_AUTHENTICATION,
                    &method,
                    &r.data,
                ));
                Ok(())
            }
            Some(r) if r.outcome == EnhancedAuthOutcome::SUCCESS => {
                auth.step = None;
                self.identity.is_superuser = r.superuser;
                self.session.acl_cache.lock().clear();
                *self.session.info.lock() = Some(self.identity.clone());
                self.push(&auth_packet(reason::SUCCESS, &method, &r.data));
                Ok(())
            }
            other => {
                let code = other
                    .map(|r| r.reason_code)
                    .filter(|c| *c >= 0x80)
                    .unwrap_or(reason::NOT_AUTHORIZED);
                Err(Exit::protocol(code, "re-authentication failed"))
            }
        }
    }

    /// Resolves the topic of an incoming PUBLISH, applying v5 topic aliases (section 3.3.2.3.4).
    fn resolve_topic(&mut self, p: &Publish) -> Result<TopicName, Exit> {
        match p.properties.topic_alias {
            None => TopicName::new(&p.topic)
                .map_err(|e| Exit::protocol(reason::TOPIC_NAME_INVALID, e.to_string())),
            Some(alias) => {
                let slot = (alias as usize)
                    .checked_sub(1)
                    .filter(|i| *i < self.topic_aliases.len())
                    .ok_or_else(|| {
                        Exit::protocol(
                            reason::TOPIC_ALIAS_INVALID,
                            format!("[MQTT-3.3.2-8] topic alias {alias} out of range"),
                        )
                    })?;
                if p.topic.is_empty() {
                    self.topic_aliases[slot].clone().ok_or_else(|| {
                        Exit::protocol(
                            reason::PROTOCOL_ERROR,
                            format!(
                                "topic alias {alias} used before it was set (section 3.3.2.3.4)"
                            ),
                        )
                    })
                } else {
                    let topic = TopicName::new(&p.topic)
                        .map_err(|e| Exit::protocol(reason::TOPIC_NAME_INVALID, e.to_string()))?;
                    self.topic_aliases[slot] = Some(topic.clone());
                    Ok(topic)
                }
            }
        }
    }

    /// Runs the ACL chain (through the per-connection cache) for `topic`; true = allowed.
    /// Superusers and brokers without ACL plugins skip it. `client.check_authz_complete`
    /// reports every decision.
    async fn acl_allows(&self, access: Access, topic: &str) -> bool {
        let (allowed, source) = self.acl_decide(access, topic).await;
        let hooks = &self.broker.hooks;
        if hooks.enabled(HookPoint::CLIENT_CHECK_AUTHZ_COMPLETE) {
            let request = AclRequest {
                client: self.identity.clone(),
                access,
                topic: topic.into(),
            };
            hooks.authz_complete(&request, allowed, source);
        }
        allowed
    }

    /// The ACL decision for `topic` and where it came from (`superuser`, `default`, `cache`,
    /// `plugin`).
    async fn acl_decide(&self, access: Access, topic: &str) -> (bool, &'static str) {
        let hooks = &self.broker.hooks;
        if self.identity.is_superuser {
            return (true, "superuser");
        }
        if !hooks.enabled(HookPoint::CLIENT_CHECK_ACL) {
            return (true, "default");
        }
        let acl = &self.broker.config.acl;
        let ttl = Duration::from_secs(acl.cache_ttl_secs);
        if let Some(hit) = self.session.acl_cache.lock().get(access, topic, ttl) {
            return (hit, "cache");
        }
        let request = AclRequest {
            client: self.identity.clone(),
            access,
            topic: topic.into(),
        };
        let (allowed, source) = match hooks.check_acl(&request).await {
            AclDecision::Allow => (true, "plugin"),
            AclDecision::Deny => (false, "plugin"),
            AclDecision::NoPlugin => (true, "default"),
            AclDecision::NoMatch => (acl.no_match == Decision::Allow, "default"),
        };
        self.session
            .acl_cache
            .lock()
            .put(access, topic, allowed, acl.cache_size);
        if !allowed {
            tracing::info!(client_id = %self.client_id, ?access, topic, "denied by ACL");
        }
        (allowed, source)
    }

    async fn on_publish(&mut self, p: Publish) -> Result<(), Exit> {
        metrics::add(&self.broker.metrics.messages_received, 1);
        let topic = self.resolve_topic(&p)?;
        let max_levels = self.broker.config.limits.max_topic_levels;
        if !within_levels(topic.as_str(), max_levels) {
            return Err(Exit::protocol(
                reason::TOPIC_NAME_INVALID,
                format!("topic name has more than limits.max_topic_levels ({max_levels}) levels"),
            ));
        }
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(Exit::protocol(
                reason::PROTOCOL_ERROR,
                "[MQTT-3.3.4-6] PUBLISH from a client carries a subscription identifier",
            ));
        }
        let mqtt = &self.broker.config.mqtt;
        if p.qos as u8 > mqtt.maximum_qos {
            return Err(Exit::protocol(
                reason::QOS_NOT_SUPPORTED,
                "[MQTT-3.2.2-11] PUBLISH QoS above the Maximum QoS (mqtt.maximum_qos)",
            ));
        }
        if p.retain && !mqtt.retain_available {
            return Err(Exit::protocol(
                reason::RETAIN_NOT_SUPPORTED,
                "[MQTT-3.2.2-14] PUBLISH with RETAIN, and mqtt.retain_available = false",
            ));
        }
        if p.qos == QoS::ExactlyOnce {
            let Some(id) = p.packet_id else {
                return Err(Exit::protocol(
                    reason::MALFORMED_PACKET,
                    "QoS 2 without packet id",
                ));
            };
            if self.incoming_qos2.contains(&id.get()) {
                // A resend of a message already routed: acknowledge again, do not route twice.
                self.push(&Packet::PubRec(PubResp::new(id)));
                return Ok(());
            }
            if self.incoming_qos2.len() >= self.broker.config.limits.receive_maximum as usize {
                return Err(Exit::protocol(
                    reason::RECEIVE_MAXIMUM_EXCEEDED,
                    "[MQTT-3.3.4-9] more unacknowledged QoS 2 PUBLISH than Receive Maximum",
                ));
            }
        }
        let reserved = is_sys_topic(topic.as_str()) && !self.broker.config.acl.client_publish_sys;
        if reserved {
            tracing::info!(client_id = %self.client_id, topic = %topic, "publish to $SYS refused (acl.client_publish_sys = false)");
        }
        let reason_code = if reserved || !self.acl_allows(Access::Publish, topic.as_str()).await {
            if self.broker.config.acl.deny_action == DenyAction::Disconnect {
                return Err(Exit::protocol(
                    reason::NOT_AUTHORIZED,
                    format!("publish to {topic} denied by ACL"),
                ));
            }
            // v3 has no way to say so: the message is dropped and acknowledged as usual.
            if self.version.is_v5() {
                reason::NOT_AUTHORIZED
            } else {
                reason::SUCCESS
            }
        } else {
            let mut properties = p.properties;
            let expires_at = properties
                .message_expiry_interval
                .take()
                .map(|s| Instant::now() + Duration::from_secs(s as u64));
            properties.topic_alias = None;
            let message = Message {
                topic,
                payload: own_bytes(p.payload),
                qos: p.qos,
                retain: p.retain,
                properties: properties.into(),
                publisher: Some(self.client_id.clone()),
                expires_at,
            };
            let matched = self
                .broker
                .publish(
                    message,
                    self.identity
                        .username
                        .as_ref()
                        .map(|u| u.as_str())
                        .into_option(),
                    false,
                )
                .unwrap_or(0);
            self.published = true;
            if matched == 0 && self.version.is_v5() {
                reason::NO_MATCHING_SUBSCRIBERS
            } else {
                reason::SUCCESS
            }
        };
        // With a live store, the answer waits for what routing submitted (see decode_all).
        self.needs_commit |=
            p.qos != QoS::AtMostOnce && self.broker.queue_limits.live_store.get().is_some();
        match (p.qos, p.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => {
                let mut ack = PubResp::new(id);
                ack.reason_code = reason_code;
                self.push(&Packet::PubAck(ack));
            }
            (QoS::ExactlyOnce, Some(id)) => {
                if reason_code < 0x80 {
                    self.incoming_qos2.push(id.get());
                    self.store(super::store::Op::PutQos2 {
                        client_id: self.client_id.clone(),
                        packet_id: id.get(),
                    });
                }
                let mut rec = PubResp::new(id);
                rec.reason_code = reason_code;
                self.push(&Packet::PubRec(rec));
            }
            _ => {}
        }
        Ok(())
    }

    /// Applies the `client.subscribe` / `client.unsubscribe` fold to a filter; returns the
    /// effective filter string (with its `$share/<group>/` prefix, if any).
    /// Runs the `client.subscribe` / `client.unsubscribe` fold for one filter: the filter to
    /// use (as the client would have written it, `$share/…` kept) and what plugins decided.
    fn decide_filter(
        &self,
        point: HookPoint,
        raw: &str,
        group: Option<&Arc<str>>,
        filter: &TopicFilter,
        options: SubOptions,
    ) -> (String, Option<crate::hooks::SubscribeOutcome>) {
        if !self.broker.hooks.enabled(point) {
            return (raw.to_owned(), None);
        }
        let view = SubscribeView {
            client: self.identity.view(),
            filter: filter.as_str().into(),
            share_group: group.map(|g| (**g).into()).into(),
            options,
        };
        match self.broker.hooks.subscribe_decision(point, &view) {
            None => (raw.to_owned(), None),
            Some(outcome) => {
                let effective = match (&outcome.filter, group) {
                    (None, _) => raw.to_owned(),
                    (Some(new), Some(g)) => format!("$share/{g}/{new}"),
                    (Some(new), None) => new.clone(),
                };
                (effective, Some(outcome))
            }
        }
    }

    async fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Exit> {
        let v5 = self.version.is_v5();
        let id = s.properties.subscription_identifiers.first().copied();
        let mqtt = &self.broker.config.mqtt;
        if id.is_some() && !mqtt.subscription_identifiers_available {
            return Err(Exit::protocol(
                reason::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
                "SUBSCRIBE with a Subscription Identifier, and mqtt.subscription_identifiers_available = false",
            ));
        }
        let (maximum_qos, wildcards, shared) = (
            mqtt.maximum_qos,
            mqtt.wildcard_subscription_available,
            mqtt.shared_subscription_available,
        );
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut added = Vec::new();
        let max_levels = self.broker.config.limits.max_topic_levels;
        for (raw, options) in s.filters {
            if raw.is_empty() {
                return Err(Exit::protocol(
                    reason::PROTOCOL_ERROR,
                    "[MQTT-4.7.3-1] empty topic filter in SUBSCRIBE",
                ));
            }
            if !within_levels(&raw, max_levels) {
                tracing::info!(client_id = %self.client_id, max_levels, "topic filter refused: more than limits.max_topic_levels levels");
                codes.push(reason::TOPIC_FILTER_INVALID);
                continue;
            }
            let (group, filter) = match TopicFilter::parse(&raw) {
                Ok(parsed) => parsed,
                Err(e) => {
                    tracing::debug!(client_id = %self.client_id, filter = %raw, error = %e, "invalid topic filter");
                    codes.push(reason::TOPIC_FILTER_INVALID);
                    continue;
                }
            };
            if group.is_some() && !shared {
                codes.push(if v5 {
                    reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
                } else {
                    0x80
                });
                continue;
            }
            if filter.has_wildcard() && !wildcards {
                codes.push(if v5 {
                    reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED
                } else {
                    0x80
                });
                continue;
            }
            if v5 && group.is_some() && options.no_local {
                return Err(Exit::protocol(
                    reason::PROTOCOL_ERROR,
                    "[MQTT-3.8.3-4] No Local on a shared subscription",
                ));
            }
            // ACL sees the filter as the client sent it, before any rewrite.
            if !self.acl_allows(Access::Subscribe, &raw).await {
                codes.push(reason::NOT_AUTHORIZED);
                continue;
            }
            let (effective, decision) = self.decide_filter(
                HookPoint::CLIENT_SUBSCRIBE,
                &raw,
                group.as_ref(),
                &filter,
                sub_options(&options),
            );
            let mut options = options;
            let mut sub_id = id;
            if let Some(d) = &decision {
                if let Some(code) = d.refused {
                    codes.push(if v5 { code } else { 0x80 });
                    continue;
                }
                options.qos = QoS::from_u8(d.options.qos).unwrap_or(options.qos);
                options.no_local = d.options.no_local;
                options.retain_as_published = d.options.retain_as_published;
                options.retain_handling = match d.options.retain_handling {
                    1 => RetainHandling::SendIfNew,
                    2 => RetainHandling::DoNotSend,
                    _ => RetainHandling::SendAtSubscribe,
                };
                if let Some(new_id) = d.subscription_id {
                    sub_id = (new_id > 0).then_some(new_id);
                }
            }
            // Granted at most the Maximum QoS.
            if options.qos as u8 > maximum_qos {
                options.qos = QoS::from_u8(maximum_qos).unwrap_or(options.qos);
            }
            let (group, filter) = if effective == raw {
                (group, filter)
            } else {
                match TopicFilter::parse(&effective) {
                    Ok(parsed) => parsed,
                    Err(e) => {
                        tracing::warn!(client_id = %self.client_id, filter = %effective, error = %e, "client.subscribe returned an invalid filter; keeping the original");
                        (group, filter)
                    }
                }
            };
            let key = subscription_key(group.as_deref(), &filter);
            let is_new = self.broker.add_subscription(
                &self.session,
                key,
                group.clone(),
                filter.clone(),
                options,
                sub_id,
            );
            added.push((group, filter, options, is_new, sub_id));
            codes.push(options.qos as u8);
        }
        if !added.is_empty() && self.session.live_store().is_some() {
            self.broker.store_session(&self.session);
            self.needs_commit = true;
        }
        self.push(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: Properties::default(),
            reason_codes: codes,
        }));
        if self.broker.hooks.enabled(HookPoint::SESSION_SUBSCRIBED) {
            for (group, filter, options, is_new, sub_id) in &added {
                let sub = SubscriptionView {
                    filter: filter.as_str().into(),
                    share_group: group.as_deref().map(Into::into).into(),
                    options: sub_options(options),
                    is_new: *is_new,
                    subscription_id: sub_id.unwrap_or(0),
                };
                let mut ev = event(self.identity.view(), "", 0);
                ev.subscription = Some(sub).into();
                self.broker.hooks.notify(HookPoint::SESSION_SUBSCRIBED, &ev);
            }
        }
        Ok(())
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), Exit> {
        if u.filters.iter().any(|f| f.is_empty()) {
            return Err(Exit::protocol(
                reason::PROTOCOL_ERROR,
                "[MQTT-4.7.3-1] empty topic filter in UNSUBSCRIBE",
            ));
        }
        let mut codes = Vec::with_capacity(u.filters.len());
        for raw in &u.filters {
            let key = match TopicFilter::parse(raw) {
                Ok((group, filter)) => {
                    let effective = self
                        .decide_filter(
                            HookPoint::CLIENT_UNSUBSCRIBE,
                            raw,
                            group.as_ref(),
                            &filter,
                            SubOptions::default(),
                        )
                        .0;
                    // The key the subscription was stored under (`$queue/x` is
                    // `$share/$queue/x`).
                    match TopicFilter::parse(&effective) {
                        Ok((group, filter)) => subscription_key(group.as_deref(), &filter),
                        Err(_) => effective,
                    }
                }
                Err(_) => raw.clone(),
            };
            let removed = self.session.subscriptions.lock().remove(&key);
            match removed {
                Some(sub) => {
                    self.broker.router.write().remove(
                        sub.group.as_ref(),
                        &sub.filter,
                        &self.session.id,
                    );
                    codes.push(reason::SUCCESS);
                    if self.broker.hooks.enabled(HookPoint::SESSION_UNSUBSCRIBED) {
                        let view = SubscriptionView {
                            filter: sub.filter.as_str().into(),
                            share_group: sub.group.as_deref().map(Into::into).into(),
                            options: sub_options(&sub.options),
                            is_new: false,
                            subscription_id: sub.id.unwrap_or(0),
                        };
                        let mut ev = event(self.identity.view(), "", 0);
                        ev.subscription = Some(view).into();
                        self.broker
                            .hooks
                            .notify(HookPoint::SESSION_UNSUBSCRIBED, &ev);
                    }
                }
                None => codes.push(reason::NO_SUBSCRIPTION_EXISTED),
            }
        }
        if self.session.live_store().is_some() {
            self.broker.store_session(&self.session);
            self.needs_commit = true;
        }
        self.push(&Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            properties: Properties::default(),
            reason_codes: codes,
        }));
        Ok(())
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Result<(), Exit> {
        if let Some(expiry) = d.properties.session_expiry_interval {
            // [MQTT-3.14.2-2]: a session that expired at close may not be made persistent here.
            if self.session_expiry == 0 && expiry != 0 {
                return Err(Exit::protocol(
                    reason::PROTOCOL_ERROR,
                    "[MQTT-3.14.2-2] DISCONNECT sets a session expiry after CONNECT set 0",
                ));
            }
            self.session_expiry =
                expiry.min(self.broker.config.session.max_session_expiry_interval);
        }
        Err(Exit::Disconnect {
            with_will: d.reason_code == reason::DISCONNECT_WITH_WILL,
        })
    }

    /// Closes the connection: tells a v5 client why, parks the session, handles the will.
    async fn finish<S: AsyncWrite + Unpin>(&mut self, stream: &mut S, exit: Exit) {
        if self.version.is_v5() {
            if let Some(reason_code) = exit.disconnect_reason() {
                let mut properties = Properties::default();
                if self.problem_information {
                    if let Exit::Protocol { message, .. } = &exit {
                        properties.reason_string = Some(message.clone());
                    }
                }
                self.push(&Packet::Disconnect(Disconnect {
                    reason_code,
                    properties,
                }));
            }
        }
        // Best effort: a peer that stopped reading must not hold the task.
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, async {
            let _ = self.flush_all(stream).await;
            let _ = stream.shutdown().await;
        })
        .await;

        match &exit {
            Exit::Protocol { .. } => metrics::add(&self.broker.metrics.protocol_errors, 1),
            Exit::SlowConsumer => metrics::add(&self.broker.metrics.slow_consumers_disconnected, 1),
            _ => {}
        }
        match &exit {
            Exit::Protocol { message, .. } => {
                tracing::info!(client_id = %self.client_id, peer = %self.peer, reason = %message, "protocol error, connection closed")
            }
            Exit::Io(e) => {
                tracing::info!(client_id = %self.client_id, peer = %self.peer, error = %e, "connection error")
            }
            Exit::StoreFailed(e) => {
                tracing::error!(client_id = %self.client_id, peer = %self.peer, error = %e, "session store failed: connection closed without acknowledging")
            }
            _ => {}
        }
        tracing::info!(client_id = %self.client_id, peer = %self.peer, reason = exit.label(), "client disconnected");
        let hooks = &self.broker.hooks;
        let view = self.identity.view();
        if matches!(
            exit,
            Exit::Kicked {
                reason: KickReason::TakenOver,
                ..
            }
        ) {
            hooks.notify(HookPoint::SESSION_TAKENOVER, &event(view, "", 0));
        }
        hooks.notify(
            HookPoint::CLIENT_DISCONNECTED,
            &event(view, exit.label(), 0),
        );

        // Hand the state back to the session, unless a newer connection already holds it
        // (possible only when this one was too slow to answer a takeover).
        let still_ours = {
            let mut control = self.session.control.lock();
            let ours = self
                .session
                .generation
                .load(std::sync::atomic::Ordering::Acquire)
                == self.generation;
            if ours {
                *control = None;
                self.session.set_online(false);
                *self.session.info.lock() = None;
                let mut parked = self.session.parked.lock();
                parked.outgoing = std::mem::take(&mut self.outgoing);
                parked.incoming_qos2 = std::mem::take(&mut self.incoming_qos2);
                parked.last_packet_id = self.last_packet_id;
            }
            ours
        };
        self.session.expiry_interval.store(
            self.session_expiry as u64,
            std::sync::atomic::Ordering::Relaxed,
        );

        let publish_will = !matches!(exit, Exit::Disconnect { with_will: false });
        let will = self.will.take().filter(|_| publish_will);
        if let Some(will) = will {
            let delay = will.properties.will_delay_interval.unwrap_or(0);
            let mut properties = will.properties;
            let expires_at = properties
                .message_expiry_interval
                .take()
                .map(|s| Instant::now() + Duration::from_secs(s as u64));
            properties.will_delay_interval = None;
            match TopicName::new(&will.topic) {
                Ok(topic) => {
                    let message = Message {
                        topic,
                        payload: own_bytes(will.payload),
                        qos: will.qos,
                        retain: will.retain,
                        properties: properties.into(),
                        publisher: Some(self.client_id.clone()),
                        expires_at,
                    };
                    if delay > 0 && self.session_expiry > 0 && still_ours {
                        let delay = delay.min(self.session_expiry);
                        self.broker.schedule_will(
                            self.session.clone(),
                            message,
                            self.generation,
                            Duration::from_secs(delay as u64),
                        );
                    } else {
                        self.broker.publish(
                            message,
                            self.identity
                                .username
                                .as_ref()
                                .map(|u| u.as_str())
                                .into_option(),
                            true,
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(client_id = %self.client_id, error = %e, "will topic invalid; will dropped")
                }
            }
        }

        if still_ours && self.session_expiry > 0 {
            self.broker.store_session(&self.session);
        }
        if still_ours {
            match self.session_expiry {
                0 => self.broker.end_session(&self.session, self.generation),
                u32::MAX => {}
                secs => self.broker.schedule_expiry(
                    self.session.clone(),
                    self.generation,
                    Duration::from_secs(secs as u64),
                ),
            }
        }
        if let Exit::Kicked { done, .. } = exit {
            let _ = done.send(());
        }
    }
}

/// True when `topic` (a name or a filter) has at most `max` levels. Counts separators, so
/// it costs one pass over the bytes and no allocation.
fn within_levels(topic: &str, max: usize) -> bool {
    topic.bytes().filter(|b| *b == b'/').count() < max
}

/// True for the broker's own topics, `$SYS` and `$SYS/…`.
fn is_sys_topic(topic: &str) -> bool {
    topic
        .strip_prefix("$SYS")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// `payload` in an allocation of exactly its size, not a slice of the read buffer it was
/// decoded from (see the module docs). One copy per PUBLISH, shared by every subscriber.
fn own_bytes(payload: Bytes) -> Bytes {
    Bytes::copy_from_slice(&payload)
}

/// What one wake-up of [`poll_io`] did.
struct IoEvent {
    /// Bytes read into the read buffer (`Some(0)`: the peer closed), if it read.
    read: Option<usize>,
    /// Bytes written from the write buffer.
    written: usize,
}

/// Writes as much of `wbuf` as the socket takes (then flushes), and reads if `reading`: one
/// future that borrows the stream once, so reading and writing proceed together and neither
/// waits for the other. Ready when something was read or written.
fn poll_io<'a, S>(
    stream: &'a mut S,
    wbuf: &'a mut BytesMut,
    need_flush: &'a mut bool,
    rbuf: &'a mut BytesMut,
    reading: bool,
) -> impl Future<Output = std::io::Result<IoEvent>> + 'a
where
    S: AsyncRead + AsyncWrite + Unpin,
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
        if reading {
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
