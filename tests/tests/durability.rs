//! Nothing acknowledged is lost when the broker is killed (`[session] durability = "ack"`, the
//! default): real broker processes, real SIGKILLs, raw MQTT clients that see every packet id
//! and DUP flag.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use broker_tests::*;

/// A raw v3.1.1 client with a persistent session (clean session = 0).
async fn persistent_wire(port: u16, id: &str) -> (Wire, bool) {
    let mut w = Wire::open(port).await;
    w.send(&connect_packet(4, id, false, 60)).await;
    let ack = w.recv().await.expect("CONNACK");
    assert_eq!((ack.kind(), ack.body[1]), (2, 0), "accepted");
    (w, ack.body[0] == 1)
}

/// Packet id, topic and payload of a PUBLISH with QoS > 0.
fn parts(p: &RawPacket) -> (u16, String, Vec<u8>) {
    let topic_len = u16::from_be_bytes([p.body[0], p.body[1]]) as usize;
    let topic = String::from_utf8_lossy(&p.body[2..2 + topic_len]).into_owned();
    let id = u16::from_be_bytes([p.body[2 + topic_len], p.body[3 + topic_len]]);
    (id, topic, p.body[4 + topic_len..].to_vec())
}

fn ack(kind: u8, id: u16) -> Vec<u8> {
    packet(kind, &id.to_be_bytes())
}

/// Acceptance: 5 000 QoS 1 messages acknowledged for an offline session survive `kill -9`,
/// and arrive in order, none twice.
#[tokio::test]
async fn qos1_messages_acknowledged_for_an_offline_session_survive_kill_9() {
    const N: u32 = 5_000;
    let mut b = Broker::start();
    let (mut sub, _) = persistent_wire(b.port(), "offline").await;
    sub.send(&subscribe_packet(4, 1, "d/#", 1)).await;
    assert_eq!(sub.recv().await.expect("SUBACK").body, vec![0, 1, 1]);
    drop(sub);

    let mut publisher = Wire::connected(b.port(), 4, "publisher").await;
    let mut batch = Vec::new();
    for i in 0..N {
        let id = (i % 60_000 + 1) as u16;
        batch.extend(publish_packet(4, "d/x", 1, id, false, &i.to_be_bytes()));
    }
    publisher.send(&batch).await;
    for _ in 0..N {
        assert_eq!(publisher.recv().await.expect("PUBACK").kind(), 4);
    }
    b.crash_and_restart();
    assert!(b.log().contains("restored=1"), "{}", b.log());

    let (mut sub, present) = persistent_wire(b.port(), "offline").await;
    assert!(present, "session present after the crash");
    let mut next = 0u32;
    while next < N {
        let p = sub.recv().await.expect("a queued message");
        assert_eq!(p.kind(), 3);
        assert_eq!(p.byte1 & 0x08, 0, "never sent before: no DUP");
        let (id, _, payload) = parts(&p);
        let seq = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"));
        assert_eq!(seq, next, "in order, none missing, none twice");
        next += 1;
        sub.send(&ack(0x40, id)).await;
    }
    assert!(
        sub.recv_within(Duration::from_millis(300)).await.is_none(),
        "nothing more"
    );
}

