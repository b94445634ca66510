//! The web_hook plugin against an HTTP service started by each test (`broker_tests::http`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use broker_tests::rumqttc::QoS;
use broker_tests::*;

fn events(http: &HttpServer) -> Vec<serde_json::Value> {
    http.seen()
        .iter()
        .flat_map(
            |s| match serde_json::from_str::<serde_json::Value>(&s.body) {
                Ok(serde_json::Value::Array(items)) => items,
                Ok(v) => vec![v],
                Err(_) => Vec::new(),
            },
        )
        .collect()
}

fn find(events: &[serde_json::Value], action: &str) -> Option<serde_json::Value> {
    events.iter().find(|e| e["action"] == action).cloned()
}

fn metric(b: &Broker, name: &str) -> i64 {
    b.ctl_ok(&["metrics"])
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}

/// Every event reaches the service with EMQX's action and fields.
#[tokio::test]
async fn every_event_arrives_with_emqx_fields() {
    let http = HttpServer::start(|_| (200, String::new(), 0)).await;
    let b = Broker::start_with("[limits]\nmax_queued_messages = 1\n");
    b.plugin_config(
        "web_hook",
        &format!("url = \"http://127.0.0.1:{}/hook\"\n", http.port),
    );
    b.ctl_ok(&["plugins", "load", "web_hook"]);

    let mut o = v4_options(b.port(), "hook-1");
    o.set_credentials("alice", "pw");
    let (mut c, _) = V4Client::connect_with(o).await;
    c.subscribe("t/#", QoS::AtLeastOnce).await;
    c.client
        .publish("t/1", QoS::AtLeastOnce, true, "hello")
        .await
        .expect("publish");
    let p = c.recv_publish().await;
    assert_eq!(&p.payload[..], b"hello");
    c.client.unsubscribe("t/#").await.expect("unsubscribe");
    // A persistent session, offline, with room for one message: the second is dropped.
    let mut o = v4_options(b.port(), "sleeper");
    o.set_clean_session(false);
    let (mut sleeper, _) = V4Client::connect_with(o).await;
    sleeper.subscribe("nap/#", QoS::AtLeastOnce).await;
    sleeper.disconnect().await;
    for i in 0..2 {
        c.client
            .publish(format!("nap/{i}"), QoS::AtLeastOnce, false, "zz")
            .await
            .expect("publish");
    }
    c.disconnect().await;

    let wanted = [
        "client_connect",
        "client_connack",
        "client_connected",
        "client_subscribe",
        "session_subscribed",
        "message_publish",
        "message_delivered",
        "message_acked",
        "client_unsubscribe",
        "session_unsubscribed",
        "message_dropped",
        "client_disconnected",
        "session_terminated",
    ];
    wait_until("every event at the service", || {
        let seen = events(&http);
        wanted.iter().all(|a| find(&seen, a).is_some())
    })
    .await;
    let seen = events(&http);
    let connected = find(&seen, "client_connected").expect("connected");
    assert_eq!(connected["clientid"], "hook-1");
    assert_eq!(connected["username"], "alice");
    assert_eq!(connected["ipaddress"], "127.0.0.1");
    assert_eq!(connected["proto_ver"], 4);
    assert!(connected["connected_at"].as_u64().is_some_and(|t| t > 0));
    assert!(connected["node"].is_string());
    assert_eq!(
        find(&seen, "client_connack").expect("connack")["conn_ack"],
        "success"
    );
    let published = seen
        .iter()
        .find(|e| e["action"] == "message_publish" && e["topic"] == "t/1")
        .expect("message_publish t/1");
    assert_eq!(published["from_client_id"], "hook-1");
    assert_eq!(published["payload"], "hello");
    assert_eq!(published["qos"], 1);
    assert_eq!(published["retain"], true);
    assert!(published["ts"].as_u64().is_some_and(|t| t > 0));
    let delivered = find(&seen, "message_delivered").expect("delivered");
    assert_eq!(delivered["clientid"], "hook-1");
    assert_eq!(delivered["topic"], "t/1");
    let subscribed = find(&seen, "session_subscribed").expect("subscribed");
    assert_eq!(subscribed["opts"]["qos"], 1);
    let dropped = find(&seen, "message_dropped").expect("dropped");
    assert_eq!(
        (dropped["clientid"].as_str(), dropped["reason"].as_str()),
        (Some("sleeper"), Some("queue_full"))
    );
    let gone = find(&seen, "client_disconnected").expect("disconnected");
    assert_eq!(gone["reason"], "normal");
    assert!(http
        .seen()
        .iter()
        .all(|s| s.method == "POST" && s.target == "/hook"));
    assert!(http.seen()[0]
        .headers
        .to_ascii_lowercase()
        .contains("content-type: application/json"));
}

