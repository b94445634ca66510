//! The auth_http plugin against a real HTTP server started by each test.

use std::time::{Duration, Instant};

use broker_tests::rumqttc;
use broker_tests::rumqttc::QoS;
use broker_tests::*;

fn auth_config(port: u16, extra: &str) -> String {
    let timeout = if extra.contains("timeout_ms") {
        ""
    } else {
        "timeout_ms = 1000\n"
    };
    format!(
        "{timeout}{extra}\n[auth_req]\nurl = \"http://127.0.0.1:{port}/auth\"\nmethod = \"post\"\nparams = {{ clientid = \"%c\", username = \"%u\", password = \"%P\", ipaddr = \"%a\", port = \"%p\", proto = \"%r\" }}\n"
    )
}

fn broker_with(config: &str) -> Broker {
    let b = Broker::start();
    b.plugin_config("auth_http", config);
    b.ctl_ok(&["plugins", "load", "auth_http"]);
    b
}

#[tokio::test]
async fn form_post_with_placeholders_and_status_answers() {
    let http = HttpServer::start(|r| match () {
        _ if r.body.contains("password=right") => (200, String::new(), 0),
        _ if r.body.contains("password=forbidden") => (403, String::new(), 0),
        _ if r.body.contains("password=shrug") => (200, "ignore".into(), 0),
        _ => (401, String::new(), 0),
    })
    .await;
    let b = broker_with(&auth_config(http.port, ""));
    assert_eq!(connack_code(b.port(), "dev1", "alice", "right").await, 0);
    assert_eq!(
        connack_code(b.port(), "dev2", "alice", "wrong").await,
        4,
        "401 → bad user name or password"
    );
    assert_eq!(
        connack_code(b.port(), "dev3", "alice", "forbidden").await,
        5,
        "403 → not authorized"
    );
    assert_eq!(
        connack_code(b.port(), "dev4", "alice", "shrug").await,
        5,
        "ignore → auth.no_match (deny)"
    );
    let first = &http.seen()[0];
    assert_eq!(
        (first.method.as_str(), first.target.as_str()),
        ("POST", "/auth")
    );
    assert!(first
        .headers
        .to_ascii_lowercase()
        .contains("content-type: application/x-www-form-urlencoded"));
    for part in [
        "clientid=dev1",
        "username=alice",
        "password=right",
        "ipaddr=127.0.0.1",
        &format!("port={}", b.port()),
        "proto=mqtt",
    ] {
        assert!(first.body.contains(part), "{part} in {}", first.body);
    }
}

#[tokio::test]
async fn get_query_string_and_json_bodies() {
    let http = HttpServer::start(|_| (200, String::new(), 0)).await;
    let config = format!(
        "[auth_req]\nurl = \"http://127.0.0.1:{}/auth/%c\"\nmethod = \"get\"\nparams = {{ u = \"%u\", p = \"%P\" }}\n",
        http.port
    );
    let b = broker_with(&config);
    assert_eq!(connack_code(b.port(), "dev/1", "bob smith", "p&w").await, 0);
    let r = &http.seen()[0];
    assert_eq!(
        (r.method.as_str(), r.target.as_str()),
        ("GET", "/auth/dev%2F1?p=p%26w&u=bob%20smith")
    );

    let http = HttpServer::start(|_| (200, r#"{"result":"allow"}"#.into(), 0)).await;
    let config = format!(
        "[auth_req]\nurl = \"http://127.0.0.1:{}/auth\"\nmethod = \"post\"\ncontent_type = \"json\"\nheaders = {{ \"X-Api-Key\" = \"k1\" }}\nparams = {{ username = \"%u\" }}\n",
        http.port
    );
    let b = broker_with(&config);
    assert_eq!(connack_code(b.port(), "j", "carol", "x").await, 0);
    let r = &http.seen()[0];
    let json: serde_json::Value = serde_json::from_str(&r.body).expect("JSON body");
    assert_eq!(json["username"], "carol");
    assert!(r.headers.to_ascii_lowercase().contains("x-api-key: k1"));
}

#[tokio::test]
async fn superuser_and_acl_requests() {
    let http = HttpServer::start(|r| match r.target.as_str() {
        "/auth" => (200, String::new(), 0),
        "/super" if r.body.contains("username=root") => (200, String::new(), 0),
        "/super" => (403, String::new(), 0),
        // ACL: subscribe (1) to secret/… denied, the rest allowed.
        "/acl" if r.body.contains("access=1") && r.body.contains("topic=secret") => {
            (403, String::new(), 0)
        }
        _ => (200, String::new(), 0),
    })
    .await;
    let config = format!(
        "{}[super_req]\nurl = \"http://127.0.0.1:{p}/super\"\nparams = {{ username = \"%u\" }}\n[acl_req]\nurl = \"http://127.0.0.1:{p}/acl\"\nparams = {{ access = \"%A\", topic = \"%t\", username = \"%u\" }}\n",
        auth_config(http.port, ""),
        p = http.port
    );
    let b = broker_with(&config);
    let mut o = v4_options(b.port(), "user");
    o.set_credentials("dave", "pw");
    let (mut user, _) = V4Client::connect_with(o).await;
    assert_eq!(
        user.subscribe("secret/x", QoS::AtLeastOnce).await,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );
    assert_eq!(
        user.subscribe("open/x", QoS::AtLeastOnce).await,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let mut o = v4_options(b.port(), "admin");
    o.set_credentials("root", "pw");
    let (mut root, _) = V4Client::connect_with(o).await;
    let acl_before = http.seen().iter().filter(|r| r.target == "/acl").count();
    assert_eq!(
        root.subscribe("secret/x", QoS::AtLeastOnce).await,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)],
        "superusers skip ACL"
    );
    assert_eq!(
        http.seen().iter().filter(|r| r.target == "/acl").count(),
        acl_before,
        "no ACL request for a superuser"
    );
}

#[tokio::test]
async fn json_answer_pre_authorises_topics() {
    let http = HttpServer::start(|r| match r.target.as_str() {
        "/auth" => (200, r##"{"result":"allow","acl":[{"permission":"deny","action":"subscribe","topic":"private/#"},{"permission":"allow","action":"all","topic":"#"}]}"##.into(), 0),
        _ => (500, String::new(), 0),
    })
    .await;
    let b = broker_with(&auth_config(http.port, ""));
    let mut o = v4_options(b.port(), "pre");
    o.set_credentials("erin", "pw");
    let (mut c, _) = V4Client::connect_with(o).await;
    assert_eq!(
        c.subscribe("private/a", QoS::AtMostOnce).await,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );
    assert_eq!(
        c.subscribe("public/a", QoS::AtMostOnce).await,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::AtMostOnce)]
    );
    assert_eq!(
        http.seen().len(),
        1,
        "only the auth request: the ACL came with its answer"
    );
}

