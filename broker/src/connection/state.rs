//! The state of an attached connection, owned by its task: the protocol state machine of
//! [`crate::session::protocol::machine`], and who the client is.

use std::net::SocketAddr;
use std::sync::Arc;

use plugin_api::{ClientView, EventView};

use crate::broker::Broker;
use crate::session::protocol::machine::Machine;
use crate::session::{ControlReceiver, Identity};

use super::auth::EnhancedAuth;
use super::effects::Effects;
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

/// State of an attached connection. Owned by the connection's task: the protocol state
/// machine, and what the task needs around it to reach the socket and the broker.
pub(super) struct Connection {
    /// The session's protocol state and the bytes to send.
    pub(super) machine: Machine,
    pub(super) broker: Arc<Broker>,
    pub(super) generation: u64,
    pub(super) peer: SocketAddr,
    /// Keep Alive in force, seconds.
    pub(super) keep_alive: u16,
    /// The will (boxed: most connections have none, and it is large).
    pub(super) will: Option<Box<crate::codec::LastWill>>,
    pub(super) control_rx: ControlReceiver,
    /// Who the client is, as plugins see it; fixed at CONNECT.
    pub(super) identity: Arc<Identity>,
    /// Bytes were written since the last flush (TLS and WebSocket streams buffer).
    pub(super) need_flush: bool,
    /// Not reading: this client published while the broker was over its high-water mark.
    pub(super) paused: bool,
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

impl Connection {
    /// The machine, and where its outputs go: carried out at once, against the broker.
    pub(super) fn split(&mut self) -> (&mut Machine, Effects<'_>) {
        let effects = Effects {
            broker: &self.broker,
            identity: &self.identity,
        };
        (&mut self.machine, effects)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.incoming.clear(&self.broker.metrics.incoming_bytes);
    }
}
