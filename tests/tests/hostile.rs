//! Hostile input from one client must not take the broker down, grow it without bound, or
//! starve other clients: deep topics, empty filters, reserved topics, a subscriber that stops
//! reading, a flood into an offline session, slow and half-open connections.

use std::time::{Duration, Instant};

use broker_tests::*;

/// A topic (or filter) of `levels` levels: `a/a/…/a/<last>`.
fn deep(levels: usize, last: &str) -> String {
    let mut s = "a/".repeat(levels - 1);
    s.push_str(last);
    s
}

/// The kinds of the next two packets, sorted: a SUBACK (9) and a retained PUBLISH (3) may
/// arrive in either order.
async fn suback_and_retained(w: &mut Wire) -> [u8; 2] {
    let mut kinds = [0; 2];
    for k in &mut kinds {
        *k = w
            .recv()
            .await
            .expect("SUBACK and the retained message")
            .kind();
    }
    kinds.sort();
    kinds
}

/// Reads until the connection closes; returns the reason code of a DISCONNECT seen first.
async fn disconnect_reason(w: &mut Wire) -> Option<u8> {
    let mut seen = Vec::new();
    assert!(w.closed_within(WAIT, &mut seen).await, "connection closed");
    seen.iter()
        .find(|p| p.kind() == 14)
        .and_then(|p| p.body.first().copied())
}

// postmortem: a SUBSCRIBE of ~10 000 levels and a matching PUBLISH overflowed the broker's
// stack and aborted it, dropping every client.
#[tokio::test]
async fn deep_topics_are_refused_and_the_broker_keeps_serving() {
    let b = Broker::start();
    let mut bystander = Wire::connected(b.port(), 4, "bystander").await;
    let base = b.rss_kib();
    for levels in [1_000, 10_000, 32_000] {
        let filter = deep(levels, "#");
        let topic = deep(levels, "b");

        let mut w = Wire::connected(b.port(), 4, "deep4").await;
        w.send(&subscribe_packet(4, 1, &filter, 1)).await;
        let ack = w.recv().await.expect("SUBACK");
        assert_eq!((ack.kind(), ack.body.clone()), (9, vec![0, 1, 0x80]));
        assert!(w.ping().await, "the subscriber stays connected");
        w.send(&publish_packet(4, &topic, 0, 0, false, b"x")).await;
        assert_eq!(disconnect_reason(&mut w).await, None, "v3.1.1: closed");

        let mut w = Wire::connected(b.port(), 5, "deep5").await;
        w.send(&subscribe_packet(5, 1, &filter, 1)).await;
        let ack = w.recv().await.expect("SUBACK");
        assert_eq!((ack.kind(), ack.body.clone()), (9, vec![0, 1, 0, 0x8F]));
        w.send(&publish_packet(5, &topic, 1, 2, false, b"x")).await;
        assert_eq!(disconnect_reason(&mut w).await, Some(0x90));
    }
    // 65 535 slashes: 65 536 empty levels.
    let mut w = Wire::connected(b.port(), 5, "slashes").await;
    w.send(&publish_packet(5, &"/".repeat(65_535), 0, 0, false, b"x"))
        .await;
    assert_eq!(disconnect_reason(&mut w).await, Some(0x90));
    // A 65 535-byte topic of one level is an ordinary topic.
    let long = "x".repeat(65_535);
    let mut sub = Wire::connected(b.port(), 4, "long-sub").await;
    sub.send(&subscribe_packet(4, 1, "#", 0)).await;
    assert_eq!(sub.recv().await.expect("SUBACK").body, vec![0, 1, 0]);
    let mut w = Wire::connected(b.port(), 4, "long-pub").await;
    w.send(&publish_packet(4, &long, 0, 0, false, b"long"))
        .await;
    let got = sub.recv().await.expect("the long topic is delivered");
    assert_eq!(got.kind(), 3);
    assert_eq!(&got.body[2..2 + long.len()], long.as_bytes());

    assert!(bystander.ping().await, "other clients were never dropped");
    let log = b.log();
    assert!(
        log.contains("limits.max_topic_levels"),
        "the refusal is logged"
    );
    let grown = b.rss_kib().saturating_sub(base);
    eprintln!("deep topics: RSS {base} KiB before, grew by {grown} KiB");
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");
}