/// Incoming QoS 2: killed between PUBREC and PUBREL, the publisher's PUBREL completes the
/// exchange after the restart, a resent PUBLISH is not routed again, and the subscriber gets
/// the message exactly once.
#[tokio::test]
async fn qos2_from_a_publisher_is_exactly_once_across_kill_9() {
    let mut b = Broker::start();
    let (mut sub, _) = persistent_wire(b.port(), "sub2").await;
    sub.send(&subscribe_packet(4, 1, "e/#", 2)).await;
    assert_eq!(sub.recv().await.expect("SUBACK").body, vec![0, 1, 2]);
    drop(sub);
    let (mut publisher, _) = persistent_wire(b.port(), "pub2").await;
    publisher
        .send(&publish_packet(4, "e/1", 2, 5, false, b"once"))
        .await;
    let rec = publisher.recv().await.expect("PUBREC");
    assert_eq!((rec.kind(), rec.body.clone()), (5, vec![0, 5]));
    drop(publisher);

    b.crash_and_restart();
    let (mut publisher, present) = persistent_wire(b.port(), "pub2").await;
    assert!(present);
    // The publisher did not see PUBREC in time and resends with DUP: acknowledged, not routed.
    let mut dup = publish_packet(4, "e/1", 2, 5, false, b"once");
    dup[0] |= 0x08;
    publisher.send(&dup).await;
    assert_eq!(publisher.recv().await.expect("PUBREC").kind(), 5);
    publisher.send(&ack(0x62, 5)).await;
    let comp = publisher.recv().await.expect("PUBCOMP");
    assert_eq!(
        (comp.kind(), comp.body.clone()),
        (7, vec![0, 5]),
        "known id"
    );

    let (mut sub, present) = persistent_wire(b.port(), "sub2").await;
    assert!(present);
    let p = sub.recv().await.expect("the message");
    let (id, topic, payload) = parts(&p);
    assert_eq!((topic.as_str(), payload.as_slice()), ("e/1", &b"once"[..]));
    sub.send(&ack(0x50, id)).await;
    assert_eq!(sub.recv().await.expect("PUBREL").kind(), 6);
    sub.send(&ack(0x70, id)).await;
    assert!(
        sub.recv_within(Duration::from_millis(500)).await.is_none(),
        "exactly once"
    );
}

/// Outgoing QoS 2: killed after PUBLISH (no PUBREC yet) the message is resent with DUP and
/// the same packet id; killed after PUBREC (between PUBREL and PUBCOMP) only PUBREL is resent.
#[tokio::test]
async fn qos2_to_a_subscriber_is_exactly_once_across_kill_9() {
    let mut b = Broker::start();
    let (mut sub, _) = persistent_wire(b.port(), "sub3").await;
    sub.send(&subscribe_packet(4, 1, "f/#", 2)).await;
    assert_eq!(sub.recv().await.expect("SUBACK").kind(), 9);
    let mut publisher = Wire::connected(b.port(), 4, "pub3").await;
    for (id, payload) in [(1u16, &b"first"[..]), (2, &b"second"[..])] {
        publisher
            .send(&publish_packet(4, "f/1", 2, id, false, payload))
            .await;
        assert_eq!(publisher.recv().await.expect("PUBREC").kind(), 5);
        publisher.send(&ack(0x62, id)).await;
        assert_eq!(publisher.recv().await.expect("PUBCOMP").kind(), 7);
    }
    let first = sub.recv().await.expect("first");
    let second = sub.recv().await.expect("second");
    let (first_id, _, _) = parts(&first);
    let (second_id, _, second_payload) = parts(&second);
    // First: PUBREC sent, PUBREL received, PUBCOMP never sent. Second: nothing sent back.
    sub.send(&ack(0x50, first_id)).await;
    assert_eq!(sub.recv().await.expect("PUBREL").kind(), 6);
    // Let the broker commit the in-flight state before the kill.
    wait_until("in-flight state written", || {
        b.ctl_ok(&["metrics"]).contains("broker_store_pending 0")
    })
    .await;
    drop(sub);

    b.crash_and_restart();
    let (mut sub, present) = persistent_wire(b.port(), "sub3").await;
    assert!(present);
    let mut seen = Vec::new();
    while let Some(p) = sub.recv_within(Duration::from_millis(500)).await {
        seen.push(p);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].kind(), 6, "PUBREL again, not the message");
    assert_eq!(seen[0].body, first_id.to_be_bytes());
    assert_eq!(seen[1].byte1 & 0x08, 0x08, "DUP");
    let (id, _, payload) = parts(&seen[1]);
    assert_eq!((id, payload), (second_id, second_payload), "same packet id");
    // Both are charged to the session's queue until they complete, restored ones included.
    let metrics = b.ctl_ok(&["metrics"]);
    assert!(!metrics.contains("broker_queued_bytes 0\n"), "{metrics}");
    sub.send(&ack(0x70, first_id)).await;
    sub.send(&ack(0x50, id)).await;
    assert_eq!(sub.recv().await.expect("PUBREL").kind(), 6);
    sub.send(&ack(0x70, id)).await;
    wait_until("the completed messages' bytes given back", || {
        b.ctl_ok(&["metrics"]).contains("broker_queued_bytes 0\n")
    })
    .await;
}

