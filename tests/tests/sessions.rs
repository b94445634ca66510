//! Sessions through the real broker: persistence across reconnects, redelivery with DUP,
//! clean start, takeover, expiry, wills and keep-alive.

use std::time::Duration;

use broker_tests::rumqttc::{self, LastWill, QoS};
use broker_tests::*;

const QUIET: Duration = Duration::from_millis(300);

fn persistent(port: u16, id: &str) -> rumqttc::MqttOptions {
    let mut o = v4_options(port, id);
    o.set_clean_session(false);
    o
}

/// Acceptance: a persistent QoS 1 subscriber misses 1 000 messages and gets them all, in order.
#[tokio::test]
async fn persistent_session_receives_1000_queued_messages_in_order() {
    let b = Broker::start();
    let (mut sub, present) = V4Client::connect_with(persistent(b.port(), "durable")).await;
    assert!(!present);
    sub.subscribe("feed/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut publisher = V4Client::connect(b.port(), "pub").await;
    for i in 0..1000u32 {
        publisher
            .client
            .publish("feed/x", QoS::AtLeastOnce, false, i.to_be_bytes().to_vec())
            .await
            .expect("publish");
    }
    publisher.wait_acks(1000).await;

    let (mut sub, present) = V4Client::connect_with(persistent(b.port(), "durable")).await;
    assert!(present, "session present on resume");
    for i in 0..1000u32 {
        let p = sub.recv_publish().await;
        assert_eq!(&p.payload[..], &i.to_be_bytes(), "message {i} in order");
    }
    assert!(sub.recv_publish_within(QUIET).await.is_none());
}

#[tokio::test]
async fn clean_session_discards_the_previous_session() {
    let b = Broker::start();
    let (mut sub, _) = V4Client::connect_with(persistent(b.port(), "c")).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let publisher = V4Client::connect(b.port(), "pub").await;
    publisher
        .client
        .publish("t", QoS::AtLeastOnce, false, "x")
        .await
        .expect("publish");
    let (mut sub, present) = V4Client::connect_with(v4_options(b.port(), "c")).await;
    assert!(!present);
    assert!(sub.recv_publish_within(QUIET).await.is_none());
}

/// Unacknowledged QoS 1 messages are sent again with DUP set when the session resumes.
#[tokio::test]
async fn unacknowledged_message_is_redelivered_with_dup() {
    let b = Broker::start();
    let mut w = Wire::open(b.port()).await;
    w.send(&connect_packet(4, "dupper", false, 60)).await;
    assert_eq!(w.recv().await.expect("CONNACK").kind(), 2);
    // SUBSCRIBE id 1 to "d" at QoS 1.
    let mut body = vec![0x00, 0x01];
    body.extend(mqtt_string("d"));
    body.push(1);
    w.send(&packet(0x82, &body)).await;
    assert_eq!(w.recv().await.expect("SUBACK").body, [0x00, 0x01, 0x01]);

    let publisher = V4Client::connect(b.port(), "pub").await;
    publisher
        .client
        .publish("d", QoS::AtLeastOnce, false, "once")
        .await
        .expect("publish");
    let first = w.recv().await.expect("PUBLISH");
    assert_eq!(first.byte1, 0x32, "QoS 1, no DUP");
    drop(w); // close without PUBACK

    let mut w = Wire::open(b.port()).await;
    w.send(&connect_packet(4, "dupper", false, 60)).await;
    let ack = w.recv().await.expect("CONNACK");
    assert_eq!(ack.body, [0x01, 0x00], "session present");
    let again = w.recv().await.expect("redelivered PUBLISH");
    assert_eq!(again.byte1, 0x3A, "QoS 1 with DUP");
    assert_eq!(again.body, first.body, "same packet id, topic and payload");
}

#[tokio::test]
async fn takeover_sends_v5_disconnect_0x8e_to_the_old_connection() {
    let b = Broker::start();
    let mut old = Wire::connected(b.port(), 5, "same").await;
    let _new = V5Client::connect(b.port(), "same").await;
    let d = old.recv().await.expect("old connection gets DISCONNECT");
    assert_eq!((d.kind(), d.body[0]), (14, 0x8E), "session taken over");
    let mut rest = Vec::new();
    assert!(old.closed_within(WAIT, &mut rest).await);
}

#[tokio::test]
async fn takeover_resumes_the_session_for_the_new_connection() {
    let b = Broker::start();
    let (mut first, _) = V4Client::connect_with(persistent(b.port(), "roam")).await;
    first.subscribe("roam/t", QoS::AtLeastOnce).await;
    let (mut second, present) = V4Client::connect_with(persistent(b.port(), "roam")).await;
    assert!(present);
    assert!(
        first.closed_within(WAIT).await,
        "old connection closed [MQTT-3.1.4-2]"
    );
    let publisher = V4Client::connect(b.port(), "pub").await;
    publisher
        .client
        .publish("roam/t", QoS::AtLeastOnce, false, "x")
        .await
        .expect("publish");
    assert_eq!(&second.recv_publish().await.payload[..], b"x");
}

#[tokio::test]
async fn will_is_published_on_abnormal_close_only() {
    let b = Broker::start();
    let mut watcher = V4Client::connect(b.port(), "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;

    let mut o = v4_options(b.port(), "dies");
    o.set_last_will(LastWill::new("wills/dies", "gone", QoS::AtLeastOnce, false));
    let (c, _) = V4Client::connect_with(o).await;
    c.kill();
    let p = watcher.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("wills/dies", &b"gone"[..])
    );

    let mut o = v4_options(b.port(), "polite");
    o.set_last_will(LastWill::new(
        "wills/polite",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (c, _) = V4Client::connect_with(o).await;
    c.disconnect().await;
    assert!(
        watcher.recv_publish_within(QUIET).await.is_none(),
        "no will after DISCONNECT"
    );
}

fn v5_connect_with_will(id: &str, will_delay: u32, session_expiry: u32) -> Vec<u8> {
    let mut body = mqtt_string("MQTT");
    body.push(5);
    body.push(0x04 | (1 << 3)); // will flag, will QoS 1, clean start 0
    body.extend(60u16.to_be_bytes());
    body.extend([0x05, 0x11]); // properties: session expiry interval
    body.extend(session_expiry.to_be_bytes());
    body.extend(mqtt_string(id));
    body.extend([0x05, 0x18]); // will properties: will delay interval
    body.extend(will_delay.to_be_bytes());
    body.extend(mqtt_string("wills/v5"));
    body.extend(mqtt_string("bye"));
    packet(0x10, &body)
}

#[tokio::test]
async fn v5_will_delay_is_cancelled_by_reconnect() {
    let b = Broker::start();
    let mut watcher = V4Client::connect(b.port(), "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let mut w = Wire::open(b.port()).await;
    w.send(&v5_connect_with_will("delayed", 2, 60)).await;
    assert_eq!(w.recv().await.expect("CONNACK").kind(), 2);
    drop(w);
    let mut w = Wire::open(b.port()).await;
    w.send(&connect_packet(5, "delayed", false, 60)).await;
    assert_eq!(w.recv().await.expect("CONNACK").kind(), 2);
    assert!(
        watcher
            .recv_publish_within(Duration::from_secs(3))
            .await
            .is_none(),
        "[MQTT-3.1.3-9] reconnect within the delay cancels the will"
    );
}

#[tokio::test]
async fn v5_will_is_published_after_its_delay() {
    let b = Broker::start();
    let mut watcher = V4Client::connect(b.port(), "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let mut w = Wire::open(b.port()).await;
    w.send(&v5_connect_with_will("late", 1, 60)).await;
    assert_eq!(w.recv().await.expect("CONNACK").kind(), 2);
    let closed_at = std::time::Instant::now();
    drop(w);
    let p = watcher.recv_publish().await;
    assert_eq!(&p.payload[..], b"bye");
    assert!(
        closed_at.elapsed() >= Duration::from_millis(900),
        "published after the delay"
    );
}

#[tokio::test]
async fn v5_disconnect_with_will_message_publishes_the_will() {
    let b = Broker::start();
    let mut watcher = V4Client::connect(b.port(), "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let mut w = Wire::open(b.port()).await;
    w.send(&v5_connect_with_will("asks", 0, 0)).await;
    assert_eq!(w.recv().await.expect("CONNACK").kind(), 2);
    w.send(&[0xE0, 0x01, 0x04]).await; // DISCONNECT, reason 0x04
    assert_eq!(&watcher.recv_publish().await.payload[..], b"bye");
}

#[tokio::test]
async fn keep_alive_expiry_closes_the_connection_and_fires_the_will() {
    let b = Broker::start();
    let mut watcher = V4Client::connect(b.port(), "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let mut w = Wire::open(b.port()).await;
    let mut body = mqtt_string("MQTT");
    body.extend([4, 0x02 | 0x04, 0x00, 0x01]); // level 4, clean + will, keep alive 1 s
    body.extend(mqtt_string("silent"));
    body.extend(mqtt_string("wills/silent"));
    body.extend(mqtt_string("timeout"));
    w.send(&packet(0x10, &body)).await;
    assert_eq!(w.recv().await.expect("CONNACK").kind(), 2);
    let start = std::time::Instant::now();
    let mut seen = Vec::new();
    assert!(w.closed_within(Duration::from_secs(5), &mut seen).await);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1400),
        "not before 1.5 × keep alive: {waited:?}"
    );
    assert_eq!(&watcher.recv_publish().await.payload[..], b"timeout");
}

#[tokio::test]
async fn v5_session_expires_after_its_interval() {
    let b = Broker::start();
    let mut o = v5_options(b.port(), "brief");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(1));
    let (c, ack) = V5Client::connect_with(o.clone()).await;
    assert!(!ack.session_present);
    c.disconnect().await;
    let (c, ack) = V5Client::connect_with(o.clone()).await;
    assert!(ack.session_present, "resumed within the interval");
    c.disconnect().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_c, ack) = V5Client::connect_with(o).await;
    assert!(!ack.session_present, "expired after 1 s");
}

#[tokio::test]
async fn qos2_exactly_once_both_ways() {
    let b = Broker::start();
    let mut sub = V4Client::connect(b.port(), "sub").await;
    sub.subscribe("q2", QoS::ExactlyOnce).await;
    let mut w = Wire::connected(b.port(), 4, "pub").await;
    // PUBLISH QoS 2 id 9, sent twice (the second as a DUP resend) before PUBREL.
    let mut body = mqtt_string("q2");
    body.extend([0x00, 0x09, b'x']);
    w.send(&packet(0x34, &body)).await;
    assert_eq!(
        w.recv().await.expect("PUBREC"),
        RawPacket {
            byte1: 0x50,
            body: vec![0, 9]
        }
    );
    w.send(&packet(0x3C, &body)).await;
    assert_eq!(w.recv().await.expect("PUBREC again").byte1, 0x50);
    w.send(&[0x62, 0x02, 0x00, 0x09]).await; // PUBREL
    assert_eq!(
        w.recv().await.expect("PUBCOMP"),
        RawPacket {
            byte1: 0x70,
            body: vec![0, 9]
        }
    );
    assert_eq!(&sub.recv_publish().await.payload[..], b"x");
    assert!(
        sub.recv_publish_within(QUIET).await.is_none(),
        "delivered exactly once"
    );
}

/// A graceful restart keeps persistent sessions: subscriptions (shared too), queued messages
/// with their properties, an unacknowledged message (resent with DUP and its packet id).
#[tokio::test]
async fn persistent_sessions_survive_a_graceful_restart() {
    survives_a_graceful_restart("[session]\ndurability = \"graceful\"\n").await;
}

/// The same with every change on disc as it happens (the default).
#[tokio::test]
async fn persistent_sessions_survive_a_graceful_restart_with_durability_ack() {
    survives_a_graceful_restart("").await;
}

async fn survives_a_graceful_restart(config: &str) {
    let mut b = Broker::start_with(config);
    // A raw v3.1.1 client that receives one QoS 1 message and closes without PUBACK.
    let mut w = Wire::open(b.port()).await;
    w.send(&connect_packet(4, "keeper", false, 60)).await;
    assert_eq!(w.recv().await.expect("CONNACK").kind(), 2);
    let mut body = vec![0x00, 0x01];
    body.extend(mqtt_string("keep/#"));
    body.push(1);
    body.extend(mqtt_string("$share/g/shared/#"));
    body.push(1);
    w.send(&packet(0x82, &body)).await;
    assert_eq!(
        w.recv().await.expect("SUBACK").body,
        [0x00, 0x01, 0x01, 0x01]
    );
    let mut publisher = V4Client::connect(b.port(), "pub").await;
    publisher
        .client
        .publish("keep/1", QoS::AtLeastOnce, false, "unacked")
        .await
        .expect("publish");
    let first = w.recv().await.expect("PUBLISH");
    assert_eq!(first.byte1, 0x32, "QoS 1, no DUP");
    drop(w);
    // Queued while offline.
    for (topic, payload) in [("keep/2", "queued-1"), ("keep/3", "queued-2")] {
        publisher
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }
    publisher.wait_acks(3).await;
    publisher.disconnect().await;

    b.restart();
    assert!(
        b.log().contains("sessions saved") && b.log().contains("sessions restored"),
        "{}",
        b.log()
    );
    // Published after the restart: the restored subscriptions route it.
    let publisher = V4Client::connect(b.port(), "pub2").await;
    for (topic, payload) in [("keep/4", "after"), ("shared/x", "shared")] {
        publisher
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }
    let mut w = Wire::open(b.port()).await;
    w.send(&connect_packet(4, "keeper", false, 60)).await;
    assert_eq!(
        w.recv().await.expect("CONNACK").body,
        [0x01, 0x00],
        "session present"
    );
    let again = w.recv().await.expect("redelivered PUBLISH");
    assert_eq!(again.byte1, 0x3A, "QoS 1 with DUP");
    assert_eq!(again.body, first.body, "same packet id, topic and payload");
    let mut payloads = Vec::new();
    for _ in 0..4 {
        let p = w.recv().await.expect("PUBLISH");
        assert_eq!(p.kind(), 3);
        // topic length (2) + topic + packet id (2), then the payload
        let topic_len = u16::from_be_bytes([p.body[0], p.body[1]]) as usize;
        payloads.push(String::from_utf8_lossy(&p.body[2 + topic_len + 2..]).into_owned());
    }
    assert_eq!(payloads[..2], ["queued-1", "queued-2"], "queued, in order");
    payloads[2..].sort();
    assert_eq!(payloads[2..], ["after", "shared"]);
}

/// v5: the session expiry keeps counting while the broker is stopped; message properties and
/// a clean-start session are handled as before.
#[tokio::test]
async fn v5_session_expiry_counts_across_a_restart() {
    use broker_tests::rumqttc::v5::mqttbytes::v5::PublishProperties;
    use broker_tests::rumqttc::v5::mqttbytes::QoS as Q5;
    let mut b = Broker::start();
    let options = |port: u16, id: &str, expiry: u32| {
        let mut o = v5_options(port, id);
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(expiry));
        o
    };
    for o in [
        options(b.port(), "long", 3600),
        options(b.port(), "short", 2),
    ] {
        let (c, _) = V5Client::connect_with(o).await;
        c.client
            .subscribe("v5/t", Q5::AtLeastOnce)
            .await
            .expect("subscribe");
        c.disconnect().await;
    }
    let publisher = V5Client::connect(b.port(), "pub").await;
    let props = PublishProperties {
        content_type: Some("text/plain".into()),
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    };
    let mut publisher = publisher;
    publisher
        .client
        .publish_with_properties("v5/t", Q5::AtLeastOnce, false, "hello", props)
        .await
        .expect("publish");
    // PUBACK comes after routing: the message is queued for both sessions by then.
    publisher
        .recv_packet_within(WAIT, |p| matches!(p, V5Packet::PubAck(_)).then_some(()))
        .await
        .expect("PUBACK");
    publisher.disconnect().await;

    b.terminate();
    // "short" (2 s) expires while the broker is stopped.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    b.restart_stopped();
    assert!(b.log().contains("restored=1 expired=1"), "{}", b.log());
    let (_s, ack) = V5Client::connect_with(options(b.port(), "short", 2)).await;
    assert!(!ack.session_present, "expired while stopped");
    let (mut c, ack) = V5Client::connect_with(options(b.port(), "long", 3600)).await;
    assert!(ack.session_present);
    let p = c.recv_publish().await;
    assert_eq!(&p.payload[..], b"hello");
    let props = p.properties.expect("properties kept");
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        props.user_properties,
        vec![("k".to_owned(), "v".to_owned())]
    );
}

/// A damaged store — random bytes, or a real store cut in half — is moved aside and reported;
/// the broker starts and serves.
#[tokio::test]
async fn a_damaged_session_store_is_kept_aside_and_the_broker_starts() {
    for damage in ["junk", "truncated"] {
        let mut b = Broker::start();
        let (c, _) = V4Client::connect_with(persistent(b.port(), "keeps")).await;
        c.disconnect().await;
        b.terminate();
        let store = b.data_dir().join("sessions.redb");
        let bytes = std::fs::read(&store).expect("the store exists");
        let damaged = match damage {
            "junk" => vec![0x5A; bytes.len()],
            _ => bytes[..bytes.len() / 2].to_vec(),
        };
        std::fs::write(&store, damaged).expect("write");
        b.restart_stopped();
        let kept: Vec<_> = std::fs::read_dir(b.data_dir())
            .expect("data dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("sessions.redb.bad-"))
            .collect();
        assert_eq!(kept.len(), 1, "{damage}: moved aside, not deleted");
        assert!(b.log().contains("session store unreadable"), "{}", b.log());
        V4Client::connect(b.port(), "still-works").await;
    }
}

/// The value of one metric in `brokerctl metrics`.
fn metric(b: &Broker, name: &str) -> u64 {
    let text = b.ctl_ok(&["metrics"]);
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("broker_{name} ")))
        .unwrap_or_else(|| panic!("no broker_{name} in {text}"));
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a number")
}