/// Even with the topic-level limit lifted, deep filters and topics are handled without
/// recursion: subscribe, match, unsubscribe, session end, and the retainer's disc store.
#[tokio::test]
async fn deep_topics_within_a_raised_limit_do_not_crash_anything() {
    let mut b = Broker::start_with("[limits]\nmax_topic_levels = 70000\n");
    b.load_retainer_on_disc();

    let mut publisher = Wire::connected(b.port(), 4, "pub").await;
    let topic = deep(32_000, "b");
    let mut sub = Wire::connected(b.port(), 4, "sub").await;
    sub.send(&subscribe_packet(4, 1, &topic, 0)).await;
    assert_eq!(sub.recv().await.expect("SUBACK").body, vec![0, 1, 0]);
    let plus = format!("{}#", "+/".repeat(9_999));
    sub.send(&subscribe_packet(4, 2, &plus, 0)).await;
    assert_eq!(sub.recv().await.expect("SUBACK").body, vec![0, 2, 0]);
    publisher
        .send(&publish_packet(4, &topic, 0, 0, false, b"deep"))
        .await;
    let got = sub.recv().await.expect("deep publish delivered once");
    assert_eq!(got.kind(), 3);
    assert!(got.body.ends_with(b"deep"));
    sub.send(&unsubscribe_packet(4, 3, &topic)).await;
    assert_eq!(sub.recv().await.expect("UNSUBACK").kind(), 11);
    // A 6 000-level filter left behind when the client goes: removed with the session.
    sub.send(&subscribe_packet(4, 4, &deep(6_000, "c"), 0))
        .await;
    assert_eq!(sub.recv().await.expect("SUBACK").body, vec![0, 4, 0]);
    drop(sub);

    // Retained on a 10 000-level topic, on disc.
    let retained = deep(10_000, "r");
    publisher
        .send(&publish_packet(4, &retained, 0, 0, true, b"kept"))
        .await;
    wait_until("stored", || {
        b.ctl_ok(&["retainer", "info"]).contains("messages: 1")
    })
    .await;
    let mut wild = Wire::connected(b.port(), 4, "wild").await;
    wild.send(&subscribe_packet(
        4,
        1,
        &format!("{}#", "+/".repeat(9_999)),
        0,
    ))
    .await;
    assert_eq!(suback_and_retained(&mut wild).await, [3, 9]);
    // An empty retained publish deletes it; store it again, then clean with brokerctl.
    publisher
        .send(&publish_packet(4, &retained, 0, 0, true, b""))
        .await;
    wait_until("deleted", || {
        b.ctl_ok(&["retainer", "info"]).contains("messages: 0")
    })
    .await;
    publisher
        .send(&publish_packet(4, &retained, 0, 0, true, b"again"))
        .await;
    wait_until("stored again", || {
        b.ctl_ok(&["retainer", "info"]).contains("messages: 1")
    })
    .await;
    drop((publisher, wild));
    // The store holding the deep entry loads again after a restart.
    b.restart();
    assert!(b.ctl_ok(&["retainer", "info"]).contains("messages: 1"));
    let mut all = Wire::connected(b.port(), 4, "all").await;
    all.send(&subscribe_packet(4, 1, "#", 0)).await;
    assert_eq!(suback_and_retained(&mut all).await, [3, 9]);
    assert!(b.ctl_ok(&["retainer", "clean"]).contains("Removed 1"));
    assert!(all.ping().await);
    assert!(b.is_running());
    drop(all);
}

