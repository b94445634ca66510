//! The management API through a real HTTP client (reqwest) against the real broker binary:
//! credentials, health, paging and filters, percent-encoded client ids, subscriptions,
//! publish reaching a real subscriber, retained messages, plugins, API keys, TLS off loopback,
//! and brokerctl over it without a config file.

use std::time::Duration;

use base64::Engine as _;
use broker_tests::*;
use rumqttc::QoS;
use serde_json::json;

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn credentials_health_and_openapi() {
    let b = Broker::start();
    let api = Api::of(&b);

    let health = api.send("GET", "/health", None, None).await;
    assert_eq!(health.status, 200, "{}", health.text);
    assert_eq!(health.json["status"], "ok");

    let refused = api.send("GET", "/api/v5/clients", None, None).await;
    assert_eq!(refused.status, 401, "{}", refused.text);
    assert_eq!(refused.json["code"], "UNAUTHORIZED");
    let wrong = api
        .send("GET", "/api/v5/clients", Some("Bearer nope"), None)
        .await;
    assert_eq!(wrong.status, 401);
    let metrics = api.send("GET", "/metrics", None, None).await;
    assert_eq!(metrics.status, 401, "Prometheus metrics need the token too");

    // The OpenAPI description needs no token and documents every endpoint.
    let doc = api.send("GET", "/api/v5/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    let paths = doc.json["paths"].as_object().expect("paths");
    for p in [
        "/health",
        "/api/v5/status",
        "/api/v5/nodes",
        "/api/v5/stats",
        "/api/v5/metrics",
        "/metrics",
        "/api/v5/clients",
        "/api/v5/clients/{clientid}",
        "/api/v5/clients/{clientid}/subscriptions",
        "/api/v5/clients/{clientid}/subscribe",
        "/api/v5/clients/{clientid}/unsubscribe",
        "/api/v5/sessions",
        "/api/v5/sessions/{clientid}",
        "/api/v5/subscriptions",
        "/api/v5/publish",
        "/api/v5/publish/bulk",
        "/api/v5/mqtt/retainer/messages",
        "/api/v5/mqtt/retainer/message/{topic}",
        "/api/v5/plugins",
        "/api/v5/plugins/{name}",
        "/api/v5/plugins/{name}/{action}",
        "/api/v5/commands",
        "/api/v5/listeners",
        "/api/v5/api_key",
        "/api/v5/api_key/{name}",
    ] {
        assert!(paths.contains_key(p), "{p} missing from the OpenAPI paths");
    }
    assert!(doc.json["components"]["securitySchemes"]["bearer"].is_object());

    let nodes = api.get("/api/v5/nodes").await;
    assert_eq!(nodes.status, 200);
    assert_eq!(nodes.json[0]["node_status"], "running");
    let listeners = api.get("/api/v5/listeners").await;
    assert_eq!(listeners.json[0]["type"], "tcp");
    assert_eq!(
        listeners.json[0]["bind"],
        format!("127.0.0.1:{}", b.port()),
        "the real port, not 0"
    );
    let unknown = api.get("/api/v5/nope").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json["code"], "NOT_FOUND");
}

