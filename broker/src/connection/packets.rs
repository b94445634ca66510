//! What the client sends, dispatched: acknowledgements of what the broker sent (through
//! [`Outbound`](crate::session::protocol::outbound::Outbound)), PUBREL of what it sent, PINGREQ,
//! DISCONNECT; PUBLISH, SUBSCRIBE, UNSUBSCRIBE and AUTH have their own modules.

use bytes::BytesMut;

use crate::codec::{self, reason::ReasonCode, Disconnect, Packet, PubResp};
use crate::metrics;
use crate::session::protocol::outbound::PubRecOutcome;
use crate::session::protocol::session_expiry_at_disconnect;
use crate::session::protocol::timers::ControlRate;
use crate::session::store::Op;
use plugin_api::HookPoint;

use super::publish::PendingPublish;
use super::{Connection, Exit};

/// What [`Connection::next_packet`] did.
enum Next {
    /// No complete packet is waiting.
    Empty,
    /// A packet was handled.
    Done,
    /// A packet waits for plugins.
    Deferred(Box<Deferred>),
}

/// What a packet leaves to do once plugins have answered.
pub(super) enum Deferred {
    /// A PUBLISH whose ACL decision is not cached.
    Publish(PendingPublish),
    /// SUBSCRIBE (ACL and `client.subscribe` per filter).
    Subscribe(crate::codec::Subscribe),
    /// AUTH (re-authentication).
    Auth(crate::codec::Auth),
}

impl Connection {
    /// Acts on one packet from the client, at once when that needs no plugin call (every
    /// packet but SUBSCRIBE, AUTH and a PUBLISH whose ACL decision is not cached): those are
    /// returned, for [`Connection::complete`].
    pub(super) fn handle(&mut self, packet: Packet) -> Result<Option<Deferred>, Exit> {
        let now = tokio::time::Instant::now();
        match packet {
            Packet::Publish(p) => return Ok(self.on_publish(p)?.map(Deferred::Publish)),
            Packet::PubAck(r) => {
                if let Some(d) = self.outbound.on_puback(r.packet_id) {
                    self.forget(&d);
                    self.message_event(HookPoint::MESSAGE_ACKED, &d, "");
                }
            }
            Packet::PubRec(r) => self.on_pubrec(r),
            Packet::PubComp(r) => {
                if let Some(d) = self.outbound.on_pubcomp(r.packet_id) {
                    self.forget(&d);
                    self.message_event(HookPoint::MESSAGE_ACKED, &d, "");
                }
            }
            Packet::PubRel(r) => self.on_pubrel(r),
            Packet::Subscribe(s) => {
                let cost = ControlRate::filters_cost(s.filters.len());
                self.control_rate.spend(now, cost);
                return Ok(Some(Deferred::Subscribe(s)));
            }
            Packet::Unsubscribe(u) => {
                let cost = ControlRate::filters_cost(u.filters.len());
                self.control_rate.spend(now, cost);
                self.on_unsubscribe(u)?;
            }
            Packet::PingReq => {
                self.control_rate.spend(now, 1);
                self.push(&Packet::PingResp);
            }
            Packet::Disconnect(d) => return Err(self.on_disconnect(d)),
            Packet::Connect(_) => {
                return Err(Exit::protocol(
                    ReasonCode::ProtocolError,
                    "[MQTT-3.1.0-2] second CONNECT on a connection",
                ))
            }
            Packet::Auth(a) => {
                self.control_rate.spend(now, 1);
                return Ok(Some(Deferred::Auth(a)));
            }
            other => {
                return Err(Exit::protocol(
                    ReasonCode::ProtocolError,
                    format!("[MQTT-2.1.2] a client may not send {}", other.name()),
                ))
            }
        }
        Ok(None)
    }

    /// Finishes what [`Connection::handle`] deferred: the plugin calls.
    pub(super) async fn complete(&mut self, deferred: Deferred) -> Result<(), Exit> {
        match deferred {
            Deferred::Publish(p) => self.publish_after_acl(p).await,
            Deferred::Subscribe(s) => self.on_subscribe(s).await,
            Deferred::Auth(a) => self.on_auth(a).await,
        }
    }