#[tokio::test]
async fn empty_topic_filters_are_a_protocol_error() {
    let b = Broker::start();
    for (level, expected) in [(4, None), (5, Some(0x82))] {
        let mut w = Wire::connected(b.port(), level, "empty-sub").await;
        w.send(&subscribe_packet(level, 1, "", 0)).await;
        let mut seen = Vec::new();
        assert!(w.closed_within(WAIT, &mut seen).await, "[MQTT-4.7.3-1]");
        assert!(seen.iter().all(|p| p.kind() != 9), "no SUBACK: {seen:?}");
        let reason = seen.iter().find(|p| p.kind() == 14).map(|p| p.body[0]);
        assert_eq!(reason, expected);

        let mut w = Wire::connected(b.port(), level, "empty-unsub").await;
        w.send(&unsubscribe_packet(level, 1, "")).await;
        assert_eq!(disconnect_reason(&mut w).await, expected);
    }
}

#[tokio::test]
async fn clients_may_not_publish_to_sys_unless_allowed() {
    let b = Broker::start();
    let mut sub = Wire::connected(b.port(), 4, "watcher").await;
    sub.send(&subscribe_packet(4, 1, "$SYS/#", 0)).await;
    assert_eq!(sub.recv().await.expect("SUBACK").kind(), 9);
    let mut v5 = Wire::connected(b.port(), 5, "faker5").await;
    v5.send(&publish_packet(5, "$SYS/brokers/fake", 1, 7, false, b"x"))
        .await;
    let ack = v5.recv().await.expect("PUBACK");
    assert_eq!((ack.kind(), ack.body[2]), (4, 0x87), "not authorized");
    let mut v4 = Wire::connected(b.port(), 4, "faker4").await;
    v4.send(&publish_packet(4, "$SYS", 1, 8, false, b"x")).await;
    assert_eq!(v4.recv().await.expect("PUBACK").kind(), 4);
    // `$SYSTEM/x` is not the broker's.
    v4.send(&publish_packet(4, "$SYSTEM/x", 0, 0, false, b"x"))
        .await;
    assert!(
        sub.recv_within(Duration::from_millis(300)).await.is_none(),
        "nothing reached $SYS"
    );
    // A will on $SYS refuses the CONNECT (v3.1.1: 5, not authorised).
    let mut body = mqtt_string("MQTT");
    body.extend([4, 0x02 | 0x04, 0, 60]);
    body.extend(mqtt_string("willer"));
    body.extend(mqtt_string("$SYS/will"));
    body.extend(mqtt_string("bye"));
    let mut w = Wire::open(b.port()).await;
    w.send(&packet(0x10, &body)).await;
    let ack = w.recv().await.expect("CONNACK");
    assert_eq!((ack.kind(), ack.body[1]), (2, 5));

    let allowed = Broker::start_with("[acl]\nclient_publish_sys = true\n");
    let mut sub = Wire::connected(allowed.port(), 4, "watcher").await;
    sub.send(&subscribe_packet(4, 1, "$SYS/#", 0)).await;
    assert_eq!(sub.recv().await.expect("SUBACK").kind(), 9);
    let mut p = Wire::connected(allowed.port(), 4, "publisher").await;
    p.send(&publish_packet(4, "$SYS/custom", 0, 0, false, b"ok"))
        .await;
    assert_eq!(sub.recv().await.expect("delivered").kind(), 3);
}

