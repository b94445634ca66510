//! TLS, WebSocket and secure WebSocket listeners through the real broker: test certificates
//! made with rcgen, rustls and tungstenite clients, Debian's mosquitto clients over TLS, and
//! MQTT.js (Node) over WebSocket.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use broker_tests::rumqttc::QoS;
use broker_tests::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn tls_broker(pki: &TestPki, dir: tempfile::TempDir, verify: &str, extra: &str) -> Broker {
    let data = dir.path().join("data");
    let config = format!(
        "data_dir = {:?}\nplugin_dir = {:?}\n[[listener]]\nname = \"tcp\"\nbind = \"127.0.0.1:0\"\n{}{}\n[admin]\nbind = \"127.0.0.1:0\"\n{extra}",
        data.display().to_string(),
        bin_dir().display().to_string(),
        pki.listener("tls", "tls", verify),
        pki.listener("wss", "wss", verify),
    );
    Broker::start_config(dir, &config)
}

/// CONNECT over TLS; returns the first packet type byte the broker answers, or None if the
/// handshake or the connection failed.
async fn tls_connect(
    addr: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
    id: &str,
) -> Option<Vec<u8>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .ok()?;
    tls.write_all(&connect_packet(4, id, true, 60)).await.ok()?;
    tls.flush().await.ok()?;
    let mut buf = vec![0u8; 4];
    match tokio::time::timeout(WAIT, tls.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some(buf),
        _ => None,
    }
}

#[tokio::test]
async fn tls_with_a_test_ca_and_wrong_ca_rejected() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = TestPki::generate(dir.path(), "device-1");
    let other_dir = tempfile::tempdir().expect("tmp");
    let other = TestPki::generate(other_dir.path(), "x");
    let b = tls_broker(&pki, dir, "none", "");
    let tls = listener_addr(&b, "tls");
    assert_eq!(
        tls_connect(tls, tls_client_config(&pki.ca, None), "ok").await,
        Some(vec![0x20, 2, 0, 0])
    );
    assert_eq!(
        tls_connect(tls, tls_client_config(&other.ca, None), "bad").await,
        None,
        "server cert from another CA"
    );
    // Plain MQTT on the TLS port gets no CONNACK (at most a TLS alert) and is closed.
    let mut w = Wire::open(tls.port()).await;
    w.send(&connect_packet(4, "plain", true, 60)).await;
    let mut seen = Vec::new();
    assert!(w.closed_within(WAIT, &mut seen).await);
    assert!(
        !seen.iter().any(|p| p.byte1 == 0x20),
        "no CONNACK: {seen:?}"
    );
}

#[tokio::test]
async fn mtls_required_optional_and_cn_reaches_plugins() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = TestPki::generate(dir.path(), "sensor-42");
    let plugin_conf = dir.path().join("plugins");
    std::fs::create_dir_all(&plugin_conf).expect("plugins dir");
    std::fs::write(
        plugin_conf.join("probe.toml"),
        "report = true\nreport_cert = true\n",
    )
    .expect("probe config");
    let b = tls_broker(&pki, dir, "required", "[plugins]\nenabled = [\"probe\"]\n");
    let mut watcher = V4Client::connect(b.port(), "watcher").await;
    watcher
        .subscribe("probe/events/client.connected", QoS::AtLeastOnce)
        .await;
    let tls = listener_addr(&b, "tls");
    assert_eq!(
        tls_connect(tls, tls_client_config(&pki.ca, None), "anon").await,
        None,
        "required: no certificate, no connection"
    );
    let with_cert = tls_client_config(&pki.ca, Some((&pki.client_cert, &pki.client_key)));
    assert_eq!(
        tls_connect(tls, with_cert, "dev42").await,
        Some(vec![0x20, 2, 0, 0])
    );
    let Some(p) = watcher.recv_publish_within(WAIT).await else {
        panic!("no client.connected report:\n{}", b.log());
    };
    let text = String::from_utf8_lossy(&p.payload).into_owned();
    assert!(
        text.starts_with("dev42 sensor-42 ")
            && text.contains("CN=sensor-42")
            && text.ends_with(" mqtt"),
        "{text}"
    );

    let dir = tempfile::tempdir().expect("tmp");
    let pki = TestPki::generate(dir.path(), "opt");
    let b = tls_broker(&pki, dir, "optional", "");
    let tls = listener_addr(&b, "tls");
    assert!(
        tls_connect(tls, tls_client_config(&pki.ca, None), "nocert")
            .await
            .is_some(),
        "optional: no certificate is fine"
    );
    assert!(tls_connect(
        tls,
        tls_client_config(&pki.ca, Some((&pki.client_cert, &pki.client_key))),
        "cert"
    )
    .await
    .is_some());
}

