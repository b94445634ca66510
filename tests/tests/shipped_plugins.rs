//! The shipped plugins (presence, rewrite, subscription) through the real broker, their real
//! `.so` files and real MQTT clients.

use std::time::Duration;

use broker_tests::rumqttc;
use broker_tests::rumqttc::QoS;
use broker_tests::*;

const QUIET: Duration = Duration::from_millis(300);

fn json(p: &rumqttc::Publish) -> serde_json::Value {
    serde_json::from_slice(&p.payload).unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.topic))
}

#[tokio::test]
async fn presence_publishes_connected_and_disconnected_documents() {
    let b = Broker::start();
    b.plugin_config("presence", "qos = 1\n");
    b.ctl_ok(&["plugins", "load", "presence"]);
    let mut watcher = V4Client::connect(b.port(), "watcher").await;
    watcher
        .subscribe("$SYS/brokers/+/clients/+/+", QoS::AtLeastOnce)
        .await;

    let mut o = v4_options(b.port(), "dev1");
    o.set_credentials("alice", "pw");
    let (c, _) = V4Client::connect_with(o).await;
    let p = watcher.recv_publish().await;
    assert!(
        p.topic.starts_with("$SYS/brokers/") && p.topic.ends_with("/clients/dev1/connected"),
        "{}",
        p.topic
    );
    assert!(!p.retain);
    assert_eq!(p.qos, QoS::AtLeastOnce);
    let doc = json(&p);
    for field in [
        "clientid",
        "username",
        "ipaddress",
        "sockport",
        "proto_name",
        "proto_ver",
        "keepalive",
        "clean_start",
        "expiry_interval",
        "connected_at",
        "ts",
    ] {
        assert!(doc.get(field).is_some(), "connected lacks {field}: {doc}");
    }
    assert_eq!(
        (
            doc["clientid"].as_str(),
            doc["username"].as_str(),
            doc["proto_ver"].as_u64()
        ),
        (Some("dev1"), Some("alice"), Some(4))
    );
    assert_eq!(doc["sockport"].as_u64(), Some(b.port() as u64));
    let connected_at = doc["connected_at"].as_u64().expect("epoch ms");
    assert!(
        connected_at > 1_600_000_000_000,
        "epoch milliseconds: {connected_at}"
    );

    c.disconnect().await;
    let p = watcher.recv_publish().await;
    assert!(p.topic.ends_with("/clients/dev1/disconnected"));
    let doc = json(&p);
    for field in [
        "clientid",
        "username",
        "reason",
        "ipaddress",
        "connected_at",
        "disconnected_at",
        "ts",
    ] {
        assert!(
            doc.get(field).is_some(),
            "disconnected lacks {field}: {doc}"
        );
    }
    assert_eq!(doc["reason"], "normal");
    assert_eq!(doc["connected_at"].as_u64(), Some(connected_at));

    // Kick and takeover are disconnections too, with their reasons.
    let _k = V4Client::connect(b.port(), "kicked").await;
    watcher.recv_publish().await;
    assert_eq!(
        b.ctl_ok(&["clients", "kick", "kicked"]).trim(),
        "Client kicked kicked."
    );
    assert_eq!(json(&watcher.recv_publish().await)["reason"], "kicked");
    let _first = V4Client::connect(b.port(), "twin").await;
    watcher.recv_publish().await;
    let _second = V4Client::connect(b.port(), "twin").await;
    let mut reasons = Vec::new();
    for _ in 0..2 {
        let p = watcher.recv_publish().await;
        if p.topic.ends_with("/disconnected") {
            reasons.push(json(&p)["reason"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(reasons, vec!["takenover".to_string()]);

    // A refused CONNECT produces nothing.
    let mut w = Wire::open(b.port()).await;
    w.send(&connect_packet(4, "", false, 60)).await;
    assert_eq!(w.recv().await.expect("CONNACK").body, [0, 2]);
    assert!(watcher.recv_publish_within(QUIET).await.is_none());
}

const REWRITE: &str = "[[rules]]\naction = \"all\"\nsource_topic = \"x/#\"\nre = \"^x/y/(.+)$\"\ndest_topic = \"z/y/$1\"\n";

#[tokio::test]
async fn rewrite_rules_apply_to_publish_and_subscribe() {
    let b = Broker::start();
    b.plugin_config("rewrite", REWRITE);
    b.ctl_ok(&["plugins", "load", "rewrite"]);
    let mut sub = V4Client::connect(b.port(), "sub").await;
    sub.subscribe("z/y/#", QoS::AtLeastOnce).await;
    let publisher = V4Client::connect(b.port(), "pub").await;
    publisher
        .client
        .publish("x/y/1", QoS::AtLeastOnce, false, "moved")
        .await
        .expect("publish");
    let p = sub.recv_publish().await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("z/y/1", &b"moved"[..]));
    let out = b.ctl_ok(&["rewrite", "test", "x/y/1"]);
    assert_eq!(out.trim(), "z/y/1 (rule 1: all x/# ^x/y/(.+)$ z/y/$1)");
    assert_eq!(
        b.ctl_ok(&["rewrite", "test", "x/q"]).trim(),
        "x/q (unchanged: the regex of rule 1: all x/# ^x/y/(.+)$ z/y/$1 did not match)"
    );

    // SUBSCRIBE x/y/# becomes z/y/#, shared subscriptions keep their prefix; UNSUBSCRIBE too.
    let mut s2 = V4Client::connect(b.port(), "s2").await;
    s2.subscribe("x/y/#", QoS::AtLeastOnce).await;
    let mut s3 = V4Client::connect(b.port(), "s3").await;
    s3.subscribe("$share/g/x/y/#", QoS::AtLeastOnce).await;
    publisher
        .client
        .publish("z/y/direct", QoS::AtLeastOnce, false, "d")
        .await
        .expect("publish");
    assert_eq!(s2.recv_publish().await.topic, "z/y/direct");
    assert_eq!(s3.recv_publish().await.topic, "z/y/direct");
    s2.client.unsubscribe("x/y/#").await.expect("unsubscribe");
    tokio::time::sleep(QUIET).await;
    publisher
        .client
        .publish("z/y/again", QoS::AtLeastOnce, false, "a")
        .await
        .expect("publish");
    assert!(
        s2.recv_publish_within(QUIET).await.is_none(),
        "unsubscribed through the rewritten filter"
    );

    // Reload with a changed rule: the next publish uses it.
    b.plugin_config("rewrite", &REWRITE.replace("z/y/$1", "z/y/new/$1"));
    b.ctl_ok(&["plugins", "reload", "rewrite"]);
    publisher
        .client
        .publish("x/y/2", QoS::AtLeastOnce, false, "v2")
        .await
        .expect("publish");
    let mut topics = Vec::new();
    while let Some(p) = sub.recv_publish_within(QUIET).await {
        topics.push(p.topic);
    }
    assert!(topics.contains(&"z/y/new/2".to_string()), "{topics:?}");

    // An invalid rule fails the reload naming the rule; the running rules stay.
    b.plugin_config("rewrite", &format!("{REWRITE}\n[[rules]]\naction = \"publish\"\nsource_topic = \"a/#\"\nre = \"(\"\ndest_topic = \"b\"\n"));
    let bad = b.ctl(&["plugins", "reload", "rewrite"]);
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("rule 2: invalid regex"), "{bad:?}");

    // Unload: topics stay as published.
    b.ctl_ok(&["plugins", "unload", "rewrite"]);
    let mut raw = V4Client::connect(b.port(), "raw").await;
    raw.subscribe("x/#", QoS::AtLeastOnce).await;
    publisher
        .client
        .publish("x/y/3", QoS::AtLeastOnce, false, "plain")
        .await
        .expect("publish");
    assert_eq!(raw.recv_publish().await.topic, "x/y/3");
}

#[tokio::test]
async fn rewrite_applies_to_wills() {
    let b = Broker::start();
    b.plugin_config("rewrite", REWRITE);
    b.ctl_ok(&["plugins", "load", "rewrite"]);
    let mut sub = V4Client::connect(b.port(), "sub").await;
    sub.subscribe("z/#", QoS::AtLeastOnce).await;
    let mut o = v4_options(b.port(), "mortal");
    o.set_last_will(rumqttc::LastWill::new(
        "x/y/will",
        "bye",
        QoS::AtLeastOnce,
        false,
    ));
    let (c, _) = V4Client::connect_with(o).await;
    c.kill();
    assert_eq!(sub.recv_publish().await.topic, "z/y/will");
}

#[tokio::test]
async fn auto_subscribe_on_connect() {
    let b = Broker::start();
    b.plugin_config(
        "subscription",
        "[[topics]]\ntopic = \"devices/%c/cmd\"\nqos = 1\n\n[[topics]]\ntopic = \"users/%u/inbox\"\nqos = 0\n",
    );
    b.ctl_ok(&["plugins", "load", "subscription"]);
    let mut o = v4_options(b.port(), "dev7");
    o.set_credentials("carol", "pw");
    let (mut dev, _) = V4Client::connect_with(o).await;
    let (mut anon, _) = V4Client::connect_with(v4_options(b.port(), "anon")).await;
    let publisher = V4Client::connect(b.port(), "pub").await;
    publisher
        .client
        .publish("devices/dev7/cmd", QoS::AtLeastOnce, false, "reboot")
        .await
        .expect("publish");
    publisher
        .client
        .publish("users/carol/inbox", QoS::AtLeastOnce, false, "hi")
        .await
        .expect("publish");
    publisher
        .client
        .publish("devices/anon/cmd", QoS::AtLeastOnce, false, "x")
        .await
        .expect("publish");
    let p = dev.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), p.qos),
        ("devices/dev7/cmd", QoS::AtLeastOnce)
    );
    assert_eq!(dev.recv_publish().await.topic, "users/carol/inbox");
    assert_eq!(anon.recv_publish().await.topic, "devices/anon/cmd");
    assert!(anon.recv_publish_within(QUIET).await.is_none());
    assert!(
        b.log().contains("auto-subscription skipped"),
        "the %u topic is skipped for anon with a warning"
    );
}