#[tokio::test]
async fn slow_or_dead_service_follows_on_error() {
    let http = HttpServer::start(|_| (200, String::new(), 3000)).await;
    let b = broker_with(&auth_config(http.port, "timeout_ms = 300"));
    let started = Instant::now();
    assert_eq!(
        connack_code(b.port(), "slow", "u", "p").await,
        3,
        "timeout + on_error deny → server unavailable"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // Nothing listens on this port: refused connections are backend errors too.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let b = broker_with(&auth_config(dead, ""));
    assert_eq!(connack_code(b.port(), "dead", "u", "p").await, 3);
    let b = broker_with(&auth_config(dead, "on_error = \"ignore\""));
    assert_eq!(
        connack_code(b.port(), "dead2", "u", "p").await,
        5,
        "ignore → next plugin → none → auth.no_match deny"
    );
}

#[tokio::test]
async fn reload_uses_the_new_url_and_unload_takes_effect_at_once() {
    let a = HttpServer::start(|_| (401, String::new(), 0)).await;
    let ok = HttpServer::start(|_| (200, String::new(), 0)).await;
    let b = broker_with(&auth_config(a.port, ""));
    assert_eq!(connack_code(b.port(), "r1", "u", "p").await, 4);
    b.plugin_config("auth_http", &auth_config(ok.port, ""));
    b.ctl_ok(&["plugins", "reload", "auth_http"]);
    assert_eq!(connack_code(b.port(), "r2", "u", "p").await, 0);
    assert_eq!(ok.seen().len(), 1, "the edited URL is used");
    b.plugin_config("auth_http", &auth_config(a.port, ""));
    b.ctl_ok(&["plugins", "reload", "auth_http"]);
    assert_eq!(connack_code(b.port(), "r3", "u", "p").await, 4);
    b.ctl_ok(&["plugins", "unload", "auth_http"]);
    assert_eq!(
        connack_code(b.port(), "r4", "u", "p").await,
        0,
        "no auth plugin: allow_anonymous decides"
    );
}

#[tokio::test]
async fn auth_result_cache_when_enabled() {
    let http = HttpServer::start(|_| (200, String::new(), 0)).await;
    let b = broker_with(&auth_config(http.port, "cache_ttl_secs = 60"));
    assert_eq!(connack_code(b.port(), "c", "u", "p").await, 0);
    assert_eq!(connack_code(b.port(), "c", "u", "p").await, 0);
    assert_eq!(http.seen().len(), 1, "second login answered from the cache");
    assert_eq!(connack_code(b.port(), "c", "u", "other").await, 0);
    assert_eq!(http.seen().len(), 2, "another password is another key");
}

#[tokio::test]
async fn https_with_a_configured_ca() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = TestPki::generate(dir.path(), "unused");
    let http = HttpServer::start_https(&pki, |_| (200, String::new(), 0)).await;
    let config = format!(
        "ca_file = {:?}\n[auth_req]\nurl = \"https://localhost:{}/auth\"\nparams = {{ username = \"%u\" }}\n",
        pki.ca.display().to_string(),
        http.port
    );
    let b = broker_with(&config);
    assert_eq!(connack_code(b.port(), "tls-auth", "u", "p").await, 0);
    assert_eq!(http.seen().len(), 1);
    // Without the CA the service cannot be trusted: backend error, fail closed.
    let b2 = broker_with(&format!(
        "[auth_req]\nurl = \"https://localhost:{}/auth\"\n",
        http.port
    ));
    assert_eq!(connack_code(b2.port(), "untrusted", "u", "p").await, 3);
}
