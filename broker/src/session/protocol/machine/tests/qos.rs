//! QoS 1 and 2 both ways, what is delivered and what is dropped, and resuming a session.

use super::*;
use crate::codec::PropertyValues;

/// [MQTT-4.3.2-1] / [MQTT-3.3.4-9]: QoS 1 messages go out with unused packet ids, never more
/// in flight than the client's Receive Maximum; a PUBACK frees the id and the window and makes
/// the message acknowledged.
#[test]
fn mqtt_3_3_4_9_qos1_out_within_the_window() {
    let mut r = Rig::v5();
    for _ in 0..3 {
        r.queue("t", QoS::AtLeastOnce, 1, Properties::default());
    }
    assert_eq!(r.drain(), 2, "window of 2");
    assert_eq!(
        publishes(&r.sent()),
        vec![(Some(1), false), (Some(2), false)]
    );
    assert_eq!(r.drain(), 0, "the window is full");
    r.answer(Packet::PubAck(resp(1)));
    assert_eq!(r.out.events.last().map(|e| e.0), Some(MessageEvent::Acked));
    assert_eq!(r.drain(), 1);
    assert_eq!(publishes(&r.sent()), vec![(Some(3), false)]);
    // A PUBACK for an id not in flight changes nothing.
    r.answer(Packet::PubAck(resp(9)));
    assert!(r.sent().is_empty());
    assert_eq!(r.m.outbound.len(), 2);
}

/// [MQTT-4.3.3-1] … [MQTT-4.3.3-5]: QoS 2 to the client: PUBREC is answered with PUBREL, and
/// only PUBCOMP ends it; a PUBREC for an unknown id gets PUBREL 0x92, and one with a failure
/// code ends the exchange without PUBREL ([MQTT-4.3.3-4] in v5).
#[test]
fn mqtt_4_3_3_qos2_out() {
    let mut r = Rig::v5();
    r.queue("a", QoS::ExactlyOnce, 1, Properties::default());
    r.queue("b", QoS::ExactlyOnce, 1, Properties::default());
    r.drain();
    r.sent();
    r.answer(Packet::PubRec(resp(1)));
    assert!(matches!(&r.sent()[..], [Packet::PubRel(p)] if p.packet_id.get() == 1));
    assert!(r.out.events.iter().all(|e| e.0 != MessageEvent::Acked));
    r.answer(Packet::PubComp(resp(1)));
    assert_eq!(
        r.out.events.last(),
        Some(&(MessageEvent::Acked, "a".into()))
    );
    let mut refused = resp(2);
    refused.reason_code = ReasonCode::UnspecifiedError;
    r.answer(Packet::PubRec(refused));
    assert!(r.sent().is_empty(), "no PUBREL for a refused message");
    assert!(r.m.outbound.is_empty());
    r.answer(Packet::PubRec(resp(5)));
    let sent = r.sent();
    assert!(
        matches!(&sent[..], [Packet::PubRel(p)] if p.reason_code == ReasonCode::PacketIdentifierNotFound)
    );
}

/// [MQTT-4.3.3-9] / [MQTT-4.3.3-10]: a QoS 2 PUBLISH is routed once; its resend before
/// PUBREL is answered PUBREC again and not routed; after PUBCOMP the id is new again
/// ([MQTT-4.3.3-11]: PUBREL for an id not waiting gets PUBCOMP 0x92).
#[test]
fn mqtt_4_3_3_10_qos2_in_is_routed_once() {
    let mut r = Rig::v5();
    let request = r.feed(Packet::Publish(publish("t", QoS::ExactlyOnce, Some(7))));
    let Ok(Some(Request::Publish(checked))) = request else {
        panic!("first arrival is routed: {request:?}");
    };
    assert_eq!(checked.topic.as_str(), "t");
    r.ack_qos2(7, ReasonCode::Success);
    assert!(matches!(&r.sent()[..], [Packet::PubRec(p)] if p.packet_id.get() == 7));
    let mut resend = publish("t", QoS::ExactlyOnce, Some(7));
    resend.dup = true;
    r.answer(Packet::Publish(resend));
    assert!(matches!(&r.sent()[..], [Packet::PubRec(_)]), "PUBREC again");
    r.answer(Packet::PubRel(resp(7)));
    let sent = r.sent();
    assert!(matches!(&sent[..], [Packet::PubComp(p)] if p.reason_code == ReasonCode::Success));
    r.answer(Packet::PubRel(resp(7)));
    let sent = r.sent();
    assert!(
        matches!(&sent[..], [Packet::PubComp(p)] if p.reason_code == ReasonCode::PacketIdentifierNotFound)
    );
    let again = r.feed(Packet::Publish(publish("t", QoS::ExactlyOnce, Some(7))));
    assert!(
        matches!(again, Ok(Some(Request::Publish(_)))),
        "a new message"
    );
}

