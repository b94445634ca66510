//! Malformed input through the real broker: each case closes that connection (v5: after a
//! DISCONNECT with the spec's reason code), and the broker keeps serving everyone else without
//! its memory growing.

use std::time::Duration;

use broker_tests::rumqttc::QoS;
use broker_tests::*;

/// (name, protocol level of the CONNECT sent first (0 = none), bytes, expected v5 reason).
fn cases() -> Vec<(&'static str, u8, Vec<u8>, Option<u8>)> {
    let mut plus_topic = mqtt_string("a/+");
    plus_topic.push(b'x');
    let mut bad_utf8 = vec![0x00, 0x02, 0xC3, 0x28];
    bad_utf8.push(b'x');
    vec![
        (
            "remaining length over 4 bytes",
            4,
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            None,
        ),
        (
            "PUBLISH topic containing +",
            4,
            packet(0x30, &plus_topic),
            None,
        ),
        (
            "v5 PUBLISH topic containing +",
            5,
            packet(0x30, &[&plus_topic[..5], &[0], &plus_topic[5..]].concat()),
            Some(0x90),
        ),
        (
            "first packet is not CONNECT",
            0,
            packet(0x30, &plus_topic),
            None,
        ),
        (
            "QoS 3",
            4,
            vec![0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
            None,
        ),
        (
            "declared 200 MB packet",
            4,
            vec![0x30, 0x80, 0x80, 0x80, 0x64],
            None,
        ),
        (
            "v5 declared 200 MB packet",
            5,
            vec![0x30, 0x80, 0x80, 0x80, 0x64],
            Some(0x95),
        ),
        ("invalid UTF-8 in topic", 4, packet(0x30, &bad_utf8), None),
        (
            "second CONNECT",
            4,
            connect_packet(4, "again", true, 60),
            None,
        ),
        (
            "v5 second CONNECT",
            5,
            connect_packet(5, "again", true, 60),
            Some(0x82),
        ),
        (
            "SUBSCRIBE with wrong flags",
            4,
            vec![0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
            None,
        ),
        (
            "server-only packet (CONNACK) from client",
            4,
            vec![0x20, 0x02, 0x00, 0x00],
            None,
        ),
        ("reserved packet type 0", 4, vec![0x00, 0x00], None),
    ]
}

#[tokio::test]
async fn each_malformed_packet_closes_only_its_connection() {
    let b = Broker::start();
    let mut bystander = V4Client::connect(b.port(), "bystander").await;
    bystander.subscribe("alive", QoS::AtLeastOnce).await;
    let publisher = V4Client::connect(b.port(), "pub").await;
    for (i, (name, level, bytes, v5_reason)) in cases().into_iter().enumerate() {
        let mut w = if level == 0 {
            Wire::open(b.port()).await
        } else {
            Wire::connected(b.port(), level, &format!("bad{i}")).await
        };
        w.send(&bytes).await;
        let mut seen = Vec::new();
        assert!(
            w.closed_within(WAIT, &mut seen).await,
            "{name}: connection closed"
        );
        if let Some(reason) = v5_reason {
            let d = seen
                .iter()
                .find(|p| p.kind() == 14)
                .unwrap_or_else(|| panic!("{name}: DISCONNECT sent"));
            assert_eq!(d.body.first(), Some(&reason), "{name}: reason code");
        }
        publisher
            .client
            .publish("alive", QoS::AtLeastOnce, false, name)
            .await
            .expect("publish");
        let p = bystander.recv_publish().await;
        assert_eq!(
            &p.payload[..],
            name.as_bytes(),
            "broker still serves after {name}"
        );
    }
}

#[tokio::test]
async fn repeated_oversized_declarations_do_not_grow_memory() {
    let b = Broker::start();
    // Warm up, then measure.
    for _ in 0..20 {
        let mut w = Wire::connected(b.port(), 4, "warm").await;
        w.send(&[0x30, 0x80, 0x80, 0x80, 0x64]).await;
        w.closed_within(WAIT, &mut Vec::new()).await;
    }
    let before = b.rss_kib();
    for round in 0..200 {
        let mut w = Wire::connected(b.port(), 4, &format!("big{round}")).await;
        // A 200 MB PUBLISH declared, 64 KiB actually sent.
        w.send(&[0x30, 0x80, 0x80, 0x80, 0x64]).await;
        w.send(&vec![0u8; 64 * 1024]).await;
        assert!(w.closed_within(WAIT, &mut Vec::new()).await);
    }
    let after = b.rss_kib();
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB over 200 oversized packets"
    );
    let mut ok = Wire::connected(b.port(), 4, "still-ok").await;
    ok.send(&[0xC0, 0x00]).await;
    assert_eq!(
        ok.recv_within(Duration::from_secs(5))
            .await
            .expect("PINGRESP")
            .kind(),
        13
    );
}
