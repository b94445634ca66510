//! Checks every backend auth plugin's tests share (auth_mysql, auth_pgsql, auth_redis,
//! auth_ldap): the same behaviour is asked of each, against its own server.

use crate::{connack_code, Broker, HttpServer};

/// Loads `plugin` (with `config(hash)` for each case) and checks each `(password_hash, user,
/// password)`: the right password connects, a wrong or empty one is "bad user name or
/// password", and an unknown user falls through to `auth.no_match` ("not authorised").
pub async fn check_password_hashes(
    b: &Broker,
    plugin: &str,
    cases: &[(&str, &str, &str)],
    config: impl Fn(&str) -> String,
) {
    for (i, (hash, user, password)) in cases.iter().enumerate() {
        b.plugin_config(plugin, &config(&format!("password_hash = {hash:?}")));
        let verb = if i == 0 { "load" } else { "reload" };
        b.ctl_ok(&["plugins", verb, plugin]);
        assert_eq!(
            connack_code(b.port(), "c", user, password).await,
            0,
            "{hash}: right password"
        );
        assert_eq!(
            connack_code(b.port(), "c", user, &format!("{password}x")).await,
            4,
            "{hash}: wrong password → bad user name or password"
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
}

/// auth_http (answering for `httpuser` and `both`) and `plugin` (whose backend holds `dbuser`
/// and `both`, password `db`) in one chain: the higher priority asks first, Ignore falls
/// through, all Ignore → `auth.no_match`. `config(priority)` is the plugin's config.
pub async fn check_chain_with_auth_http(plugin: &str, config: impl Fn(i32) -> String) {
    let http = HttpServer::start(|r| {
        if r.body.contains("username=httpuser") || r.body.contains("username=both") {
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
    b.plugin_config(plugin, &config(970));
    b.ctl_ok(&["plugins", "load", "auth_http"]);
    b.ctl_ok(&["plugins", "load", plugin]);
    let port = b.port();
    assert_eq!(
        connack_code(port, "1", "httpuser", "any").await,
        0,
        "HTTP allows"
    );
    assert_eq!(
        connack_code(port, "2", "dbuser", "db").await,
        0,
        "HTTP ignores, {plugin} allows"
    );
    assert_eq!(
        connack_code(port, "3", "dbuser", "no").await,
        4,
        "HTTP ignores, {plugin} denies"
    );
    assert_eq!(
        connack_code(port, "4", "nobody", "x").await,
        5,
        "all ignore → no_match"
    );
    assert_eq!(
        connack_code(port, "5", "both", "wrong").await,
        0,
        "auth_http (980) answers before {plugin} (970)"
    );
    // Swap the order: the plugin above auth_http now denies the wrong password first.
    b.plugin_config("auth_http", &http_config(960));
    b.ctl_ok(&["plugins", "reload", "auth_http"]);
    assert_eq!(connack_code(port, "6", "both", "wrong").await, 4);
    assert_eq!(
        connack_code(port, "7", "httpuser", "any").await,
        0,
        "{plugin} has no such user → HTTP"
    );
}

/// Acceptance as a new user tries it: `mosquitto_pub -u user -P right` publishes, `-P wrong`
/// is refused.
pub fn check_mosquitto_pub(b: &Broker, user: &str, right: &str) {
    assert!(
        crate::tool_available("mosquitto_pub"),
        "mosquitto_pub not installed: run the README's test command (tests/run.sh installs mosquitto-clients)"
    );
    let pub_with = |password: &str| {
        std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &b.port().to_string()])
            .args([
                "-u", user, "-P", password, "-t", "meters/1", "-m", "42", "-q", "1",
            ])
            .output()
            .expect("run mosquitto_pub")
    };
    let ok = pub_with(right);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = pub_with(&format!("{right}-wrong"));
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr).to_lowercase();
    assert!(
        stderr.contains("bad user name or password") || stderr.contains("not authori"),
        "{stderr}"
    );
}

/// The backend of `b`'s auth plugin goes away under a connected client and comes back: the
/// backend holds user `alice` (password `a`) allowed `users/alice/#` by ACL, and the plugin's
/// timeout is about a second. While it is down, a new client gets "server unavailable" within
/// seconds (`on_error = deny`), the connected one stays and new ACL decisions fail closed;
/// `start` brings it back (with its data), and the plugin uses it again without a reload.
pub async fn check_backend_outage(b: &Broker, stop: impl FnOnce(), start: impl FnOnce()) {
    use crate::rumqttc::{QoS, SubscribeReasonCode as Sub};
    use std::time::{Duration, Instant};
    let mut o = crate::v4_options(b.port(), "alice");
    o.set_credentials("alice", "a");
    let (mut alice, _) = crate::V4Client::connect_with(o).await;
    let q = QoS::AtLeastOnce;
    assert_eq!(
        alice.subscribe("users/alice/#", q).await,
        vec![Sub::Success(q)]
    );
    let publisher = alice.client.clone();
    let echo = |payload: &'static str| {
        let client = publisher.clone();
        async move {
            client
                .publish("users/alice/t", QoS::AtLeastOnce, false, payload)
                .await
                .expect("publish");
        }
    };
    echo("before").await;
    assert_eq!(&alice.recv_publish().await.payload[..], b"before");

    stop();
    let started = Instant::now();
    assert_eq!(
        connack_code(b.port(), "late", "alice", "a").await,
        3,
        "backend down + on_error deny → server unavailable"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the plugin's timeout"
    );
    // The connected client stays connected; decisions it already has (ACL cache) still work,
    // new ones fail closed.
    echo("during").await;
    assert_eq!(&alice.recv_publish().await.payload[..], b"during");
    assert_eq!(
        alice.subscribe("users/alice/new", q).await,
        vec![Sub::Failure],
        "new ACL decisions fail closed"
    );

    start();
    let deadline = Instant::now() + Duration::from_secs(10);
    while connack_code(b.port(), "after", "alice", "a").await != 0 {
        assert!(
            Instant::now() < deadline,
            "the plugin reconnects without a reload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        alice.subscribe("users/alice/other", q).await,
        vec![Sub::Success(q)]
    );
    echo("after").await;
    assert_eq!(&alice.recv_publish().await.payload[..], b"after");
}

/// Subscribes `c` to each filter at QoS 0 and checks the SUBACK: granted when `true`, refused
/// when `false`.
pub async fn check_subscriptions(c: &mut crate::V4Client, who: &str, cases: &[(&str, bool)]) {
    use crate::rumqttc::{QoS, SubscribeReasonCode as Sub};
    let q = QoS::AtMostOnce;
    for (filter, allowed) in cases {
        let want = if *allowed {
            Sub::Success(q)
        } else {
            Sub::Failure
        };
        assert_eq!(
            c.subscribe(filter, q).await,
            vec![want],
            "{who} subscribing {filter}"
        );
    }
}
