//! The auth_redis plugin against private Redis servers started by each test (see
//! `broker_tests::redis`): one server, a sentinel, a three-node cluster, TLS.

use std::time::{Duration, Instant};

use broker_tests::rumqttc::QoS;
use broker_tests::rumqttc::SubscribeReasonCode as Sub;
use broker_tests::*;
use sha2::{Digest, Sha256, Sha512};

/// bcrypt of "bcrypt-pw" (cost 6), made by Python's `bcrypt.hashpw`.
const BCRYPT_OF_PW: &str = "$2b$06$5ma20jfGZjONmwHY6hakC.oeQSX41oavdEARERHZDY9apgIBfipne";
/// `hashlib.pbkdf2_hmac('sha256', b'pbkdf2-pw', b'NaCl42', 1000, 32).hex()` (Python).
const PBKDF2_OF_PW: &str = "0f5d97eaed61c0c854a23315e624cea2db94699869a4cf13a8d4a7b3fe9ea3df";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

fn add_user(r: &RedisServer, name: &str, stored: &str, salt: &str) {
    r.cli(&[
        "HSET",
        &format!("mqtt_user:{name}"),
        "password",
        stored,
        "salt",
        salt,
    ]);
}

fn broker_with(r: &RedisServer, plugin: &str, broker_extra: &str) -> Broker {
    let b = Broker::start_with(broker_extra);
    b.plugin_config("auth_redis", &r.plugin_config(plugin));
    b.ctl_ok(&["plugins", "load", "auth_redis"]);
    b
}

async fn v4_login(b: &Broker, id: &str, user: &str, password: &str) -> V4Client {
    let mut o = v4_options(b.port(), id);
    o.set_credentials(user, password);
    let (c, _) = V4Client::connect_with(o).await;
    c
}

#[tokio::test]
async fn every_password_hash_checks_right_and_wrong_passwords() {
    let Some(r) = RedisServer::start() else {
        return;
    };
    let md5_of = "5f4dcc3b5aa765d61d8327deb882cf99"; // md5("password")
    let sha1_of = "5baa61e4c9b93f3f0682250b6cf8331b7ee68fd8"; // sha1("password")
    let cases: Vec<(&str, &str, String, &str, &str)> = vec![
        ("plain", "u-plain", "pw-plain".into(), "", "pw-plain"),
        ("md5", "u-md5", md5_of.into(), "", "password"),
        ("sha", "u-sha", sha1_of.into(), "", "password"),
        ("sha256", "u-256", sha256("pw-256"), "", "pw-256"),
        (
            "sha512",
            "u-512",
            hex(&Sha512::digest(b"pw-512")),
            "",
            "pw-512",
        ),
        (
            "salt,sha256",
            "u-pre",
            sha256("s4ltpw-pre"),
            "s4lt",
            "pw-pre",
        ),
        (
            "sha256,salt",
            "u-suf",
            sha256("pw-sufs4lt"),
            "s4lt",
            "pw-suf",
        ),
        ("bcrypt", "u-bcrypt", BCRYPT_OF_PW.into(), "", "bcrypt-pw"),
        (
            "pbkdf2,sha256,1000,32",
            "u-pbkdf2",
            PBKDF2_OF_PW.into(),
            "NaCl42",
            "pbkdf2-pw",
        ),
    ];
    for (_, user, stored, salt, _) in &cases {
        add_user(&r, user, stored, salt);
    }
    let b = Broker::start();
    for (i, (hash, user, _, _, password)) in cases.iter().enumerate() {
        b.plugin_config(
            "auth_redis",
            &r.plugin_config(&format!("password_hash = {hash:?}")),
        );
        let verb = if i == 0 { "load" } else { "reload" };
        b.ctl_ok(&["plugins", verb, "auth_redis"]);
        assert_eq!(
            connack_code(b.port(), "c", user, password).await,
            0,
            "{hash}: right password"
        );
        assert_eq!(
            connack_code(b.port(), "c", user, &format!("{password}x")).await,
            4,
            "{hash}: wrong password"
        );
        assert_eq!(
            connack_code(b.port(), "c", user, "").await,
            4,
            "{hash}: empty password"
        );
    }
    assert_eq!(
        connack_code(b.port(), "c", "no-such-user", "pw").await,
        5,
        "no user → ignore → auth.no_match (deny) → not authorised"
    );
    assert!(!b.log().contains("pw-256"), "passwords are never logged");
}