/// Acceptance: an offline session offered 40 000 QoS 1 messages of 1 KiB (40 MB) keeps what fits
/// in `max_queued_bytes` (4 MiB), in order, and the broker grows by about that much.
#[tokio::test]
async fn offline_queue_is_bounded_in_bytes() {
    const MAX: usize = 4 * 1024 * 1024;
    // Without the session store, whose page cache (up to 8 MiB) would blur what this measures.
    let b = Broker::start_with(&format!(
        "[limits]\nmax_queued_bytes = {MAX}\n[session]\ndurability = \"none\"\n"
    ));
    let mut sub = Wire::open(b.port()).await;
    sub.send(&connect_packet(4, "offline", false, 60)).await;
    assert_eq!(sub.recv().await.expect("CONNACK").kind(), 2);
    sub.send(&subscribe_packet(4, 1, "q", 1)).await;
    assert_eq!(sub.recv().await.expect("SUBACK").body, vec![0, 1, 1]);
    drop(sub);
    let base = b.rss_kib();
    let mut publisher = Wire::connected(b.port(), 4, "flood").await;
    let payload = vec![b'p'; 1024];
    let mut acked = 0;
    for chunk in 0..40u16 {
        let mut batch = Vec::new();
        for i in 0..1000u16 {
            let id = chunk * 1000 + i + 1;
            let mut p = payload.clone();
            p[..2].copy_from_slice(&id.to_be_bytes());
            batch.extend(publish_packet(4, "q", 1, id, false, &p));
        }
        publisher.send(&batch).await;
        while acked < (chunk as usize + 1) * 1000 {
            assert_eq!(publisher.recv().await.expect("PUBACK").kind(), 4);
            acked += 1;
        }
    }
    let grown = b.rss_kib().saturating_sub(base);
    eprintln!("40 000 x 1 KiB into an offline session: RSS {base} KiB before, grew by {grown} KiB");
    let metrics = b.ctl_ok(&["metrics"]);
    let queued: usize = metric(&metrics, "queued_bytes");
    assert!(queued <= MAX, "queued_bytes {queued}");
    assert!(metric::<u64>(&metrics, "messages_dropped") > 10_000);
    // RSS: the queue's bytes plus a constant for buffers and allocator slack (measured: about
    // 4 MiB over the queue, up to 8.5 MiB on a loaded machine); an unbounded queue would grow
    // by the 40 MB offered.
    assert!(
        grown < (MAX / 1024 + 12 * 1024) as u64,
        "RSS grew by {grown} KiB for a {MAX}-byte queue"
    );
    drop(publisher);

    // The session receives what was kept, oldest first.
    let mut sub = Wire::open(b.port()).await;
    sub.send(&connect_packet(4, "offline", false, 60)).await;
    assert_eq!(sub.recv().await.expect("CONNACK").body, vec![1, 0]);
    let mut next = 1u16;
    while let Some(p) = sub.recv_within(Duration::from_secs(2)).await {
        assert_eq!(p.kind(), 3);
        let id = u16::from_be_bytes([p.body[3], p.body[4]]);
        let seq = u16::from_be_bytes([p.body[5], p.body[6]]);
        assert_eq!(seq, next, "in order, none missing before the limit");
        next += 1;
        sub.send(&packet(0x40, &id.to_be_bytes())).await;
    }
    let kept = (next - 1) as usize;
    eprintln!("kept {kept} of 20 000 messages in {MAX} queued bytes");
    // Each is charged its payload and topic plus ~190 bytes of record (DELIVERY_OVERHEAD).
    let (lightest, heaviest) = (1024 + 1 + 100, 1024 + 1 + 400);
    assert!(
        (MAX / heaviest..=MAX / lightest).contains(&kept),
        "kept {kept} messages"
    );
}

