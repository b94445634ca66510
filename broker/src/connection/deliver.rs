//! What the session queue holds, into the write buffer: PUBLISH encoding (with per-delivery
//! properties and outgoing topic aliases), the inflight window, and the message events plugins
//! see (`message.delivered`, `message.acked`, `message.dropped`).

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::codec::{self, Packet, PacketId, Properties, PublishHeader, QoS};
use crate::message::DropReason;
use crate::metrics;
use crate::session::protocol::alias::Alias;
use crate::session::store::Op;
use crate::session::Delivery;
use plugin_api::{HookPoint, MessageEventView};

use super::{Connection, WRITE_BUFFER_HIGH};

thread_local! {
    /// The batch a drain moves out of the session queue, kept per thread between drains
    /// rather than in every connection (an idle connection's task is smaller by its 24 bytes).
    /// Taken and put back, so a nested drain would only start with an empty one.
    static DRAINED: std::cell::Cell<Vec<Delivery>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Connection {
    /// Gives the write buffer room for a batch of packets when it has none (it is given back
    /// while the connection is idle).
    fn reserve_output(&mut self) {
        if self.wbuf.capacity() == 0 {
            self.wbuf.reserve(super::io::WRITE_CHUNK);
        }
    }

    /// Appends an encoded packet to the write buffer.
    pub(super) fn push(&mut self, packet: &Packet) {
        self.reserve_output();
        codec::encode(packet, self.version, &mut self.wbuf);
    }

    /// Encodes one delivery as PUBLISH into the write buffer. Returns false if the client's
    /// Maximum Packet Size forbids it ([MQTT-3.1.2-25]).
    pub(super) fn write_publish(
        &mut self,
        d: &Delivery,
        packet_id: Option<PacketId>,
        dup: bool,
    ) -> bool {
        self.reserve_output();
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
            if let Alias::Use(_) = alias {
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

    /// Moves deliveries from the session queue into the write buffer while the inflight window
    /// has room.
    pub(super) fn drain_queue(&mut self) {
        let room = self.outbound.room();
        let mut batch = DRAINED.take();
        let space = WRITE_BUFFER_HIGH.saturating_sub(self.wbuf.len());
        self.session.drain(&mut batch, room, space);
        let now = Instant::now();
        let mut sent = 0u64;
        for d in batch.drain(..) {
            if d.message.expires_at.is_some_and(|t| t <= now) {
                self.dropped(&d, DropReason::Expired);
                continue;
            }
            let seq = d.seq;
            if d.qos == QoS::AtMostOnce {
                if self.write_publish(&d, None, false) {
                    sent += 1;
                    self.message_event(HookPoint::MESSAGE_DELIVERED, &d, "");
                } else {
                    self.dropped(&d, DropReason::TooLarge);
                }
                continue;
            }
            let packet_id = self.outbound.next_packet_id();
            if self.write_publish(&d, Some(packet_id), false) {
                sent += 1;
                self.message_event(HookPoint::MESSAGE_DELIVERED, &d, "");
                if seq > 0 {
                    self.store(Op::SetInflight {
                        client_id: self.client_id.clone(),
                        seq,
                        packet_id: packet_id.get(),
                        released: false,
                    });
                }
                self.outbound.sent(packet_id, d);
            } else {
                self.dropped(&d, DropReason::TooLarge);
            }
        }
        DRAINED.set(batch);
        if sent > 0 {
            metrics::add(&self.broker.metrics.messages_sent, sent);
        }
    }

    pub(super) fn dropped(&self, d: &Delivery, why: DropReason) {
        metrics::add(&self.broker.metrics.messages_dropped, 1);
        self.forget(d);
        if self.broker.hooks.wants_dropped() {
            let ups = d.message.user_property_views();
            let view = MessageEventView {
                client_id: (*self.client_id).into(),
                message: d.message.view(&ups),
                reason: why.as_str().into(),
            };
            self.broker.hooks.dropped(&view);
        }
    }

    /// Removes a delivery from the live store once it is acknowledged or dropped.
    pub(super) fn forget(&self, d: &Delivery) {
        if d.seq > 0 {
            self.store(Op::DeleteMessage {
                client_id: self.client_id.clone(),
                seq: d.seq,
            });
        }
    }

    /// Fires `message.delivered` / `message.acked` / `message.dropped` if any plugin listens.
    pub(super) fn message_event(&self, point: HookPoint, d: &Delivery, why: &str) {
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
    pub(super) async fn flush_all<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> std::io::Result<()> {
        stream.write_all(&self.wbuf).await?;
        metrics::add(&self.broker.metrics.bytes_sent, self.wbuf.len() as u64);
        self.wbuf.clear();
        stream.flush().await
    }
    /// Submits a change of this session to the live store (persistent sessions only).
    pub(super) fn store(&self, op: Op) {
        if let Some(store) = self.session.live_store() {
            store.submit(op);
        }
    }
}
