//! The auth_redis plugin against private Redis servers started by each test (see
//! `broker_tests::redis`): one server, a sentinel, a three-node cluster, TLS.

use broker_tests::auth::*;
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
    let checks: Vec<(&str, &str, &str)> = cases
        .iter()
        .map(|(hash, user, _, _, password)| (*hash, *user, *password))
        .collect();
    check_password_hashes(&b, "auth_redis", &checks, |extra| r.plugin_config(extra)).await;
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
    check_subscriptions(
        &mut alice,
        "alice",
        &[
            ("users/alice/x", true),
            ("users/bob/x", false),
            ("sub/only/x", true),
            ("pub/only", false),
            ("clients/dev-alice/x", true),
            ("clients/other/x", false),
            ("secret/x", false),
        ],
    )
    .await;
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
    let Some(r) = RedisServer::start() else {
        return;
    };
    let data = |r: &RedisServer| {
        add_user(r, "alice", "a", "");
        r.cli(&["HSET", "mqtt_acl:alice", "users/%u/#", "3"]);
    };
    data(&r);
    let b = broker_with(
        &r,
        "query_timeout_ms = 1000",
        "[acl]\nno_match = \"deny\"\n",
    );
    let r = std::cell::RefCell::new(r);
    // Back empty (no persistence): the data is put back as an operator would.
    check_backend_outage(
        &b,
        || r.borrow_mut().stop(),
        || {
            r.borrow_mut().start_again();
            data(&r.borrow());
        },
    )
    .await;
}

#[tokio::test]
async fn chain_with_auth_http_by_priority() {
    let Some(r) = RedisServer::start() else {
        return;
    };
    add_user(&r, "dbuser", "db", "");
    add_user(&r, "both", "db", "");
    check_chain_with_auth_http("auth_redis", |p| {
        r.plugin_config(&format!("priority = {p}"))
    })
    .await;
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
    add_user(&r, "meter", &sha256("right"), "");
    let b = broker_with(&r, "password_hash = \"sha256\"", "");
    check_mosquitto_pub(&b, "meter", "right");
}
