//! CONNECT rules through the real broker: client identifiers, protocol levels, timeouts,
//! authentication defaults and the first-packet rule.

use std::time::Duration;

use broker_tests::*;

#[tokio::test]
async fn empty_client_id_rules_per_version() {
    let b = Broker::start();
    // 3.1.1 with clean session: accepted with an assigned id.
    let mut w = Wire::open(b.port()).await;
    w.send(&connect_packet(4, "", true, 60)).await;
    assert_eq!(w.recv().await.expect("CONNACK").body, [0x00, 0x00]);
    // 3.1.1 without clean session: identifier rejected ([MQTT-3.1.3-8]).
    let mut w = Wire::open(b.port()).await;
    w.send(&connect_packet(4, "", false, 60)).await;
    assert_eq!(w.recv().await.expect("CONNACK").body, [0x00, 0x02]);
    assert!(w.closed_within(WAIT, &mut Vec::new()).await);
    // 3.1: identifier rejected.
    let mut w = Wire::open(b.port()).await;
    w.send(&connect_packet(3, "", true, 60)).await;
    assert_eq!(w.recv().await.expect("CONNACK").body, [0x00, 0x02]);
    // 5.0: accepted, with the Assigned Client Identifier property.
    let (_c, ack) = V5Client::connect_with(v5_options(b.port(), "")).await;
    let id = ack
        .properties
        .and_then(|p| p.assigned_client_identifier)
        .expect("assigned client identifier");
    assert!(!id.is_empty());
}

#[tokio::test]
async fn unsupported_protocol_level_gets_connack_1() {
    let b = Broker::start();
    let mut w = Wire::open(b.port()).await;
    w.send(&connect_packet(6, "x", true, 60)).await;
    assert_eq!(w.recv().await.expect("CONNACK").body, [0x00, 0x01]);
    assert!(w.closed_within(WAIT, &mut Vec::new()).await);
}

#[tokio::test]
async fn v5_connack_advertises_limits() {
    let b = Broker::start_with(
        "[limits]\nreceive_maximum = 7\nmax_packet_size = 5000\ntopic_alias_maximum = 3\n",
    );
    let (_c, ack) = V5Client::connect_with(v5_options(b.port(), "v5")).await;
    let p = ack.properties.expect("CONNACK properties");
    assert_eq!(p.receive_max, Some(7));
    assert_eq!(p.max_packet_size, Some(5000));
    assert_eq!(p.topic_alias_max, Some(3));
}