fn retainer_broker(config: &str) -> Broker {
    let b = Broker::start();
    b.plugin_config("retainer", config);
    b.ctl_ok(&["plugins", "load", "retainer"]);
    b
}

#[tokio::test]
async fn retained_messages_are_replayed_with_the_retain_flag() {
    let b = retainer_broker("");
    let mut publisher = V4Client::connect(b.port(), "pub").await;
    publisher
        .client
        .publish("sensors/2/temp", QoS::AtMostOnce, true, "19")
        .await
        .expect("publish");
    publisher
        .client
        .publish("sensors/1/temp", QoS::AtLeastOnce, true, "21")
        .await
        .expect("publish");
    publisher
        .client
        .publish("sensors/3/temp", QoS::AtLeastOnce, false, "not retained")
        .await
        .expect("publish");
    publisher.wait_acks(2).await;
    wait_until("two retained topics", || {
        b.ctl_ok(&["retainer", "topics"])
            .contains("2 retained message(s)")
    })
    .await;
    let mut sub = V4Client::connect(b.port(), "sub").await;
    sub.subscribe("sensors/+/temp", QoS::AtLeastOnce).await;
    // Replayed in publish order.
    let first = sub.recv_publish().await;
    let second = sub.recv_publish().await;
    assert_eq!(
        (first.topic.as_str(), first.retain, first.qos),
        ("sensors/2/temp", true, QoS::AtMostOnce),
        "QoS = min(stored, granted)"
    );
    assert_eq!(
        (
            second.topic.as_str(),
            &second.payload[..],
            second.retain,
            second.qos
        ),
        ("sensors/1/temp", &b"21"[..], true, QoS::AtLeastOnce)
    );
    let extra = sub.recv_publish_within(QUIET).await;
    assert!(extra.is_none(), "unexpected {extra:?}");

    // An empty retained payload deletes the topic (and is still forwarded).
    publisher
        .client
        .publish("sensors/1/temp", QoS::AtLeastOnce, true, Vec::<u8>::new())
        .await
        .expect("publish");
    let fwd = sub.recv_publish().await;
    assert!(fwd.payload.is_empty());
    let topics = b.ctl_ok(&["retainer", "topics"]);
    assert_eq!(topics.trim(), "sensors/2/temp\n1 retained message(s)");
    assert_eq!(
        b.ctl_ok(&["retainer", "topics", "--filter", "other/#"])
            .trim(),
        "0 retained message(s)"
    );
    assert!(b.ctl_ok(&["retainer", "info"]).contains("messages: 1"));
    assert_eq!(
        b.ctl_ok(&["retainer", "clean"]).trim(),
        "Removed 1 retained message(s)."
    );
    let mut late = V4Client::connect(b.port(), "late").await;
    late.subscribe("sensors/#", QoS::AtLeastOnce).await;
    assert!(late.recv_publish_within(QUIET).await.is_none());
}

