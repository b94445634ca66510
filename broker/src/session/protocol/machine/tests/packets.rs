//! DISCONNECT, PINGREQ, packets a client may not send, the checks of PUBLISH and SUBSCRIBE,
//! and what a persistent session emits for its store.

use super::*;
use crate::router::SubscriptionKey;

/// [MQTT-3.14.2-2] and [MQTT-3.14.4-3]: DISCONNECT may change the session expiry, not from
/// 0; reason 0x04 still publishes the will.
#[test]
fn mqtt_3_14_disconnect() {
    let mut r = Rig::new(ProtocolVersion::V5, negotiated(2, 1 << 20, 0, 60));
    let mut d = Disconnect::default();
    d.properties.make_mut().session_expiry_interval = Some(0);
    assert_eq!(
        r.feed(Packet::Disconnect(d)).expect_err("closes"),
        Close::Disconnect { with_will: false }
    );
    assert_eq!(r.m.session_expiry, 0);
    let mut r = Rig::v5();
    let mut d = Disconnect::default();
    d.properties.make_mut().session_expiry_interval = Some(60);
    let close = r.feed(Packet::Disconnect(d)).expect_err("closes");
    assert_eq!(violation(close), ReasonCode::ProtocolError);
    let mut r = Rig::v5();
    let d = Disconnect {
        reason_code: ReasonCode::DisconnectWithWill,
        ..Disconnect::default()
    };
    assert_eq!(
        r.feed(Packet::Disconnect(d)).expect_err("closes"),
        Close::Disconnect { with_will: true }
    );
}

/// [MQTT-3.1.0-2], [MQTT-3.12.4-1] and section 2.1.2: a second CONNECT and a packet only a
/// server sends close the connection; PINGREQ is answered PINGRESP.
#[test]
fn mqtt_3_1_0_2_and_3_12_4_1_other_packets() {
    let mut r = Rig::v5();
    r.answer(Packet::PingReq);
    assert_eq!(r.sent(), vec![Packet::PingResp]);
    let connect = Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: "c".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }));
    assert_eq!(
        violation(r.feed(connect).expect_err("closes")),
        ReasonCode::ProtocolError
    );
    let mut r = Rig::v5();
    assert_eq!(
        violation(r.feed(Packet::PingResp).expect_err("closes")),
        ReasonCode::ProtocolError
    );
}

/// [MQTT-3.2.2-11] and [MQTT-3.3.4-6]: a PUBLISH above the Maximum QoS, or carrying a
/// Subscription Identifier, closes the connection.
#[test]
fn mqtt_3_2_2_11_publish_checks() {
    let mut r = Rig::v5();
    r.config.mqtt.maximum_qos = 1;
    let close = r
        .feed(Packet::Publish(publish("t", QoS::ExactlyOnce, Some(1))))
        .expect_err("above the maximum");
    assert_eq!(violation(close), ReasonCode::QosNotSupported);
    let mut r = Rig::v5();
    let mut p = publish("t", QoS::AtMostOnce, None);
    p.properties.make_mut().subscription_identifiers = vec![1];
    let close = r.feed(Packet::Publish(p)).expect_err("no subscription id");
    assert_eq!(violation(close), ReasonCode::ProtocolError);
}

/// `$delayed/<seconds>/<topic>`: the delay and the real topic go to the driver; a malformed
/// one is refused with 0x90 (v5) or acknowledged and dropped (v3), and never routed.
#[test]
fn delayed_publish_topics() {
    let mut r = Rig::v5();
    let request = r.feed(Packet::Publish(publish(
        "$delayed/10/a/b",
        QoS::AtLeastOnce,
        Some(1),
    )));
    let Ok(Some(Request::Publish(checked))) = request else {
        panic!("{request:?}")
    };
    assert_eq!((checked.topic.as_str(), checked.delay), ("a/b", Some(10)));
    r.answer(Packet::Publish(publish(
        "$delayed/x/a",
        QoS::AtLeastOnce,
        Some(2),
    )));
    let sent = r.sent();
    assert!(
        matches!(&sent[..], [Packet::PubAck(a)] if a.reason_code == ReasonCode::TopicNameInvalid)
    );
    assert_eq!(r.out.refused, 1);
    let mut r = Rig::new(ProtocolVersion::V3_1_1, negotiated(2, 1 << 20, 0, 0));
    r.answer(Packet::Publish(publish(
        "$delayed/x/a",
        QoS::AtLeastOnce,
        Some(2),
    )));
    let sent = r.sent();
    assert!(matches!(&sent[..], [Packet::PubAck(a)] if a.reason_code == ReasonCode::Success));
    // Delayed publish switched off: the topic is an ordinary one.
    let mut r = Rig::v5();
    r.config.limits.max_delayed_messages = 0;
    let request = r.feed(Packet::Publish(publish(
        "$delayed/x/a",
        QoS::AtMostOnce,
        None,
    )));
    assert!(matches!(request, Ok(Some(Request::Publish(c))) if c.delay.is_none()));
}

