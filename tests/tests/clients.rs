//! Standard clients against the real broker — Debian's mosquitto-clients and Eclipse Paho
//! (paho-mqtt for Python, over TCP and WebSocket) — and graceful shutdown.

use std::process::{Command, Stdio};

use broker_tests::*;

fn require_mosquitto() {
    assert!(
        tool_available("mosquitto_pub") && tool_available("mosquitto_sub"),
        "mosquitto_pub / mosquitto_sub not installed: run the README's test command (tests/run.sh installs mosquitto-clients)"
    );
}

/// Acceptance: mosquitto_sub and mosquitto_pub exchange messages at QoS 0, 1 and 2 with
/// MQTT 3.1, 3.1.1 and 5.0, through a wildcard subscription.
#[test]
fn mosquitto_clients_every_version_and_qos() {
    require_mosquitto();
    let b = Broker::start();
    for version in ["mqttv31", "mqttv311", "mqttv5"] {
        for qos in ["0", "1", "2"] {
            let payload = format!("{version} qos {qos}");
            let got = mosquitto_roundtrip(
                b.port(),
                version,
                qos,
                "home/+/temp",
                "home/kitchen/temp",
                &payload,
            );
            assert_eq!(got, payload);
        }
    }
}

#[tokio::test]
async fn sigterm_disconnects_v5_clients_with_0x8b_and_exits_0() {
    let mut b = Broker::start();
    let mut w = Wire::connected(b.port(), 5, "v5").await;
    let status = tokio::task::spawn_blocking(move || {
        let s = b.terminate();
        (s, b)
    });
    let d = w.recv().await.expect("DISCONNECT before close");
    assert_eq!((d.kind(), d.body[0]), (14, 0x8B), "server shutting down");
    let (status, b) = status.await.expect("join");
    assert!(status.success(), "exit 0, got {status}:\n{}", b.log());
}

#[test]
fn unknown_config_key_stops_startup_naming_key_and_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[limits]\nmax_packet_sise = 5\n").expect("write");
    let out = Command::new(binary("broker"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run broker");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_packet_sise") && err.contains("bad.toml"),
        "{err}"
    );
}

/// A Python interpreter that has paho-mqtt (Debian's python3-paho-mqtt, which tests/run.sh
/// installs), preferring the system one over a PATH shim.
fn python_with_paho() -> String {
    ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|py| {
            Command::new(py)
                .args(["-c", "import paho.mqtt.client"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(str::to_owned)
        .expect("python3 with paho-mqtt not found: run the README's test command (tests/run.sh installs python3-paho-mqtt)")
}

/// Eclipse Paho: MQTT 3.1.1 and 5.0 over TCP, 5.0 over WebSocket, QoS 0/1/2 and v5 properties
/// (tests/py/paho_interop.py).
#[tokio::test]
async fn paho_python_client_over_tcp_and_websocket() {
    let python = python_with_paho();
    let b =
        Broker::start_with("[[listener]]\nname = \"ws\"\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\n");
    let ws = listener_addr(&b, "ws").port();
    let script = workspace_root().join("tests/py/paho_interop.py");
    // The broker is another process: blocking this test's thread while the script runs is fine.
    let out = Command::new(python)
        .arg(script)
        .arg(b.port().to_string())
        .arg(ws.to_string())
        .output()
        .expect("run paho_interop.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for round in ["ok v311-tcp", "ok v5-tcp", "ok v5-ws"] {
        assert!(stdout.contains(round), "{stdout}");
    }
}