/// Rules with topics, base64 payloads and batches: only wanted topics are sent, several events
/// per request.
#[tokio::test]
async fn topic_rules_base64_and_batches() {
    let http = HttpServer::start(|_| (200, String::new(), 0)).await;
    let b = Broker::start();
    b.plugin_config(
        "web_hook",
        &format!(
            "url = \"http://127.0.0.1:{}/hook\"\nencoding_of_payload_field = \"base64\"\nbatch_size = 50\n[[rule]]\nevent = \"message.publish\"\ntopics = [\"sensors/#\"]\n",
            http.port
        ),
    );
    b.ctl_ok(&["plugins", "load", "web_hook"]);
    let c = V4Client::connect(b.port(), "p").await;
    for topic in ["sensors/1", "other/1", "sensors/2"] {
        c.client
            .publish(topic, QoS::AtLeastOnce, false, "hi")
            .await
            .expect("publish");
    }
    wait_until("two sensor events", || events(&http).len() >= 2).await;
    let seen = events(&http);
    assert!(
        seen.iter().all(|e| e["action"] == "message_publish"),
        "{seen:?}"
    );
    // Requests run in parallel (pool_size): no order across them.
    let mut topics: Vec<&str> = seen.iter().filter_map(|e| e["topic"].as_str()).collect();
    topics.sort_unstable();
    assert_eq!(topics, ["sensors/1", "sensors/2"]);
    assert_eq!(seen[0]["payload"], "aGk=");
    assert!(
        http.seen()[0].body.starts_with('['),
        "a JSON array per request"
    );
}

/// A service that hangs or is down never holds up MQTT traffic; events over the queue are
/// dropped and counted; after the service recovers, retried and new events arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_failing_service_never_delays_mqtt_and_recovers() {
    // Hangs 60 s on every request.
    let hanging = HttpServer::start(|_| (200, String::new(), 60_000)).await;
    let b = Broker::start();
    b.plugin_config(
        "web_hook",
        &format!(
            "url = \"http://127.0.0.1:{}/hook\"\npool_size = 2\nqueue_capacity = 20\nrequest_timeout_ms = 60000\n[[rule]]\nevent = \"message.publish\"\n",
            hanging.port
        ),
    );
    b.ctl_ok(&["plugins", "load", "web_hook"]);
    let mut c = V4Client::connect(b.port(), "rt").await;
    c.subscribe("rt/#", QoS::AtLeastOnce).await;
    // Each round trip is bounded by the harness's wait time (10 s); a publisher held up by
    // the hanging service (60 s per request) would miss it.
    for i in 0..100 {
        c.client
            .publish(format!("rt/{i}"), QoS::AtLeastOnce, false, "x")
            .await
            .expect("publish");
        let p = c.recv_publish().await;
        assert_eq!(p.topic, format!("rt/{i}"));
    }
    wait_until("events over the queue dropped and counted", || {
        metric(&b, "broker_plugin_web_hook_dropped_total") >= 50
    })
    .await;
    assert!(metric(&b, "broker_plugin_web_hook_queue_depth") >= 0);

    // A service that fails (500) until told to recover.
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    let flaky = HttpServer::start(move |_| {
        if flag.load(Ordering::Relaxed) {
            (200, String::new(), 0)
        } else {
            (500, "down".into(), 0)
        }
    })
    .await;
    b.plugin_config(
        "web_hook",
        &format!(
            "url = \"http://127.0.0.1:{}/hook\"\nmax_retries = 50\nretry_backoff_ms = 50\n[[rule]]\nevent = \"message.publish\"\n",
            flaky.port
        ),
    );
    b.ctl_ok(&["plugins", "reload", "web_hook"]);
    c.client
        .publish("rt/while-down", QoS::AtLeastOnce, false, "x")
        .await
        .expect("publish");
    assert_eq!(c.recv_publish().await.topic, "rt/while-down");
    wait_until("failures counted", || {
        metric(&b, "broker_plugin_web_hook_failed_total") >= 2
    })
    .await;
    let failed_requests = flaky.seen().len();
    healthy.store(true, Ordering::Relaxed);
    c.client
        .publish("rt/after", QoS::AtLeastOnce, false, "x")
        .await
        .expect("publish");
    wait_until("the retried and the new event arrive", || {
        // Only requests after the recovery were answered 200.
        let ok: Vec<String> = flaky.seen()[failed_requests..]
            .iter()
            .map(|s| s.body.clone())
            .collect();
        ok.iter().any(|b| b.contains("rt/while-down")) && ok.iter().any(|b| b.contains("rt/after"))
    })
    .await;
    wait_until("sent counted", || {
        metric(&b, "broker_plugin_web_hook_sent_total") >= 2
    })
    .await;

    // Not listening at all: connection refused, the publisher unaffected.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    b.plugin_config(
        "web_hook",
        &format!("url = \"http://127.0.0.1:{port}/hook\"\nmax_retries = 0\n"),
    );
    b.ctl_ok(&["plugins", "reload", "web_hook"]);
    for i in 0..20 {
        c.client
            .publish(format!("rt/refused/{i}"), QoS::AtLeastOnce, false, "x")
            .await
            .expect("publish");
        c.recv_publish().await;
    }
}