fn metric<T: std::str::FromStr>(text: &str, name: &str) -> T {
    text.lines()
        .find_map(|l| {
            let rest = l
                .strip_prefix(&format!("broker_{name} "))
                .or_else(|| l.strip_prefix(&format!("broker_{name}_total ")))?;
            rest.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("metric {name} not in:\n{text}"))
}

/// A subscriber that stops reading holds at most its queue; it is disconnected after
/// `slow_consumer_timeout`, keep-alive is still enforced on others, and memory comes back.
#[tokio::test]
async fn a_subscriber_that_stops_reading_is_bounded_and_disconnected() {
    let b = Broker::start_with("[limits]\nslow_consumer_timeout = 2\n");
    let base = b.rss_kib();
    let mut stalled = Wire::connected(b.port(), 4, "stalled").await;
    stalled.send(&subscribe_packet(4, 1, "big", 0)).await;
    assert_eq!(stalled.recv().await.expect("SUBACK").kind(), 9);
    let mut watcher = Wire::connected(b.port(), 4, "watcher").await;
    let mut publisher = Wire::connected(b.port(), 4, "publisher").await;
    let payload = vec![b'x'; 100 * 1024];
    let started = Instant::now();
    let mut peak = 0;
    for _ in 0..1000 {
        publisher
            .send(&publish_packet(4, "big", 0, 0, false, &payload))
            .await;
        peak = peak.max(b.rss_kib());
    }
    assert!(publisher.ping().await, "the publisher is served meanwhile");
    assert!(watcher.ping().await, "so are others");
    // 100 MB were published for it: it holds at most its queue (16 MiB) and ~64 KiB of
    // output, plus the publisher's read buffer and allocator slack (measured: ~8 MiB, up to
    // ~16 MiB on a loaded machine).
    let grown = peak.saturating_sub(base);
    eprintln!(
        "stalled subscriber, 100 MB published: RSS {base} KiB before, peak grew by {grown} KiB"
    );
    assert!(grown < (16 + 24) * 1024, "RSS grew by {grown} KiB");
    // Without reading a byte of it (reading would make it a consumer again).
    wait_until("disconnected as a slow consumer", || {
        metric::<u64>(&b.ctl_ok(&["metrics"]), "slow_consumers_disconnected") == 1
    })
    .await;
    assert!(started.elapsed() < WAIT + Duration::from_secs(10));
    assert!(b.log().contains("slow_consumer"));
    let mut seen = Vec::new();
    assert!(stalled.closed_within(WAIT, &mut seen).await, "closed");
    wait_until("queued bytes released", || {
        metric::<u64>(&b.ctl_ok(&["metrics"]), "queued_bytes") == 0
    })
    .await;
}

/// Keep-alive is enforced even while the broker cannot write to the client.
#[tokio::test]
async fn keep_alive_is_enforced_while_writes_are_blocked() {
    let b = Broker::start_with("[limits]\nslow_consumer_timeout = 3600\n");
    let mut stalled = Wire::open(b.port()).await;
    stalled.send(&connect_packet(4, "stalled", true, 2)).await;
    assert_eq!(stalled.recv().await.expect("CONNACK").kind(), 2);
    stalled.send(&subscribe_packet(4, 1, "big", 0)).await;
    assert_eq!(stalled.recv().await.expect("SUBACK").kind(), 9);
    let mut publisher = Wire::connected(b.port(), 4, "publisher").await;
    let payload = vec![b'x'; 64 * 1024];
    for _ in 0..200 {
        publisher
            .send(&publish_packet(4, "big", 0, 0, false, &payload))
            .await;
    }
    assert!(publisher.ping().await);
    let started = Instant::now();
    wait_until("keep-alive timeout logged", || {
        b.log().contains("keepalive_timeout")
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(8));
}

/// A client `id` (MQTT 3.1.1, `clean` session or not) subscribed to `q` at QoS 1.
async fn subscribed_to_q(port: u16, id: &str, clean: bool) -> Wire {
    let mut sub = Wire::open(port).await;
    sub.send(&connect_packet(4, id, clean, 60)).await;
    assert_eq!(sub.recv().await.expect("CONNACK").kind(), 2);
    sub.send(&subscribe_packet(4, 1, "q", 1)).await;
    assert_eq!(sub.recv().await.expect("SUBACK").kind(), 9);
    sub
}

/// `n` QoS 1 PUBLISH packets of 10 KiB to `q`, packet ids 1..=n.
fn flood_of_q(n: u16) -> Vec<u8> {
    let payload = vec![b'p'; 10 * 1024];
    (1..=n)
        .flat_map(|id| publish_packet(4, "q", 1, id, false, &payload))
        .collect()
}

/// Back-pressure: past the memory high-water mark, publishers are no longer read until the
/// queues of connected subscribers drain; subscribers keep being served.
#[tokio::test]
async fn publishers_pause_at_the_memory_high_water_mark() {
    let b = Broker::start_with("[limits]\nmemory_high_watermark = 2097152\n");
    // Connected, subscribed, and not reading: its queue fills and stays online.
    let mut sub = subscribed_to_q(b.port(), "stalled", true).await;

    let mut publisher = Wire::connected(b.port(), 4, "flood").await;
    publisher.send(&flood_of_q(400)).await;
    let mut acks = 0;
    while publisher
        .recv_within(Duration::from_millis(500))
        .await
        .is_some()
    {
        acks += 1;
    }
    assert!(acks < 400, "paused before all 400 were taken ({acks})");
    let metrics = b.ctl_ok(&["metrics"]);
    assert!(metric::<u64>(&metrics, "publishers_paused") >= 1);
    let queued: u64 = metric(&metrics, "queued_bytes");
    assert!(
        // The mark is looked at every 64 routed messages: at most 64 x 10 KiB past it.
        (2_097_152..2_097_152 + 64 * 11 * 1024).contains(&queued),
        "stopped near the mark: {queued}"
    );
    assert_eq!(metric::<u64>(&metrics, "offline_queued_bytes"), 0);
    // Others are still served, and the subscriber drains its queue...
    let mut other = Wire::connected(b.port(), 4, "other").await;
    assert!(other.ping().await);
    // ... after which the publisher is read again and all 400 arrive.
    let mut received = 0;
    while received < 400 {
        let p = sub.recv().await.expect("queued and resumed messages");
        assert_eq!(p.kind(), 3);
        sub.send(&packet(0x40, &p.body[3..5])).await;
        received += 1;
    }
    while acks < 400 {
        assert_eq!(publisher.recv().await.expect("PUBACK").kind(), 4);
        acks += 1;
    }
}

/// A subscriber that stays connected, reads everything and never acknowledges is no slow
/// consumer by the write side's measure, yet its queue fills. Enough of them would hold the
/// broker over the high-water mark, and every publisher paused, for as long as they liked:
/// after `slow_consumer_timeout` over the mark the largest queues are disconnected and dropped.
#[tokio::test]
async fn subscribers_that_never_acknowledge_cannot_pause_publishers_for_long() {
    let b = Broker::start_with(
        "[limits]\nmemory_high_watermark = 2097152\nslow_consumer_timeout = 2\nmax_inflight = 32\n",
    );
    let mut sub = subscribed_to_q(b.port(), "taker", false).await;
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        let closed = sub.closed_within(Duration::from_secs(60), &mut seen).await;
        (closed, seen.len())
    });

    let mut publisher = Wire::connected(b.port(), 4, "flood").await;
    publisher.send(&flood_of_q(400)).await;
    for _ in 0..400 {
        let ack = publisher
            .recv_within(WAIT)
            .await
            .expect("PUBACK after the eviction");
        assert_eq!(ack.kind(), 4);
    }
    let (closed, seen) = reader.await.expect("reader");
    assert!(closed, "the subscriber was disconnected");
    assert_eq!(seen, 32, "it got its inflight window, unacknowledged");
    let metrics = b.ctl_ok(&["metrics"]);
    assert!(metric::<u64>(&metrics, "publishers_paused") >= 1);
    assert_eq!(metric::<u64>(&metrics, "slow_consumers_disconnected"), 1);
    assert!(metric::<u64>(&metrics, "messages_dropped") > 100);
    assert!(b
        .log()
        .contains("slow consumer disconnected at the memory high-water mark"));
    // The session is kept, with its window to resend and what came after the eviction.
    let mut back = Wire::open(b.port()).await;
    back.send(&connect_packet(4, "taker", false, 60)).await;
    let connack = back.recv().await.expect("CONNACK");
    assert_eq!(connack.body[0], 1, "session present");
    let first = back.recv().await.expect("resent PUBLISH");
    assert_eq!(first.kind(), 3);
    assert_ne!(first.byte1 & 0x08, 0, "DUP on the resent window");
}