/// max_replay_messages: a new subscription gets at most that many retained messages (a
/// subscription to `#` among many costs the broker that many, not all of them), in publish
/// order among those replayed.
#[tokio::test]
async fn retained_replay_is_bounded() {
    let b = retainer_broker("max_replay_messages = 5\n");
    let mut publisher = V4Client::connect(b.port(), "pub").await;
    for n in 0..20 {
        publisher
            .client
            .publish(format!("many/{n}"), QoS::AtLeastOnce, true, n.to_string())
            .await
            .expect("publish");
    }
    publisher.wait_acks(20).await;
    wait_until("twenty retained topics", || {
        b.ctl_ok(&["retainer", "info"]).contains("messages: 20")
    })
    .await;
    let mut sub = V4Client::connect(b.port(), "sub").await;
    sub.subscribe("many/#", QoS::AtLeastOnce).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        let p = sub.recv_publish().await;
        assert!(p.retain);
        got.push(
            String::from_utf8_lossy(&p.payload)
                .parse::<u32>()
                .expect("n"),
        );
    }
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "publish order: {got:?}"
    );
    let extra = sub.recv_publish_within(QUIET).await;
    assert!(extra.is_none(), "only 5 replayed: {extra:?}");
}

#[tokio::test]
async fn retain_handling_shared_subscriptions_and_dollar_topics() {
    let b = retainer_broker("");
    let publisher = V4Client::connect(b.port(), "pub").await;
    publisher
        .client
        .publish("r/a", QoS::AtLeastOnce, true, "a")
        .await
        .expect("publish");
    publisher
        .client
        .publish("$app/r", QoS::AtLeastOnce, true, "sys")
        .await
        .expect("publish");
    wait_until("retained", || {
        b.ctl_ok(&["retainer", "topics"]).contains("2 retained")
    })
    .await;
    use broker_tests::rumqttc::v5::mqttbytes::v5::{Filter, RetainForwardRule};
    use broker_tests::rumqttc::v5::mqttbytes::QoS as Q5;
    let mut v5 = V5Client::connect(b.port(), "v5").await;
    let sub = |f: &str, rh: RetainForwardRule| {
        let mut filter = Filter::new(f, Q5::AtLeastOnce);
        filter.retain_forward_rule = rh;
        filter
    };
    // rh = 2: never; rh = 1: only for a new subscription; rh = 0: every time.
    v5.client
        .subscribe_many(vec![sub("r/#", RetainForwardRule::Never)])
        .await
        .expect("subscribe");
    assert!(v5
        .recv_packet_within(QUIET, |p| matches!(p, V5Packet::Publish(_)).then_some(()))
        .await
        .is_none());
    v5.client
        .subscribe_many(vec![sub("r/+", RetainForwardRule::OnNewSubscribe)])
        .await
        .expect("subscribe");
    let p = v5.recv_publish().await;
    assert!(p.retain && &p.topic[..] == b"r/a");
    v5.client
        .subscribe_many(vec![sub("r/+", RetainForwardRule::OnNewSubscribe)])
        .await
        .expect("subscribe");
    assert!(
        v5.recv_packet_within(QUIET, |p| matches!(p, V5Packet::Publish(_)).then_some(()))
            .await
            .is_none(),
        "not new"
    );
    v5.client
        .subscribe_many(vec![sub("r/+", RetainForwardRule::OnEverySubscribe)])
        .await
        .expect("subscribe");
    assert!(v5.recv_publish().await.retain);
    // Shared subscriptions get nothing; "#" does not see $app/r, "$app/#" does.
    let mut shared = V4Client::connect(b.port(), "shared").await;
    shared.subscribe("$share/g/r/#", QoS::AtLeastOnce).await;
    assert!(shared.recv_publish_within(QUIET).await.is_none());
    let mut all = V4Client::connect(b.port(), "all").await;
    all.subscribe("#", QoS::AtLeastOnce).await;
    assert_eq!(all.recv_publish().await.topic, "r/a");
    assert!(all.recv_publish_within(QUIET).await.is_none());
    all.subscribe("$app/#", QoS::AtLeastOnce).await;
    assert_eq!(all.recv_publish().await.topic, "$app/r");
}