#[tokio::test]
async fn superuser_and_acl_hashes() {
    let Some(r) = RedisServer::start() else {
        return;
    };
    add_user(&r, "alice", "a", "");
    add_user(&r, "root", "r", "");
    r.cli(&["HSET", "mqtt_user:root", "is_superuser", "1"]);
    r.cli(&[
        "HSET",
        "mqtt_acl:alice",
        "users/%u/#",
        "3",
        "pub/only",
        "2",
        "sub/only/#",
        "1",
        "clients/%c/#",
        "1",
    ]);
    let b = broker_with(&r, "", "[acl]\nno_match = \"deny\"\n");
    let mut alice = v4_login(&b, "dev-alice", "alice", "a").await;
    let q = QoS::AtMostOnce;
    for (filter, expected) in [
        ("users/alice/x", true),
        ("users/bob/x", false),
        ("sub/only/x", true),
        ("pub/only", false),
        ("clients/dev-alice/x", true),
        ("clients/other/x", false),
        ("secret/x", false),
    ] {
        let want = if expected {
            Sub::Success(q)
        } else {
            Sub::Failure
        };
        assert_eq!(
            alice.subscribe(filter, q).await,
            vec![want],
            "alice subscribing {filter}"
        );
    }
    // Publish is allowed on pub/only (3.1.1: watch it arrive at the superuser).
    let mut root = v4_login(&b, "admin", "root", "r").await;
    assert_eq!(
        root.subscribe("#", q).await,
        vec![Sub::Success(q)],
        "superusers skip ACL"
    );
    alice
        .client
        .publish("sub/only/x", QoS::AtLeastOnce, false, "denied")
        .await
        .expect("publish");
    alice
        .client
        .publish("pub/only", QoS::AtLeastOnce, false, "allowed")
        .await
        .expect("publish");
    let p = root.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("pub/only", &b"allowed"[..])
    );
}

/// User names are one argument whatever they hold: spaces, CRLF, Redis syntax, placeholders.
#[tokio::test]
async fn metacharacters_in_user_names_stay_one_argument() {
    let Some(r) = RedisServer::start() else {
        return;
    };
    let odd = ["with space", "crlf\r\nFLUSHALL", "*", "{tag}", "%u", "名前"];
    for name in odd {
        add_user(&r, name, "pw", "");
    }
    let b = broker_with(&r, "", "");
    for name in odd {
        assert_eq!(connack_code(b.port(), "c", name, "pw").await, 0, "{name:?}");
        assert_eq!(connack_code(b.port(), "c", name, "no").await, 4, "{name:?}");
    }
    assert_eq!(r.cli(&["DBSIZE"]).trim(), "6", "nothing was flushed");
}