/// What a client leaves unacknowledged counts against its queue's byte limit: a subscriber
/// that never acknowledges held a whole inflight window of messages (32 of up to 1 MiB) on top
/// of its queue, uncounted anywhere.
#[tokio::test]
async fn unacknowledged_messages_count_against_the_queue_bytes() {
    let b = Broker::start_with("[limits]\nmax_queued_bytes = 102400\n");
    let mut sub = subscribed_to_q(b.port(), "holder", true).await;
    let mut publisher = Wire::connected(b.port(), 4, "flood").await;
    publisher.send(&flood_of_q(50)).await;
    for _ in 0..50 {
        assert_eq!(publisher.recv().await.expect("PUBACK").kind(), 4);
    }
    let mut held = Vec::new();
    while let Some(p) = sub.recv_within(Duration::from_millis(500)).await {
        held.push(p);
    }
    assert_eq!(held.len(), 9, "100 KiB of 10 KiB messages, in flight");
    let metrics = b.ctl_ok(&["metrics"]);
    let queued: u64 = metric(&metrics, "queued_bytes");
    assert!((9 * 10 * 1024..=102_400).contains(&queued), "{queued}");
    assert_eq!(metric::<u64>(&metrics, "messages_dropped"), 41);
    // Acknowledged, they are given back.
    for p in &held {
        sub.send(&packet(0x40, &p.body[3..5])).await;
    }
    wait_until("the acknowledged bytes given back", || {
        metric::<u64>(&b.ctl_ok(&["metrics"]), "queued_bytes") == 0
    })
    .await;
}