/// [MQTT-3.3.4-8]: more unreleased QoS 2 messages than the broker's Receive Maximum closes
/// the connection with 0x93; a refused one is not held.
#[test]
fn mqtt_3_3_4_8_receive_maximum_in() {
    let mut r = Rig::v5();
    for id in 1..=2 {
        r.qos2_in(id, ReasonCode::Success, "within the maximum");
    }
    let close = r
        .feed(Packet::Publish(publish("t", QoS::ExactlyOnce, Some(3))))
        .expect_err("past the maximum");
    assert_eq!(violation(close), ReasonCode::ReceiveMaximumExceeded);
    let mut r = Rig::v5();
    for id in 1..=3 {
        r.qos2_in(id, ReasonCode::NotAuthorized, "refused ones are not held");
    }
}

/// Section 3.3.2.3.4: a topic alias the client set is used by later PUBLISHes with an empty
/// topic; an alias never set is a protocol error (0x82), one above the
/// maximum 0x94 ([MQTT-3.3.2-10]).
#[test]
fn client_topic_aliases() {
    let mut r = Rig::v5();
    let mut first = publish("long/topic", QoS::AtMostOnce, None);
    first.properties.make_mut().topic_alias = Some(3);
    r.feed(Packet::Publish(first)).expect("sets the alias");
    let mut second = publish("", QoS::AtMostOnce, None);
    second.properties.make_mut().topic_alias = Some(3);
    let Ok(Some(Request::Publish(checked))) = r.feed(Packet::Publish(second)) else {
        panic!("routed");
    };
    assert_eq!(checked.topic.as_str(), "long/topic");
    let mut unknown = publish("", QoS::AtMostOnce, None);
    unknown.properties.make_mut().topic_alias = Some(4);
    assert_eq!(
        violation(r.feed(Packet::Publish(unknown)).expect_err("unset")),
        ReasonCode::ProtocolError
    );
    let mut r = Rig::v5();
    let mut over = publish("t", QoS::AtMostOnce, None);
    over.properties.make_mut().topic_alias = Some(9);
    assert_eq!(
        violation(r.feed(Packet::Publish(over)).expect_err("above 8")),
        ReasonCode::TopicAliasInvalid
    );
}

/// Section 3.3.2.3.4, server to client: within the client's Topic Alias Maximum, the first
/// PUBLISH of a topic carries the topic and its alias, later ones only the alias; with more
/// topics than aliases the least recently used gives its alias up.
#[test]
fn outgoing_topic_aliases_are_assigned_and_reused() {
    let mut r = Rig::new(ProtocolVersion::V5, negotiated(10, 1 << 20, 2, 0));
    for topic in ["a/long/topic", "a/long/topic", "b", "c", "a/long/topic"] {
        r.queue(topic, QoS::AtMostOnce, 1, Properties::default());
    }
    r.drain();
    let seen: Vec<(String, Option<u16>)> = r
        .sent()
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => (p.topic, p.properties.topic_alias),
            other => panic!("{other:?}"),
        })
        .collect();
    let expected = [
        ("a/long/topic", 1),
        ("", 1),
        ("b", 2),
        // Both aliases taken: the least recently used ("a/long/topic") gives its alias up.
        ("c", 1),
        ("a/long/topic", 2),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(t, a)| (t.to_string(), Some(*a)))
        .collect();
    assert_eq!(seen, expected);
    // A topic too long to be worth holding goes in full, without an alias.
    let long = "l".repeat(crate::session::protocol::alias::MAX_ALIASED_TOPIC + 1);
    r.queue(&long, QoS::AtMostOnce, 1, Properties::default());
    r.drain();
    let sent = r.sent();
    assert!(
        matches!(&sent[..], [Packet::Publish(p)] if p.topic == long && p.properties.topic_alias.is_none())
    );
    // A v3 client, or one that accepts none, gets no alias.
    let mut r = Rig::new(ProtocolVersion::V5, negotiated(10, 1 << 20, 0, 0));
    r.queue("t", QoS::AtMostOnce, 1, Properties::default());
    r.drain();
    assert!(matches!(&r.sent()[..], [Packet::Publish(p)] if p.properties.topic_alias.is_none()));
}

