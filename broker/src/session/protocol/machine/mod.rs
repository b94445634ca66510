//! One connection's MQTT session as a state machine without I/O.
//!
//! A [`Machine`] is fed what happens — a decoded packet from the client with
//! [`Machine::handle`], the session queue's deliveries with [`Machine::drain_queue`], the
//! answers to what it asked for ([`Machine::acknowledge`] after routing, [`Machine::suback`]
//! after the subscriptions were made) — and answers with values:
//!
//! * the bytes to send, encoded into its write buffer ([`Machine::output`]), which the
//!   connection task writes to the socket when the socket can take them;
//! * [`Request`]s the driver must carry out because they reach beyond this connection (route
//!   a PUBLISH once the ACL allows it, make the subscriptions of a SUBSCRIBE, remove those of an
//!   UNSUBSCRIBE, run a re-authentication);
//! * [`Output`]s emitted to the driver's [`Outputs`] as they happen: changes of a persistent
//!   session for the session store, and the message events plugins may listen to;
//! * [`Close`] with a typed reason when the connection must end.
//!
//! Time is passed in (`now`); the broker's configuration is passed in by reference. Nothing
//! here opens a socket, spawns a task, reads the clock or calls a plugin, so every rule is a
//! unit test of microseconds (`tests`), and the connection task in [`crate::connection`] is
//! left with the socket, the waits and the calls into the rest of the broker.
//!
//! The parts: this file holds the state and the packets that need nothing beyond it;
//! `publish` checks and acknowledges what the client publishes, `deliver` encodes what the
//! session queue holds, and `subscribe` checks filters and answers SUBSCRIBE / UNSUBSCRIBE.

mod deliver;
mod publish;
mod subscribe;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::time::Instant;

use crate::codec::{
    self, reason::ReasonCode, Auth, Disconnect, Packet, ProtocolVersion, PubResp, Subscribe,
    Unsubscribe,
};
use crate::config::Config;
use crate::message::DropReason;
use crate::session::store::Op;
use crate::session::{Delivery, Session};

use super::alias::OutAliases;
use super::connect::Negotiated;
use super::inbound::Inbound;
use super::outbound::{Outbound, PubRecOutcome};
use super::timers::ControlRate;
use super::{session_expiry_at_disconnect, Violation};

pub use deliver::OUTPUT_HIGH;
pub use publish::{Checked, Target};

/// Why the machine ends the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    /// The client sent DISCONNECT; `with_will` for v5 reason 0x04 ([MQTT-3.14.4-3]).
    Disconnect {
        /// Publish the will all the same.
        with_will: bool,
    },
    /// The client broke the protocol.
    Violation(Violation),
}

impl From<Violation> for Close {
    fn from(v: Violation) -> Close {
        Close::Violation(v)
    }
}

/// What a packet needs from beyond the connection before it is answered.
#[derive(Debug)]
pub enum Request {
    /// A PUBLISH that passed the protocol checks: authorise it (ACL), route it (or hand it to
    /// the delayed list), then [`Machine::acknowledge`] it.
    Publish(Checked),
    /// A SUBSCRIBE: check each filter ([`Machine::check_filter`]), authorise and make the
    /// subscriptions, then [`Machine::suback`].
    Subscribe(Subscribe),
    /// An UNSUBSCRIBE with no empty filter: remove the subscriptions, then
    /// [`Machine::unsuback`].
    Unsubscribe(Unsubscribe),
    /// AUTH: a re-authentication step (section 4.12.1).
    Auth(Auth),
}

/// A message event plugins may listen to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageEvent {
    /// Written to the client.
    Delivered,
    /// Acknowledged by the client (PUBACK, or PUBCOMP for QoS 2).
    Acked,
    /// Not delivered, and why.
    Dropped(DropReason),
}

/// What the machine emits as it goes.
#[derive(Debug)]
pub enum Output<'a> {
    /// A change of a persistent session, for the session store (emitted only for sessions
    /// that have one).
    Store(Op),
    /// Something happened to a delivery (emitted only when [`Outputs::wants`] says so,
    /// except [`MessageEvent::Dropped`], which is always counted).
    Message(MessageEvent, &'a Delivery),
    /// A PUBLISH from the client refused before routing (a malformed `$delayed/…` topic):
    /// counted as dropped.
    Refused,
}

