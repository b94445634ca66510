//! Limits through the real broker: packet size, connection counts, queue length, receive
//! maximum, client receive maximum and maximum packet size.

use std::time::Duration;

use broker_tests::rumqttc::QoS;
use broker_tests::*;

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn packet_over_max_packet_size_closes_the_connection() {
    let b = Broker::start_with("[limits]\nmax_packet_size = 1024\n");
    let mut w = Wire::connected(b.port(), 4, "big").await;
    let mut body = mqtt_string("t");
    body.extend(vec![b'x'; 1100]);
    w.send(&packet(0x30, &body)).await;
    assert!(w.closed_within(WAIT, &mut Vec::new()).await);
    // Just under the limit is fine.
    let mut w = Wire::connected(b.port(), 4, "fits").await;
    let mut body = mqtt_string("t");
    body.extend(vec![b'x'; 1000]);
    w.send(&packet(0x30, &body)).await;
    w.send(&[0xC0, 0x00]).await;
    assert_eq!(w.recv().await.expect("PINGRESP").kind(), 13);
}

#[tokio::test]
async fn listener_connection_limit_refuses_the_extra_connection() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = format!(
        "data_dir = {:?}\n[[listener]]\nname = \"tcp\"\nbind = \"127.0.0.1:0\"\nmax_connections = 3\n[admin]\nbind = \"127.0.0.1:0\"\n",
        dir.path().join("data").display().to_string()
    );
    let b = Broker::start_config(dir, &config);
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(Wire::connected(b.port(), 4, &format!("c{i}")).await);
    }
    let mut extra = Wire::open(b.port()).await;
    extra.send(&connect_packet(4, "extra", true, 60)).await;
    let mut seen = Vec::new();
    assert!(
        extra.closed_within(WAIT, &mut seen).await,
        "4th connection closed"
    );
    assert!(seen.is_empty(), "no CONNACK for the refused connection");
    for w in &mut held {
        w.send(&[0xC0, 0x00]).await;
        assert_eq!(
            w.recv().await.expect("PINGRESP").kind(),
            13,
            "others keep working"
        );
    }
    drop(held);
    // Slots free again once connections close.
    let mut again = None;
    for _ in 0..100 {
        let mut w = Wire::open(b.port()).await;
        w.send(&connect_packet(4, "later", true, 60)).await;
        if let Some(ack) = w.recv_within(Duration::from_millis(200)).await {
            again = Some(ack);
            break;
        }
    }
    assert_eq!(again.expect("slot released").kind(), 2);
}