/// [MQTT-3.3.2-5]: an expired message is dropped, not sent, and the drop is reported;
/// [MQTT-3.3.2-6]: a live one carries what is left of its expiry interval.
#[test]
fn mqtt_3_3_2_5_and_3_3_2_6_message_expiry() {
    let mut r = Rig::v5();
    let expiring = |secs| -> Properties {
        PropertyValues {
            message_expiry_interval: Some(secs),
            ..PropertyValues::default()
        }
        .into()
    };
    r.queue("expiring", QoS::AtMostOnce, 1, expiring(60));
    r.now += Duration::from_secs(20);
    assert_eq!(r.drain(), 1);
    let sent = r.sent();
    let [Packet::Publish(p)] = &sent[..] else {
        panic!("{sent:?}")
    };
    let left = p.properties.message_expiry_interval.expect("expiry left");
    assert!((39..=40).contains(&left), "{left} s left of 60 after 20");
    r.queue("expired", QoS::AtMostOnce, 1, expiring(1));
    r.now += Duration::from_secs(2);
    assert_eq!(r.drain(), 0);
    assert!(r.sent().is_empty());
    assert_eq!(
        r.out.events.last(),
        Some(&(MessageEvent::Dropped(DropReason::Expired), "expired".into()))
    );
}

/// [MQTT-3.1.2-25]: a message larger than the client's Maximum Packet Size is dropped, not
/// sent, and the drop is reported.
#[test]
fn mqtt_3_1_2_25_too_large_is_dropped() {
    let mut r = Rig::new(ProtocolVersion::V5, negotiated(10, 100, 0, 0));
    r.queue("big", QoS::AtLeastOnce, 200, Properties::default());
    r.queue("small", QoS::AtLeastOnce, 1, Properties::default());
    assert_eq!(r.drain(), 1);
    assert_eq!(publishes(&r.sent()).len(), 1);
    assert_eq!(
        r.out.events[0],
        (MessageEvent::Dropped(DropReason::TooLarge), "big".into())
    );
    assert_eq!(r.m.outbound.len(), 1, "the dropped one holds no id");
}

/// [MQTT-4.4.0-1]: what the previous connection had in flight is sent again, in order, with
/// DUP set; a released QoS 2 message gets PUBREL again, and the QoS 2 messages the client had
/// not released are still recognised as resends. Parking hands it all back.
#[test]
fn mqtt_4_4_0_1_resume_resends_with_dup() {
    let mut first = Rig::v5();
    for topic in ["a", "b"] {
        first.queue(topic, QoS::ExactlyOnce, 1, Properties::default());
    }
    first.drain();
    first.answer(Packet::PubRec(resp(2)));
    first.qos2_in(5, ReasonCode::Success, "routed");
    let mut parked = Parked::default();
    first.m.park(&mut parked);

    let mut second = Rig::v5();
    second.m.resume(&mut parked, second.now);
    let sent = second.sent();
    assert_eq!(publishes(&sent), vec![(Some(1), true)]);
    assert!(matches!(&sent[1], Packet::PubRel(p) if p.packet_id.get() == 2));
    let mut resend = publish("in", QoS::ExactlyOnce, Some(5));
    resend.dup = true;
    second.answer(Packet::Publish(resend));
    assert!(matches!(&second.sent()[..], [Packet::PubRec(_)]));
    // New messages never take an id still in flight.
    second.answer(Packet::PubComp(resp(2)));
    second.queue("c", QoS::AtLeastOnce, 1, Properties::default());
    second.drain();
    assert_eq!(publishes(&second.sent()), vec![(Some(3), false)]);
}