/// Where the machine's [`Output`]s go: the connection task carries them out at once, a test
/// records them.
pub trait Outputs {
    /// Whether anyone listens to `event`: when not, the machine does not emit it (building
    /// one costs, for every message).
    fn wants(&self, event: MessageEvent) -> bool;
    /// Carries out one output.
    fn emit(&mut self, output: Output<'_>);
}

/// The protocol state of one attached connection: the session it serves, what is in flight
/// both ways, the topic aliases, the control-packet budget and the bytes to send.
pub struct Machine {
    /// The session this connection serves.
    pub session: Arc<Session>,
    /// The client's id.
    pub client_id: Arc<str>,
    /// The protocol version of the CONNECT.
    pub version: ProtocolVersion,
    /// The session expiry interval in force (seconds; a DISCONNECT may change it).
    pub session_expiry: u32,
    /// The client accepts a Reason String and User Properties on errors.
    pub problem_information: bool,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub outbound: Outbound,
    /// QoS 2 messages received and not yet released, and the client's topic aliases.
    pub inbound: Inbound,
    /// Control packets left in this second.
    pub control_rate: ControlRate,
    /// Encoded packets waiting to be written.
    wbuf: BytesMut,
    /// The client's Maximum Packet Size.
    client_max_packet: usize,
    /// Topic aliases this broker assigns in what it sends (v5 clients that accept some; boxed
    /// like the other rarely used parts, to keep an idle connection small).
    out_aliases: Option<Box<OutAliases>>,
    /// Bytes of QoS 1 / 2 deliveries that left the inflight window since the last drain, to
    /// give back to the session's queue ([`Session::release_held`]).
    released: usize,
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.session
            .release_held(std::mem::take(&mut self.released));
    }
}

impl Machine {
    /// The machine of a connection accepted with `negotiated`, serving `session`.
    pub fn new(
        session: Arc<Session>,
        version: ProtocolVersion,
        negotiated: &Negotiated,
        config: &Config,
        now: Instant,
    ) -> Machine {
        let limits = &config.limits;
        Machine {
            session,
            client_id: negotiated.client_id.clone(),
            version,
            session_expiry: negotiated.session_expiry,
            problem_information: negotiated.problem_information,
            outbound: Outbound::new(negotiated.window),
            inbound: Inbound::new(limits.receive_maximum, negotiated.inbound_aliases),
            control_rate: ControlRate::new(limits.max_control_rate, now),
            wbuf: BytesMut::new(),
            client_max_packet: negotiated.client_max_packet,
            out_aliases: OutAliases::new(negotiated.outbound_aliases, limits.topic_alias_maximum)
                .map(Box::new),
            released: 0,
        }
    }