    /// PUBREC for a QoS 2 message the broker sent: release it (PUBREL), or forget it when the
    /// client refused it; PUBREL 0x92 for an id not in flight.
    fn on_pubrec(&mut self, r: PubResp) {
        match self.outbound.on_pubrec(r.packet_id, r.reason_code) {
            PubRecOutcome::Refused(d) => self.forget(&d),
            PubRecOutcome::Release { seq } => {
                if seq > 0 {
                    self.store(Op::SetInflight {
                        client_id: self.client_id.clone(),
                        seq,
                        packet_id: r.packet_id.get(),
                        released: true,
                    });
                }
                self.push(&Packet::PubRel(PubResp::new(r.packet_id)));
            }
            PubRecOutcome::Unknown => {
                let mut rel = PubResp::new(r.packet_id);
                rel.reason_code = ReasonCode::PacketIdentifierNotFound;
                self.push(&Packet::PubRel(rel));
            }
        }
    }

    /// PUBREL for a QoS 2 message the client sent: answered with PUBCOMP, 0x92 when the id was
    /// not waiting.
    fn on_pubrel(&mut self, r: PubResp) {
        let mut comp = PubResp::new(r.packet_id);
        if self.inbound.on_pubrel(r.packet_id) {
            self.store(Op::DeleteQos2 {
                client_id: self.client_id.clone(),
                packet_id: r.packet_id.get(),
            });
        } else {
            comp.reason_code = ReasonCode::PacketIdentifierNotFound;
        }
        self.push(&Packet::PubComp(comp));
    }

    /// DISCONNECT from the client: the session expiry it may change, and whether the will is
    /// published (v5 reason 0x04).
    fn on_disconnect(&mut self, d: Disconnect) -> Exit {
        let max = self.broker.config.session.max_session_expiry_interval;
        let requested = d.properties.session_expiry_interval;
        match session_expiry_at_disconnect(self.session_expiry, requested, max) {
            Ok(expiry) => self.session_expiry = expiry,
            Err(violation) => return violation.into(),
        }
        Exit::Disconnect {
            with_will: d.reason_code == ReasonCode::DisconnectWithWill,
        }
    }

    /// Decodes and handles the complete packets in `rbuf`. `Ok(true)` when none is left,
    /// `Ok(false)` when it stopped early because the connection was paused (back-pressure).
    ///
    /// With `durability = "ack"`, answers that promise durability (PUBACK, PUBREC, SUBACK,
    /// UNSUBACK for a persistent session) wait in the write buffer until the session store has
    /// committed what they acknowledge: one wait per batch of packets, not per packet, and on
    /// every way out — a protocol error later in the batch must not flush them early.
    pub(super) async fn decode_all(
        &mut self,
        rbuf: &mut BytesMut,
        max_packet: usize,
    ) -> Result<bool, Exit> {
        // The high-water mark is looked at every BACKPRESSURE_BATCH routed messages (reading the
        // broker-wide total costs a sum over its shards), so a batch may overshoot it by that.
        const BACKPRESSURE_BATCH: u32 = 64;
        let mut routed = 0;
        let submitted_before = self.broker.store_submitted();
        let result = async {
            while !self.paused && self.control_rate.blocked_until().is_none() {
                // Decoded and handled in a plain function, so that no packet is held across
                // the await below (it would size every connection's task).
                let deferred = match self.next_packet(rbuf, max_packet) {
                    Ok(Next::Empty) => return Ok(true),
                    Ok(Next::Done) => None,
                    Ok(Next::Deferred(d)) => Some(d),
                    Err(exit) => return Err(exit),
                };
                if let Some(deferred) = deferred {
                    // In its own allocation: the plugin futures are large, and would
                    // otherwise size every connection's task, idle or not.
                    Box::pin(self.complete(*deferred)).await?;
                }
                if std::mem::take(&mut self.published) {
                    routed += 1;
                    if routed % BACKPRESSURE_BATCH == 0 {
                        self.check_high_watermark();
                    }
                }
            }
            Ok(false)
        }
        .await;
        if routed % BACKPRESSURE_BATCH != 0 {
            self.check_high_watermark();
        }
        if std::mem::take(&mut self.needs_commit) {
            // Boxed: only persistent sessions with durability = "ack" wait here.
            let committed = Box::pin(self.broker.store_committed(submitted_before)).await;
            if let Err(e) = committed {
                // Nothing that promised durability may go out.
                self.wbuf.clear();
                return Err(Exit::StoreFailed(e.to_string()));
            }
        }
        result
    }

    /// Decodes the next complete packet in `rbuf` and acts on it as far as no plugin call is
    /// needed.
    fn next_packet(&mut self, rbuf: &mut BytesMut, max_packet: usize) -> Result<Next, Exit> {
        let Some(packet) = codec::decode(rbuf, Some(self.version), max_packet)? else {
            return Ok(Next::Empty);
        };
        Ok(match self.handle(packet)? {
            Some(deferred) => Next::Deferred(Box::new(deferred)),
            None => Next::Done,
        })
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
}
