//! The auth_mysql plugin against a private MariaDB server started by each test (see
//! `broker_tests::mariadb`), loaded as a real `.so` into the real broker.

use std::time::{Duration, Instant};

use broker_tests::auth::*;
use broker_tests::rumqttc::QoS;
use broker_tests::rumqttc::SubscribeReasonCode as Sub;
use broker_tests::*;

/// bcrypt of "bcrypt-pw" (cost 6), made by Python's `bcrypt.hashpw` — another implementation
/// than the plugin's.
const BCRYPT_OF_PW: &str = "$2b$06$5ma20jfGZjONmwHY6hakC.oeQSX41oavdEARERHZDY9apgIBfipne";
/// `hashlib.pbkdf2_hmac('sha256', b'pbkdf2-pw', b'NaCl42', 1000, 32).hex()` (Python).
const PBKDF2_OF_PW: &str = "0f5d97eaed61c0c854a23315e624cea2db94699869a4cf13a8d4a7b3fe9ea3df";

/// A SQL string literal for `s` (quotes doubled, backslashes escaped).
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Inserts a user whose stored password is the SQL expression `stored`.
fn add_user(db: &MariaDb, name: &str, stored: &str, salt: &str, superuser: bool) {
    db.sql(&format!(
        "insert into mqtt_user (username, password, salt, is_superuser) values ({}, {stored}, {}, {})",
        lit(name),
        lit(salt),
        u8::from(superuser)
    ));
}

/// An ACL row: allow, ipaddr, username, clientid, access, topic (`None` is NULL).
type AclSpec<'a> = (
    u8,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    u8,
    &'a str,
);

/// Inserts an ACL row.
fn add_acl(db: &MariaDb, (allow, ipaddr, username, clientid, access, topic): AclSpec<'_>) {
    let v = |o: Option<&str>| o.map_or("NULL".to_owned(), lit);
    db.sql(&format!(
        "insert into mqtt_acl (allow, ipaddr, username, clientid, access, topic) values ({allow}, {}, {}, {}, {access}, {})",
        v(ipaddr),
        v(username),
        v(clientid),
        lit(topic)
    ));
}

/// A broker (with `broker_extra` in its config) that has auth_mysql loaded with `plugin`.
fn broker_with(db: &MariaDb, plugin: &str, broker_extra: &str) -> Broker {
    let b = Broker::start_with(broker_extra);
    b.plugin_config("auth_mysql", &db.plugin_config(plugin));
    b.ctl_ok(&["plugins", "load", "auth_mysql"]);
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
    let Some(db) = MariaDb::start(&[]) else {
        return;
    };
    // Stored values are computed by MariaDB itself (md5(), sha1(), sha2()) or by Python.
    let cases = [
        ("plain", "u-plain", "'pw-plain'", "", "pw-plain"),
        ("md5", "u-md5", "md5('pw-md5')", "", "pw-md5"),
        ("sha", "u-sha", "sha1('pw-sha')", "", "pw-sha"),
        ("sha256", "u-256", "sha2('pw-256', 256)", "", "pw-256"),
        ("sha512", "u-512", "sha2('pw-512', 512)", "", "pw-512"),
        (
            "salt,sha256",
            "u-pre",
            "sha2(concat('s4lt', 'pw-pre'), 256)",
            "s4lt",
            "pw-pre",
        ),
        (
            "sha256,salt",
            "u-suf",
            "sha2(concat('pw-suf', 's4lt'), 256)",
            "s4lt",
            "pw-suf",
        ),
        (
            "salt,md5",
            "u-md5pre",
            "md5(concat('x', 'pw-m'))",
            "x",
            "pw-m",
        ),
        ("bcrypt", "u-bcrypt", &lit(BCRYPT_OF_PW), "", "bcrypt-pw"),
        (
            "pbkdf2,sha256,1000,32",
            "u-pbkdf2",
            &lit(PBKDF2_OF_PW),
            "NaCl42",
            "pbkdf2-pw",
        ),
    ];
    for (_, user, stored, salt, _) in &cases {
        add_user(&db, user, stored, salt, false);
    }
    let b = Broker::start();
    let checks: Vec<(&str, &str, &str)> = cases
        .iter()
        .map(|(hash, user, _, _, password)| (*hash, *user, *password))
        .collect();
    check_password_hashes(&b, "auth_mysql", &checks, |extra| db.plugin_config(extra)).await;
    assert!(!b.log().contains("pw-256"), "passwords are never logged");
}

