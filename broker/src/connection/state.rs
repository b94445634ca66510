//! The state of an attached connection, owned by its task: the protocol state of
//! [`crate::session::protocol`], the buffers, and who the client is.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use plugin_api::{ClientView, EventView};

use crate::broker::Broker;
use crate::codec::ProtocolVersion;
use crate::session::protocol::{
    alias::OutAliases, inbound::Inbound, outbound::Outbound, timers::ControlRate,
};
use crate::session::{ControlReceiver, Identity, Session};

use super::auth::EnhancedAuth;
use super::io::IncomingCharge;

/// A client event for plugins, without a subscription.
pub(super) fn event<'a>(client: ClientView<'a>, reason: &'a str, reason_code: u8) -> EventView<'a> {
    EventView {
        client,
        reason: reason.into(),
        reason_code,
        subscription: None.into(),
    }
}

/// State of an attached connection. Owned by the connection's task.
pub(super) struct Connection {
    pub(super) broker: Arc<Broker>,
    pub(super) session: Arc<Session>,
    pub(super) generation: u64,
    pub(super) client_id: Arc<str>,
    pub(super) version: ProtocolVersion,
    pub(super) peer: SocketAddr,
    /// Keep Alive in force, seconds.
    pub(super) keep_alive: u16,
    /// The will (boxed: most connections have none, and it is large).
    pub(super) will: Option<Box<crate::codec::LastWill>>,
    pub(super) session_expiry: u32,
    pub(super) control_rx: ControlReceiver,
    pub(super) wbuf: BytesMut,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub(super) outbound: Outbound,
    /// QoS 2 messages received and not yet released, and the client's topic aliases.
    pub(super) inbound: Inbound,
    pub(super) client_max_packet: usize,
    /// Topic aliases this broker assigns in what it sends (v5 clients that accept some; boxed
    /// like the other rarely used parts, to keep an idle connection's task small).
    pub(super) out_aliases: Option<Box<OutAliases>>,
    pub(super) problem_information: bool,
    /// Who the client is, as plugins see it; fixed at CONNECT.
    pub(super) identity: Arc<Identity>,
    /// Bytes were written since the last flush (TLS and WebSocket streams buffer).
    pub(super) need_flush: bool,
    /// Not reading: this client published while the broker was over its high-water mark.
    pub(super) paused: bool,
    /// Control packets left in this second.
    pub(super) control_rate: ControlRate,
    /// A message was routed since the high-water mark was last looked at.
    pub(super) published: bool,
    /// Answers in the write buffer promise changes submitted to the live session store: wait
    /// for their commit before the buffer may be written.
    pub(super) needs_commit: bool,
    /// MQTT 5 enhanced authentication in force (for re-authentication).
    pub(super) enhanced: Option<Box<EnhancedAuth>>,
    /// What the read buffer holds of the broker's `limits.max_incoming_bytes`.
    pub(super) incoming: IncomingCharge,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.incoming.clear(&self.broker.metrics.incoming_bytes);
    }
}
