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