/// Acceptance: mosquitto_sub --cafile and mosquitto_pub exchange a message over TLS.
#[test]
fn mosquitto_clients_over_tls() {
    assert!(
        tool_available("mosquitto_sub"),
        "mosquitto-clients not installed: run tests/run.sh"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let pki = TestPki::generate(dir.path(), "c");
    let ca = pki.ca.display().to_string();
    let b = tls_broker(&pki, dir, "none", "");
    let port = listener_addr(&b, "tls").port().to_string();
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "localhost",
            "-p",
            &port,
            "--cafile",
            &ca,
            "-t",
            "t",
            "-C",
            "1",
            "-W",
            "10",
            "-i",
            "tls-sub",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    let deadline = std::time::Instant::now() + WAIT;
    let mut sub = sub;
    loop {
        let ok = Command::new("mosquitto_pub")
            .args([
                "-h",
                "localhost",
                "-p",
                &port,
                "--cafile",
                &ca,
                "-t",
                "t",
                "-m",
                "over tls",
            ])
            .status()
            .expect("mosquitto_pub");
        assert!(ok.success(), "mosquitto_pub over TLS");
        if sub.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no delivery over TLS");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = sub.wait_with_output().expect("output");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "over tls");
}

async fn ws_client(
    addr: SocketAddr,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("ws handshake");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"mqtt"[..])
    );
    ws
}

fn ws_broker(extra_listener: &str) -> Broker {
    let dir = tempfile::tempdir().expect("tmp");
    let config = format!(
        "data_dir = {:?}\n[[listener]]\nname = \"tcp\"\nbind = \"127.0.0.1:0\"\n[[listener]]\nname = \"ws\"\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\n{extra_listener}\n[admin]\nbind = \"127.0.0.1:0\"\n",
        dir.path().join("data").display().to_string()
    );
    Broker::start_config(dir, &config)
}

#[tokio::test]
async fn websocket_packets_may_span_and_share_frames() {
    let b = ws_broker("");
    let ws_addr = listener_addr(&b, "ws");
    let mut ws = ws_client(ws_addr, "/mqtt").await;
    // CONNECT split across two frames.
    let connect = connect_packet(4, "wsclient", true, 60);
    ws.send(Message::Binary(connect[..5].to_vec().into()))
        .await
        .expect("send");
    ws.send(Message::Binary(connect[5..].to_vec().into()))
        .await
        .expect("send");
    let ack = ws.next().await.expect("frame").expect("ok");
    assert_eq!(ack.into_data().to_vec(), vec![0x20, 2, 0, 0]);
    // SUBSCRIBE and PINGREQ in one frame.
    let mut sub = vec![0x00, 0x01];
    sub.extend(mqtt_string("ws/#"));
    sub.push(1);
    let mut both = packet(0x82, &sub);
    both.extend([0xC0, 0x00]);
    ws.send(Message::Binary(both.into())).await.expect("send");
    let mut got = Vec::new();
    while got.len() < 7 {
        got.extend(ws.next().await.expect("frame").expect("ok").into_data());
    }
    assert_eq!(got, vec![0x90, 3, 0, 1, 1, 0xD0, 0], "SUBACK then PINGRESP");
    // A publish over TCP reaches the WebSocket subscriber.
    let publisher = V4Client::connect(b.port(), "tcp-pub").await;
    publisher
        .client
        .publish("ws/1", QoS::AtLeastOnce, false, "to ws")
        .await
        .expect("publish");
    let data = ws.next().await.expect("frame").expect("ok").into_data();
    assert_eq!(data[0] & 0xF0, 0x30);
    assert!(data.ends_with(b"to ws"));
}