/// Acceptance: `kill -9` during sustained traffic from 50 publishers to 50 persistent
/// subscribers, half of them offline: after the restart every message a publisher had a
/// PUBACK for is delivered.
#[tokio::test]
async fn kill_9_under_load_loses_no_acknowledged_message() {
    const PAIRS: usize = 50;
    const PER_PUBLISHER: u32 = 300;
    let mut b = Broker::start();
    let mut online = Vec::new();
    for i in 0..PAIRS {
        let (mut sub, _) = persistent_wire(b.port(), &format!("s{i}")).await;
        sub.send(&subscribe_packet(4, 1, &format!("load/{i}"), 1))
            .await;
        assert_eq!(sub.recv().await.expect("SUBACK").kind(), 9);
        if i % 2 == 0 {
            online.push((i, sub));
        }
    }
    // Online subscribers acknowledge what they get and remember it.
    let mut readers = Vec::new();
    for (i, mut sub) in online {
        readers.push(tokio::spawn(async move {
            let mut got = BTreeSet::new();
            while let Some(p) = sub.recv_within(Duration::from_secs(2)).await {
                if p.kind() == 3 {
                    let (id, _, payload) = parts(&p);
                    got.insert(u32::from_be_bytes(payload[..4].try_into().expect("seq")));
                    sub.send(&ack(0x40, id)).await;
                }
            }
            (i, got)
        }));
    }
    // Publishers: one QoS 1 message at a time, counting PUBACKs, until the broker dies.
    let mut publishers = Vec::new();
    for i in 0..PAIRS {
        let port = b.port();
        publishers.push(tokio::spawn(async move {
            let mut w = Wire::connected(port, 4, &format!("p{i}")).await;
            let mut acked = BTreeSet::new();
            for seq in 0..PER_PUBLISHER {
                let id = (seq + 1) as u16;
                w.send(&publish_packet(
                    4,
                    &format!("load/{i}"),
                    1,
                    id,
                    false,
                    &seq.to_be_bytes(),
                ))
                .await;
                match w.recv_within(Duration::from_secs(2)).await {
                    Some(p) if p.kind() == 4 => {
                        acked.insert(seq);
                    }
                    _ => break,
                }
            }
            (i, acked)
        }));
    }
    // Kill while the traffic runs.
    tokio::time::sleep(Duration::from_millis(700)).await;
    b.kill_hard();
    let mut acked: HashMap<usize, BTreeSet<u32>> = HashMap::new();
    for p in publishers {
        let (i, a) = p.await.expect("publisher");
        acked.insert(i, a);
    }
    let total: usize = acked.values().map(BTreeSet::len).sum();
    assert!(total > 0, "traffic ran before the kill");
    assert!(
        total < PAIRS * PER_PUBLISHER as usize,
        "the kill came during the traffic ({total} acknowledged)"
    );
    let mut received: HashMap<usize, BTreeSet<u32>> = HashMap::new();
    for r in readers {
        let (i, got) = r.await.expect("reader");
        received.insert(i, got);
    }
    b.restart_stopped();
    for i in 0..PAIRS {
        let (mut sub, present) = persistent_wire(b.port(), &format!("s{i}")).await;
        assert!(present, "s{i} restored");
        let got = received.entry(i).or_default();
        while let Some(p) = sub.recv_within(Duration::from_millis(500)).await {
            if p.kind() == 3 {
                let (id, _, payload) = parts(&p);
                got.insert(u32::from_be_bytes(payload[..4].try_into().expect("seq")));
                sub.send(&ack(0x40, id)).await;
            }
        }
        let missing: Vec<_> = acked[&i].difference(got).collect();
        assert!(missing.is_empty(), "s{i} lost acknowledged {missing:?}");
    }
    eprintln!("kill -9 under load: {total} messages acknowledged before the kill, all delivered");
}

