//! MQTT 5 features of the session core through the real broker: Server Keep Alive and delayed
//! publish (`$delayed/<seconds>/<topic>`: timing, the management commands, refusals, and
//! surviving a crash).

use std::time::{Duration, Instant};

use broker_tests::rumqttc::QoS;
use broker_tests::*;

/// [MQTT-3.2.2-21]: with `limits.max_keep_alive = 60`, a v5 client asking 120 (or 0) is told
/// Server Keep Alive 60 in CONNACK; one asking 30 keeps its own and is told nothing.
#[tokio::test]
async fn server_keep_alive_caps_what_a_v5_client_asks() {
    let b = Broker::start_with("[limits]\nmax_keep_alive = 60\n");
    for (asked, told) in [(120, Some(60)), (30, None)] {
        let mut o = v5_options(b.port(), &format!("ka-{asked}"));
        o.set_keep_alive(Duration::from_secs(asked));
        let (c, ack) = V5Client::connect_with(o).await;
        let announced = ack.properties.and_then(|p| p.server_keep_alive);
        assert_eq!(announced, told, "asked {asked}");
        c.disconnect().await;
    }
}

/// A v5 PUBLISH QoS 1 with packet id 1 and no properties, as bytes.
fn publish_qos1(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = mqtt_string(topic);
    body.extend([0x00, 0x01, 0x00]);
    body.extend_from_slice(payload);
    packet(0x32, &body)
}

/// Publishes QoS 1 to `topic` and returns the PUBACK's reason code.
async fn puback_reason(w: &mut Wire, topic: &str) -> u8 {
    w.send(&publish_qos1(topic, b"x")).await;
    let ack = w.recv().await.expect("PUBACK");
    assert_eq!(ack.kind(), 4, "PUBACK");
    ack.body.get(2).copied().unwrap_or(0)
}

/// The ids `brokerctl delayed list` shows, with their topics.
fn delayed_list(b: &Broker) -> Vec<(String, String)> {
    let json: serde_json::Value =
        serde_json::from_str(&b.ctl_ok(&["--json", "delayed", "list"])).expect("json");
    json.as_array()
        .expect("array")
        .iter()
        .map(|d| {
            (
                d["msgid"].as_str().expect("msgid").to_owned(),
                d["topic"].as_str().expect("topic").to_owned(),
            )
        })
        .collect()
}

/// `$delayed/1/later/t` reaches subscribers of `later/t` about a second later, not at once.
#[tokio::test]
async fn delayed_publish_arrives_after_its_interval() {
    let b = Broker::start();
    let mut sub = V4Client::connect(b.port(), "sub").await;
    sub.subscribe("later/#", QoS::AtLeastOnce).await;
    let publisher = V4Client::connect(b.port(), "pub").await;
    let sent = Instant::now();
    publisher
        .client
        .publish("$delayed/1/later/t", QoS::AtLeastOnce, false, "hello")
        .await
        .expect("publish");
    let p = sub.recv_publish().await;
    let waited = sent.elapsed();
    assert_eq!(p.topic, "later/t", "published to the real topic");
    assert_eq!(&p.payload[..], b"hello");
    assert!(
        waited >= Duration::from_millis(900),
        "arrived after {waited:?}, before its interval"
    );
    assert!(delayed_list(&b).is_empty(), "nothing waits any more");
}

/// Waiting messages are listed and can be cancelled; with the default `durability = "ack"`
/// the others survive a crash (the PUBACK promised it) and are published after the restart.
#[tokio::test]
async fn delayed_publishes_are_listed_cancelled_and_survive_a_crash() {
    let mut b = Broker::start();
    b.load_retainer_on_disc();
    let publisher = V4Client::connect(b.port(), "pub").await;
    for (topic, payload) in [
        ("$delayed/3600/x/cancelled", "no"),
        ("$delayed/2/x/kept", "yes"),
    ] {
        publisher
            .client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .expect("publish");
    }
    let mut publisher = publisher;
    publisher.wait_acks(2).await;
    let list = delayed_list(&b);
    assert_eq!(list.len(), 2, "{list:?}");
    let (id, _) = list
        .iter()
        .find(|(_, t)| t == "x/cancelled")
        .expect("listed with its real topic");
    let shown = b.ctl_ok(&["delayed", "show", id]);
    assert!(shown.contains("payload (base64): bm8="), "{shown}");
    b.ctl_ok(&["delayed", "del", id]);
    let left: Vec<String> = delayed_list(&b).into_iter().map(|(_, t)| t).collect();
    assert_eq!(left, ["x/kept"]);
    assert_ne!(
        b.ctl(&["delayed", "del", id]).code,
        0,
        "a second delete finds nothing"
    );

    b.crash_and_restart();
    let mut sub = V4Client::connect(b.port(), "sub").await;
    sub.subscribe("x/#", QoS::AtLeastOnce).await;
    let p = sub.recv_publish().await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("x/kept", &b"yes"[..]));
    assert!(
        sub.recv_publish_within(Duration::from_millis(300))
            .await
            .is_none(),
        "the cancelled one stays cancelled"
    );
    // Published with RETAIN: the retainer (reloaded after the crash) keeps it for later
    // subscribers.
    let mut late = V4Client::connect(b.port(), "late").await;
    late.subscribe("x/kept", QoS::AtMostOnce).await;
    let r = late.recv_publish().await;
    assert!(
        r.retain,
        "the RETAIN flag applies when the message is published"
    );
    assert!(delayed_list(&b).is_empty());
}