#[tokio::test]
async fn retainer_limits_and_expiry() {
    let b = retainer_broker("max_retained_messages = 1\nmax_payload_size = 8\n");
    let mut publisher = V4Client::connect(b.port(), "pub").await;
    publisher
        .client
        .publish("l/1", QoS::AtLeastOnce, true, "one")
        .await
        .expect("publish");
    publisher
        .client
        .publish("l/2", QoS::AtLeastOnce, true, "two")
        .await
        .expect("publish");
    publisher
        .client
        .publish("l/1", QoS::AtLeastOnce, true, "uno")
        .await
        .expect("publish");
    publisher
        .client
        .publish("l/1", QoS::AtLeastOnce, true, "far too long")
        .await
        .expect("publish");
    publisher.wait_acks(4).await;
    let mut sub = V4Client::connect(b.port(), "sub").await;
    sub.subscribe("l/#", QoS::AtLeastOnce).await;
    let p = sub.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("l/1", &b"uno"[..]),
        "full: new topic refused, replacement allowed, oversize ignored"
    );
    assert!(sub.recv_publish_within(QUIET).await.is_none());

    // Bytes (payload and topic): 3 + 10 fits in 20, another 13 does not, a replacement that
    // frees its old bytes does; the refused message is still forwarded, and counted.
    let b = retainer_broker("max_retained_bytes = 20\n");
    let mut live = V4Client::connect(b.port(), "live").await;
    live.subscribe("m/#", QoS::AtLeastOnce).await;
    let mut publisher = V4Client::connect(b.port(), "pub").await;
    for (topic, payload) in [
        ("m/1", "0123456789"),
        ("m/2", "0123456789"),
        ("m/1", "tiny"),
    ] {
        publisher
            .client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .expect("publish");
        assert_eq!(live.recv_publish().await.payload, payload.as_bytes());
    }
    publisher.wait_acks(3).await;
    let mut sub = V4Client::connect(b.port(), "sub2").await;
    sub.subscribe("m/#", QoS::AtLeastOnce).await;
    let p = sub.recv_publish().await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("m/1", &b"tiny"[..]));
    assert!(
        sub.recv_publish_within(QUIET).await.is_none(),
        "m/2 over the bytes"
    );
    let info = b.ctl_ok(&["retainer", "info"]);
    assert!(info.contains("not stored for a limit: 1"), "{info}");
    assert!(info.contains("bytes (payloads and topics): 7"), "{info}");
    assert!(b.log().contains("max_retained_bytes reached"));

    // v5 Message Expiry Interval.
    let b = retainer_broker("");
    let mut w = Wire::connected(b.port(), 5, "exp").await;
    let mut body = mqtt_string("e/1");
    body.extend([0x05, 0x02, 0x00, 0x00, 0x00, 0x01, b'x']); // properties: expiry 1 s; payload
    w.send(&packet(0x31, &body)).await; // QoS 0, RETAIN
    wait_until("stored", || {
        b.ctl_ok(&["retainer", "topics"]).contains("1 retained")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut sub = V4Client::connect(b.port(), "sub").await;
    sub.subscribe("e/#", QoS::AtLeastOnce).await;
    assert!(sub.recv_publish_within(QUIET).await.is_none(), "expired");
}

/// Acceptance: with disc storage a retained message survives a broker restart and a reload,
/// and switching a running retainer from ram to disc keeps working.
#[tokio::test]
async fn disc_storage_survives_restart_and_reload() {
    let mut b = Broker::start();
    let db = b.dir.path().join("retained.redb");
    let disc = format!(
        "storage = \"disc\"\npath = {:?}\n",
        db.display().to_string()
    );
    b.plugin_config("retainer", "storage = \"ram\"\n");
    b.ctl_ok(&["plugins", "load", "retainer"]);
    let publisher = V4Client::connect(b.port(), "pub").await;
    publisher
        .client
        .publish("ram/1", QoS::AtLeastOnce, true, "volatile")
        .await
        .expect("publish");
    wait_until("stored", || {
        b.ctl_ok(&["retainer", "topics"]).contains("1 retained")
    })
    .await;
    // ram → disc: the messages held in RAM move into the database.
    b.plugin_config("retainer", &disc);
    b.ctl_ok(&["plugins", "reload", "retainer"]);
    assert!(b.ctl_ok(&["retainer", "info"]).contains("storage: disc"));
    publisher
        .client
        .publish("sensors/1/temp", QoS::AtLeastOnce, true, "21")
        .await
        .expect("publish");
    wait_until("stored on disc", || {
        b.ctl_ok(&["retainer", "topics"]).contains("sensors/1/temp")
    })
    .await;
    b.ctl_ok(&["plugins", "reload", "retainer"]);
    assert!(
        b.ctl_ok(&["retainer", "topics"]).contains("sensors/1/temp"),
        "survives a reload"
    );
    drop(publisher);
    b.restart();
    let mut sub = V4Client::connect(b.port(), "after-restart").await;
    sub.subscribe("sensors/+/temp", QoS::AtLeastOnce).await;
    let p = sub.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.retain),
        ("sensors/1/temp", &b"21"[..], true)
    );
}