/// A retained message on disc (retainer, `storage = "disc"`) survives `kill -9`.
#[tokio::test]
async fn retained_messages_on_disc_survive_kill_9() {
    let mut b = Broker::start();
    b.load_retainer_on_disc();
    let mut publisher = Wire::connected(b.port(), 4, "pub").await;
    publisher
        .send(&publish_packet(4, "r/kept", 1, 1, true, b"state"))
        .await;
    assert_eq!(publisher.recv().await.expect("PUBACK").kind(), 4);
    wait_until("written to disc", || {
        let info = b.ctl_ok(&["retainer", "info"]);
        info.contains("messages: 1") && info.contains(" 0 change(s) not yet written")
    })
    .await;
    b.crash_and_restart();
    let mut sub = Wire::connected(b.port(), 4, "late").await;
    sub.send(&subscribe_packet(4, 1, "r/#", 0)).await;
    let mut kinds = Vec::new();
    let mut payload = Vec::new();
    for _ in 0..2 {
        let p = sub.recv().await.expect("SUBACK and the retained message");
        if p.kind() == 3 {
            payload = p.body[2 + "r/kept".len()..].to_vec();
        }
        kinds.push(p.kind());
    }
    kinds.sort();
    assert_eq!(kinds, [3, 9]);
    assert_eq!(payload, b"state");
}

/// `brokerctl sessions list | show | drop` read the live state; `status` shows the store.
#[tokio::test]
async fn brokerctl_lists_shows_and_drops_sessions() {
    let b = Broker::start();
    let (mut off, _) = persistent_wire(b.port(), "sleeper").await;
    off.send(&subscribe_packet(4, 1, "z/#", 1)).await;
    assert_eq!(off.recv().await.expect("SUBACK").kind(), 9);
    drop(off);
    let (_on, _) = persistent_wire(b.port(), "awake").await;
    let mut publisher = Wire::connected(b.port(), 4, "pub").await;
    publisher
        .send(&publish_packet(4, "z/1", 1, 1, false, b"queued"))
        .await;
    assert_eq!(publisher.recv().await.expect("PUBACK").kind(), 4);

    wait_until("sleeper offline", || {
        b.ctl_ok(&["sessions", "list", "--offline"])
            .contains("Session(sleeper, offline")
    })
    .await;
    let all = b.ctl_ok(&["sessions", "list"]);
    assert!(all.contains("Session(awake, online"), "{all}");
    let offline = b.ctl_ok(&["sessions", "list", "--offline"]);
    assert!(!offline.contains("awake"), "{offline}");
    let show = b.ctl_ok(&["sessions", "show", "sleeper"]);
    assert!(show.contains("queued=1"), "{show}");
    assert!(show.contains("subscription z/# qos 1"), "{show}");
    let status = b.ctl_ok(&["status"]);
    assert!(status.contains("session store"), "{status}");

    assert!(b
        .ctl_ok(&["sessions", "drop", "sleeper"])
        .contains("Session sleeper dropped."));
    assert_eq!(b.ctl(&["sessions", "show", "sleeper"]).code, 1);
    let (_w, present) = persistent_wire(b.port(), "sleeper").await;
    assert!(!present, "the dropped session is gone");
    // Dropping an online session kicks its client.
    assert!(b.ctl_ok(&["sessions", "drop", "awake"]).contains("dropped"));
}

/// Clean sessions never touch the store: connecting and leaving costs no commit.
#[tokio::test]
async fn clean_sessions_cost_the_store_nothing() {
    let b = Broker::start();
    let commits = || -> u64 {
        b.ctl_ok(&["metrics"])
            .lines()
            .find_map(|l| l.strip_prefix("broker_store_commits_total "))
            .and_then(|v| v.trim().parse().ok())
            .expect("broker_store_commits_total")
    };
    let before = commits();
    for i in 0..5 {
        let mut w = Wire::connected(b.port(), 4, &format!("clean{i}")).await;
        w.send(&subscribe_packet(4, 1, "c/#", 1)).await;
        assert_eq!(w.recv().await.expect("SUBACK").kind(), 9);
        w.send(&[0xE0, 0x00]).await;
        let mut seen = Vec::new();
        assert!(w.closed_within(WAIT, &mut seen).await);
    }
    wait_until("sessions ended", || {
        b.ctl_ok(&["sessions", "list"]).contains("0 session(s)")
    })
    .await;
    assert_eq!(commits(), before, "no store write for clean sessions");
}