/// limits.max_pending_will_bytes: wills waiting for their delay are bounded broker-wide; a
/// will past the budget is published when its connection closes instead of after its delay,
/// and a will cancelled by a reconnect gives its bytes back. Before it, clients closing with
/// 64 KiB wills and new client ids held ~120 KiB each, without limit.
#[tokio::test]
async fn pending_wills_are_bounded() {
    let b = Broker::start_with("[limits]\nmax_pending_will_bytes = 1000\n");
    let mut watcher = V4Client::connect(b.port(), "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let port = b.port();
    let close_with_will = |id: String| async move {
        let mut w = Wire::open(port).await;
        w.send(&v5_connect_with_will(&id, 60, 60)).await;
        assert_eq!(w.recv().await.expect("CONNACK").kind(), 2);
    };
    close_with_will("w0".into()).await;
    wait_until("the first will held", || {
        metric(&b, "pending_will_bytes") > 0
    })
    .await;
    let each = metric(&b, "pending_will_bytes");
    let fit = 1000 / each;
    assert!(fit >= 2, "a small will costs {each} bytes");
    for i in 1..fit {
        close_with_will(format!("w{i}")).await;
    }
    wait_until("all held", || {
        metric(&b, "pending_will_bytes") == fit * each
    })
    .await;
    assert!(
        watcher.recv_publish_within(QUIET).await.is_none(),
        "all wait"
    );
    close_with_will("over".into()).await;
    let p = watcher.recv_publish().await;
    assert_eq!(&p.payload[..], b"bye", "published at once");
    assert_eq!(metric(&b, "wills_not_delayed_total"), 1);
    assert_eq!(metric(&b, "pending_will_bytes"), fit * each);
    // A reconnect cancels w0's will and gives its bytes back.
    let mut w = Wire::open(b.port()).await;
    w.send(&connect_packet(5, "w0", false, 60)).await;
    assert_eq!(w.recv().await.expect("CONNACK").kind(), 2);
    wait_until("bytes given back", || {
        metric(&b, "pending_will_bytes") == (fit - 1) * each
    })
    .await;
    assert!(b.log().contains("limits.max_pending_will_bytes reached"));
}

/// A takeover storm: many connections with one client id at once, persistent or clean, each
/// subscribing and publishing as it connects. Before, a client taking the id over took the old
/// connection's control line while it waited for that connection to hand the session back, so
/// a second client, with a clean start, found the session unattached and ended it while the
/// old connection still ran. That connection's SUBSCRIBE then put the ended session back in
/// the router, where it was sent (and charged) every matching message for nobody, without end:
/// 160 MB in 10 s of such a storm, all of it counted against `limits.memory_high_watermark`.
/// Whatever the interleaving, once the storm is over and the last session ended, nothing may
/// be left.
#[tokio::test]
async fn a_takeover_storm_leaves_nothing_behind() {
    let b = Broker::start();
    let port = b.port();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let storm = (0..24u32).map(|task| {
        tokio::spawn(async move {
            let mut round = 0u32;
            while tokio::time::Instant::now() < deadline {
                round += 1;
                let pick = (task * 7 + round * 13) % 10;
                let level = if pick.is_multiple_of(2) { 4 } else { 5 };
                let mut w = Wire::open(port).await;
                let mut bytes = connect_packet(level, "z", pick < 3, 60);
                bytes.extend(subscribe_packet(level, 1, "z/#", 1));
                bytes.extend(publish_packet(level, "z/x", 1, 2, false, b"hello"));
                w.send(&bytes).await;
                // Until CONNACK (or the close of a connection taken over at once): when the
                // storm ends, no connection of it is still waiting to take the session over.
                w.recv().await;
                if pick >= 5 {
                    w.recv_within(Duration::from_millis(5)).await;
                }
            }
        })
    });
    for task in storm.collect::<Vec<_>>() {
        task.await.expect("storm task");
    }
    // The clients are gone; the broker may still be handing the session from one of their
    // connections to the next.
    wait_until("every connection closed", || metric(&b, "connections") == 0).await;
    // End whatever session is left.
    let mut last = Wire::connected(port, 4, "z").await;
    last.send(&[0xE0, 0x00]).await;
    assert!(last.closed_within(WAIT, &mut Vec::new()).await, "closed");
    wait_until("no session left", || {
        b.ctl_ok(&["sessions", "list"]).contains("0 session(s)")
    })
    .await;
    assert_eq!(
        metric(&b, "subscriptions"),
        0,
        "a subscription of an ended session"
    );
    let mut publisher = Wire::connected(port, 4, "pub").await;
    publisher
        .send(&publish_packet(4, "z/x", 1, 1, false, b"for nobody"))
        .await;
    assert_eq!(publisher.recv().await.map(|p| p.kind()), Some(4), "PUBACK");
    assert_eq!(metric(&b, "queued_bytes"), 0, "messages queued for nobody");
}
