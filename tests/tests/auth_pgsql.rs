//! The auth_pgsql plugin against a private PostgreSQL server started by each test (see
//! `broker_tests::postgres`), loaded as a real `.so` into the real broker.

use broker_tests::auth::*;
use broker_tests::rumqttc::QoS;
use broker_tests::rumqttc::SubscribeReasonCode as Sub;
use broker_tests::*;

/// bcrypt of "bcrypt-pw" (cost 6), made by Python's `bcrypt.hashpw`.
const BCRYPT_OF_PW: &str = "$2b$06$5ma20jfGZjONmwHY6hakC.oeQSX41oavdEARERHZDY9apgIBfipne";
/// `hashlib.pbkdf2_hmac('sha256', b'pbkdf2-pw', b'NaCl42', 1000, 32).hex()` (Python).
const PBKDF2_OF_PW: &str = "0f5d97eaed61c0c854a23315e624cea2db94699869a4cf13a8d4a7b3fe9ea3df";

/// A SQL string literal for `s` (quotes doubled; standard_conforming_strings is on).
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The SQL expression of the lower-case hex `digest` (sha256, sha512, …) of the text `expr`.
fn hex(digest: &str, expr: &str) -> String {
    format!("encode({digest}(convert_to({expr}, 'UTF8')), 'hex')")
}