#[tokio::test]
async fn bad_queries_and_hashes_are_refused_at_load_naming_the_key() {
    let b = Broker::start();
    b.plugin_config(
        "auth_mysql",
        "auth_query = \"select password from mqtt_user where username = %u\"\n",
    );
    let out = b.ctl(&["plugins", "load", "auth_mysql"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("auth_query") && out.stderr.contains("'%u'"),
        "{}",
        out.stderr
    );
    b.plugin_config("auth_mysql", "password_hash = \"sha3\"\n");
    let out = b.ctl(&["plugins", "load", "auth_mysql"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("password_hash"), "{}", out.stderr);
}

#[tokio::test]
async fn sql_metacharacters_in_user_names_are_bound_not_spliced() {
    let Some(db) = MariaDb::start(&[]) else {
        return;
    };
    let odd = [
        "o'brien",
        "back\\slash",
        "%u",
        "\"; drop table mqtt_user; --",
        "名前",
    ];
    for name in odd {
        add_user(&db, name, "sha2('pw', 256)", "", false);
    }
    let b = broker_with(&db, "", "");
    for name in odd {
        assert_eq!(connack_code(b.port(), "c", name, "pw").await, 0, "{name}");
        assert_eq!(connack_code(b.port(), "c", name, "no").await, 4, "{name}");
    }
    // Spliced into the query, these would return a row (→ 4, or 0 for the union); bound as
    // values they match no user name (→ no row → ignore → not authorised).
    for attack in [
        "nobody' or '1'='1",
        "nobody' union select sha2('x', 256), '' -- ",
    ] {
        assert_eq!(
            connack_code(b.port(), "c", attack, "x").await,
            5,
            "{attack}"
        );
    }
    assert_eq!(db.sql("select count(*) from mqtt_user").trim(), "5");
}

#[tokio::test]
async fn acl_rows_first_match_in_order() {
    let Some(db) = MariaDb::start(&[]) else {
        return;
    };
    add_user(&db, "alice", "sha2('a', 256)", "", false);
    add_user(&db, "root", "sha2('r', 256)", "", true);
    add_user(&db, "$bridge", "sha2('b', 256)", "", false);
    let rows: [AclSpec<'_>; 11] = [
        (0, None, Some("$all"), None, 1, "secret/#"),
        (1, None, Some("$all"), None, 3, "users/%u/#"),
        (1, None, None, Some("dev-special"), 1, "special/#"),
        (1, Some("127.0.0.0/8"), Some("alice"), None, 2, "local/#"),
        (1, Some("10.0.0.0/8"), Some("alice"), None, 1, "remote/#"),
        (1, None, Some("$all"), None, 1, "eq stats/#"),
        (0, None, Some("alice"), None, 1, "dup/#"),
        (1, None, Some("alice"), None, 1, "dup/#"),
        (1, Some("127.0.0.1"), None, None, 1, "byip/#"),
        (1, Some("127.0.0.0/24"), None, None, 1, "bycidr/#"),
        (1, None, Some("$all"), None, 1, "clients/%c/#"),
    ];
    for row in rows {
        add_acl(&db, row);
    }
    let b = broker_with(&db, "", "[acl]\nno_match = \"deny\"\n");
    let mut alice = v4_login(&b, "dev-alice", "alice", "a").await;
    let q = QoS::AtMostOnce;
    check_subscriptions(
        &mut alice,
        "alice",
        &[
            ("secret/x", false),
            ("users/alice/x", true),
            ("users/bob/x", false),
            ("special/x", false),
            ("remote/x", false),
            ("stats/#", true),
            ("stats/cpu", false),
            ("dup/x", false),
            ("byip/x", true),
            ("bycidr/x", true),
            ("local/x", false),
            ("clients/dev-alice/x", true),
            ("clients/dev-special/x", false),
        ],
    )
    .await;
    let mut special = v4_login(&b, "dev-special", "alice", "a").await;
    assert_eq!(
        special.subscribe("special/x", q).await,
        vec![Sub::Success(q)]
    );

    // Publish: v5 PUBACK carries the verdict.
    let mut o = v5_options(b.port(), "alice-v5");
    o.set_credentials("alice", "a");
    let (mut v5, ack) = V5Client::connect_with(o).await;
    assert_eq!(
        ack.code,
        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
    );
    for (topic, allowed) in [
        ("local/x", true),
        ("users/alice/y", true),
        ("secret/x", false),
    ] {
        v5.client
            .publish(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "m")
            .await
            .expect("publish");
        let reason = v5
            .recv_packet_within(WAIT, |p| match p {
                V5Packet::PubAck(a) => Some(a.reason),
                _ => None,
            })
            .await
            .expect("PUBACK");
        use rumqttc::v5::mqttbytes::v5::PubAckReason;
        // Allowed with nobody subscribed: 0x10 "no matching subscribers".
        let expected = if allowed {
            PubAckReason::NoMatchingSubscribers
        } else {
            PubAckReason::NotAuthorized
        };
        assert_eq!(reason, expected, "alice publishing {topic}");
    }

    let mut root = v4_login(&b, "admin", "root", "r").await;
    assert_eq!(
        root.subscribe("secret/x", q).await,
        vec![Sub::Success(q)],
        "superusers skip ACL"
    );
    // User names starting with '$' are not looked up: row 2 would allow this.
    let mut bridge = v4_login(&b, "bridge", "$bridge", "b").await;
    assert_eq!(
        bridge.subscribe("users/$bridge/x", q).await,
        vec![Sub::Failure]
    );
}

#[tokio::test]
async fn mariadb_stopped_and_restarted_under_a_connected_broker() {
    let Some(db) = MariaDb::start(&[]) else {
        return;
    };
    add_user(&db, "alice", "sha2('a', 256)", "", false);
    add_acl(&db, (1, None, Some("$all"), None, 3, "users/%u/#"));
    let b = broker_with(
        &db,
        "query_timeout_ms = 1000",
        "[acl]\nno_match = \"deny\"\n",
    );
    let db = std::cell::RefCell::new(db);
    check_backend_outage(
        &b,
        || db.borrow_mut().stop(),
        || db.borrow_mut().start_again(),
    )
    .await;
}

#[tokio::test]
async fn idle_connections_closed_by_the_server_do_not_fail_logins() {
    let Some(db) = MariaDb::start(&["--wait-timeout=1"]) else {
        return;
    };
    add_user(&db, "alice", "sha2('a', 256)", "", false);
    let b = broker_with(&db, "", "");
    for round in 0..3 {
        assert_eq!(
            connack_code(b.port(), "c", "alice", "a").await,
            0,
            "login {round}"
        );
        // wait_timeout = 1 s: the server closes the pool's idle connections.
        wait_until("the server to close idle connections", || {
            db.broker_connections() == 0
        })
        .await;
    }
    assert_eq!(connack_code(b.port(), "c", "alice", "a").await, 0);
}

#[tokio::test]
async fn slow_queries_hit_the_query_timeout() {
    let Some(db) = MariaDb::start(&[]) else {
        return;
    };
    add_user(&db, "alice", "sha2('a', 256)", "", false);
    let slow = "auth_query = \"select password, salt from mqtt_user where username = '%u' and sleep(3) = 0\"";
    let b = broker_with(&db, &format!("query_timeout_ms = 300\n{slow}"), "");
    let started = Instant::now();
    assert_eq!(connack_code(b.port(), "c", "alice", "a").await, 3);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    b.plugin_config(
        "auth_mysql",
        &db.plugin_config(&format!(
            "query_timeout_ms = 300\non_error = \"ignore\"\n{slow}"
        )),
    );
    b.ctl_ok(&["plugins", "reload", "auth_mysql"]);
    assert_eq!(
        connack_code(b.port(), "c", "alice", "a").await,
        5,
        "on_error ignore → next plugin → none → auth.no_match"
    );
}

/// auth_http and auth_mysql together: the higher priority asks first, Ignore falls through,
/// all Ignore → auth.no_match.
#[tokio::test]
async fn chain_with_auth_http_by_priority() {
    let Some(db) = MariaDb::start(&[]) else {
        return;
    };
    add_user(&db, "dbuser", "sha2('db', 256)", "", false);
    add_user(&db, "both", "sha2('db', 256)", "", false);
    check_chain_with_auth_http("auth_mysql", |p| {
        db.plugin_config(&format!("priority = {p}"))
    })
    .await;
}

/// Acceptance, as a new user would try it: a sha256+salt user with mosquitto_pub, and an ACL
/// row denying `secret/#`.
#[tokio::test]
async fn mosquitto_clients_with_a_salted_sha256_user() {
    let Some(db) = MariaDb::start(&[]) else {
        return;
    };
    add_user(
        &db,
        "meter",
        "sha2(concat('pepper', 'right'), 256)",
        "pepper",
        false,
    );
    add_acl(&db, (0, None, Some("$all"), None, 1, "secret/#"));
    let b = broker_with(&db, "password_hash = \"salt,sha256\"", "");
    check_mosquitto_pub(&b, "meter", "right");
    let mut meter = v4_login(&b, "meter-sub", "meter", "right").await;
    assert_eq!(
        meter.subscribe("secret/#", QoS::AtMostOnce).await,
        vec![Sub::Failure]
    );
}

/// TLS to the database: the account requires it; the server certificate is checked against
/// the configured CA.
#[tokio::test]
async fn tls_to_the_database_verified_against_ca_file() {
    let pki_dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::generate(pki_dir.path(), "unused");
    let args = [
        format!("--ssl-ca={}", pki.ca.display()),
        format!("--ssl-cert={}", pki.server_cert.display()),
        format!("--ssl-key={}", pki.server_key.display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let Some(db) = MariaDb::start(&args) else {
        return;
    };
    db.sql("alter user 'broker'@'%' require ssl");
    add_user(&db, "alice", "sha2('a', 256)", "", false);
    let b = broker_with(&db, "", "");
    assert_eq!(
        connack_code(b.port(), "c", "alice", "a").await,
        3,
        "plain TCP: the server refuses the account → server unavailable"
    );
    let ca = format!("tls = true\nca_file = {:?}", pki.ca.display().to_string());
    b.plugin_config("auth_mysql", &db.plugin_config(&ca));
    b.ctl_ok(&["plugins", "reload", "auth_mysql"]);
    assert_eq!(connack_code(b.port(), "c", "alice", "a").await, 0, "TLS");
    b.plugin_config("auth_mysql", &db.plugin_config("tls = true"));
    b.ctl_ok(&["plugins", "reload", "auth_mysql"]);
    assert_eq!(
        connack_code(b.port(), "c", "alice", "a").await,
        3,
        "the public roots do not trust the test CA"
    );
    b.plugin_config(
        "auth_mysql",
        &db.plugin_config("tls = true\nca_file = \"/nonexistent/ca.pem\""),
    );
    let out = b.ctl(&["plugins", "reload", "auth_mysql"]);
    assert!(
        out.code != 0 && out.stderr.contains("ca_file"),
        "{}",
        out.stderr
    );
}
