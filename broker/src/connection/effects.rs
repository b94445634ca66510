//! The machine's outputs carried out against the broker: session-store changes submitted to
//! the live store, message events to the plugins that listen (`message.delivered`,
//! `message.acked`, `message.dropped`), and the counts in `/metrics`.

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::broker::Broker;
use crate::metrics;
use crate::session::protocol::machine::{MessageEvent, Output, Outputs};
use crate::session::{Delivery, Identity};
use plugin_api::{HookPoint, MessageEventView};

use super::Connection;

/// Carries out a [`Machine`](crate::session::protocol::machine::Machine)'s outputs at once.
pub(super) struct Effects<'a> {
    pub(super) broker: &'a Broker,
    pub(super) identity: &'a Identity,
}

impl Effects<'_> {
    /// Fires a message event for the plugins hooking it.
    fn message_event(&self, event: MessageEvent, d: &Delivery) {
        let hooks = &self.broker.hooks;
        let ups = d.message.user_property_views();
        let why = match event {
            MessageEvent::Dropped(why) => why.as_str(),
            _ => "",
        };
        let view = MessageEventView {
            client_id: (*self.identity.client_id).into(),
            message: d.message.view(&ups),
            reason: why.into(),
        };
        match event {
            MessageEvent::Delivered => hooks.message_event(HookPoint::MESSAGE_DELIVERED, &view),
            MessageEvent::Acked => hooks.message_event(HookPoint::MESSAGE_ACKED, &view),
            MessageEvent::Dropped(_) => hooks.dropped(&view),
        }
    }
}

impl Outputs for Effects<'_> {
    fn wants(&self, event: MessageEvent) -> bool {
        let hooks = &self.broker.hooks;
        match event {
            MessageEvent::Delivered => hooks.enabled(HookPoint::MESSAGE_DELIVERED),
            MessageEvent::Acked => hooks.enabled(HookPoint::MESSAGE_ACKED),
            MessageEvent::Dropped(_) => hooks.wants_dropped(),
        }
    }

    fn emit(&mut self, output: Output<'_>) {
        match output {
            Output::Store(op) => {
                // Emitted only for a persistent session, which only exists with a live store.
                if let Some(store) = self.broker.queue_limits.live_store.get() {
                    store.submit(op);
                }
            }
            Output::Message(event, d) => {
                if let MessageEvent::Dropped(_) = event {
                    metrics::add(&self.broker.metrics.messages_dropped, 1);
                    if !self.wants(event) {
                        return;
                    }
                }
                self.message_event(event, d);
            }
            Output::Refused => metrics::add(&self.broker.metrics.messages_dropped, 1),
        }
    }
}

impl Connection {
    /// Moves deliveries from the session queue into the write buffer while the inflight window
    /// has room.
    pub(super) fn drain_queue(&mut self) {
        let now = tokio::time::Instant::now();
        let (machine, mut effects) = self.split();
        let sent = machine.drain_queue(now, &mut effects);
        if sent > 0 {
            metrics::add(&self.broker.metrics.messages_sent, sent);
        }
    }

    /// Writes the whole buffer, waiting as long as it takes: only for closing, under a timeout.
    pub(super) async fn flush_all<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> std::io::Result<()> {
        let wbuf = self.machine.output();
        stream.write_all(wbuf).await?;
        metrics::add(&self.broker.metrics.bytes_sent, wbuf.len() as u64);
        wbuf.clear();
        stream.flush().await
    }
}
