//! What operators watch: the `$SYS` metrics topics and the Prometheus endpoint of the admin API.

use std::io::{Read, Write};

use broker_tests::rumqttc::QoS;
use broker_tests::*;

#[tokio::test]
async fn sys_topics_carry_the_metrics_every_interval() {
    let b = Broker::start_with("[sys]\ninterval_secs = 1\n");
    let mut c = V4Client::connect(b.port(), "watcher").await;
    c.subscribe("$SYS/brokers/+/metrics/connections", QoS::AtMostOnce)
        .await;
    let p = c.recv_publish().await;
    assert_eq!(
        p.topic, "$SYS/brokers/broker@127.0.0.1/metrics/connections",
        "the node name of the generated config"
    );
    assert_eq!(&p.payload[..], b"1", "the watcher itself is connected");
    // Every interval again.
    let again = c.recv_publish().await;
    assert_eq!(again.topic, p.topic);
}

#[tokio::test]
async fn sys_values_are_retained_for_late_subscribers_with_the_retainer() {
    // A long interval: only the publication at start-up, before the first client, happens
    // during the test.
    let b =
        Broker::start_with("[sys]\ninterval_secs = 3600\n[plugins]\nenabled = [\"retainer\"]\n");
    let mut c = V4Client::connect(b.port(), "late").await;
    c.subscribe("$SYS/brokers/+/version", QoS::AtMostOnce).await;
    let p = c.recv_publish().await;
    assert_eq!(&p.payload[..], env!("CARGO_PKG_VERSION").as_bytes());
    assert!(p.retain, "replayed from the retainer");
}

/// GET `path` on the admin API with an optional bearer token; returns the raw response.
fn admin_get(b: &Broker, path: &str, token: Option<&str>) -> String {
    let addr = listener_addr(b, "admin");
    let mut s = std::net::TcpStream::connect(addr).expect("connect admin");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[tokio::test]
async fn prometheus_metrics_with_the_admin_token() {
    let b = Broker::start();
    b.ctl_ok(&["plugins", "load", "retainer"]);
    let mut c = V4Client::connect(b.port(), "m1").await;
    c.subscribe("t", QoS::AtLeastOnce).await;
    c.client
        .publish("t", QoS::AtLeastOnce, false, "x")
        .await
        .expect("publish");
    c.recv_publish().await;

    let text = b.ctl_ok(&["metrics"]);
    for line in [
        "# TYPE broker_connections gauge",
        "broker_connections 1",
        "# TYPE broker_messages_received_total counter",
        "broker_messages_received_total 1",
        "broker_subscriptions 1",
        "broker_plugin_state{plugin=\"retainer\",state=\"active\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("broker_plugin_hook_calls_total{plugin=\"retainer\"} ")),
        "{text}"
    );
    // Every sample line is `name{labels} value` with a numeric value.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let value = l.rsplit(' ').next().unwrap_or("");
        assert!(value.parse::<f64>().is_ok(), "{l}");
    }

    let token = std::fs::read_to_string(b.data_dir().join("admin.token")).expect("token");
    let ok = admin_get(&b, "/metrics", Some(token.trim()));
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(
        ok.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{ok}"
    );
    let refused = admin_get(&b, "/metrics", None);
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
}

/// Plugins' own counters and gauges show in /metrics and $SYS, and keep their value across a
/// reload.
#[tokio::test]
async fn plugin_metrics_in_prometheus_and_sys() {
    let b = Broker::start_with("[sys]\ninterval_secs = 1\n");
    b.plugin_config("probe", "tag = \"abc\"\n");
    b.ctl_ok(&["plugins", "load", "probe"]);
    let c = V4Client::connect(b.port(), "m").await;
    for _ in 0..3 {
        c.client
            .publish("t", QoS::AtLeastOnce, false, "x")
            .await
            .expect("publish");
    }
    wait_until("3 publishes counted", || {
        b.ctl_ok(&["metrics"])
            .lines()
            .any(|l| l == "broker_plugin_probe_publishes_total 3")
    })
    .await;
    let text = b.ctl_ok(&["metrics"]);
    assert!(
        text.contains("# TYPE broker_plugin_probe_publishes_total counter")
            && text
                .lines()
                .any(|l| l == "broker_plugin_probe_tag_length 3"),
        "{text}"
    );
    b.ctl_ok(&["plugins", "reload", "probe"]);
    c.client
        .publish("t", QoS::AtLeastOnce, false, "x")
        .await
        .expect("publish");
    wait_until("the count continues after a reload", || {
        b.ctl_ok(&["metrics"])
            .lines()
            .any(|l| l == "broker_plugin_probe_publishes_total 4")
    })
    .await;
    let mut sys = V4Client::connect(b.port(), "sys").await;
    sys.subscribe("$SYS/brokers/+/plugins/probe/publishes", QoS::AtMostOnce)
        .await;
    let p = sys.recv_publish().await;
    assert_eq!(&p.payload[..], b"4");

    // A histogram: 700 µs and 2 s, in Prometheus's cumulative buckets, sum and count.
    b.ctl_ok(&["probe", "observe", "700"]);
    b.ctl_ok(&["probe", "observe", "2000000"]);
    let text = b.ctl_ok(&["metrics"]);
    for line in [
        "# TYPE broker_plugin_probe_latency_seconds histogram",
        "broker_plugin_probe_latency_seconds_bucket{le=\"0.0005\"} 0",
        "broker_plugin_probe_latency_seconds_bucket{le=\"0.001\"} 1",
        "broker_plugin_probe_latency_seconds_bucket{le=\"1\"} 1",
        "broker_plugin_probe_latency_seconds_bucket{le=\"2.5\"} 2",
        "broker_plugin_probe_latency_seconds_bucket{le=\"+Inf\"} 2",
        "broker_plugin_probe_latency_seconds_sum 2.0007",
        "broker_plugin_probe_latency_seconds_count 2",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }
}