/// Acceptance: `plugins reload retainer` 50 times while a client publishes a retained QoS 1
/// message every 3 ms — every PUBACKed retained message is stored, in RAM (the set survives the
/// reloads) and on disc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_the_retainer_under_load_loses_nothing() {
    for storage in ["ram", "disc"] {
        let b = Broker::start();
        let db = b.dir.path().join("retained.redb");
        b.plugin_config(
            "retainer",
            &format!(
                "storage = {storage:?}\npath = {:?}\n",
                db.display().to_string()
            ),
        );
        b.ctl_ok(&["plugins", "load", "retainer"]);
        let mut publisher = V4Client::connect(b.port(), "steady").await;
        let client = publisher.client.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let sender = tokio::spawn(async move {
            let mut sent = 0u32;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                client
                    .publish(format!("load/{sent}"), QoS::AtLeastOnce, true, "kept")
                    .await
                    .expect("publish");
                sent += 1;
                tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            }
            sent
        });
        // Count PUBACKs while the reloads run.
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = acked.clone();
        let acks = tokio::spawn(async move {
            while let Some(Ok(event)) = publisher.next_event().await {
                if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = event {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        tokio::task::block_in_place(|| {
            for _ in 0..50 {
                b.ctl_ok(&["plugins", "reload", "retainer"]);
            }
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = sender.await.expect("sender");
        assert!(
            sent > 50,
            "{storage}: the publisher kept publishing ({sent})"
        );
        wait_until("every publish acknowledged", || {
            acked.load(std::sync::atomic::Ordering::Relaxed) == sent
        })
        .await;
        acks.abort();
        let acked = acked.load(std::sync::atomic::Ordering::Relaxed);
        let info: serde_json::Value =
            serde_json::from_str(&b.ctl_ok(&["retainer", "info", "--json"])).expect("json");
        assert_eq!(
            info["messages"].as_u64(),
            Some(u64::from(acked)),
            "{storage}: every PUBACKed retained message stored ({info})"
        );
        assert!(b.log().matches("plugin reloaded with handoff").count() >= 50);
    }
}

/// Acceptance with Debian's clients: `mosquitto_pub -r` then `mosquitto_sub` receives the
/// message with the retain flag.
#[test]
fn mosquitto_retained_round_trip() {
    assert!(
        tool_available("mosquitto_pub"),
        "mosquitto-clients not installed: run tests/run.sh"
    );
    let b = retainer_broker("");
    let port = b.port().to_string();
    let ok = std::process::Command::new("mosquitto_pub")
        .args(["-p", &port, "-r", "-t", "sensors/1/temp", "-m", "21"])
        .status()
        .expect("mosquitto_pub");
    assert!(ok.success());
    let out = std::process::Command::new("mosquitto_sub")
        .args([
            "-p",
            &port,
            "-t",
            "sensors/+/temp",
            "-C",
            "1",
            "-W",
            "10",
            "-F",
            "%t %r %p",
        ])
        .output()
        .expect("mosquitto_sub");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "sensors/1/temp 1 21"
    );
}

/// Hook calls a loaded plugin has received (`brokerctl plugins list --json`).
fn hook_calls(b: &Broker, plugin: &str) -> u64 {
    let list: serde_json::Value =
        serde_json::from_str(&b.ctl_ok(&["--json", "plugins", "list"])).expect("json");
    list["plugins"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == plugin))
        .and_then(|p| p["stats"]["calls"].as_u64())
        .unwrap_or_else(|| panic!("no stats for {plugin}: {list}"))
}

/// Ordinary traffic skips the retainer (retained messages only) and rewrite (only topics its
/// publish rules select): their publish filters keep the hook off the message path.
#[tokio::test]
async fn publish_filters_keep_ordinary_traffic_off_retainer_and_rewrite() {
    let b = Broker::start();
    b.plugin_config("rewrite", REWRITE);
    b.ctl_ok(&["plugins", "load", "rewrite"]);
    b.ctl_ok(&["plugins", "load", "retainer"]);
    let mut c = V4Client::connect(b.port(), "filtered").await;
    c.subscribe("#", QoS::AtLeastOnce).await;
    let (rewrite0, retainer0) = (hook_calls(&b, "rewrite"), hook_calls(&b, "retainer"));
    for i in 0..5 {
        c.client
            .publish(format!("plain/{i}"), QoS::AtLeastOnce, false, "p")
            .await
            .expect("publish");
        c.recv_publish().await;
    }
    assert_eq!(
        hook_calls(&b, "rewrite"),
        rewrite0,
        "no rule selects plain/…"
    );
    assert_eq!(hook_calls(&b, "retainer"), retainer0, "not retained");
    c.client
        .publish("x/y/1", QoS::AtLeastOnce, false, "r")
        .await
        .expect("publish");
    assert_eq!(&c.recv_publish().await.topic, "z/y/1", "rewritten");
    assert_eq!(hook_calls(&b, "rewrite"), rewrite0 + 1);
    c.client
        .publish("plain/kept", QoS::AtLeastOnce, true, "k")
        .await
        .expect("publish");
    c.recv_publish().await;
    assert_eq!(
        hook_calls(&b, "retainer"),
        retainer0 + 1,
        "retained → stored"
    );
    assert_eq!(hook_calls(&b, "rewrite"), rewrite0 + 1);
}

/// The retained copy is the message as it left the whole publish chain: an editing plugin
/// before the retainer's priority (930) and one after it both reach the stored copy.
#[tokio::test]
async fn retained_copy_is_what_subscribers_get_whatever_the_priorities() {
    let b = Broker::start();
    b.ctl_ok(&["plugins", "load", "retainer"]);
    for (priority, payload) in [(990, "before"), (100, "after")] {
        // probe rewrites probe/upper/<x> to probe/uppered/<x> with the payload upper-cased.
        b.plugin_config("probe", &format!("priority = {priority}\n"));
        if priority == 990 {
            b.ctl_ok(&["plugins", "load", "probe"]);
        } else {
            b.ctl_ok(&["plugins", "reload", "probe"]);
        }
        let (sent, edited) = (
            format!("probe/upper/{priority}"),
            format!("probe/uppered/{priority}"),
        );
        let mut live = V4Client::connect(b.port(), "live").await;
        live.subscribe(&format!("probe/+/{priority}"), QoS::AtLeastOnce)
            .await;
        let publisher = V4Client::connect(b.port(), "pub").await;
        publisher
            .client
            .publish(sent.as_str(), QoS::AtLeastOnce, true, payload)
            .await
            .expect("publish");
        let got = live.recv_publish().await;
        assert_eq!(
            (got.topic.as_str(), &got.payload[..]),
            (edited.as_str(), payload.to_ascii_uppercase().as_bytes())
        );
        let mut late = V4Client::connect(b.port(), "late").await;
        late.subscribe(&format!("probe/+/{priority}"), QoS::AtLeastOnce)
            .await;
        let kept = late.recv_publish().await;
        assert_eq!(
            (kept.topic.as_str(), &kept.payload[..], kept.retain),
            (
                edited.as_str(),
                payload.to_ascii_uppercase().as_bytes(),
                true
            ),
            "probe at priority {priority}: the retained copy is the edited message"
        );
        assert!(
            late.recv_publish_within(Duration::from_millis(200))
                .await
                .is_none(),
            "no unedited copy was kept"
        );
        late.disconnect().await;
        live.disconnect().await;
        publisher.disconnect().await;
    }
}

/// The shipped etc/broker.toml (moved to free ports) starts with the plugins it enables
/// loaded, and serves MQTT: what the README's run command gives an operator.
#[tokio::test]
async fn the_shipped_config_starts_with_its_plugins() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = shipped_config(dir.path(), &bin_dir());
    let b = Broker::start_config(dir, &config);
    for name in ["retainer", "presence", "dashboard"] {
        let line = b.plugin_line(name);
        assert!(line.contains("state=active"), "{line}");
        // They use their runtimes lightly and ask for one worker (`RUNTIME_THREADS`), not
        // the SDK's default two: an idle broker holds no threads it does not use.
        let threads = plugin_threads(b.pid(), name);
        assert_eq!(threads.len(), 1, "{name}: {threads:?}");
    }
    let mut sub = V4Client::connect(b.port(), "sub").await;
    sub.subscribe("shipped/#", QoS::AtLeastOnce).await;
    let publisher = V4Client::connect(b.port(), "pub").await;
    publisher
        .client
        .publish("shipped/t", QoS::AtLeastOnce, true, "hello")
        .await
        .expect("publish");
    assert_eq!(&sub.recv_publish().await.payload[..], b"hello");
    // The retainer it loaded keeps the message for a late subscriber.
    let mut late = V4Client::connect(b.port(), "late").await;
    late.subscribe("shipped/#", QoS::AtLeastOnce).await;
    assert!(late.recv_publish().await.retain);
}

/// The names of the threads of process `pid` that belong to plugin `name`'s runtime
/// (`plg-<name>-<n>`).
fn plugin_threads(pid: u32, name: &str) -> Vec<String> {
    let prefix = format!("plg-{name}-");
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/<pid>/task");
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|comm| comm.trim_end().to_owned())
        .filter(|comm| comm.starts_with(&prefix))
        .collect()
}