#[tokio::test]
async fn clients_paged_filtered_and_kicked_by_percent_encoded_id() {
    let b = Broker::start();
    let api = Api::of(&b);
    let odd = "plant/7 line%2";
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut o = v4_options(b.port(), &format!("dev-{i}"));
        o.set_credentials(if i % 2 == 0 { "even" } else { "odd" }, "pw");
        clients.push(V4Client::connect_with(o).await.0);
    }
    let mut strange = V4Client::connect(b.port(), odd).await;
    // An offline persistent session is listed as a disconnected client.
    let mut o = v4_options(b.port(), "sleeper");
    o.set_clean_session(false);
    let (mut sleeper, _) = V4Client::connect_with(o).await;
    sleeper.subscribe("s/#", QoS::AtLeastOnce).await;
    sleeper.disconnect().await;
    wait_until("sleeper offline", || {
        b.ctl_ok(&["sessions", "list", "--offline"])
            .contains("sleeper")
    })
    .await;

    let all = api.get("/api/v5/clients").await;
    assert_eq!(all.status, 200);
    assert_eq!(all.json["meta"]["count"], 7);
    let page = api.get("/api/v5/clients?page=2&limit=3").await;
    assert_eq!(page.json["data"].as_array().expect("data").len(), 3);
    assert_eq!(page.json["meta"]["hasnext"], true);
    let last = api.get("/api/v5/clients?page=3&limit=3").await;
    assert_eq!(last.json["data"].as_array().expect("data").len(), 1);
    assert_eq!(last.json["meta"]["hasnext"], false);
    let bad = api.get("/api/v5/clients?limit=0").await;
    assert_eq!(bad.status, 400, "{}", bad.text);

    let even = api.get("/api/v5/clients?username=even").await;
    assert_eq!(even.json["meta"]["count"], 3, "{}", even.text);
    let like = api.get("/api/v5/clients?like_clientid=dev-").await;
    assert_eq!(like.json["meta"]["count"], 5);
    let offline = api.get("/api/v5/clients?conn_state=disconnected").await;
    assert_eq!(offline.json["meta"]["count"], 1);
    assert_eq!(offline.json["data"][0]["clientid"], "sleeper");
    assert_eq!(offline.json["data"][0]["connected"], false);
    assert_eq!(offline.json["data"][0]["subscriptions_cnt"], 1);
    assert!(offline.json["data"][0]["disconnected_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    let one = api.get(&format!("/api/v5/clients/{}", enc(odd))).await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.json["clientid"], odd);
    assert_eq!(one.json["connected"], true);
    assert_eq!(one.json["proto_ver"], 4);
    assert_eq!(one.json["ip_address"], "127.0.0.1");

    let kicked = api
        .call("DELETE", &format!("/api/v5/clients/{}", enc(odd)), None)
        .await;
    assert_eq!(kicked.status, 204, "{}", kicked.text);
    assert!(strange.closed_within(WAIT).await, "kicked client closed");
    let gone = api
        .call("DELETE", &format!("/api/v5/clients/{}", enc(odd)), None)
        .await;
    assert_eq!(gone.status, 404);

    // brokerctl encodes ids too.
    let out = b.ctl_ok(&["clients", "kick", "dev-1"]);
    assert!(out.contains("Client dev-1 kicked."), "{out}");
    assert!(clients.remove(1).closed_within(WAIT).await);
    let listed = b.ctl_ok(&["clients", "list", "--connected"]);
    assert!(listed.contains("4 client(s)"), "{listed}");
}

#[tokio::test]
async fn subscriptions_and_publish_reach_a_real_subscriber() {
    let b = Broker::start();
    let api = Api::of(&b);
    let mut sub = V5Client::connect(b.port(), "listener 1").await;
    let id = enc("listener 1");

    let added = api
        .call(
            "POST",
            &format!("/api/v5/clients/{id}/subscribe"),
            Some(json!({"topic": "sensors/+/temp", "qos": 1})),
        )
        .await;
    assert_eq!(added.status, 200, "{}", added.text);
    assert_eq!(added.json["qos"], 1);
    let bad = api
        .call(
            "POST",
            &format!("/api/v5/clients/{id}/subscribe"),
            Some(json!({"topic": "a/#/b", "qos": 1})),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text);

    let listed = api
        .get("/api/v5/subscriptions?match_topic=sensors/3/temp")
        .await;
    assert_eq!(listed.json["meta"]["count"], 1, "{}", listed.text);
    assert_eq!(listed.json["data"][0]["clientid"], "listener 1");
    let none = api.get("/api/v5/subscriptions?match_topic=other").await;
    assert_eq!(none.json["meta"]["count"], 0);
    let own = api
        .get(&format!("/api/v5/clients/{id}/subscriptions"))
        .await;
    assert_eq!(own.json[0]["topic"], "sensors/+/temp");

    let sent = api
        .call(
            "POST",
            "/api/v5/publish",
            Some(json!({
                "topic": "sensors/3/temp",
                "payload": base64::engine::general_purpose::STANDARD.encode([0u8, 1, 2, 255]),
                "payload_encoding": "base64",
                "qos": 1,
                "properties": {
                    "content_type": "application/octet-stream",
                    "user_properties": {"site": "north"}
                }
            })),
        )
        .await;
    assert_eq!(sent.status, 200, "{}", sent.text);
    assert_eq!(sent.json["delivered"], 1);
    let p = sub.recv_publish().await;
    assert_eq!(&p.topic[..], b"sensors/3/temp");
    assert_eq!(&p.payload[..], &[0u8, 1, 2, 255]);
    let props = p.properties.expect("v5 properties");
    assert_eq!(
        props.content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(
        props.user_properties,
        vec![("site".to_owned(), "north".to_owned())]
    );

    let bulk = api
        .call(
            "POST",
            "/api/v5/publish/bulk",
            Some(json!([
                {"topic": "sensors/1/temp", "payload": "a"},
                {"topic": "sensors/2/temp", "payload": "b"}
            ])),
        )
        .await;
    assert_eq!(bulk.status, 200, "{}", bulk.text);
    assert_eq!(&sub.recv_publish().await.payload[..], b"a");
    assert_eq!(&sub.recv_publish().await.payload[..], b"b");

    let removed = api
        .call(
            "POST",
            &format!("/api/v5/clients/{id}/unsubscribe"),
            Some(json!({"topic": "sensors/+/temp"})),
        )
        .await;
    assert_eq!(removed.status, 204, "{}", removed.text);
    let nobody = api
        .call(
            "POST",
            "/api/v5/publish",
            Some(json!({"topic": "sensors/3/temp", "payload": "x"})),
        )
        .await;
    assert_eq!(nobody.status, 202, "{}", nobody.text);
    assert_eq!(nobody.json["message"], "no_matching_subscribers");
    let wild = api
        .call(
            "POST",
            "/api/v5/publish",
            Some(json!({"topic": "a/+", "payload": "x"})),
        )
        .await;
    assert_eq!(wild.status, 400, "{}", wild.text);

    // brokerctl over the same endpoints.
    b.ctl_ok(&["subscriptions", "add", "listener 1", "cmd/#", "--qos", "1"]);
    let out = b.ctl_ok(&["subscriptions", "list", "--client", "listener 1"]);
    assert!(
        out.contains("Subscription(listener 1, cmd/#, qos=1"),
        "{out}"
    );
    let out = b.ctl_ok(&[
        "publish",
        "cmd/go",
        "now",
        "--qos",
        "1",
        "--user-property",
        "by=ops",
    ]);
    assert!(out.contains("queued for 1 session(s)"), "{out}");
    let p = sub.recv_publish().await;
    assert_eq!(&p.payload[..], b"now");
    b.ctl_ok(&["subscriptions", "del", "listener 1", "cmd/#"]);
    let out = b.ctl_ok(&["subscriptions", "list"]);
    assert!(out.contains("0 subscription(s)"), "{out}");
}

#[tokio::test]
async fn sessions_and_retained_messages() {
    let b = Broker::start();
    let api = Api::of(&b);
    let none = api.get("/api/v5/mqtt/retainer/messages").await;
    assert_eq!(none.status, 404);
    assert!(none.text.contains("retainer"), "{}", none.text);

    b.ctl_ok(&["plugins", "load", "retainer"]);
    for (topic, payload) in [("r/1", "one"), ("r/2", "two"), ("other/x", "three")] {
        let sent = api
            .call(
                "POST",
                "/api/v5/publish",
                Some(json!({"topic": topic, "payload": payload, "retain": true, "qos": 1})),
            )
            .await;
        assert!(sent.status == 202 || sent.status == 200, "{}", sent.text);
    }
    let list = api.get("/api/v5/mqtt/retainer/messages?topic=r/%23").await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.json["meta"]["count"], 2);
    assert_eq!(list.json["data"][0]["topic"], "r/1");
    let one = api.get("/api/v5/mqtt/retainer/message/r%2F2").await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(
        one.json["payload"],
        base64::engine::general_purpose::STANDARD.encode("two")
    );
    let stats = api.get("/api/v5/stats").await;
    assert_eq!(stats.json["retained.count"], 3, "{}", stats.text);
    let deleted = api
        .call("DELETE", "/api/v5/mqtt/retainer/message/r/2", None)
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    let again = api.get("/api/v5/mqtt/retainer/message/r%2F2").await;
    assert_eq!(again.status, 404);
    let out = b.ctl_ok(&["retained", "list"]);
    assert!(out.contains("2 retained message(s)"), "{out}");

    // A late subscriber gets what is left.
    let mut late = V4Client::connect(b.port(), "late").await;
    late.subscribe("r/#", QoS::AtLeastOnce).await;
    assert_eq!(&late.recv_publish().await.payload[..], b"one");
    assert!(late
        .recv_publish_within(Duration::from_millis(300))
        .await
        .is_none());

    let sessions = api.get("/api/v5/sessions?online=true").await;
    assert_eq!(sessions.json["meta"]["count"], 1, "{}", sessions.text);
    let dropped = api.call("DELETE", "/api/v5/sessions/late", None).await;
    assert_eq!(dropped.status, 200, "{}", dropped.text);
    assert!(late.closed_within(WAIT).await);
    let gone = api.get("/api/v5/sessions/late").await;
    assert_eq!(gone.status, 404);
}

#[tokio::test]
async fn plugins_through_the_api() {
    let b = Broker::start();
    let api = Api::of(&b);
    b.plugin_config("rewrite", "# rewrite rules\nrules = []\n");
    let loaded = api.call("POST", "/api/v5/plugins/rewrite/load", None).await;
    assert_eq!(loaded.status, 200, "{}", loaded.text);
    assert_eq!(
        loaded.json["message"],
        "Plugin rewrite loaded successfully."
    );
    let again = api.call("POST", "/api/v5/plugins/rewrite/load", None).await;
    assert_eq!(again.status, 409);
    let detail = api.get("/api/v5/plugins/rewrite").await;
    assert_eq!(detail.status, 200, "{}", detail.text);
    assert_eq!(detail.json["plugin"]["state"], "active");
    assert!(detail.json["config"]
        .as_str()
        .is_some_and(|c| c.contains("# rewrite rules")));
    let stopped = api.call("PUT", "/api/v5/plugins/rewrite/stop", None).await;
    assert_eq!(stopped.status, 200, "EMQX's verb: {}", stopped.text);
    let started = api.call("PUT", "/api/v5/plugins/rewrite/start", None).await;
    assert_eq!(started.status, 200, "{}", started.text);
    let missing = api.call("POST", "/api/v5/plugins/nosuch/load", None).await;
    assert_eq!(missing.status, 404, "{}", missing.text);
    let list = api.get("/api/v5/plugins").await;
    assert!(list.json["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .any(|p| p["name"] == "rewrite" && p["state"] == "active"));
    let run = api
        .call(
            "POST",
            "/api/v5/commands",
            Some(json!(["rewrite", "test", "a/b"])),
        )
        .await;
    assert_eq!(run.status, 200, "{}", run.text);
}

#[tokio::test]
async fn api_keys_and_brokerctl_without_a_config_file() {
    let b = Broker::start();
    let api = Api::of(&b);
    let (key, secret) = b.create_api_key("ci");
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:{secret}"))
    );
    let ok = api.send("GET", "/api/v5/clients", Some(&basic), None).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let keys = api.send("GET", "/api/v5/api_key", Some(&basic), None).await;
    assert_eq!(keys.status, 403, "a key cannot manage keys: {}", keys.text);
    let listed = api.get("/api/v5/api_key").await;
    assert_eq!(listed.json[0]["name"], "ci");
    assert!(!listed.text.contains(&secret), "secrets are never listed");

    // brokerctl from another directory, with --url and --api-key only.
    let admin = listener_addr(&b, "admin");
    let elsewhere = tempfile::tempdir().expect("dir");
    let run = std::process::Command::new(binary("brokerctl"))
        .current_dir(elsewhere.path())
        .args([
            "--url",
            &format!("http://{admin}"),
            "--api-key",
            &format!("{key}:{secret}"),
            "status",
        ])
        .output()
        .expect("brokerctl");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("is running"), "{stdout}");
    let token_file = b.data_dir().join("admin.token");
    let run = std::process::Command::new(binary("brokerctl"))
        .current_dir(elsewhere.path())
        .arg("--url")
        .arg(admin.to_string())
        .arg("--token-file")
        .arg(&token_file)
        .args(["apikey", "delete", "ci"])
        .output()
        .expect("brokerctl");
    assert!(run.status.success(), "{run:?}");
    let after = api.send("GET", "/api/v5/clients", Some(&basic), None).await;
    assert_eq!(after.status, 401, "a deleted key no longer works");

    // Help and completions.
    let help = b.ctl(&["--help"]);
    assert_eq!(help.code, 0, "{help:?}");
    assert!(help.stdout.contains("subscriptions"), "{}", help.stdout);
    let sub_help = b.ctl(&["sessions", "drop", "--help"]);
    assert_eq!(sub_help.code, 0);
    assert!(sub_help.stdout.contains("Client id"), "{}", sub_help.stdout);
    b.ctl_ok(&["plugins", "load", "retainer"]);
    let help = b.ctl(&["--help"]);
    assert!(
        help.stdout.contains("Plugin commands") && help.stdout.contains("retainer"),
        "plugin commands show up in --help: {}",
        help.stdout
    );
    let completions = b.ctl_ok(&["completions", "bash"]);
    assert!(completions.contains("_brokerctl"), "{completions}");
    let usage = b.ctl(&["sessions", "frobnicate"]);
    assert_eq!(usage.code, 2, "{usage:?}");
}

#[tokio::test]
async fn health_is_503_while_the_broker_stops() {
    let mut b = Broker::start();
    b.plugin_config("probe", "shutdown_delay_ms = 3000\n");
    b.ctl_ok(&["plugins", "load", "probe"]);
    let api = Api::of(&b);
    assert_eq!(api.send("GET", "/health", None, None).await.status, 200);
    // SAFETY: sending SIGTERM to the broker child this test started.
    unsafe {
        libc::kill(b.pid() as i32, libc::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = None;
    while tokio::time::Instant::now() < deadline {
        let h = api.send("GET", "/health", None, None).await;
        if h.status == 503 {
            seen = Some(h);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let h = seen.expect("/health answered 503 while stopping");
    assert_eq!(h.json["status"], "stopping");
    assert!(b.terminate().success());
}

#[tokio::test]
async fn off_loopback_only_over_tls() {
    // Plain HTTP beyond loopback is refused at start.
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let config = format!(
        "data_dir = {:?}\n[[listener]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"0.0.0.0:0\"\n",
        data.display().to_string()
    );
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, config).expect("config");
    let out = std::process::Command::new(binary("broker"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("broker");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin.bind") && err.contains("tls"), "{err}");

    // With TLS it serves https on every interface.
    let pki_dir = tempfile::tempdir().expect("dir");
    let pki = TestPki::generate(pki_dir.path(), "ops");
    let tls_dir = tempfile::tempdir().expect("dir");
    let config = format!(
        "data_dir = {:?}\nplugin_dir = {:?}\n[[listener]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"0.0.0.0:0\"\n[admin.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        tls_dir.path().join("data").display().to_string(),
        bin_dir().display().to_string(),
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string()
    );
    let b = Broker::start_config(tls_dir, &config);
    let admin = listener_addr(&b, "admin");
    assert!(
        admin.ip().is_unspecified(),
        "bound on every interface: {admin}"
    );
    let token = std::fs::read_to_string(b.data_dir().join("admin.token")).expect("token");
    let https = Api::new(
        &format!("https://localhost:{}", admin.port()),
        token.trim(),
        Some(&pki.ca),
    );
    let ok = https.get("/api/v5/status").await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::builder()
        .use_preconfigured_tls(
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        )
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    let refused = plain
        .get(format!("http://127.0.0.1:{}/health", admin.port()))
        .send()
        .await;
    assert!(
        refused.is_err() || !refused.as_ref().is_ok_and(|r| r.status().is_success()),
        "{refused:?}"
    );
    let out = b.ctl(&["--cacert", &pki.ca.display().to_string(), "status"]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[tokio::test]
async fn the_remaining_endpoints_and_request_limits() {
    let dir = tempfile::tempdir().expect("dir");
    let config = format!(
        "data_dir = {:?}\nplugin_dir = {:?}\n[[listener]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\nmax_body_bytes = 4096\n[sys]\ninterval_secs = 0\n",
        dir.path().join("data").display().to_string(),
        bin_dir().display().to_string()
    );
    let b = Broker::start_config(dir, &config);
    let api = Api::of(&b);
    let node = api.get("/api/v5/status").await.json["node"]
        .as_str()
        .expect("node")
        .to_owned();
    let one = api.get(&format!("/api/v5/nodes/{}", enc(&node))).await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert!(one.json["memory_used"].as_u64().is_some_and(|m| m > 0));
    assert_eq!(api.get("/api/v5/nodes/elsewhere").await.status, 404);

    let mut c = V4Client::connect(b.port(), "bulk").await;
    let added = api
        .call(
            "POST",
            "/api/v5/clients/bulk/subscribe/bulk",
            Some(json!([{"topic": "a/#", "qos": 1}, {"topic": "$share/g/b/+", "qos": 0}])),
        )
        .await;
    assert_eq!(added.status, 200, "{}", added.text);
    let shared = api.get("/api/v5/subscriptions?share_group=g").await;
    assert_eq!(shared.json["meta"]["count"], 1, "{}", shared.text);
    let qos1 = api.get("/api/v5/subscriptions?qos=1").await;
    assert_eq!(qos1.json["data"][0]["topic"], "a/#");
    c.client
        .publish("a/1", QoS::AtLeastOnce, false, "m")
        .await
        .expect("publish");
    c.recv_publish().await;
    let metrics = api.get("/api/v5/metrics").await;
    assert!(
        metrics.json[0]["messages.received"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{}",
        metrics.text
    );
    let removed = api
        .call(
            "POST",
            "/api/v5/clients/bulk/unsubscribe/bulk",
            Some(json!([{"topic": "a/#"}, {"topic": "$share/g/b/+"}])),
        )
        .await;
    assert_eq!(removed.status, 204, "{}", removed.text);
    assert_eq!(
        api.get("/api/v5/clients/bulk/subscriptions").await.json,
        json!([])
    );
    let missing = api
        .call(
            "POST",
            "/api/v5/clients/bulk/unsubscribe",
            Some(json!({"topic": "a/#"})),
        )
        .await;
    assert_eq!(missing.status, 404);

    let cache = api
        .call("DELETE", "/api/v5/clients/bulk/authorization/cache", None)
        .await;
    assert_eq!(cache.status, 204);
    let all = api
        .call("DELETE", "/api/v5/authorization/cache", None)
        .await;
    assert!(all.json["message"]
        .as_str()
        .is_some_and(|m| m.contains("1 client(s)")));
    let prom = api.get("/api/v5/prometheus/stats").await;
    assert!(prom.text.contains("broker_connections 1"), "{}", prom.text);
    b.ctl_ok(&["plugins", "load", "retainer"]);
    let commands = api.get("/api/v5/commands").await;
    assert_eq!(commands.json[0]["plugin"], "retainer");
    let unknown = api
        .call("POST", "/api/v5/commands", Some(json!(["nosuch"])))
        .await;
    assert_eq!(unknown.status, 404);

    // Request limits: a body over max_body_bytes gets 413; a malformed one 400 / 422.
    let big = "x".repeat(8192);
    let too_big = api
        .call(
            "POST",
            "/api/v5/publish",
            Some(json!({"topic": "t", "payload": big})),
        )
        .await;
    assert_eq!(too_big.status, 413, "{}", too_big.text);
    let bad = api
        .call(
            "POST",
            "/api/v5/publish",
            Some(json!({"payload": "no topic"})),
        )
        .await;
    assert!(bad.status == 400 || bad.status == 422, "{}", bad.text);
    let encoding = api
        .call(
            "POST",
            "/api/v5/publish",
            Some(json!({"topic": "t", "payload": "%%", "payload_encoding": "base64"})),
        )
        .await;
    assert_eq!(encoding.status, 400);
    // Keep-alive: one connection serves many requests.
    for _ in 0..20 {
        assert_eq!(api.get("/api/v5/stats").await.status, 200);
    }
}