/// Inserts a user whose stored password is the SQL expression `stored`.
fn add_user(db: &Postgres, name: &str, stored: &str, salt: &str, superuser: bool) {
    db.sql(&format!(
        "insert into mqtt_user (username, password, salt, is_superuser) values ({}, {stored}, {}, {superuser})",
        lit(name),
        lit(salt),
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

fn add_acl(db: &Postgres, (allow, ipaddr, username, clientid, access, topic): AclSpec<'_>) {
    let v = |o: Option<&str>| o.map_or("NULL".to_owned(), lit);
    db.sql(&format!(
        "insert into mqtt_acl (allow, ipaddr, username, clientid, access, topic) values ({allow}, {}, {}, {}, {access}, {})",
        v(ipaddr),
        v(username),
        v(clientid),
        lit(topic)
    ));
}

fn broker_with(db: &Postgres, plugin: &str, broker_extra: &str) -> Broker {
    let b = Broker::start_with(broker_extra);
    b.plugin_config("auth_pgsql", &db.plugin_config(plugin));
    b.ctl_ok(&["plugins", "load", "auth_pgsql"]);
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
    let Some(db) = Postgres::start() else {
        return;
    };
    db.sql("create extension if not exists pgcrypto");
    // Stored values are computed by PostgreSQL itself (md5(), sha256(), pgcrypto's digest())
    // or by Python.
    let sha1 = "encode(digest('pw-sha', 'sha1'), 'hex')".to_owned();
    let cases = [
        ("plain", "u-plain", "'pw-plain'".to_owned(), "", "pw-plain"),
        ("md5", "u-md5", "md5('pw-md5')".to_owned(), "", "pw-md5"),
        ("sha", "u-sha", sha1, "", "pw-sha"),
        ("sha256", "u-256", hex("sha256", "'pw-256'"), "", "pw-256"),
        ("sha512", "u-512", hex("sha512", "'pw-512'"), "", "pw-512"),
        (
            "salt,sha256",
            "u-pre",
            hex("sha256", "'s4lt' || 'pw-pre'"),
            "s4lt",
            "pw-pre",
        ),
        (
            "sha256,salt",
            "u-suf",
            hex("sha256", "'pw-suf' || 's4lt'"),
            "s4lt",
            "pw-suf",
        ),
        ("bcrypt", "u-bcrypt", lit(BCRYPT_OF_PW), "", "bcrypt-pw"),
        (
            "pbkdf2,sha256,1000,32",
            "u-pbkdf2",
            lit(PBKDF2_OF_PW),
            "NaCl42",
            "pbkdf2-pw",
        ),
    ];
    for (_, user, stored, salt, _) in &cases {
        add_user(&db, user, stored, salt, false);
    }
    add_user(&db, "admin", &hex("sha256", "'root-pw'"), "", true);
    let b = Broker::start_with("[acl]\nno_match = \"deny\"\n");
    let checks: Vec<(&str, &str, &str)> = cases
        .iter()
        .map(|(hash, user, _, _, password)| (*hash, *user, *password))
        .collect();
    check_password_hashes(&b, "auth_pgsql", &checks, |extra| db.plugin_config(extra)).await;
    // Superuser: is_superuser = true skips ACL (broker-wide no_match = deny for ACL).
    b.plugin_config("auth_pgsql", &db.plugin_config(""));
    b.ctl_ok(&["plugins", "reload", "auth_pgsql"]);
    let mut admin = v4_login(&b, "admin", "admin", "root-pw").await;
    assert_eq!(
        admin.subscribe("anything/#", QoS::AtMostOnce).await,
        vec![Sub::Success(QoS::AtMostOnce)],
        "a superuser skips the ACL"
    );
    let mut plain = v4_login(&b, "plain", "u-256", "pw-256").await;
    assert_eq!(
        plain.subscribe("anything/#", QoS::AtMostOnce).await,
        vec![Sub::Failure],
        "no ACL row → acl.no_match = deny"
    );
    assert!(!b.log().contains("pw-256"), "passwords are never logged");
}

#[tokio::test]
async fn sql_metacharacters_in_user_names_are_bound_not_spliced() {
    let Some(db) = Postgres::start() else {
        return;
    };
    let odd = [
        "o'brien",
        "back\\slash",
        "%u",
        "$1",
        "\"; drop table mqtt_user; --",
        "名前",
    ];
    for name in odd {
        add_user(&db, name, &hex("sha256", "'pw'"), "", false);
    }
    let b = broker_with(&db, "", "");
    for name in odd {
        assert_eq!(connack_code(b.port(), "c", name, "pw").await, 0, "{name}");
        assert_eq!(connack_code(b.port(), "c", name, "no").await, 4, "{name}");
    }
    for attack in [
        "nobody' or '1'='1",
        "nobody' union select encode(sha256('x'), 'hex'), '' -- ",
    ] {
        assert_eq!(
            connack_code(b.port(), "c", attack, "x").await,
            5,
            "{attack}"
        );
    }
    assert_eq!(db.sql("select count(*) from mqtt_user").trim(), "6");
}

#[tokio::test]
async fn acl_rows_first_match_in_order() {
    let Some(db) = Postgres::start() else {
        return;
    };
    add_user(&db, "alice", &hex("sha256", "'a'"), "", false);
    add_user(&db, "$bridge", &hex("sha256", "'b'"), "", false);
    let rows: [AclSpec<'_>; 8] = [
        (0, None, Some("$all"), None, 1, "secret/#"),
        (1, None, Some("$all"), None, 3, "users/%u/#"),
        (1, Some("127.0.0.0/8"), Some("alice"), None, 2, "local/#"),
        (1, Some("10.0.0.0/8"), Some("alice"), None, 1, "remote/#"),
        (1, None, Some("$all"), None, 1, "eq stats/#"),
        (0, None, Some("alice"), None, 1, "dup/#"),
        (1, None, Some("alice"), None, 1, "dup/#"),
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
            ("remote/x", false),
            ("stats/#", true),
            ("stats/cpu", false),
            ("dup/x", false),
            ("local/x", false),
            ("clients/dev-alice/x", true),
            ("clients/other/x", false),
        ],
    )
    .await;
    // Publish: local/# is allowed for alice from 127.0.0.0/8 (a v3.1.1 publish is dropped
    // silently when denied, so watch it arrive instead).
    let mut watcher = v4_login(&b, "watch", "alice", "a").await;
    assert_eq!(
        watcher.subscribe("users/alice/#", q).await,
        vec![Sub::Success(q)]
    );
    alice
        .client
        .publish("users/alice/p", QoS::AtLeastOnce, false, "mine")
        .await
        .expect("publish");
    assert_eq!(&watcher.recv_publish().await.payload[..], b"mine");
    // User names starting with '$' are not looked up: row 2 would allow this.
    let mut bridge = v4_login(&b, "bridge", "$bridge", "b").await;
    assert_eq!(
        bridge.subscribe("users/$bridge/x", q).await,
        vec![Sub::Failure]
    );
}

#[tokio::test]
async fn postgres_stopped_and_restarted_under_a_connected_broker() {
    let Some(db) = Postgres::start() else {
        return;
    };
    add_user(&db, "alice", &hex("sha256", "'a'"), "", false);
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
    assert!(db.borrow().broker_connections() >= 1);
}

/// auth_http and auth_pgsql together: the higher priority asks first, Ignore falls through,
/// all Ignore → auth.no_match.
#[tokio::test]
async fn chain_with_auth_http_by_priority() {
    let Some(db) = Postgres::start() else {
        return;
    };
    add_user(&db, "dbuser", &hex("sha256", "'db'"), "", false);
    add_user(&db, "both", &hex("sha256", "'db'"), "", false);
    check_chain_with_auth_http("auth_pgsql", |p| {
        db.plugin_config(&format!("priority = {p}"))
    })
    .await;
}

/// Acceptance, as a new user would try it: a salted sha256 user with mosquitto_pub.
#[tokio::test]
async fn mosquitto_clients_with_a_salted_sha256_user() {
    let Some(db) = Postgres::start() else {
        return;
    };
    add_user(
        &db,
        "meter",
        &hex("sha256", "'pepper' || 'right'"),
        "pepper",
        false,
    );
    let b = broker_with(&db, "password_hash = \"salt,sha256\"", "");
    check_mosquitto_pub(&b, "meter", "right");
}

/// TLS to the database: the server takes TCP logins only over TLS; the server certificate is
/// checked against the configured CA.
#[tokio::test]
async fn tls_to_the_database_verified_against_ca_file() {
    let pki_dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::generate(pki_dir.path(), "unused");
    let Some(db) = Postgres::start_tls(&pki.server_cert, &pki.server_key) else {
        return;
    };
    add_user(&db, "alice", &hex("sha256", "'a'"), "", false);
    let b = broker_with(&db, "", "");
    assert_eq!(
        connack_code(b.port(), "c", "alice", "a").await,
        3,
        "plain TCP: the server refuses the login → server unavailable"
    );
    let ca = format!("tls = true\nca_file = {:?}", pki.ca.display().to_string());
    b.plugin_config("auth_pgsql", &db.plugin_config(&ca));
    b.ctl_ok(&["plugins", "reload", "auth_pgsql"]);
    assert_eq!(connack_code(b.port(), "c", "alice", "a").await, 0, "TLS");
    b.plugin_config("auth_pgsql", &db.plugin_config("tls = true"));
    b.ctl_ok(&["plugins", "reload", "auth_pgsql"]);
    assert_eq!(
        connack_code(b.port(), "c", "alice", "a").await,
        3,
        "the public roots do not trust the test CA"
    );
    b.plugin_config(
        "auth_pgsql",
        &db.plugin_config("tls = true\nca_file = \"/nonexistent/ca.pem\""),
    );
    let out = b.ctl(&["plugins", "reload", "auth_pgsql"]);
    assert!(
        out.code != 0 && out.stderr.contains("ca_file"),
        "{}",
        out.stderr
    );
}
