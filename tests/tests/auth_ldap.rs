//! The auth_ldap plugin against a private OpenLDAP server started by each test (see
//! `broker_tests::ldap`), loaded as a real `.so` into the real broker.

use broker_tests::auth::*;
use broker_tests::rumqttc::QoS;
use broker_tests::rumqttc::SubscribeReasonCode as Sub;
use broker_tests::*;

fn broker_with(d: &Slapd, plugin: &str, broker_extra: &str) -> Broker {
    let b = Broker::start_with(broker_extra);
    b.plugin_config("auth_ldap", &d.plugin_config(plugin));
    b.ctl_ok(&["plugins", "load", "auth_ldap"]);
    b
}

async fn v4_login(b: &Broker, id: &str, user: &str, password: &str) -> V4Client {
    let mut o = v4_options(b.port(), id);
    o.set_credentials(user, password);
    let (c, _) = V4Client::connect_with(o).await;
    c
}

/// Passwords as slappasswd writes them, in both modes: read and compared by the plugin, or
/// checked by the directory through a bind as the device.
#[tokio::test]
async fn directory_password_schemes_in_both_modes() {
    let Some(d) = Slapd::start() else {
        return;
    };
    let cases = [
        ("u-ssha", Slapd::slappasswd("{SSHA}", "pw-ssha"), "pw-ssha"),
        ("u-sha", Slapd::slappasswd("{SHA}", "pw-sha"), "pw-sha"),
        ("u-smd5", Slapd::slappasswd("{SMD5}", "pw-smd5"), "pw-smd5"),
        ("u-plain", "pw-plain".to_owned(), "pw-plain"),
    ];
    for (uid, stored, _) in &cases {
        assert!(stored.starts_with('{') || *uid == "u-plain", "{stored}");
        d.add_device(uid, stored, "");
    }
    d.add_device(
        "admin",
        &Slapd::slappasswd("{SSHA}", "root-pw"),
        "isSuperuser: TRUE\n",
    );
    let b = Broker::start_with("[acl]\nno_match = \"deny\"\n");
    // acl = true puts the plugin in the ACL chain, where a device without topic attributes
    // gets acl.no_match.
    for (i, mode) in [
        "bind_as_user = false\nacl = true",
        "bind_as_user = true\nacl = true",
    ]
    .iter()
    .enumerate()
    {
        b.plugin_config("auth_ldap", &d.plugin_config(mode));
        let verb = if i == 0 { "load" } else { "reload" };
        b.ctl_ok(&["plugins", verb, "auth_ldap"]);
        for (uid, _, password) in &cases {
            assert_eq!(
                connack_code(b.port(), "c", uid, password).await,
                0,
                "{mode}: {uid} right password"
            );
            assert_eq!(
                connack_code(b.port(), "c", uid, &format!("{password}x")).await,
                4,
                "{mode}: {uid} wrong password"
            );
            assert_eq!(
                connack_code(b.port(), "c", uid, "").await,
                4,
                "{mode}: {uid} empty password"
            );
        }
        assert_eq!(
            connack_code(b.port(), "c", "nobody", "x").await,
            5,
            "{mode}: no entry → ignore → auth.no_match → not authorised"
        );
        let mut admin = v4_login(&b, "admin", "admin", "root-pw").await;
        assert_eq!(
            admin.subscribe("anything/#", QoS::AtMostOnce).await,
            vec![Sub::Success(QoS::AtMostOnce)],
            "{mode}: isSuperuser TRUE skips the ACL"
        );
        let mut plain = v4_login(&b, "plain", "u-plain", "pw-plain").await;
        assert_eq!(
            plain.subscribe("anything/#", QoS::AtMostOnce).await,
            vec![Sub::Failure],
            "{mode}: not a superuser → acl.no_match = deny"
        );
    }
    assert!(!b.log().contains("pw-ssha"), "passwords are never logged");
}

/// Filter syntax in a user name only ever matches itself.
#[tokio::test]
async fn filter_metacharacters_in_user_names_are_escaped() {
    let Some(d) = Slapd::start() else {
        return;
    };
    let odd = ["a*", "x)(uid=*", "back\\slash", "with space", "名前"];
    for uid in odd {
        d.add_device(uid, "pw", "");
    }
    let b = broker_with(&d, "", "");
    for uid in odd {
        assert_eq!(connack_code(b.port(), "c", uid, "pw").await, 0, "{uid}");
        assert_eq!(connack_code(b.port(), "c", uid, "no").await, 4, "{uid}");
    }
    // Unescaped, "*" would match every device (and "pw" open the first one).
    assert_eq!(connack_code(b.port(), "c", "*", "pw").await, 5);
    assert_eq!(connack_code(b.port(), "c", "a\\2a", "pw").await, 5);
}

