//! What the client sends, through the session's [`Machine`]: the packets it answers itself,
//! and the [`Request`]s it returns, carried out here against the broker — at once, or after
//! an await when plugins must be asked (SUBSCRIBE, AUTH, a PUBLISH whose ACL decision is not
//! cached).

use bytes::BytesMut;

use crate::codec::{self, Packet};
use crate::metrics;
use crate::session::protocol::machine::{Machine, Request, Target};

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
    /// Acts on one packet from the client through the machine, and carries out what it
    /// requests at once when that needs no plugin call; otherwise it is returned, for
    /// [`Connection::complete`].
    pub(super) fn handle(&mut self, packet: Packet) -> Result<Option<Deferred>, Exit> {
        let (machine, mut effects) = self.split();
        let config = &effects.broker.config;
        let request = match packet {
            // The common case, checked in place: the packet is not moved through the machine.
            Packet::Publish(mut p) => {
                metrics::add(&effects.broker.metrics.messages_received, 1);
                let Some(target) = machine.check_publish(&p, config, &mut effects)? else {
                    return Ok(None);
                };
                return Ok(self.on_publish(&mut p, target)?.map(Deferred::Publish));
            }
            // The clock is read only for the packets that spend the control budget: not for
            // every PUBACK (1.8 % of the broker's CPU in fan-in QoS 1).
            other => Machine::handle(
                machine,
                other,
                tokio::time::Instant::now,
                config,
                &mut effects,
            )?,
        };
        Ok(match request {
            None => None,
            Some(Request::Publish(mut c)) => {
                let target = Target {
                    topic: c.topic,
                    delay: c.delay,
                };
                self.on_publish(&mut c.publish, target)?
                    .map(Deferred::Publish)
            }
            Some(Request::Subscribe(s)) => Some(Deferred::Subscribe(s)),
            Some(Request::Unsubscribe(u)) => {
                self.on_unsubscribe(u);
                None
            }
            Some(Request::Auth(a)) => Some(Deferred::Auth(a)),
        })
    }

    /// Finishes what [`Connection::handle`] deferred: the plugin calls.
    pub(super) async fn complete(&mut self, deferred: Deferred) -> Result<(), Exit> {
        match deferred {
            Deferred::Publish(p) => self.publish_after_acl(p).await,
            Deferred::Subscribe(s) => self.on_subscribe(s).await,
            Deferred::Auth(a) => self.on_auth(a).await,
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
            while !self.paused && self.machine.control_rate.blocked_until().is_none() {
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
                self.machine.output().clear();
                return Err(Exit::StoreFailed(e.to_string()));
            }
        }
        result
    }

    /// Decodes the next complete packet in `rbuf` and acts on it as far as no plugin call is
    /// needed.
    fn next_packet(&mut self, rbuf: &mut BytesMut, max_packet: usize) -> Result<Next, Exit> {
        let Some(packet) = codec::decode(rbuf, Some(self.machine.version), max_packet)? else {
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
                tracing::debug!(client_id = %self.machine.client_id, queued_bytes = self.broker.queue_limits.online(), "memory high-water mark reached: pausing reads from this publisher");
                metrics::add(&self.broker.metrics.publishers_paused, 1);
            }
            self.paused = true;
        }
    }
}