#[tokio::test]
async fn offline_queue_keeps_the_oldest_messages_up_to_its_limit() {
    let b = Broker::start_with("[limits]\nmax_queued_messages = 5\n");
    let mut o = v4_options(b.port(), "slow");
    o.set_clean_session(false);
    let (mut sub, _) = V4Client::connect_with(o.clone()).await;
    sub.subscribe("q", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = V4Client::connect(b.port(), "pub").await;
    for i in 0..10u8 {
        publisher
            .client
            .publish("q", QoS::AtLeastOnce, false, vec![i])
            .await
            .expect("publish");
    }
    publisher.wait_acks(10).await;
    let (mut sub, _) = V4Client::connect_with(o).await;
    for i in 0..5u8 {
        assert_eq!(sub.recv_publish().await.payload[..], [i]);
    }
    assert!(
        sub.recv_publish_within(QUIET).await.is_none(),
        "newer messages were dropped"
    );
}

#[tokio::test]
async fn v5_receive_maximum_exceeded_disconnects_0x93() {
    let b = Broker::start_with("[limits]\nreceive_maximum = 2\n");
    let mut w = Wire::connected(b.port(), 5, "eager").await;
    for id in 1..=3u8 {
        let mut body = mqtt_string("t");
        body.extend([0x00, id, 0x00, b'x']);
        w.send(&packet(0x34, &body)).await; // QoS 2, never released
    }
    let mut seen = Vec::new();
    assert!(w.closed_within(WAIT, &mut seen).await);
    let d = seen.iter().find(|p| p.kind() == 14).expect("DISCONNECT");
    assert_eq!(d.body[0], 0x93);
}

/// A client that goes past Receive Maximum with more publishes already on the way, and keeps
/// answering PUBREC with PUBREL (Paho's `test_flow_control2` does this), still reads the
/// DISCONNECT 0x93 that says why: the broker lingers, reading and discarding, instead of
/// closing a socket with unread input, which would reset the connection and make the client's
/// kernel drop the DISCONNECT.
#[tokio::test]
async fn v5_client_still_sending_past_receive_maximum_reads_the_disconnect() {
    let b = Broker::start_with("[limits]\nreceive_maximum = 10\n");
    for round in 0..3 {
        let mut w = Wire::connected(b.port(), 5, &format!("eager-{round}")).await;
        let mut burst = Vec::new();
        for id in 1..=400u16 {
            let mut body = mqtt_string("flow/control");
            body.extend(id.to_be_bytes());
            body.extend([0x00]);
            body.extend(vec![b'x'; 200]);
            burst.extend(packet(0x34, &body)); // QoS 2
        }
        w.send(&burst).await;
        let mut disconnect = None;
        while let Some(p) = w.recv().await {
            match p.kind() {
                5 => {
                    // PUBREC: release it, as a client following the protocol would. A
                    // reset connection fails the write before the DISCONNECT is read.
                    let rel = packet(0x62, &p.body[..2]);
                    if let Err(e) = w.try_send(&rel).await {
                        panic!("round {round}: writing PUBREL failed before DISCONNECT: {e}");
                    }
                }
                14 => {
                    disconnect = Some(p);
                    break;
                }
                other => panic!("unexpected packet type {other}"),
            }
        }
        let d = disconnect.expect("the connection ended without DISCONNECT (reset?)");
        assert_eq!(d.body[0], 0x93, "round {round}");
        let mut rest = Vec::new();
        assert!(w.closed_within(WAIT, &mut rest).await, "closed after it");
    }
}

#[tokio::test]
async fn inflight_window_follows_the_client_receive_maximum() {
    let b = Broker::start();
    // v5 CONNECT with Receive Maximum 2.
    let mut body = mqtt_string("MQTT");
    body.extend([5, 0x02, 0x00, 0x3C, 0x03, 0x21, 0x00, 0x02]);
    body.extend(mqtt_string("narrow"));
    let mut w = Wire::open(b.port()).await;
    w.send(&packet(0x10, &body)).await;
    assert_eq!(w.recv().await.expect("CONNACK").kind(), 2);
    let mut sub = mqtt_string("n");
    sub.push(1);
    w.send(&packet(0x82, &[&[0x00, 0x01, 0x00][..], &sub].concat()))
        .await;
    assert_eq!(w.recv().await.expect("SUBACK").kind(), 9);
    let publisher = V4Client::connect(b.port(), "pub").await;
    for i in 0..5u8 {
        publisher
            .client
            .publish("n", QoS::AtLeastOnce, false, vec![i])
            .await
            .expect("publish");
    }
    let first = w.recv().await.expect("1st");
    let second = w.recv().await.expect("2nd");
    assert!(w.recv_within(QUIET).await.is_none(), "window of 2 is full");
    // PUBACK the first: exactly one more arrives.
    w.send(&packet(0x40, &first.body[3..5])).await;
    let third = w.recv().await.expect("3rd after an ack");
    assert_eq!(*third.body.last().expect("payload"), 2);
    assert!(w.recv_within(QUIET).await.is_none());
    let _ = second;
}

#[tokio::test]
async fn message_over_the_client_maximum_packet_size_is_not_sent() {
    let b = Broker::start();
    // v5 CONNECT with Maximum Packet Size 64.
    let mut body = mqtt_string("MQTT");
    body.extend([5, 0x02, 0x00, 0x3C, 0x05, 0x27, 0x00, 0x00, 0x00, 0x40]);
    body.extend(mqtt_string("tiny"));
    let mut w = Wire::open(b.port()).await;
    w.send(&packet(0x10, &body)).await;
    assert_eq!(w.recv().await.expect("CONNACK").kind(), 2);
    let mut sub = mqtt_string("m");
    sub.push(0);
    w.send(&packet(0x82, &[&[0x00, 0x01, 0x00][..], &sub].concat()))
        .await;
    assert_eq!(w.recv().await.expect("SUBACK").kind(), 9);
    let publisher = V4Client::connect(b.port(), "pub").await;
    publisher
        .client
        .publish("m", QoS::AtMostOnce, false, vec![b'x'; 200])
        .await
        .expect("publish");
    publisher
        .client
        .publish("m", QoS::AtMostOnce, false, "small")
        .await
        .expect("publish");
    let p = w.recv().await.expect("the small one");
    assert!(
        p.body.ends_with(b"small"),
        "[MQTT-3.1.2-25] the large message is skipped"
    );
}

/// SUBSCRIBE bytes with several filters at QoS 1.
fn subscribe_many(level: u8, packet_id: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if level == 5 {
        body.push(0);
    }
    for f in filters {
        body.extend(mqtt_string(f));
        body.push(1);
    }
    packet(0x82, &body)
}

/// The SUBACK reason codes (after the packet id and, for v5, the properties).
async fn suback_codes(w: &mut Wire, level: u8) -> Vec<u8> {
    let ack = w.recv().await.expect("SUBACK");
    assert_eq!(ack.kind(), 9, "expected SUBACK, got {ack:?}");
    let skip = if level == 5 { 3 } else { 2 };
    ack.body[skip..].to_vec()
}

/// One client cannot hold more than `limits.max_subscriptions`: filters beyond it are refused
/// (0x97, MQTT 3: 0x80) while the others in the same SUBSCRIBE proceed, re-subscribing to a
/// held filter still works, and unsubscribing makes room. Before the limit one client added
/// 1.2 million subscriptions (800 MB) in seconds.
#[tokio::test]
async fn subscriptions_per_client_are_bounded() {
    let b = Broker::start_with("[limits]\nmax_subscriptions = 3\n");
    for level in [5u8, 4] {
        let refused = if level == 5 { 0x97 } else { 0x80 };
        let mut w = Wire::connected(b.port(), level, &format!("many-{level}")).await;
        w.send(&subscribe_many(level, 1, &["a", "b", "c", "d", "a"]))
            .await;
        assert_eq!(suback_codes(&mut w, level).await, [1, 1, 1, refused, 1]);
        w.send(&subscribe_many(level, 2, &["e"])).await;
        assert_eq!(suback_codes(&mut w, level).await, [refused]);
        w.send(&unsubscribe_packet(level, 3, "b")).await;
        assert_eq!(w.recv().await.expect("UNSUBACK").kind(), 11);
        w.send(&subscribe_many(level, 4, &["e", "f"])).await;
        assert_eq!(suback_codes(&mut w, level).await, [1, refused]);
        // What was granted is delivered; what was refused is not.
        let mut publisher = Wire::connected(b.port(), 4, &format!("pub-{level}")).await;
        for topic in ["d", "e"] {
            publisher
                .send(&publish_packet(4, topic, 0, 0, false, topic.as_bytes()))
                .await;
        }
        assert!(publisher.ping().await);
        let p = w.recv().await.expect("PUBLISH");
        assert_eq!(p.kind(), 3);
        assert!(p.body.ends_with(b"e"), "{p:?}");
        assert!(w.recv_within(QUIET).await.is_none(), "nothing for d");
    }
    assert!(b.log().contains("SUBSCRIBE: filters refused"));
}

/// One client cannot hold more than `limits.max_subscription_bytes` of filters: a filter that
/// would pass it is refused like one past `max_subscriptions`, re-subscribing to a held one
/// still works, and unsubscribing makes room. Before the limit one client held 1.2 GB with
/// 10 000 filters of 60 000 bytes.
#[tokio::test]
async fn subscription_bytes_per_client_are_bounded() {
    let b = Broker::start_with("[limits]\nmax_subscription_bytes = 10000\n");
    let long = |c: char| c.to_string().repeat(3000);
    let (a, bb, c, d) = (long('a'), long('b'), long('c'), long('d'));
    for level in [5u8, 4] {
        let refused = if level == 5 { 0x97 } else { 0x80 };
        let mut w = Wire::connected(b.port(), level, &format!("bytes-{level}")).await;
        // 3 × 3000 fit in 10 000; the fourth does not, a short one still does.
        w.send(&subscribe_many(level, 1, &[&a, &bb, &c, &d, "s", &a]))
            .await;
        assert_eq!(suback_codes(&mut w, level).await, [1, 1, 1, refused, 1, 1]);
        w.send(&unsubscribe_packet(level, 2, &bb)).await;
        assert_eq!(w.recv().await.expect("UNSUBACK").kind(), 11);
        w.send(&subscribe_many(level, 3, &[&d, &bb])).await;
        assert_eq!(suback_codes(&mut w, level).await, [1, refused]);
    }
}

/// limits.max_total_subscription_bytes: the filters of all sessions together, offline
/// persistent sessions included (one client leaving such sessions behind grew the broker by
/// 640 MB per 300 sessions). Past it a new filter is refused (v5 0x97, MQTT 3 0x80), one a
/// session holds can still be replaced, and an ended session gives its bytes back.
#[tokio::test]
async fn subscription_bytes_of_all_sessions_are_bounded() {
    let b = Broker::start_with("[limits]\nmax_total_subscription_bytes = 10000\n");
    let long = |c: char| c.to_string().repeat(3000);
    let (a, bb, c, d) = (long('a'), long('b'), long('c'), long('d'));
    let held = |n: usize| format!("broker_subscription_bytes {n}\n");

    // An offline persistent session keeps its 6 000 bytes.
    let (mut keeper, ack) = connack(b.port(), 4, "keeper", false).await;
    assert_eq!(ack, (2, 0, 0));
    keeper.send(&subscribe_many(4, 1, &[&a, &bb])).await;
    assert_eq!(suback_codes(&mut keeper, 4).await, [1, 1]);
    drop(keeper);

    // Another client: 3 000 more fit, the next 3 000 do not, a short filter does.
    let mut other = Wire::connected(b.port(), 5, "other").await;
    other.send(&subscribe_many(5, 1, &[&c, &d, "s", &c])).await;
    assert_eq!(suback_codes(&mut other, 5).await, [1, 0x97, 1, 1]);
    let mut third = Wire::connected(b.port(), 4, "third").await;
    third.send(&subscribe_many(4, 1, &[&d])).await;
    assert_eq!(suback_codes(&mut third, 4).await, [0x80]);
    assert!(b.ctl_ok(&["metrics"]).contains(&held(9001)));
    assert!(b
        .log()
        .contains("limits.max_total_subscription_bytes reached"));

    // Unsubscribing makes room; so does the offline session's end (a clean start).
    other.send(&unsubscribe_packet(5, 2, "s")).await;
    assert_eq!(other.recv().await.expect("UNSUBACK").kind(), 11);
    let (_keeper, ack) = connack(b.port(), 4, "keeper", true).await;
    assert_eq!(ack, (2, 0, 0));
    wait_until("the offline session's bytes given back", || {
        b.ctl_ok(&["metrics"]).contains(&held(3000))
    })
    .await;
    third.send(&subscribe_many(4, 2, &[&d, &a])).await;
    assert_eq!(suback_codes(&mut third, 4).await, [1, 1]);
    assert!(b.ctl_ok(&["metrics"]).contains(&held(9000)));
}

/// The CONNACK (packet type, session present, reason code) a raw CONNECT of `level` gets.
async fn connack(port: u16, level: u8, id: &str, clean: bool) -> (Wire, (u8, u8, u8)) {
    let mut w = Wire::open(port).await;
    w.send(&connect_packet(level, id, clean, 60)).await;
    let ack = w.recv().await.expect("CONNACK");
    let got = (ack.kind(), ack.body[0], ack.body[1]);
    (w, got)
}

/// limits.max_sessions: a client id with no session is refused once that many are held and
/// all of them are connected (v5 CONNACK 0x97, MQTT 3 0x03); clients that have a session still
/// connect, and an ended session makes room.
#[tokio::test]
async fn sessions_are_bounded() {
    let b = Broker::start_with("[limits]\nmax_sessions = 2\n");
    let (_one, ack) = connack(b.port(), 4, "one", true).await;
    assert_eq!(ack, (2, 0, 0));
    let (live, ack) = connack(b.port(), 5, "live", true).await;
    assert_eq!(ack, (2, 0, 0));

    let (_w, ack) = connack(b.port(), 5, "third", true).await;
    assert_eq!(ack, (2, 0, 0x97), "v5: quota exceeded");
    let (_w, ack) = connack(b.port(), 4, "third", false).await;
    assert_eq!(ack, (2, 0, 3), "MQTT 3: server unavailable");

    // Those that have a session still connect: taken over with a clean start.
    let (live_again, ack) = connack(b.port(), 5, "live", true).await;
    assert_eq!(ack, (2, 0, 0), "taken over with a clean start");
    drop(live);

    // The clean session ends with its connection: room for a new client.
    drop(live_again);
    wait_until("the clean session ended", || {
        b.ctl_ok(&["metrics"]).contains("broker_sessions 1\n")
    })
    .await;
    let (_third, ack) = connack(b.port(), 4, "third", true).await;
    assert_eq!(ack, (2, 0, 0));
    assert!(b
        .ctl_ok(&["metrics"])
        .contains("broker_sessions_refused_total 2"));
    assert!(b.log().contains("session limit reached"));
}

/// At limits.max_sessions a new client id ends the persistent session offline longest rather
/// than being refused: otherwise sessions left behind by anyone, never expiring, would lock
/// every new client out for good.
#[tokio::test]
async fn a_new_client_ends_the_session_offline_longest_at_the_limit() {
    let b = Broker::start_with("[limits]\nmax_sessions = 3\n");
    for id in ["old", "newer"] {
        let (w, ack) = connack(b.port(), 4, id, false).await;
        assert_eq!(ack, (2, 0, 0));
        drop(w);
        wait_until("offline", || {
            b.ctl_ok(&["sessions", "list", "--offline"]).contains(id)
        })
        .await;
    }
    // "old" resumed and left again: now "newer" has been offline longest.
    let (w, ack) = connack(b.port(), 4, "old", false).await;
    assert_eq!(ack, (2, 1, 0));
    drop(w);
    let (_online, ack) = connack(b.port(), 4, "online", true).await;
    assert_eq!(ack, (2, 0, 0));
    wait_until("three sessions, two offline", || {
        let list = b.ctl_ok(&["sessions", "list", "--offline"]);
        list.contains("old") && list.contains("newer")
    })
    .await;

    let (_w, ack) = connack(b.port(), 4, "fresh", true).await;
    assert_eq!(ack, (2, 0, 0), "room made");
    let list = b.ctl_ok(&["sessions", "list", "--offline"]);
    assert!(!list.contains("newer") && list.contains("old"), "{list}");
    let metrics = b.ctl_ok(&["metrics"]);
    assert!(
        metrics.contains("broker_sessions_evicted_total 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("broker_sessions 3\n"), "{metrics}");
    assert!(b.log().contains("limits.max_sessions reached"));
    // The ended session is gone: its client starts afresh.
    let (_w, ack) = connack(b.port(), 4, "newer", false).await;
    assert_eq!(ack, (2, 0, 0), "no session present");
}

/// The `incoming_bytes` gauge.
fn incoming_bytes(b: &Broker) -> u64 {
    b.ctl_ok(&["metrics"])
        .lines()
        .find_map(|l| l.strip_prefix("broker_incoming_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .expect("broker_incoming_bytes")
}

/// Waits for `w` to be closed with a v5 DISCONNECT 0x97 (quota exceeded).
async fn closed_with_quota_exceeded(w: &mut Wire, who: &str) {
    let mut seen = Vec::new();
    assert!(w.closed_within(WAIT, &mut seen).await, "{who} closed");
    assert!(
        seen.iter()
            .any(|p| p.kind() == 14 && p.body.first() == Some(&0x97)),
        "DISCONNECT 0x97: {seen:?}"
    );
}

/// limits.max_incoming_bytes: packets still arriving share one broker-wide budget beyond the
/// first 64 KiB of each connection. A client that sends all but the last byte of a large packet
/// holds its part; one whose packet would pass the budget is closed (v5 DISCONNECT 0x97, a
/// CONNECT without CONNACK), while small packets and the packet within the budget go through.
#[tokio::test]
async fn packets_still_arriving_are_bounded_broker_wide() {
    let b = Broker::start_with("[limits]\nmax_incoming_bytes = 1500000\n");
    let mut sub = Wire::connected(b.port(), 4, "sub").await;
    sub.send(&subscribe_packet(4, 1, "big", 0)).await;
    assert_eq!(sub.recv().await.expect("SUBACK").kind(), 9);

    let big = publish_packet(5, "big", 0, 0, false, &vec![b'x'; 1_000_000]);
    let (head, last) = big.split_at(big.len() - 1);
    let mut first = Wire::connected(b.port(), 5, "first").await;
    first.send(head).await;
    wait_until("the first packet is charged", || {
        incoming_bytes(&b) > 500_000
    })
    .await;

    // A second one does not fit next to it.
    let mut second = Wire::connected(b.port(), 5, "second").await;
    let _ = second.try_send(head).await;
    closed_with_quota_exceeded(&mut second, "second").await;

    // Nor does a CONNECT that large (only the start of it is needed: a packet is acted on
    // when complete): closed without CONNACK.
    let mut connect = vec![0x10];
    connect.extend(var_int(1_000_000));
    connect.extend(vec![0u8; 900_000]);
    let mut third = Wire::open(b.port()).await;
    let _ = third.try_send(&connect).await;
    let mut seen = Vec::new();
    assert!(third.closed_within(WAIT, &mut seen).await, "third closed");
    assert!(seen.is_empty(), "no CONNACK: {seen:?}");

    // Small packets are not held back, and the first packet completes.
    assert!(sub.ping().await);
    first.send(last).await;
    let p = sub.recv().await.expect("the large PUBLISH");
    assert_eq!((p.kind(), p.body.len()), (3, 2 + 3 + 1_000_000));
    drop((first, second, third));
    wait_until("every charge given back", || incoming_bytes(&b) == 0).await;
    assert!(b.log().contains("limits.max_incoming_bytes"));
}

/// A v5 QoS 0 PUBLISH that sets topic alias `alias` to `topic`.
fn publish_setting_alias(topic: &str, alias: u16) -> Vec<u8> {
    let mut body = mqtt_string(topic);
    body.extend([3, 0x23]);
    body.extend(alias.to_be_bytes());
    body.push(b'x');
    packet(0x30, &body)
}

/// limits.max_incoming_bytes counts the topics a v5 client's topic aliases name: held for the
/// whole connection, 64 aliases of 64 KiB topics are 4 MiB per connection (300 connections
/// held 1.1 GB). A client whose aliases would pass the budget is closed (DISCONNECT 0x97);
/// others keep theirs and are served, and a closed connection gives its charge back.
#[tokio::test]
async fn topic_aliases_count_against_the_incoming_budget() {
    let b = Broker::start_with("[limits]\nmax_incoming_bytes = 1048576\n");
    let topic = |client: &str, i: u16| format!("{client}/{i}/{}", "t".repeat(30_000));
    let mut modest = Wire::connected(b.port(), 5, "modest").await;
    for i in 1..=10 {
        modest.send(&publish_setting_alias(&topic("m", i), i)).await;
    }
    assert!(modest.ping().await);
    wait_until("the modest aliases are charged", || {
        incoming_bytes(&b) > 200_000
    })
    .await;

    let mut greedy = Wire::connected(b.port(), 5, "greedy").await;
    for i in 1..=64 {
        if greedy
            .try_send(&publish_setting_alias(&topic("g", i), i))
            .await
            .is_err()
        {
            break;
        }
    }
    closed_with_quota_exceeded(&mut greedy, "greedy").await;
    // The modest client still uses its aliases.
    let mut sub = Wire::connected(b.port(), 4, "sub").await;
    sub.send(&subscribe_packet(4, 1, &topic("m", 3), 0)).await;
    assert_eq!(sub.recv().await.expect("SUBACK").kind(), 9);
    let mut by_alias = vec![0, 0, 3, 0x23, 0, 3];
    by_alias.push(b'y');
    modest.send(&packet(0x30, &by_alias)).await;
    let p = sub.recv().await.expect("the PUBLISH sent by alias");
    assert!(p.body.ends_with(b"y"), "{p:?}");
    drop(modest);
    wait_until("every charge given back", || incoming_bytes(&b) == 0).await;
}

/// A v5 CONNECT whose will carries `props` user properties of `len` bytes each.
fn connect_with_big_will(id: &str, props: usize, len: usize) -> Vec<u8> {
    let mut body = mqtt_string("MQTT");
    body.extend([5, 0x04 | 0x02, 0, 60, 0]);
    body.extend(mqtt_string(id));
    let mut will_props = Vec::new();
    for i in 0..props {
        will_props.push(0x26);
        will_props.extend(mqtt_string(&format!("k{i}")));
        will_props.extend(mqtt_string(&"v".repeat(len)));
    }
    body.extend(var_int(will_props.len()));
    body.extend(will_props);
    body.extend(mqtt_string("wills/big"));
    body.extend(mqtt_string("bye"));
    packet(0x10, &body)
}

/// limits.max_incoming_bytes counts what a connection keeps of its CONNECT: a will can carry
/// nearly a packet's worth of user properties, held as long as the client stays connected. A
/// CONNECT whose will would pass the budget is refused, and room comes back when the holder
/// leaves.
#[tokio::test]
async fn wills_count_against_the_incoming_budget() {
    let b = Broker::start_with("[limits]\nmax_incoming_bytes = 1048576\n");
    let mut first = Wire::open(b.port()).await;
    first
        .send(&connect_with_big_will("first", 20, 30_000))
        .await;
    assert_eq!(first.recv().await.expect("CONNACK").body[..2], [0, 0]);
    wait_until("the will is charged", || incoming_bytes(&b) > 500_000).await;
    // Refused: while its CONNECT arrives (closed, no CONNACK) or once it has (CONNACK 0x97).
    let mut second = Wire::open(b.port()).await;
    let _ = second
        .try_send(&connect_with_big_will("second", 20, 30_000))
        .await;
    let mut seen = Vec::new();
    assert!(second.closed_within(WAIT, &mut seen).await, "second closed");
    assert!(
        seen.iter()
            .all(|p| p.kind() == 2 && p.body[..2] == [0, 0x97]),
        "no CONNACK, or CONNACK 0x97: {seen:?}"
    );
    drop(first);
    wait_until("the charge given back", || incoming_bytes(&b) == 0).await;
    let mut third = Wire::open(b.port()).await;
    third
        .send(&connect_with_big_will("third", 20, 30_000))
        .await;
    assert_eq!(third.recv().await.expect("CONNACK").body[..2], [0, 0]);
}

/// limits.max_control_rate counts a SUBSCRIBE's filters (one more per 8): a SUBSCRIBE of
/// 16 000 filters at 1 000 per second is paid off over two seconds before the connection is
/// read again, while other clients are served.
#[tokio::test]
async fn a_subscribe_of_many_filters_is_paid_off_before_more_is_read() {
    let b = Broker::start_with("[limits]\nmax_control_rate = 1000\nmax_subscriptions = 0\n");
    let mut w = Wire::connected(b.port(), 4, "many-filters").await;
    let names: Vec<String> = (0..16_000).map(|i| format!("f/{i}")).collect();
    let filters: Vec<&str> = names.iter().map(String::as_str).collect();
    w.send(&subscribe_many(4, 1, &filters)).await;
    assert_eq!(suback_codes(&mut w, 4).await.len(), 16_000);
    let asked = std::time::Instant::now();
    w.send(&PINGREQ).await;
    let mut other = Wire::connected(b.port(), 4, "other").await;
    assert!(other.ping().await, "another client is answered meanwhile");
    let pong = w.recv().await.expect("PINGRESP");
    assert_eq!(pong.kind(), 13);
    assert!(
        asked.elapsed() >= Duration::from_secs(1),
        "the PINGREQ waited for the debt: {:?}",
        asked.elapsed()
    );
}

/// Connections refused for the connection limit are counted, and logged once per 10 s with
/// how many were refused meanwhile, not once each (a reconnect loop against a full broker would
/// write thousands of lines a second).
#[tokio::test]
async fn refused_connections_are_counted_and_logged_sparingly() {
    let b = Broker::start_with("[limits]\nmax_connections = 1\n");
    let _held = Wire::connected(b.port(), 4, "the-one").await;
    for _ in 0..50 {
        let mut w = Wire::open(b.port()).await;
        let mut seen = Vec::new();
        assert!(w.closed_within(WAIT, &mut seen).await, "refused");
    }
    wait_until("50 refusals counted", || {
        b.ctl_ok(&["metrics"])
            .contains("broker_connections_refused_total 50")
    })
    .await;
    let lines = b.log().matches("connection limit reached").count();
    assert_eq!(lines, 1, "one line for 50 refusals");
}