#[tokio::test]
async fn redis_stopped_and_restarted_under_a_connected_broker() {
    let Some(mut r) = RedisServer::start() else {
        return;
    };
    add_user(&r, "alice", "a", "");
    r.cli(&["HSET", "mqtt_acl:alice", "users/%u/#", "3"]);
    let b = broker_with(
        &r,
        "query_timeout_ms = 1000",
        "[acl]\nno_match = \"deny\"\n",
    );
    let mut alice = v4_login(&b, "alice", "alice", "a").await;
    let q = QoS::AtLeastOnce;
    assert_eq!(
        alice.subscribe("users/alice/#", q).await,
        vec![Sub::Success(q)]
    );
    r.stop();
    let started = Instant::now();
    assert_eq!(
        connack_code(b.port(), "late", "alice", "a").await,
        3,
        "Redis down + on_error deny → server unavailable"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the query timeout"
    );
    assert_eq!(
        alice.subscribe("users/alice/new", q).await,
        vec![Sub::Failure],
        "new ACL decisions fail closed"
    );
    // Back, empty (no persistence): put the data back as an operator would.
    r.start_again();
    add_user(&r, "alice", "a", "");
    r.cli(&["HSET", "mqtt_acl:alice", "users/%u/#", "3"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while connack_code(b.port(), "after", "alice", "a").await != 0 {
        assert!(
            Instant::now() < deadline,
            "the connection comes back without a reload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        alice.subscribe("users/alice/other", q).await,
        vec![Sub::Success(q)]
    );
}

#[tokio::test]
async fn chain_with_auth_http_by_priority() {
    let Some(r) = RedisServer::start() else {
        return;
    };
    add_user(&r, "dbuser", "db", "");
    add_user(&r, "both", "db", "");
    let http = HttpServer::start(|req| {
        if req.body.contains("username=httpuser") || req.body.contains("username=both") {
            (200, String::new(), 0)
        } else {
            (200, "ignore".into(), 0)
        }
    })
    .await;
    let http_config = |priority: i32| {
        format!(
            "priority = {priority}\n[auth_req]\nurl = \"http://127.0.0.1:{}/auth\"\nparams = {{ username = \"%u\", password = \"%P\" }}\n",
            http.port
        )
    };
    let b = Broker::start();
    b.plugin_config("auth_http", &http_config(980));
    b.plugin_config("auth_redis", &r.plugin_config("priority = 970"));
    b.ctl_ok(&["plugins", "load", "auth_http"]);
    b.ctl_ok(&["plugins", "load", "auth_redis"]);
    assert_eq!(connack_code(b.port(), "1", "httpuser", "any").await, 0);
    assert_eq!(connack_code(b.port(), "2", "dbuser", "db").await, 0);
    assert_eq!(connack_code(b.port(), "3", "dbuser", "no").await, 4);
    assert_eq!(connack_code(b.port(), "4", "nobody", "x").await, 5);
    assert_eq!(
        connack_code(b.port(), "5", "both", "wrong").await,
        0,
        "auth_http (980) answers before auth_redis (970)"
    );
    b.plugin_config("auth_http", &http_config(960));
    b.ctl_ok(&["plugins", "reload", "auth_http"]);
    assert_eq!(connack_code(b.port(), "6", "both", "wrong").await, 4);
}

#[tokio::test]
async fn sentinel_names_the_master() {
    let Some(master) = RedisServer::start() else {
        return;
    };
    add_user(&master, "alice", "a", "");
    let sentinel = RedisSentinel::watch(master);
    let b = Broker::start();
    b.plugin_config(
        "auth_redis",
        &format!(
            "type = \"sentinel\"\nserver = \"127.0.0.1:{}\"\nsentinel = \"mymaster\"\npassword = \"{}\"\n",
            sentinel.port,
            RedisServer::PASSWORD
        ),
    );
    b.ctl_ok(&["plugins", "load", "auth_redis"]);
    assert_eq!(
        connack_code(b.port(), "c", "alice", "a").await,
        0,
        "{}",
        b.log()
    );
    assert_eq!(connack_code(b.port(), "c", "alice", "b").await, 4);
}

#[tokio::test]
async fn cluster_follows_the_slots() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    // Users whose keys hash to different nodes.
    let users: Vec<String> = (0..12).map(|i| format!("user{i}")).collect();
    for u in &users {
        cluster.cli(&["HSET", &format!("mqtt_user:{u}"), "password", "pw"]);
    }
    let b = Broker::start();
    b.plugin_config(
        "auth_redis",
        &format!(
            "type = \"cluster\"\nserver = \"{}\"\npassword = \"{}\"\n",
            cluster.servers(),
            RedisServer::PASSWORD
        ),
    );
    b.ctl_ok(&["plugins", "load", "auth_redis"]);
    for u in &users {
        assert_eq!(connack_code(b.port(), "c", u, "pw").await, 0, "{u}");
        assert_eq!(connack_code(b.port(), "c", u, "no").await, 4, "{u}");
    }
    let holding: Vec<usize> = cluster
        .nodes
        .iter()
        .map(|n| n.cli(&["DBSIZE"]).trim().parse().unwrap_or(0))
        .collect();
    assert!(
        holding.iter().filter(|n| **n > 0).count() >= 2,
        "the users are spread over the nodes: {holding:?}"
    );
}

#[tokio::test]
async fn tls_to_redis_verified_against_ca_file() {
    let pki_dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::generate(pki_dir.path(), "unused");
    let tls = RedisTls {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        ca: pki.ca.clone(),
    };
    let Some(r) = RedisServer::start_with(&[], Some(&tls)) else {
        return;
    };
    add_user(&r, "alice", "a", "");
    // The test certificate names "localhost" and 127.0.0.1.
    let b = broker_with(&r, "query_timeout_ms = 2000", "");
    assert_eq!(
        connack_code(b.port(), "c", "alice", "a").await,
        3,
        "plain TCP to a TLS port → server unavailable"
    );
    let ca = format!(
        "tls = true\nca_file = {:?}\nquery_timeout_ms = 2000",
        pki.ca.display().to_string()
    );
    b.plugin_config("auth_redis", &r.plugin_config(&ca));
    b.ctl_ok(&["plugins", "reload", "auth_redis"]);
    assert_eq!(connack_code(b.port(), "c", "alice", "a").await, 0, "TLS");
    b.plugin_config(
        "auth_redis",
        &r.plugin_config("tls = true\nca_file = \"/nonexistent/ca.pem\""),
    );
    let out = b.ctl(&["plugins", "reload", "auth_redis"]);
    assert!(
        out.code != 0 && out.stderr.contains("ca_file"),
        "{}",
        out.stderr
    );
}

/// Acceptance, as a new user would try it: `redis-cli HSET` a user, then mosquitto_pub.
#[tokio::test]
async fn mosquitto_clients_with_a_sha256_user() {
    let Some(r) = RedisServer::start() else {
        return;
    };
    assert!(
        tool_available("mosquitto_pub"),
        "mosquitto_pub not installed: run the README's test command"
    );
    add_user(&r, "meter", &sha256("right"), "");
    let b = broker_with(&r, "password_hash = \"sha256\"", "");
    let pub_with = |password: &str| {
        std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &b.port().to_string()])
            .args([
                "-u", "meter", "-P", password, "-t", "meters/1", "-m", "42", "-q", "1",
            ])
            .output()
            .expect("run mosquitto_pub")
    };
    let ok = pub_with("right");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(!pub_with("wrong").status.success());
}