/// A WebSocket frame may carry a packet up to limits.max_packet_size (and some more packets
/// with it), not more: a larger frame closes the connection before the broker buffers it.
#[tokio::test]
async fn websocket_frames_are_bounded_by_the_packet_size() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = format!(
        "data_dir = {:?}\n[[listener]]\nname = \"tcp\"\nbind = \"127.0.0.1:0\"\n[[listener]]\nname = \"ws\"\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n[limits]\nmax_packet_size = 100000\n",
        dir.path().join("data").display().to_string()
    );
    let b = Broker::start_config(dir, &config);
    let mut sub = Wire::connected(b.port(), 4, "big-sub").await;
    sub.send(&subscribe_packet(4, 1, "big", 0)).await;
    assert_eq!(sub.recv().await.expect("SUBACK").kind(), 9);

    let mut ws = ws_client(listener_addr(&b, "ws"), "/mqtt").await;
    let connect = connect_packet(4, "ws-big", true, 60);
    ws.send(Message::Binary(connect.into()))
        .await
        .expect("send");
    let ack = ws.next().await.expect("frame").expect("ok");
    assert_eq!(ack.into_data().to_vec(), vec![0x20, 2, 0, 0]);
    // 90 kB in one frame: within the packet size.
    let publish = publish_packet(4, "big", 0, 0, false, &vec![b'x'; 90_000]);
    ws.send(Message::Binary(publish.into()))
        .await
        .expect("send");
    let p = sub.recv().await.expect("the 90 kB message");
    assert_eq!(p.body.len(), 2 + 3 + 90_000);
    // A 400 kB frame, even of valid packets (PINGREQs): the connection is closed.
    let pings: Vec<u8> = PINGREQ.repeat(200_000);
    let _ = ws.send(Message::Binary(pings.into())).await;
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true), "closed after the oversized frame");
}

#[tokio::test]
async fn websocket_wrong_path_is_refused_and_forwarded_for_is_honoured() {
    let b = ws_broker("[[listener]]\nname = \"proxied\"\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\nws_path = \"/mq\"\nproxy_forwarded_for = true\n");
    let addr = listener_addr(&b, "ws");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let req = format!("ws://{addr}/elsewhere")
        .into_client_request()
        .expect("request");
    assert!(
        tokio_tungstenite::client_async(req, tcp).await.is_err(),
        "404 on another path"
    );

    let proxied = listener_addr(&b, "proxied");
    let mut req = format!("ws://{proxied}/mq")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "X-Forwarded-For",
        "203.0.113.9, 10.0.0.1".parse().expect("header"),
    );
    let tcp = tokio::net::TcpStream::connect(proxied).await.expect("tcp");
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("handshake");
    ws.send(Message::Binary(
        connect_packet(4, "behind-proxy", true, 60).into(),
    ))
    .await
    .expect("send");
    assert_eq!(
        ws.next()
            .await
            .expect("frame")
            .expect("ok")
            .into_data()
            .to_vec(),
        vec![0x20, 2, 0, 0]
    );
    let clients = b.ctl_ok(&["clients", "list"]);
    assert!(
        clients.contains("Client(behind-proxy, connected, username=-, peer=203.0.113.9:"),
        "{clients}"
    );
}

#[tokio::test]
async fn secure_websocket() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = TestPki::generate(dir.path(), "c");
    let b = tls_broker(&pki, dir, "none", "");
    let addr = listener_addr(&b, "wss");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(tls_client_config(&pki.ca, None))
        .connect(name, tcp)
        .await
        .expect("tls");
    let mut req = "wss://localhost/mqtt"
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls)
        .await
        .expect("wss handshake");
    ws.send(Message::Binary(connect_packet(5, "wss", true, 60).into()))
        .await
        .expect("send");
    let ack = ws.next().await.expect("frame").expect("ok").into_data();
    assert_eq!(&ack[..4], &[0x20, ack[1], 0, 0][..], "v5 CONNACK success");
}

/// Acceptance: an MQTT.js client over ws://…/mqtt receives what mosquitto_pub publishes over TCP.
#[test]
fn mqtt_js_over_websocket_receives_from_mosquitto_pub() {
    let js = workspace_root().join("tests/js");
    assert!(
        js.join("node_modules/mqtt").exists(),
        "MQTT.js not installed: run tests/run.sh (it runs npm install in tests/js)"
    );
    assert!(
        tool_available("mosquitto_pub"),
        "mosquitto-clients not installed: run tests/run.sh"
    );
    let b = ws_broker("");
    let url = format!("ws://127.0.0.1:{}/mqtt", listener_addr(&b, "ws").port());
    let mut node = Command::new("node")
        .arg(js.join("ws_subscribe.js"))
        .args([&url, "greetings/#"])
        .current_dir(&js)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node");
    let stdout = node.stdout.take().expect("stdout");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    assert_eq!(
        lines.next().and_then(Result::ok).as_deref(),
        Some("subscribed")
    );
    let ok = Command::new("mosquitto_pub")
        .args([
            "-p",
            &b.port().to_string(),
            "-q",
            "1",
            "-t",
            "greetings/world",
            "-m",
            "hello from tcp",
        ])
        .status()
        .expect("mosquitto_pub");
    assert!(ok.success());
    assert_eq!(
        lines.next().and_then(Result::ok).as_deref(),
        Some("greetings/world hello from tcp")
    );
    assert!(node.wait().expect("node exit").success());
}

