//! From the first byte to CONNACK: read CONNECT, negotiate it
//! ([`crate::session::protocol::connect`]), authenticate, attach the session, answer CONNACK
//! and resume what the session held.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::broker::{Attached, Broker};
use crate::codec::{
    self, reason::ReasonCode, ConnAck, Connect, DecodeError, Packet, Properties, ProtocolVersion,
};
use crate::metrics;
use crate::session::protocol::connect::{negotiate, ConnectPolicy, Negotiated, Refusal};
use crate::session::protocol::machine::Machine;
use crate::session::Identity;
use plugin_api::HookPoint;

use super::auth::{authenticate, enhanced_exchange, EnhancedAuth};
use super::io::IncomingCharge;
use super::publish::own_bytes;
use super::{event, ConnInfo, Connection};

/// Reads the first packet; it must be CONNECT ([MQTT-3.1.0-1]). Answers an unsupported protocol
/// level with CONNACK 0x01 ([MQTT-3.1.2-2]).
pub(super) async fn read_connect<S>(
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
    let mut charge = IncomingCharge::default();
    let gauge = &broker.metrics.incoming_bytes;
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
                Ok(None) => {
                    // A CONNECT still arriving (decoding reserved room for the rest of it).
                    let limit = broker.config.limits.max_incoming_bytes;
                    if !charge.set(gauge, rbuf.capacity(), limit) {
                        return Err(
                            "CONNECT still arriving would pass limits.max_incoming_bytes"
                                .to_string(),
                        );
                    }
                }
                Err(DecodeError::UnsupportedProtocolLevel(level)) => {
                    let mut out = BytesMut::new();
                    let ack = Packet::ConnAck(ConnAck {
                        session_present: false,
                        reason_code: ReasonCode::UnsupportedProtocolVersion,
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
            if rbuf.len() == rbuf.capacity() {
                rbuf.reserve(super::io::READ_CHUNK);
            }
            match stream.read_buf(rbuf).await {
                Ok(0) => return Err("closed before CONNECT".to_string()),
                Ok(n) => metrics::add(&broker.metrics.bytes_received, n as u64),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    let read = tokio::time::timeout(timeout, read).await;
    // The connection from here on charges its own buffer (see `Connection::run`).
    charge.clear(gauge);
    match read {
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
/// The will, in allocations of its own: its payload and correlation data are slices of the
/// buffer the CONNECT was read into, and would pin all of it for as long as the client stays
/// connected (a 4 KiB buffer for an ordinary CONNECT, a megabyte for a large one).
fn own_will(mut will: crate::codec::LastWill) -> Box<crate::codec::LastWill> {
    will.payload = own_bytes(will.payload);
    if let Some(p) = will.properties.get_mut() {
        p.correlation_data = p.correlation_data.take().map(own_bytes);
    }
    Box::new(will)
}

/// Tells the client why it is refused (CONNACK, with a Reason String for v5) and closes; or only
/// closes when the protocol has no way to say it.
async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    version: ProtocolVersion,
    refusal: &Refusal,
    info: &ConnInfo,
    client_id: &str,
) {
    let (reason_code, why) = (refusal.code, &refusal.why);
    tracing::info!(peer = %info.peer, client_id = %client_id, reason_code = reason_code.get(), %why, "connection refused");
    if !refusal.connack {
        return;
    }
    let mut out = BytesMut::new();
    let mut properties = Properties::default();
    if version.is_v5() {
        properties.make_mut().reason_string = Some(why.to_string());
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

/// A client id for a client that sent none: unique within this broker's lifetime and, by the
/// time stamp, across restarts.
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

/// The broker's side of CONNECT negotiation, from its configuration.
fn policy(broker: &Broker) -> ConnectPolicy<'_> {
    let config = &broker.config;
    ConnectPolicy {
        limits: &config.limits,
        mqtt: &config.mqtt,
        max_session_expiry: config.session.max_session_expiry_interval,
        client_publish_sys: config.acl.client_publish_sys,
        enhanced_auth: broker.hooks.enabled(HookPoint::CLIENT_ENHANCED_AUTH),
    }
}

/// Who the client is, as plugins see it.
fn client_info(connect: &Connect, n: &Negotiated, info: &ConnInfo) -> Identity {
    let version = connect.protocol;
    let cert = (info.cert_common_name.is_some() || info.cert_subject.is_some())
        .then(|| Box::new((info.cert_common_name.clone(), info.cert_subject.clone())));
    Identity {
        client_id: n.client_id.clone(),
        username: connect.username.as_deref().map(Into::into),
        peer_ip: info.peer.ip().to_string().into_boxed_str(),
        peer_port: info.peer.port(),
        sock_port: info.local_port,
        listener: info.listener.clone(),
        websocket: info.transport == "mqtt-ws",
        proto_ver: version.level(),
        keep_alive: n.keep_alive,
        clean_start: connect.clean_start,
        expiry_interval: n.session_expiry,
        // When the CONNECT arrived: authentication plugins see the same value the
        // connected client later has, so they can name this very connection.
        connected_at_ms: crate::broker::now_ms(),
        cert,
        is_superuser: false,
    }
}

/// Authenticates the client: enhanced authentication when a v5 client names a method, else
/// the authentication chain. Returns the enhanced authentication in force and the plugin's last
/// data for CONNACK.
async fn admit<S>(
    broker: &Broker,
    stream: &mut S,
    rbuf: &mut BytesMut,
    connect: &Connect,
    identity: &mut Identity,
) -> Result<Option<(EnhancedAuth, Vec<u8>)>, Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match &connect.properties.authentication_method {
        Some(method) if connect.protocol.is_v5() => {
            let data = connect
                .properties
                .authentication_data
                .as_ref()
                .map(|d| d.to_vec())
                .unwrap_or_default();
            let (handler, result) =
                enhanced_exchange(broker, stream, rbuf, identity, method, data).await?;
            identity.is_superuser = result.superuser;
            let auth = EnhancedAuth {
                method: method.clone(),
                handler,
                step: None,
            };
            Ok(Some((auth, result.data.into_vec())))
        }
        _ => {
            identity.is_superuser = authenticate(broker, identity, connect).await?;
            Ok(None)
        }
    }
}

impl Connection {
    /// Validates CONNECT, authenticates, attaches the session and answers CONNACK.
    pub(super) async fn accept<S>(
        broker: &Arc<Broker>,
        stream: &mut S,
        rbuf: &mut BytesMut,
        connect: Box<Connect>,
        info: &ConnInfo,
    ) -> Option<Connection>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let version = connect.protocol;
        let policy = policy(broker);
        let negotiated = match negotiate(&connect, &policy, assigned_client_id) {
            Ok(n) => n,
            Err(refusal) => {
                refuse(stream, version, &refusal, info, &connect.client_id).await;
                return None;
            }
        };
        let mut identity = client_info(&connect, &negotiated, info);
        if !super::connect_fits(broker, rbuf, connect.will.as_ref(), &identity) {
            let refusal = Refusal::new(
                ReasonCode::QuotaExceeded,
                "the will and user name would pass limits.max_incoming_bytes",
            );
            refuse(stream, version, &refusal, info, &negotiated.client_id).await;
            return None;
        }
        let hooks = &broker.hooks;
        hooks.notify(HookPoint::CLIENT_CONNECT, &event(identity.view(), "", 0));
        let enhanced = match admit(broker, stream, rbuf, &connect, &mut identity).await {
            Ok(enhanced) => enhanced,
            Err(refusal) => {
                let code = refusal.code.get();
                hooks.notify(HookPoint::CLIENT_CONNACK, &event(identity.view(), "", code));
                refuse(stream, version, &refusal, info, &negotiated.client_id).await;
                return None;
            }
        };
        let (control_tx, control_rx) = crate::session::control_line();
        let client_id = &negotiated.client_id;
        let attached = match broker
            .attach(client_id, connect.clean_start, control_tx)
            .await
        {
            Ok(attached) => attached,
            Err(crate::broker::SessionLimitReached) => {
                let refusal = Refusal::new(
                    ReasonCode::QuotaExceeded,
                    "session limit reached (limits.max_sessions)",
                );
                hooks.notify(
                    HookPoint::CLIENT_CONNACK,
                    &event(identity.view(), "", refusal.code.get()),
                );
                refuse(stream, version, &refusal, info, client_id).await;
                return None;
            }
        };
        attached.session.expiry_interval.store(
            negotiated.session_expiry,
            std::sync::atomic::Ordering::Relaxed,
        );
        let auth = enhanced
            .as_ref()
            .map(|(a, d)| (a.method.as_str(), d.as_slice()));
        let properties = negotiated.connack_properties(&connect, &policy, auth);
        let mut conn = Connection::new(
            broker,
            &attached,
            &negotiated,
            &connect,
            identity,
            control_rx,
            info,
        );
        conn.enhanced = enhanced.map(|(auth, _)| Box::new(auth));
        conn.machine.push(&Packet::ConnAck(ConnAck {
            session_present: attached.session_present,
            reason_code: ReasonCode::Success,
            properties,
        }));
        conn.resume_session();
        conn.announce(&attached, info, connect.clean_start);
        Some(conn)
    }

    /// The connection state for a CONNECT just accepted.
    fn new(
        broker: &Arc<Broker>,
        attached: &Attached,
        n: &Negotiated,
        connect: &Connect,
        identity: Identity,
        control_rx: crate::session::ControlReceiver,
        info: &ConnInfo,
    ) -> Connection {
        let session = attached.session.clone();
        let machine = Machine::new(session, connect.protocol, n, &broker.config, Instant::now());
        Connection {
            machine,
            broker: broker.clone(),
            generation: attached.generation,
            peer: info.peer,
            keep_alive: n.keep_alive,
            will: connect.will.clone().map(own_will),
            control_rx,
            identity: Arc::new(identity),
            need_flush: false,
            paused: false,
            published: false,
            needs_commit: false,
            enhanced: None,
            incoming: IncomingCharge::default(),
        }
    }

    /// Takes over the session's parked state and redelivers what the previous connection left
    /// unacknowledged, in order, with DUP set ([MQTT-4.4.0-1]).
    fn resume_session(&mut self) {
        {
            let session = self.machine.session.clone();
            let mut slot = session.parked.lock();
            if let Some(parked) = slot.as_mut() {
                self.machine.resume(parked, Instant::now());
                // Attaching cancelled any pending will: nothing is left parked.
                if parked.pending_will.is_none() {
                    *slot = None;
                }
            }
        }
        let session = &self.machine.session;
        session.acl_cache.lock().clear();
        *session.info.lock() = Some(self.identity.clone());
        session.set_online(true);
        self.broker.store_session(session);
    }

    /// Tells plugins and the log that the client is connected.
    fn announce(&self, attached: &Attached, info: &ConnInfo, clean_start: bool) {
        let hooks = &self.broker.hooks;
        let view = self.identity.view();
        if attached.discarded {
            hooks.notify(HookPoint::SESSION_DISCARDED, &event(view, "", 0));
        }
        let created = if attached.session_present {
            HookPoint::SESSION_RESUMED
        } else {
            HookPoint::SESSION_CREATED
        };
        hooks.notify(created, &event(view, "", 0));
        hooks.notify(
            HookPoint::CLIENT_CONNACK,
            &event(view, "", ReasonCode::Success.get()),
        );
        hooks.notify(HookPoint::CLIENT_CONNECTED, &event(view, "", 0));
        tracing::info!(
            client_id = %self.identity.client_id,
            peer = %info.peer,
            listener = %info.listener,
            protocol = ?self.machine.version,
            keep_alive = self.keep_alive,
            clean_start,
            session_present = attached.session_present,
            "client connected"
        );
    }
}