/// Queues of offline sessions drain only when their clients return, so they must not pause
/// publishers (64 offline `#` subscribers used to stop every publisher for as long as they
/// stayed away); they are bounded together by `max_offline_queued_bytes` instead.
#[tokio::test]
async fn offline_queues_are_bounded_and_never_pause_publishers() {
    let b = Broker::start_with(
        "[limits]\nmemory_high_watermark = 2097152\nmax_offline_queued_bytes = 3145728\n",
    );
    for id in ["away1", "away2"] {
        subscribed_to_q(b.port(), id, false).await;
    }
    wait_until("both sessions offline", || {
        b.ctl_ok(&["sessions", "list", "--offline"])
            .matches("away")
            .count()
            == 2
    })
    .await;

    // 2 x 4 MB for offline sessions, past the mark: every message is still acknowledged.
    let mut publisher = Wire::connected(b.port(), 4, "flood").await;
    let mut batch = Vec::new();
    for id in 1..=400u16 {
        let mut payload = vec![b'p'; 10 * 1024];
        payload[..2].copy_from_slice(&id.to_be_bytes());
        batch.extend(publish_packet(4, "q", 1, id, false, &payload));
    }
    publisher.send(&batch).await;
    for _ in 0..400 {
        let ack = publisher
            .recv_within(WAIT)
            .await
            .expect("PUBACK, not paused");
        assert_eq!(ack.kind(), 4);
    }
    let metrics = b.ctl_ok(&["metrics"]);
    assert_eq!(metric::<u64>(&metrics, "publishers_paused"), 0);
    let offline: u64 = metric(&metrics, "offline_queued_bytes");
    assert!(
        (3_145_728 - 11 * 1024..=3_145_728).contains(&offline),
        "offline queues filled up to their bound: {offline}"
    );
    assert_eq!(metric::<u64>(&metrics, "queued_bytes"), offline);
    let dropped: u64 = metric(&metrics, "offline_messages_dropped");
    assert!(dropped >= 800 - 3_145_728 / (10 * 1024), "{dropped}");
    assert!(b.log().contains("limits.max_offline_queued_bytes reached"));

    // A returning client gets the oldest messages, in order, and its bytes leave the offline
    // total; what the other offline session holds stays there.
    let mut back = Wire::open(b.port()).await;
    back.send(&connect_packet(4, "away1", false, 60)).await;
    assert_eq!(back.recv().await.expect("CONNACK").kind(), 2);
    let mut expected = 1u16;
    while let Some(p) = back.recv_within(Duration::from_millis(500)).await {
        assert_eq!(p.kind(), 3);
        assert_eq!(
            p.body[5..7],
            expected.to_be_bytes(),
            "oldest first, in order"
        );
        back.send(&packet(0x40, &p.body[3..5])).await;
        expected += 1;
    }
    assert!(expected > 100, "the returning client got its queue");
    wait_until("the returned session's queue drained", || {
        let metrics = b.ctl_ok(&["metrics"]);
        let offline: u64 = metric(&metrics, "offline_queued_bytes");
        offline > 0 && metric::<u64>(&metrics, "queued_bytes") == offline
    })
    .await;
}