    /// The encoded packets waiting to be written; the driver takes from the front what the
    /// socket accepted, and may give an empty buffer back (an idle connection holds none).
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.wbuf
    }

    /// The output, and the session whose queue feeds it (for a driver that waits on both).
    pub fn output_and_session(&mut self) -> (&mut BytesMut, &Session) {
        (&mut self.wbuf, &self.session)
    }

    /// Bytes waiting to be written.
    pub fn output_len(&self) -> usize {
        self.wbuf.len()
    }

    /// Appends an encoded packet to the output.
    pub fn push(&mut self, packet: &Packet) {
        self.reserve_output();
        codec::encode(packet, self.version, &mut self.wbuf);
    }

    /// Gives the write buffer room for a batch of packets when it has none.
    fn reserve_output(&mut self) {
        if self.wbuf.capacity() == 0 {
            self.wbuf.reserve(OUTPUT_CHUNK);
        }
    }

    /// Acts on one packet from the client; `now` tells the time, asked only for the packets
    /// that spend the control budget (acknowledgements, most of what a client sends, need no
    /// clock). Acknowledgements of what the broker sent, PUBREL, PINGREQ and a QoS 2 resend
    /// are answered here; what reaches beyond the connection is returned as a [`Request`].
    pub fn handle(
        &mut self,
        packet: Packet,
        now: impl FnOnce() -> Instant,
        config: &Config,
        out: &mut impl Outputs,
    ) -> Result<Option<Request>, Close> {
        match packet {
            Packet::Publish(p) => {
                return Ok(self.on_publish(p, config, out)?.map(Request::Publish))
            }
            Packet::PubAck(r) => {
                if let Some(d) = self.outbound.on_puback(r.packet_id) {
                    self.acked(&d, out);
                }
            }
            Packet::PubRec(r) => self.on_pubrec(r, out),
            Packet::PubComp(r) => {
                if let Some(d) = self.outbound.on_pubcomp(r.packet_id) {
                    self.acked(&d, out);
                }
            }
            Packet::PubRel(r) => self.on_pubrel(r, out),
            Packet::Subscribe(s) => {
                let cost = ControlRate::filters_cost(s.filters.len());
                self.control_rate.spend(now(), cost);
                return Ok(Some(Request::Subscribe(s)));
            }
            Packet::Unsubscribe(u) => {
                let cost = ControlRate::filters_cost(u.filters.len());
                self.control_rate.spend(now(), cost);
                subscribe::check_unsubscribe(&u)?;
                return Ok(Some(Request::Unsubscribe(u)));
            }
            Packet::PingReq => {
                self.control_rate.spend(now(), 1);
                self.push(&Packet::PingResp);
            }
            Packet::Disconnect(d) => {
                let max = config.session.max_session_expiry_interval;
                return Err(self.on_disconnect(d, max));
            }
            Packet::Connect(_) => {
                return Err(Violation::new(
                    ReasonCode::ProtocolError,
                    "[MQTT-3.1.0-2] second CONNECT on a connection",
                )
                .into())
            }
            Packet::Auth(a) => {
                self.control_rate.spend(now(), 1);
                return Ok(Some(Request::Auth(a)));
            }
            other => {
                return Err(Violation::new(
                    ReasonCode::ProtocolError,
                    format!("[MQTT-2.1.2] a client may not send {}", other.name()),
                )
                .into())
            }
        }
        Ok(None)
    }

    /// A delivery the client acknowledged: out of the store, and `message.acked`.
    fn acked(&mut self, d: &Delivery, out: &mut impl Outputs) {
        self.forget(d, out);
        if out.wants(MessageEvent::Acked) {
            out.emit(Output::Message(MessageEvent::Acked, d));
        }
    }

    /// PUBREC for a QoS 2 message the broker sent: release it (PUBREL), or forget it when the
    /// client refused it; PUBREL 0x92 for an id not in flight.
    fn on_pubrec(&mut self, r: PubResp, out: &mut impl Outputs) {
        match self.outbound.on_pubrec(r.packet_id, r.reason_code) {
            PubRecOutcome::Refused(d) => self.forget(&d, out),
            PubRecOutcome::Release { seq } => {
                if seq > 0 {
                    self.store(
                        out,
                        Op::SetInflight {
                            client_id: self.client_id.clone(),
                            seq,
                            packet_id: r.packet_id.get(),
                            released: true,
                        },
                    );
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
    /// not waiting ([MQTT-4.3.3-11]).
    fn on_pubrel(&mut self, r: PubResp, out: &mut impl Outputs) {
        let mut comp = PubResp::new(r.packet_id);
        if self.inbound.on_pubrel(r.packet_id) {
            let op = Op::DeleteQos2 {
                client_id: self.client_id.clone(),
                packet_id: r.packet_id.get(),
            };
            self.store(out, op);
        } else {
            comp.reason_code = ReasonCode::PacketIdentifierNotFound;
        }
        self.push(&Packet::PubComp(comp));
    }

    /// DISCONNECT from the client: the session expiry it may change (capped by `max`), and
    /// whether the will is published (v5 reason 0x04).
    fn on_disconnect(&mut self, d: Disconnect, max: u32) -> Close {
        let requested = d.properties.session_expiry_interval;
        match session_expiry_at_disconnect(self.session_expiry, requested, max) {
            Ok(expiry) => self.session_expiry = expiry,
            Err(violation) => return violation.into(),
        }
        Close::Disconnect {
            with_will: d.reason_code == ReasonCode::DisconnectWithWill,
        }
    }

    /// Takes over what the session's previous connection left: the messages it had in flight
    /// (resent in order, with DUP set, [MQTT-4.4.0-1]; PUBREL again for those released) and
    /// the QoS 2 messages the client had not released.
    pub fn resume(&mut self, parked: &mut crate::session::Parked, now: Instant) {
        let inflight = std::mem::take(&mut parked.outgoing);
        self.outbound.resume(inflight, parked.last_packet_id);
        self.inbound
            .resume(std::mem::take(&mut parked.incoming_qos2));
        let resend: Vec<_> = self.outbound.iter().cloned().collect();
        for o in resend {
            if o.released {
                self.push(&Packet::PubRel(PubResp::new(o.packet_id)));
            } else {
                self.write_publish(&o.delivery, Some(o.packet_id), true, now);
            }
        }
    }

    /// Hands the protocol state back to the session for its next connection.
    pub fn park(&mut self, parked: &mut crate::session::Parked) {
        let (outgoing, last_packet_id) = self.outbound.park();
        parked.outgoing = outgoing;
        parked.last_packet_id = last_packet_id;
        parked.incoming_qos2 = self.inbound.park();
    }

    /// `code` for a v5 client; MQTT 3 has no way to say so, and gets a plain acknowledgement.
    pub fn v5_or_success(&self, code: ReasonCode) -> ReasonCode {
        if self.version.is_v5() {
            code
        } else {
            ReasonCode::Success
        }
    }

    /// Emits a change of the session for its store, when it has one.
    fn store(&self, out: &mut impl Outputs, op: Op) {
        if self.session.live_store().is_some() {
            out.emit(Output::Store(op));
        }
    }
}

/// How much room the output is given when it has none (it is given back while idle).
pub const OUTPUT_CHUNK: usize = 4 * 1024;