#[tokio::test]
async fn connection_without_connect_is_closed_after_the_timeout() {
    let b = Broker::start_with("[limits]\nconnect_timeout = 1\n");
    let mut w = Wire::open(b.port()).await;
    let start = std::time::Instant::now();
    assert!(
        w.closed_within(Duration::from_secs(5), &mut Vec::new())
            .await
    );
    assert!(start.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn anonymous_refused_when_not_allowed() {
    let b = Broker::start_with("[auth]\nallow_anonymous = false\n");
    let mut w = Wire::open(b.port()).await;
    w.send(&connect_packet(4, "x", true, 60)).await;
    assert_eq!(
        w.recv().await.expect("CONNACK").body,
        [0x00, 0x05],
        "not authorized"
    );
    let mut w = Wire::open(b.port()).await;
    w.send(&connect_packet(5, "x", true, 60)).await;
    let ack = w.recv().await.expect("CONNACK");
    assert_eq!(ack.body[..2], [0x00, 0x87], "v5 not authorized");
}

#[tokio::test]
async fn v5_authentication_method_is_refused_without_a_plugin() {
    let b = Broker::start();
    let mut body = mqtt_string("MQTT");
    body.extend([5, 0x02, 0x00, 0x3C]);
    let method = mqtt_string("SCRAM-SHA-1");
    body.push((1 + method.len()) as u8);
    body.push(0x15);
    body.extend(method);
    body.extend(mqtt_string("x"));
    let mut w = Wire::open(b.port()).await;
    w.send(&packet(0x10, &body)).await;
    let ack = w.recv().await.expect("CONNACK");
    assert_eq!(ack.body[..2], [0x00, 0x8C], "bad authentication method");
}

#[tokio::test]
async fn client_id_length_limit() {
    let b = Broker::start_with("[limits]\nmax_client_id_len = 8\n");
    let mut w = Wire::open(b.port()).await;
    w.send(&connect_packet(4, "123456789", true, 60)).await;
    assert_eq!(w.recv().await.expect("CONNACK").body, [0x00, 0x02]);
}

/// By default a client id may have 1024 bytes, not the 65 535 MQTT allows: a session left
/// behind keeps its id, and 64 KiB ids made each one cost 80 KiB.
#[tokio::test]
async fn client_ids_are_at_most_1024_bytes_by_default() {
    let b = Broker::start();
    for (len, level, code) in [(1024, 4, 0x00), (1025, 4, 0x02), (1025, 5, 0x85)] {
        let mut w = Wire::open(b.port()).await;
        w.send(&connect_packet(level, &"i".repeat(len), true, 60))
            .await;
        let ack = w.recv().await.expect("CONNACK");
        assert_eq!(ack.body[1], code, "{len} bytes, MQTT level {level}");
    }
}

/// CONNACK properties of a v5 CONNACK body, by property id: byte, two- and four-byte integers
/// as numbers, strings as text.
fn connack_properties(body: &[u8]) -> std::collections::BTreeMap<u8, String> {
    let (mut len, mut shift, mut at) = (0usize, 0, 2);
    loop {
        let b = body[at];
        at += 1;
        len |= ((b & 0x7F) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    let props = &body[at..at + len];
    let mut out = std::collections::BTreeMap::new();
    let mut i = 0;
    while i < props.len() {
        let id = props[i];
        i += 1;
        let value = match id {
            0x24 | 0x25 | 0x28 | 0x29 | 0x2A => {
                i += 1;
                props[i - 1].to_string()
            }
            0x21 | 0x22 | 0x13 => {
                i += 2;
                u16::from_be_bytes([props[i - 2], props[i - 1]]).to_string()
            }
            0x27 | 0x11 => {
                i += 4;
                u32::from_be_bytes([props[i - 4], props[i - 3], props[i - 2], props[i - 1]])
                    .to_string()
            }
            0x1A | 0x12 | 0x1F => {
                let n = u16::from_be_bytes([props[i], props[i + 1]]) as usize;
                i += 2 + n;
                String::from_utf8_lossy(&props[i - n..i]).into_owned()
            }
            other => panic!("unexpected CONNACK property 0x{other:02X}"),
        };
        out.insert(id, value);
    }
    out
}

/// `[mqtt]` capabilities: told to v5 clients in CONNACK, and enforced — QoS above the maximum
/// (granted lower in SUBSCRIBE, DISCONNECT 0x9B on PUBLISH), RETAIN (0x9A), wildcard (0xA2)
/// and shared (0x9E) subscriptions, subscription identifiers (0xA1); Response Information.
#[tokio::test]
async fn mqtt_capabilities_are_announced_and_enforced() {
    let b = Broker::start_with(
        "[mqtt]\nmaximum_qos = 1\nretain_available = false\nwildcard_subscription_available = false\nsubscription_identifiers_available = false\nshared_subscription_available = false\nresponse_information = \"reply/%c\"\n",
    );
    // CONNECT v5 with Request Response Information (0x19) = 1.
    let connect = |id: &str| {
        let mut body = mqtt_string("MQTT");
        body.extend([5, 0x02, 0, 60, 2, 0x19, 1]);
        body.extend(mqtt_string(id));
        packet(0x10, &body)
    };
    let mut w = Wire::open(b.port()).await;
    w.send(&connect("capable")).await;
    let ack = w.recv().await.expect("CONNACK");
    assert_eq!(ack.body[1], 0);
    let props = connack_properties(&ack.body);
    for (id, value) in [
        (0x24, "1"),
        (0x25, "0"),
        (0x28, "0"),
        (0x29, "0"),
        (0x2A, "0"),
        (0x1A, "reply/capable"),
    ] {
        assert_eq!(
            props.get(&id).map(String::as_str),
            Some(value),
            "property 0x{id:02X}: {props:?}"
        );
    }
    // SUBSCRIBE: wildcard and shared refused, QoS 2 granted as 1.
    for (filter, qos, code) in [("a/+", 0, 0xA2), ("$share/g/a", 0, 0x9E), ("a/b", 2, 1)] {
        w.send(&subscribe_packet(5, 7, filter, qos)).await;
        let suback = w.recv().await.expect("SUBACK");
        assert_eq!(suback.body.last(), Some(&code), "{filter}");
    }
    // PUBLISH QoS 2: DISCONNECT 0x9B.
    w.send(&publish_packet(5, "a/b", 2, 1, false, b"x")).await;
    let d = w.recv().await.expect("DISCONNECT");
    assert_eq!((d.byte1, d.body[0]), (0xE0, 0x9B));
    // PUBLISH with RETAIN: DISCONNECT 0x9A.
    let mut w = Wire::connected(b.port(), 5, "retainer-client").await;
    w.send(&publish_packet(5, "a/b", 0, 0, true, b"x")).await;
    let d = w.recv().await.expect("DISCONNECT");
    assert_eq!((d.byte1, d.body[0]), (0xE0, 0x9A));
    // A client that does not ask gets no Response Information.
    let mut w = Wire::open(b.port()).await;
    w.send(&connect_packet(5, "quiet", true, 60)).await;
    let ack = w.recv().await.expect("CONNACK");
    assert!(!connack_properties(&ack.body).contains_key(&0x1A));
    // SUBSCRIBE with a Subscription Identifier (0x0B): DISCONNECT 0xA1.
    let mut w = Wire::connected(b.port(), 5, "identified").await;
    let mut body = 9u16.to_be_bytes().to_vec();
    body.extend([2, 0x0B, 5]);
    body.extend(mqtt_string("a/b"));
    body.push(0);
    w.send(&packet(0x82, &body)).await;
    let d = w.recv().await.expect("DISCONNECT");
    assert_eq!((d.byte1, d.body[0]), (0xE0, 0xA1));
    // A will above the maximum QoS: CONNACK 0x9B.
    let mut body = mqtt_string("MQTT");
    body.extend([5, 0x02 | 0x04 | (2 << 3), 0, 60, 0]);
    body.extend(mqtt_string("willful"));
    body.push(0); // will properties
    body.extend(mqtt_string("w/t"));
    body.extend(mqtt_string("bye"));
    let mut w = Wire::open(b.port()).await;
    w.send(&packet(0x10, &body)).await;
    assert_eq!(w.recv().await.expect("CONNACK").body[1], 0x9B);
}