#[tokio::test]
async fn a_connect_sent_one_byte_at_a_time_is_cut_by_connect_timeout() {
    let b = Broker::start_with("[limits]\nconnect_timeout = 2\n");
    let connect = connect_packet(4, "trickle", true, 60);
    let mut w = Wire::open(b.port()).await;
    let started = Instant::now();
    let mut closed = false;
    for byte in connect.iter().take(connect.len() - 1) {
        w.send(&[*byte]).await;
        if w.closed_within(Duration::from_millis(500), &mut Vec::new())
            .await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "closed before the CONNECT was complete");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

/// 10 000 connections that never send CONNECT do not keep a real client out.
#[tokio::test]
async fn half_open_connections_do_not_block_new_clients() {
    raise_open_files(12_000);
    let b = Broker::start_with("[limits]\nconnect_timeout = 60\n");
    let mut idle = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", b.port()))
                .await
                .expect("connect"),
        );
    }
    let started = Instant::now();
    let mut w = Wire::connected(b.port(), 4, "real").await;
    assert!(w.ping().await);
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(idle);
}

fn raise_open_files(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

// postmortem: `brokerctl plugins load` of a truncated copy of a real plugin killed the broker
// with SIGBUS (the loader mapped past the end of the file), logging nothing.
#[tokio::test]
async fn a_truncated_plugin_library_is_refused_in_one_line() {
    let plugins = tempfile::tempdir().expect("tmp");
    let real = std::fs::read(bin_dir().join("libpresence.so")).expect("libpresence.so built");
    std::fs::write(
        plugins.path().join("libtruncated.so"),
        &real[..real.len() / 2],
    )
    .expect("write");
    let b = Broker::start_in(tempfile::tempdir().expect("tmp"), plugins.path(), "");
    let out = b.ctl(&["plugins", "load", "truncated"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("truncated or damaged"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    let mut w = Wire::connected(b.port(), 4, "still-here").await;
    assert!(w.ping().await, "the broker is still serving");
}

#[tokio::test]
async fn files_with_secrets_and_data_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let mut b = Broker::start();
    let token = b.data_dir().join("admin.token");
    assert_eq!(mode(&token), 0o600);
    assert_eq!(mode(&b.data_dir().join("listeners.json")), 0o600);
    // A persistent session, so that the session store is written.
    let mut w = Wire::open(b.port()).await;
    w.send(&connect_packet(4, "keeper", false, 60)).await;
    assert_eq!(w.recv().await.expect("CONNACK").kind(), 2);
    drop(w);
    let status = b.terminate();
    assert!(status.success());
    assert_eq!(mode(&b.data_dir().join("sessions.redb")), 0o600);
    // A token file loosened to 0644 stops the broker from starting, with the fix in the message.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = std::process::Command::new(binary("broker"))
        .arg("--config")
        .arg(b.dir.path().join("broker.toml"))
        .output()
        .expect("run broker");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn brokerctl_into_a_closed_pipe_ends_quietly() {
    let b = Broker::start();
    let config = b.dir.path().join("broker.toml");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{:?} --config {:?} metrics | true",
            binary("brokerctl"),
            config
        ))
        .output()
        .expect("sh");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_misspelt_log_level_stops_the_broker_at_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        "[log]\nlevel = \"inof\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n",
    )
    .expect("config");
    let out = std::process::Command::new(binary("broker"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run broker");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("log.level") && err.contains("inof"), "{err}");
}

/// A client flooding PINGREQ is read at `max_control_rate` packets per second: every ping is
/// answered, over as many seconds as the budget needs, and other clients are served meanwhile.
#[tokio::test]
async fn control_packet_floods_are_read_at_the_configured_rate() {
    let b = Broker::start_with("[limits]\nmax_control_rate = 100\n");
    // Measured from before the connection exists: the rate window starts when the broker
    // accepts it, so 250 pings cannot all be read less than 2 s after this instant.
    let started = Instant::now();
    let mut flooder = Wire::connected(b.port(), 4, "flooder").await;
    flooder.send(&PINGREQ.repeat(250)).await;
    let mut other = Wire::connected(b.port(), 4, "other").await;
    assert!(other.ping().await, "served during the flood");
    for _ in 0..250 {
        assert_eq!(flooder.recv().await.expect("PINGRESP").kind(), 13);
    }
    // 100 in the first second, 100 in the second, the rest in the third.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
