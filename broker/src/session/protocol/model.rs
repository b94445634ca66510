//! Model test: random sequences of what a client and the router can do to a session's QoS
//! state — messages sent, PUBACK / PUBREC / PUBCOMP (lost, repeated, out of order, for ids
//! never used), reconnects, and QoS 2 PUBLISH / PUBREL from the client — checked against a
//! reference written as plainly as possible.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::inbound::{Inbound, Qos2Arrival};
use super::outbound::{Outbound, PubRecOutcome};
use crate::codec::{reason::ReasonCode, PacketId, QoS};
use crate::session::test_delivery;

#[derive(Debug, Clone)]
enum Op {
    Send(bool),
    PubAck(u16),
    PubRec(u16, bool),
    PubComp(u16),
    Reconnect,
    ClientQos2(u16),
    ClientPubRel(u16),
}

fn op() -> impl Strategy<Value = Op> {
    // Small ids so that acknowledgements hit messages in flight often.
    let id = 1u16..8;
    prop_oneof![
        3 => any::<bool>().prop_map(Op::Send),
        2 => id.clone().prop_map(Op::PubAck),
        2 => (id.clone(), any::<bool>()).prop_map(|(i, ok)| Op::PubRec(i, ok)),
        2 => id.clone().prop_map(Op::PubComp),
        1 => Just(Op::Reconnect),
        2 => id.clone().prop_map(Op::ClientQos2),
        2 => id.prop_map(Op::ClientPubRel),
    ]
}

/// What the reference remembers of a message in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Qos1,
    Qos2,
    Released,
}

const WINDOW: usize = 5;
const RECEIVE_MAXIMUM: u16 = 3;

fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("ids start at 1")
}

/// The machine under test and the reference, side by side.
struct Harness {
    out: Outbound,
    inb: Inbound,
    model: BTreeMap<u16, State>,
    order: Vec<u16>,
    received: BTreeSet<u16>,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            out: Outbound::new(WINDOW),
            inb: Inbound::new(RECEIVE_MAXIMUM, 0),
            model: BTreeMap::new(),
            order: Vec::new(),
            received: BTreeSet::new(),
        }
    }

    fn forget(&mut self, i: u16) {
        self.model.remove(&i);
        self.order.retain(|x| *x != i);
    }

    /// What the broker sends and what the client acknowledges.
    fn outgoing(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Send(qos2) => {
                if self.out.room() == 0 {
                    prop_assert_eq!(self.model.len(), WINDOW);
                    return Ok(());
                }
                let id = self.out.next_packet_id();
                prop_assert!(
                    !self.model.contains_key(&id.get()),
                    "[MQTT-2.2.1-3] id in use"
                );
                let qos = if qos2 {
                    QoS::ExactlyOnce
                } else {
                    QoS::AtLeastOnce
                };
                self.out.sent(id, test_delivery(qos));
                self.model
                    .insert(id.get(), if qos2 { State::Qos2 } else { State::Qos1 });
                self.order.push(id.get());
            }
            Op::PubAck(i) => {
                let expect = self.model.get(&i) == Some(&State::Qos1);
                prop_assert_eq!(self.out.on_puback(pid(i)).is_some(), expect);
                if expect {
                    self.forget(i);
                }
            }
            Op::PubRec(i, ok) => {
                let r = self.out.on_pubrec(
                    pid(i),
                    if ok {
                        ReasonCode::Success
                    } else {
                        ReasonCode::UnspecifiedError
                    },
                );
                match self.model.get(&i).copied() {
                    Some(State::Qos2) | Some(State::Released) if ok => {
                        prop_assert!(matches!(r, PubRecOutcome::Release { .. }), "released");
                        self.model.insert(i, State::Released);
                    }
                    Some(State::Qos2) | Some(State::Released) => {
                        prop_assert!(matches!(r, PubRecOutcome::Refused(_)), "refused");
                        self.forget(i);
                    }
                    _ => prop_assert!(matches!(r, PubRecOutcome::Unknown), "unknown"),
                }
            }
            Op::PubComp(i) => {
                let expect = self.model.get(&i) == Some(&State::Released);
                prop_assert_eq!(self.out.on_pubcomp(pid(i)).is_some(), expect);
                if expect {
                    self.forget(i);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// What the client sends at QoS 2, and reconnects.
    fn incoming(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Reconnect => {
                let (inflight, last) = self.out.park();
                self.out = Outbound::new(WINDOW);
                self.out.resume(inflight, last);
                let qos2 = self.inb.park();
                self.inb = Inbound::new(RECEIVE_MAXIMUM, 0);
                self.inb.resume(qos2);
            }
            Op::ClientQos2(i) => match self.inb.qos2_arrival(pid(i)) {
                Ok(Qos2Arrival::Duplicate) => prop_assert!(self.received.contains(&i)),
                Ok(Qos2Arrival::New) => {
                    prop_assert!(!self.received.contains(&i));
                    prop_assert!(self.received.len() < RECEIVE_MAXIMUM as usize);
                    self.inb.accepted_qos2(pid(i));
                    self.received.insert(i);
                }
                Err(_) => {
                    prop_assert!(!self.received.contains(&i));
                    prop_assert_eq!(self.received.len(), RECEIVE_MAXIMUM as usize);
                }
            },
            Op::ClientPubRel(i) => {
                prop_assert_eq!(self.inb.on_pubrel(pid(i)), self.received.remove(&i));
            }
            _ => {}
        }
        Ok(())
    }

    /// Same messages, same order ([MQTT-4.6.0-1]: resent in the original order), within the
    /// window, released exactly where the reference says.
    fn check(&self) -> Result<(), TestCaseError> {
        let ids: Vec<u16> = self.out.iter().map(|o| o.packet_id.get()).collect();
        prop_assert_eq!(&ids, &self.order);
        prop_assert!(self.out.len() <= WINDOW);
        for o in self.out.iter() {
            prop_assert_eq!(
                o.released,
                self.model[&o.packet_id.get()] == State::Released
            );
        }
        Ok(())
    }
}

proptest! {
    #[test]
    fn session_qos_state_follows_the_reference(ops in proptest::collection::vec(op(), 1..200)) {
        let mut h = Harness::new();
        for op in ops {
            h.outgoing(&op)?;
            h.incoming(&op)?;
            h.check()?;
        }
    }
}