/// A `$delayed/` topic without a valid interval is refused (0x90), and beyond
/// `limits.max_delayed_messages` a delayed publish is refused with Quota exceeded (0x97).
#[tokio::test]
async fn bad_or_too_many_delayed_publishes_are_refused() {
    let b = Broker::start_with("[limits]\nmax_delayed_messages = 1\n");
    let mut w = Wire::connected(b.port(), 5, "w").await;
    assert_eq!(puback_reason(&mut w, "$delayed/soon/t").await, 0x90);
    assert_eq!(puback_reason(&mut w, "$delayed/4294968/t").await, 0x90);
    assert_eq!(puback_reason(&mut w, "$delayed/60/t").await, 0x00);
    assert_eq!(
        puback_reason(&mut w, "$delayed/60/t").await,
        0x97,
        "one may wait"
    );
    assert_eq!(delayed_list(&b).len(), 1);
}

/// Delayed publishes are held in memory, so `limits.max_delayed_bytes` bounds them in bytes:
/// a large one that would pass it is refused with 0x97 while a small one still fits, and the
/// `delayed_bytes` gauge shows what they hold.
#[tokio::test]
async fn delayed_publishes_are_bounded_in_bytes() {
    let b = Broker::start_with("[limits]\nmax_delayed_bytes = 40000\n");
    let mut w = Wire::connected(b.port(), 5, "w").await;
    let big = vec![b'x'; 15_000];
    let mut reasons = Vec::new();
    for _ in 0..3 {
        w.send(&publish_qos1("$delayed/600/big", &big)).await;
        let ack = w.recv().await.expect("PUBACK");
        reasons.push(ack.body.get(2).copied().unwrap_or(0));
    }
    assert_eq!(
        reasons,
        [0x00, 0x00, 0x97],
        "two of 15 000 bytes fit in 40 000"
    );
    assert_eq!(puback_reason(&mut w, "$delayed/600/small").await, 0x00);
    assert_eq!(delayed_list(&b).len(), 3);
    let metrics = b.ctl_ok(&["metrics"]);
    let held: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("broker_delayed_bytes "))
        .expect("broker_delayed_bytes in the metrics")
        .trim()
        .parse()
        .expect("a number");
    assert!((30_000..=40_000).contains(&held), "{held} bytes held");
}

/// A subscription is its share group and filter, however it was written: `$queue/jobs` is
/// unsubscribed as `$share/$queue/jobs`; an invalid filter in UNSUBSCRIBE is answered 0x8F
/// (Topic Filter invalid) and one never subscribed 0x11 (No subscription existed).
#[tokio::test]
async fn unsubscribe_names_subscriptions_by_group_and_filter() {
    let b = Broker::start();
    let mut w = Wire::connected(b.port(), 5, "unsub").await;
    w.send(&subscribe_packet(5, 1, "$queue/jobs", 1)).await;
    let suback = w.recv().await.expect("SUBACK");
    assert_eq!(suback.kind(), 9);
    assert_eq!(suback.body.last(), Some(&1), "granted QoS 1");
    let listed = b.ctl_ok(&["--json", "subscriptions", "list"]);
    assert!(listed.contains("$share/$queue/jobs"), "{listed}");
    for (filter, code) in [
        ("$share/$queue/jobs", 0x00),
        ("$share/$queue/jobs", 0x11),
        ("a/#/b", 0x8F),
        ("never/subscribed", 0x11),
    ] {
        w.send(&unsubscribe_packet(5, 2, filter)).await;
        let unsuback = w.recv().await.expect("UNSUBACK");
        assert_eq!(unsuback.kind(), 11, "UNSUBACK");
        assert_eq!(unsuback.body.last(), Some(&code), "{filter}");
    }
}
