//! What the session queue holds, encoded into the output: PUBLISH with its per-delivery
//! properties (expiry left, subscription identifiers, an outgoing topic alias), within the
//! inflight window and the client's Maximum Packet Size, and the message events it causes.

use tokio::time::Instant;

use crate::codec::{self, PacketId, PublishHeader, QoS};
use crate::message::DropReason;
use crate::session::store::Op;
use crate::session::Delivery;

use super::super::alias::Alias;
use super::{Machine, MessageEvent, Output, Outputs};

/// Above this many bytes waiting in the output, no more deliveries are taken from the session
/// queue (and the driver stops reading the client, whose requests would only add answers).
pub const OUTPUT_HIGH: usize = 64 * 1024;

thread_local! {
    /// The batch a drain moves out of the session queue, kept per thread between drains
    /// rather than in every connection (an idle connection is smaller by its 24 bytes).
    /// Taken and put back, so a nested drain would only start with an empty one.
    static DRAINED: std::cell::Cell<Vec<Delivery>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Machine {
    /// Encodes one delivery as PUBLISH into the output. Returns false if the client's
    /// Maximum Packet Size forbids it ([MQTT-3.1.2-25]).
    pub(super) fn write_publish(
        &mut self,
        d: &Delivery,
        packet_id: Option<PacketId>,
        dup: bool,
        now: Instant,
    ) -> bool {
        self.reserve_output();
        let msg = &d.message;
        // v5: per-delivery properties (expiry left, subscription ids, a topic alias) on a copy.
        let needs_copy = self.version.is_v5()
            && (msg.expires_at.is_some()
                || !d.subscription_ids.is_empty()
                || self.out_aliases.is_some());
        let mut extra = needs_copy.then(|| {
            let mut copy = msg.properties.clone();
            let e = copy.make_mut();
            // [MQTT-3.3.2-6]: the expiry interval the client sees is what is left of it.
            e.message_expiry_interval = msg
                .expires_at
                .map(|t| (t.saturating_duration_since(now).as_secs() as u32).max(1));
            e.subscription_identifiers = d.subscription_ids.clone();
            // Sized with the full topic and an alias: the largest this PUBLISH can be.
            e.topic_alias = self.out_aliases.as_ref().map(|_| u16::MAX);
            copy
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
            e.make_mut().topic_alias = alias.map(Alias::id);
            if let Some(Alias::Use(_)) = alias {
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

    /// Moves deliveries from the session queue into the output while the inflight window has
    /// room and the output is below [`OUTPUT_HIGH`]; expired and oversized ones are dropped.
    /// Returns how many were written.
    pub fn drain_queue(&mut self, now: Instant, out: &mut impl Outputs) -> u64 {
        let room = self.outbound.room();
        let space = OUTPUT_HIGH.saturating_sub(self.wbuf.len());
        if space == 0 {
            return 0;
        }
        let mut batch = DRAINED.take();
        let released = std::mem::take(&mut self.released);
        self.session.drain(&mut batch, room, space, released);
        let delivered = out.wants(MessageEvent::Delivered);
        let mut sent = 0u64;
        for d in batch.drain(..) {
            if d.message.expires_at.is_some_and(|t| t <= now) {
                self.dropped(&d, DropReason::Expired, out);
                continue;
            }
            let packet_id = (d.qos != QoS::AtMostOnce).then(|| self.outbound.next_packet_id());
            if !self.write_publish(&d, packet_id, false, now) {
                self.dropped(&d, DropReason::TooLarge, out);
                continue;
            }
            sent += 1;
            if delivered {
                out.emit(Output::Message(MessageEvent::Delivered, &d));
            }
            if let Some(packet_id) = packet_id {
                if d.seq > 0 {
                    let op = Op::SetInflight {
                        client_id: self.client_id.clone(),
                        seq: d.seq,
                        packet_id: packet_id.get(),
                        released: false,
                    };
                    self.store(out, op);
                }
                self.outbound.sent(packet_id, d);
            }
        }
        DRAINED.set(batch);
        sent
    }

    /// A delivery that will not reach the client: out of the store, and counted.
    fn dropped(&mut self, d: &Delivery, why: DropReason, out: &mut impl Outputs) {
        self.forget(d, out);
        out.emit(Output::Message(MessageEvent::Dropped(why), d));
    }

    /// Removes a delivery from the session store once it is acknowledged or dropped, and
    /// notes the bytes a QoS 1 / 2 one held in its session's queue, given back with the next
    /// drain (one queue lock for a batch of acknowledgements, not one each).
    pub(super) fn forget(&mut self, d: &Delivery, out: &mut impl Outputs) {
        if d.qos != QoS::AtMostOnce {
            self.released += d.size();
        }
        if d.seq > 0 {
            let op = Op::DeleteMessage {
                client_id: self.client_id.clone(),
                seq: d.seq,
            };
            self.store(out, op);
        }
    }
}
