//! Model test of the whole machine: random sequences of what the router and a client do to a
//! connection — messages queued and drained, PUBACK / PUBREC / PUBCOMP (lost, repeated, out of
//! order, for ids never used, refused), reconnects, QoS 2 PUBLISH and PUBREL from the client —
//! fed as packets, with every packet the machine writes checked against a reference written as
//! plainly as possible.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::*;

#[derive(Debug, Clone)]
enum Step {
    Queue(bool),
    Drain,
    PubAck(u16),
    PubRec(u16, bool),
    PubComp(u16),
    Reconnect,
    ClientQos2(u16),
    ClientPubRel(u16),
}

fn step() -> impl Strategy<Value = Step> {
    // Small ids, so that acknowledgements often hit messages in flight.
    let id = 1u16..8;
    prop_oneof![
        3 => any::<bool>().prop_map(Step::Queue),
        2 => Just(Step::Drain),
        2 => id.clone().prop_map(Step::PubAck),
        2 => (id.clone(), any::<bool>()).prop_map(|(i, ok)| Step::PubRec(i, ok)),
        2 => id.clone().prop_map(Step::PubComp),
        1 => Just(Step::Reconnect),
        2 => id.clone().prop_map(Step::ClientQos2),
        2 => id.prop_map(Step::ClientPubRel),
    ]
}

/// What the reference remembers of a message in flight to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Qos1,
    Qos2,
    Released,
}

const WINDOW: usize = 4;
/// The Rig's `limits.receive_maximum`.
const RECEIVE_MAXIMUM: usize = 2;

/// The reference: messages in flight by id and in the order sent, QoS of the messages still
/// queued, and the QoS 2 ids the client has not released.
#[derive(Default)]
struct Reference {
    inflight: BTreeMap<u16, State>,
    order: Vec<u16>,
    queued: VecDeque<bool>,
    received: BTreeSet<u16>,
}

impl Reference {
    fn forget(&mut self, id: u16) {
        self.inflight.remove(&id);
        self.order.retain(|x| *x != id);
    }
}

fn code_of(p: &PubResp) -> ReasonCode {
    p.reason_code
}

/// One step fed to the machine and to the reference. `Ok(false)` when the machine closed the
/// connection, as the reference said it must.
fn run(r: &mut Rig, model: &mut Reference, step: &Step) -> Result<bool, TestCaseError> {
    match *step {
        Step::Queue(qos2) => {
            let qos = if qos2 {
                QoS::ExactlyOnce
            } else {
                QoS::AtLeastOnce
            };
            r.queue("t", qos, 1, Properties::default());
            model.queued.push_back(qos2);
        }
        Step::Drain => drain(r, model)?,
        Step::PubAck(i) => {
            r.answer(Packet::PubAck(resp(i)));
            prop_assert!(r.sent().is_empty());
            if model.inflight.get(&i) == Some(&State::Qos1) {
                model.forget(i);
            }
        }
        Step::PubRec(i, ok) => pubrec(r, model, i, ok)?,
        Step::PubComp(i) => {
            r.answer(Packet::PubComp(resp(i)));
            prop_assert!(r.sent().is_empty());
            if model.inflight.get(&i) == Some(&State::Released) {
                model.forget(i);
            }
        }
        Step::Reconnect => reconnect(r, model)?,
        Step::ClientQos2(i) => return client_qos2(r, model, i),
        Step::ClientPubRel(i) => {
            r.answer(Packet::PubRel(resp(i)));
            let expect = if model.received.remove(&i) {
                ReasonCode::Success
            } else {
                ReasonCode::PacketIdentifierNotFound
            };
            let sent = r.sent();
            prop_assert!(matches!(&sent[..], [Packet::PubComp(p)] if code_of(p) == expect));
        }
    }
    Ok(true)
}

/// The session queue drained: in queue order, each with an id not in use, up to the window.
fn drain(r: &mut Rig, model: &mut Reference) -> Result<(), TestCaseError> {
    r.drain();
    for p in r.sent() {
        let Packet::Publish(p) = p else {
            return Err(TestCaseError::fail(format!("drained {p:?}")));
        };
        let id = p.packet_id.expect("QoS 1 or 2").get();
        prop_assert!(!p.dup);
        prop_assert!(
            !model.inflight.contains_key(&id),
            "[MQTT-2.2.1-3] id in use"
        );
        let qos2 = model.queued.pop_front().expect("a queued message");
        prop_assert_eq!(p.qos == QoS::ExactlyOnce, qos2, "in queue order");
        let state = if qos2 { State::Qos2 } else { State::Qos1 };
        model.inflight.insert(id, state);
        model.order.push(id);
    }
    prop_assert!(model.inflight.len() <= WINDOW, "[MQTT-3.3.4-9]");
    let full = model.inflight.len() == WINDOW;
    prop_assert!(
        full || model.queued.is_empty(),
        "drained while room was left"
    );
    Ok(())
}