/// [MQTT-4.7.3-1], [MQTT-3.8.3-4] and section 3.8.3.1: the filter checks that need nothing
/// beyond the connection, each with its SUBACK code or its close.
#[test]
fn mqtt_3_8_filter_checks() {
    let mut r = Rig::v5();
    let plain = SubscriptionOptions::default();
    let no_local = SubscriptionOptions {
        no_local: true,
        ..SubscriptionOptions::default()
    };
    let code = |r: &Rig, f: &str, o: &SubscriptionOptions| match r.m.check_filter(f, o, &r.config) {
        Ok(Ok(_)) => Ok(ReasonCode::Success),
        Ok(Err(code)) => Ok(code),
        Err(v) => Err(v.code),
    };
    assert_eq!(code(&r, "a/+/c", &plain), Ok(ReasonCode::Success));
    assert_eq!(
        code(&r, "a/#/c", &plain),
        Ok(ReasonCode::TopicFilterInvalid)
    );
    assert_eq!(code(&r, "", &plain), Err(ReasonCode::ProtocolError));
    assert_eq!(
        code(&r, "$share/g/a", &no_local),
        Err(ReasonCode::ProtocolError)
    );
    assert_eq!(code(&r, "a", &no_local), Ok(ReasonCode::Success));
    r.config.mqtt.wildcard_subscription_available = false;
    r.config.mqtt.shared_subscription_available = false;
    assert_eq!(
        code(&r, "a/#", &plain),
        Ok(ReasonCode::WildcardSubscriptionsNotSupported)
    );
    assert_eq!(
        code(&r, "$share/g/a", &plain),
        Ok(ReasonCode::SharedSubscriptionsNotSupported)
    );
    r.config.limits.max_topic_levels = 2;
    assert_eq!(
        code(&r, "a/b/c", &plain),
        Ok(ReasonCode::TopicFilterInvalid)
    );
    // An UNSUBSCRIBE with an empty filter closes; SUBSCRIBE and UNSUBSCRIBE are requests.
    let u = Unsubscribe {
        packet_id: pid(1),
        properties: Properties::default(),
        filters: vec!["a".into(), String::new()],
    };
    assert_eq!(
        violation(r.feed(Packet::Unsubscribe(u)).expect_err("closes")),
        ReasonCode::ProtocolError
    );
}

/// `limits.max_subscriptions` and `limits.max_subscription_bytes`: a new filter past either
/// is over the limit; one the session holds never is.
#[test]
fn subscription_limits_count_filters_and_bytes() {
    use crate::codec::SubscriptionOptions;
    use crate::session::Subscription;
    let r = Rig::v5();
    let key = |f: &str| SubscriptionKey::parse(f).expect("filter");
    let sub = Subscription {
        options: SubscriptionOptions::default(),
        id: None,
    };
    r.m.session
        .subscriptions
        .lock()
        .insert(key("aaaa"), sub.clone());
    r.m.session
        .subscriptions
        .lock()
        .insert(key("$share/g/bbbb"), sub);
    assert_eq!(r.m.session.subscriptions.lock().bytes(), 4 + 5);
    assert!(!r.m.over_subscription_limit(&key("c"), 3, 10));
    assert!(r.m.over_subscription_limit(&key("cc"), 3, 10), "11 bytes");
    assert!(r.m.over_subscription_limit(&key("c"), 2, 0), "3 filters");
    assert!(!r.m.over_subscription_limit(&key("aaaa"), 2, 9), "held");
    assert!(!r.m.over_subscription_limit(&key("anything/long"), 0, 0));
    r.m.session.subscriptions.lock().remove(&key("aaaa"));
    assert_eq!(r.m.session.subscriptions.lock().bytes(), 5);
}

/// Control packets spend the connection's budget: past it the driver stops reading.
#[test]
fn control_packets_spend_the_budget() {
    let mut r = Rig::v5();
    r.config.limits.max_control_rate = 3;
    r.m.control_rate = crate::session::protocol::timers::ControlRate::new(3, r.now);
    for _ in 0..3 {
        r.answer(Packet::PingReq);
    }
    assert!(r.m.control_rate.blocked_until().is_some());
}

/// A persistent session's changes are emitted for the session store as they happen: the
/// message sent, released and acknowledged, and the QoS 2 message received and released.
#[tokio::test]
async fn persistent_sessions_emit_store_changes() {
    let dir = std::env::temp_dir().join(format!("broker-machine-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let store = crate::session::store::Store::open(&dir.join("s.redb")).expect("store");
    let mut r = Rig::new(ProtocolVersion::V5, negotiated(2, 1 << 20, 0, 60));
    let limits = Arc::new(QueueLimits::new(1000, 1 << 20, false));
    limits.live_store.set(store).expect("first");
    let session = Arc::new(Session::new(1, Arc::from("c"), limits));
    session.set_online(true);
    session
        .expiry_interval
        .store(60, std::sync::atomic::Ordering::Relaxed);
    r.m = Machine::new(
        session,
        ProtocolVersion::V5,
        &negotiated(2, 1 << 20, 0, 60),
        &r.config,
        r.now,
    );
    r.queue("t", QoS::ExactlyOnce, 1, Properties::default());
    r.drain();
    r.answer(Packet::PubRec(resp(1)));
    r.answer(Packet::PubComp(resp(1)));
    r.qos2_in(4, ReasonCode::Success, "routed");
    r.answer(Packet::PubRel(resp(4)));
    let kinds: Vec<String> = r
        .out
        .stored
        .iter()
        .map(|op| match op {
            Op::SetInflight { released, .. } => format!("inflight released={released}"),
            Op::DeleteMessage { .. } => "delete".into(),
            Op::PutQos2 { packet_id, .. } => format!("qos2 {packet_id}"),
            Op::DeleteQos2 { packet_id, .. } => format!("release {packet_id}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "inflight released=false",
            "inflight released=true",
            "delete",
            "qos2 4",
            "release 4"
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