/// https with the service's CA in `ca_file`; without it the service is not trusted and events
/// are counted as failed.
#[tokio::test]
async fn https_with_a_configured_ca() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = TestPki::generate(dir.path(), "unused");
    let http = HttpServer::start_https(&pki, |_| (200, String::new(), 0)).await;
    let b = Broker::start();
    let config = |ca: &str| {
        format!(
            "url = \"https://localhost:{}/hook\"\nca_file = {ca:?}\nmax_retries = 0\n[[rule]]\nevent = \"client.connected\"\n",
            http.port
        )
    };
    b.plugin_config("web_hook", &config(&pki.ca.display().to_string()));
    b.ctl_ok(&["plugins", "load", "web_hook"]);
    let c = V4Client::connect(b.port(), "tls-hooked").await;
    wait_until("the event over https", || {
        events(&http)
            .iter()
            .any(|e| e["action"] == "client_connected" && e["clientid"] == "tls-hooked")
    })
    .await;
    drop(c);
    b.plugin_config("web_hook", &config(""));
    b.ctl_ok(&["plugins", "reload", "web_hook"]);
    let before = http.seen().len();
    let _c = V4Client::connect(b.port(), "untrusted").await;
    wait_until("the untrusted service counted as failed", || {
        metric(&b, "broker_plugin_web_hook_failed_total") >= 1
    })
    .await;
    assert_eq!(
        http.seen().len(),
        before,
        "nothing reached the untrusted service"
    );
}

/// The queue is bounded in bytes too: large payloads over `queue_max_bytes` are dropped and
/// counted while the service is stuck.
#[tokio::test]
async fn the_queue_is_bounded_in_bytes() {
    let stuck = HttpServer::start(|_| (200, String::new(), 60_000)).await;
    let b = Broker::start();
    b.plugin_config(
        "web_hook",
        &format!(
            "url = \"http://127.0.0.1:{}/hook\"\npool_size = 1\nqueue_max_bytes = 2000\nrequest_timeout_ms = 60000\n[[rule]]\nevent = \"message.publish\"\n",
            stuck.port
        ),
    );
    b.ctl_ok(&["plugins", "load", "web_hook"]);
    let c = V4Client::connect(b.port(), "big").await;
    let payload = vec![b'x'; 500];
    for i in 0..20 {
        c.client
            .publish(format!("big/{i}"), QoS::AtLeastOnce, false, payload.clone())
            .await
            .expect("publish");
    }
    // At most 2000 bytes wait (about 3 messages) and one is in flight: the rest are dropped.
    wait_until("dropped over the byte bound", || {
        metric(&b, "broker_plugin_web_hook_dropped_total") >= 15
    })
    .await;
}