/// PUBREC from the client ([MQTT-4.3.3-3], [MQTT-4.3.3-4]): released, refused or unknown.
fn pubrec(r: &mut Rig, model: &mut Reference, i: u16, ok: bool) -> Result<(), TestCaseError> {
    let mut rec = resp(i);
    if !ok {
        rec.reason_code = ReasonCode::UnspecifiedError;
    }
    r.answer(Packet::PubRec(rec));
    let sent = r.sent();
    match model.inflight.get(&i).copied() {
        Some(State::Qos2 | State::Released) if ok => {
            prop_assert!(
                matches!(&sent[..], [Packet::PubRel(p)] if code_of(p) == ReasonCode::Success)
            );
            model.inflight.insert(i, State::Released);
        }
        Some(State::Qos2 | State::Released) => {
            prop_assert!(sent.is_empty(), "a refused message is not released");
            model.forget(i);
        }
        _ => prop_assert!(
            matches!(&sent[..], [Packet::PubRel(p)] if code_of(p) == ReasonCode::PacketIdentifierNotFound)
        ),
    }
    Ok(())
}

/// The connection ends and a new one resumes the session: what was in flight is sent again,
/// in the order first sent ([MQTT-4.6.0-1]), with DUP set or as PUBREL ([MQTT-4.4.0-1]).
fn reconnect(r: &mut Rig, model: &Reference) -> Result<(), TestCaseError> {
    let mut parked = Parked::default();
    r.m.park(&mut parked);
    let n = negotiated(WINDOW, 1 << 20, 0, 0);
    r.m = Machine::new(
        r.m.session.clone(),
        ProtocolVersion::V5,
        &n,
        &r.config,
        r.now,
    );
    r.m.resume(&mut parked, r.now);
    let resent: Vec<(u16, bool)> = r
        .sent()
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => (p.packet_id.map_or(0, |id| id.get()), p.dup),
            Packet::PubRel(p) => (p.packet_id.get(), false),
            _ => (0, false),
        })
        .collect();
    let expected: Vec<(u16, bool)> = model
        .order
        .iter()
        .map(|id| (*id, model.inflight[id] != State::Released))
        .collect();
    prop_assert_eq!(resent, expected);
    Ok(())
}

/// A QoS 2 PUBLISH from the client: routed once ([MQTT-4.3.3-10]), within the Receive
/// Maximum ([MQTT-3.3.4-8]).
fn client_qos2(r: &mut Rig, model: &mut Reference, i: u16) -> Result<bool, TestCaseError> {
    let fed = r.feed(Packet::Publish(publish("in", QoS::ExactlyOnce, Some(i))));
    if model.received.contains(&i) {
        prop_assert!(matches!(fed, Ok(None)), "a resend is not routed again");
        prop_assert!(matches!(&r.sent()[..], [Packet::PubRec(_)]));
        return Ok(true);
    }
    if model.received.len() == RECEIVE_MAXIMUM {
        let code = fed.err().map(violation);
        prop_assert_eq!(code, Some(ReasonCode::ReceiveMaximumExceeded));
        return Ok(false);
    }
    prop_assert!(matches!(fed, Ok(Some(Request::Publish(_)))));
    r.ack_qos2(i, ReasonCode::Success);
    prop_assert!(matches!(&r.sent()[..], [Packet::PubRec(p)] if p.packet_id.get() == i));
    model.received.insert(i);
    Ok(true)
}

proptest! {
    #[test]
    fn the_machine_follows_the_reference(steps in proptest::collection::vec(step(), 1..200)) {
        let mut r = Rig::new(ProtocolVersion::V5, negotiated(WINDOW, 1 << 20, 0, 0));
        let mut model = Reference::default();
        for step in &steps {
            if !run(&mut r, &mut model, step)? {
                break;
            }
        }
    }
}