#[tokio::test]
async fn acl_from_the_topic_attributes() {
    let Some(d) = Slapd::start() else {
        return;
    };
    d.add_device(
        "meter",
        "pw",
        "mqttPublishTopic: meters/%u/#\nmqttSubscriptionTopic: commands/%c/#\nmqttPubSubTopic: shared/#\n",
    );
    let b = broker_with(&d, "acl = true", "[acl]\nno_match = \"deny\"\n");
    let mut meter = v4_login(&b, "dev-1", "meter", "pw").await;
    let q = QoS::AtMostOnce;
    check_subscriptions(
        &mut meter,
        "meter",
        &[
            ("commands/dev-1/#", true),
            ("commands/dev-2/#", false),
            ("shared/x", true),
            ("meters/meter/x", false),
            ("other", false),
        ],
    )
    .await;
    // Publishing to meters/meter/… is allowed: it reaches a subscriber of shared/… only if
    // allowed, so publish to shared/ (allowed both ways) and meters/ and watch.
    let mut watcher = v4_login(&b, "dev-1-watch", "meter", "pw").await;
    assert_eq!(
        watcher.subscribe("shared/#", q).await,
        vec![Sub::Success(q)]
    );
    meter
        .client
        .publish("shared/t", QoS::AtLeastOnce, false, "ok")
        .await
        .expect("publish");
    assert_eq!(&watcher.recv_publish().await.payload[..], b"ok");
}

#[tokio::test]
async fn directory_stopped_and_restarted_under_a_connected_broker() {
    let Some(d) = Slapd::start() else {
        return;
    };
    d.add_device("alice", "a", "mqttPubSubTopic: users/%u/#\n");
    let b = broker_with(
        &d,
        "acl = true\ntimeout_ms = 1000",
        "[acl]\nno_match = \"deny\"\n",
    );
    let d = std::cell::RefCell::new(d);
    check_backend_outage(
        &b,
        || d.borrow_mut().stop(),
        || d.borrow_mut().start_again(),
    )
    .await;
}

#[tokio::test]
async fn chain_with_auth_http_by_priority() {
    let Some(d) = Slapd::start() else {
        return;
    };
    d.add_device("dbuser", "db", "");
    d.add_device("both", "db", "");
    check_chain_with_auth_http("auth_ldap", |p| d.plugin_config(&format!("priority = {p}"))).await;
}

#[tokio::test]
async fn ldaps_verified_against_ca_file() {
    let pki_dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::generate(pki_dir.path(), "unused");
    let Some(d) = Slapd::start_tls(&pki.server_cert, &pki.server_key, &pki.ca) else {
        return;
    };
    d.add_device("alice", "a", "");
    let ca = format!("ssl = true\nca_file = {:?}", pki.ca.display().to_string());
    let b = broker_with(&d, &ca, "");
    assert_eq!(connack_code(b.port(), "c", "alice", "a").await, 0, "ldaps");
    assert_eq!(connack_code(b.port(), "c", "alice", "b").await, 4);
    b.plugin_config(
        "auth_ldap",
        &d.plugin_config("ssl = true\ntimeout_ms = 2000"),
    );
    b.ctl_ok(&["plugins", "reload", "auth_ldap"]);
    assert_eq!(
        connack_code(b.port(), "c", "alice", "a").await,
        3,
        "the public roots do not trust the test CA"
    );
    b.plugin_config(
        "auth_ldap",
        &d.plugin_config("ssl = true\nca_file = \"/nonexistent/ca.pem\""),
    );
    let out = b.ctl(&["plugins", "reload", "auth_ldap"]);
    assert!(
        out.code != 0 && out.stderr.contains("ca_file"),
        "{}",
        out.stderr
    );
}

/// Acceptance, as a new user would try it: a device added with ldapadd, then mosquitto_pub.
#[tokio::test]
async fn mosquitto_clients_with_a_directory_device() {
    let Some(d) = Slapd::start() else {
        return;
    };
    d.add_device("meter1", &Slapd::slappasswd("{SSHA}", "right"), "");
    let b = broker_with(&d, "", "");
    check_mosquitto_pub(&b, "meter1", "right");
}