#[test]
fn missing_certificate_file_stops_startup_naming_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = format!(
        "data_dir = {:?}\n[[listener]]\nname = \"tls\"\nkind = \"tls\"\nbind = \"127.0.0.1:0\"\n[listener.tls]\ncert_file = \"/nonexistent/server.pem\"\nkey_file = \"/nonexistent/server.key\"\n",
        dir.path().join("data").display().to_string()
    );
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, config).expect("config");
    let out = Command::new(binary("broker"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("broker");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/server.pem") && err.contains("certificate file"),
        "{err}"
    );
}

/// Acceptance: 5 000 idle connections on one listener; connection 5 001 is refused cleanly
/// while the others keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_holds_5000_connections_and_refuses_the_next() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = format!(
        "data_dir = {:?}\n[[listener]]\nname = \"tcp\"\nbind = \"127.0.0.1:0\"\nmax_connections = 5000\n[admin]\nbind = \"127.0.0.1:0\"\n",
        dir.path().join("data").display().to_string()
    );
    let b = Broker::start_config(dir, &config);
    let mut held = Vec::with_capacity(5000);
    for i in 0..5000 {
        let mut w = Wire::open(b.port()).await;
        w.send(&connect_packet(4, &format!("idle{i}"), true, 0))
            .await;
        held.push(w);
    }
    for (i, w) in held.iter_mut().enumerate() {
        let ack = w
            .recv()
            .await
            .unwrap_or_else(|| panic!("CONNACK for connection {i}"));
        assert_eq!(ack.kind(), 2);
    }
    let mut extra = Wire::open(b.port()).await;
    extra
        .send(&connect_packet(4, "one-too-many", true, 0))
        .await;
    let mut seen = Vec::new();
    assert!(
        extra.closed_within(WAIT, &mut seen).await && seen.is_empty(),
        "refused without CONNACK"
    );
    for i in [0usize, 2500, 4999] {
        held[i].send(&[0xC0, 0x00]).await;
        assert_eq!(
            held[i].recv().await.expect("PINGRESP").kind(),
            13,
            "connection {i} still works"
        );
    }
}

#[tokio::test]
async fn shutdown_disconnects_websocket_clients_with_0x8b() {
    let mut b = ws_broker("");
    let mut ws = ws_client(listener_addr(&b, "ws"), "/mqtt").await;
    ws.send(Message::Binary(connect_packet(5, "ws5", true, 60).into()))
        .await
        .expect("send");
    assert_eq!(
        ws.next().await.expect("frame").expect("ok").into_data()[0],
        0x20
    );
    let stopping = tokio::task::spawn_blocking(move || (b.terminate(), b));
    let mut got = Vec::new();
    while let Some(Ok(m)) = ws.next().await {
        if m.is_binary() {
            got.extend(m.into_data());
        }
    }
    assert_eq!(
        (got[0], got[2]),
        (0xE0, 0x8B),
        "DISCONNECT server shutting down: {got:?}"
    );
    let (status, _b) = stopping.await.expect("join");
    assert!(status.success());
}

/// A listener's `max_connection_rate`: connections beyond the rate wait in the accept queue and
/// are then served, none refused. 40 connections at 20 per second: the first 20 at once, the
/// rest over about a second.
#[tokio::test]
async fn a_paced_listener_spreads_a_connection_storm() {
    let b = Broker::start_with(
        "[[listener]]\nname = \"paced\"\nbind = \"127.0.0.1:0\"\nmax_connection_rate = 20\n",
    );
    let addr = listener_addr(&b, "paced");
    let start = std::time::Instant::now();
    let clients: Vec<_> = (0..40)
        .map(|i| {
            tokio::spawn(async move {
                let mut w = Wire::open(addr.port()).await;
                w.send(&connect_packet(4, &format!("storm-{i}"), true, 60))
                    .await;
                w.recv().await.map(|ack| (ack.kind(), ack.body[1]))
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.await.expect("client"), Some((2, 0)), "accepted");
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "40 connections at 20/s took only {took:?}"
    );
}
