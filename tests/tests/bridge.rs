//! The bridge plugin against a real Mosquitto started by each test (`broker_tests::mosquitto`).

use std::time::Duration;

use broker_tests::rumqttc::QoS;
use broker_tests::*;

const QUIET: Duration = Duration::from_millis(500);

/// A broker whose bridge `link` reaches `m` with `topics` (and `extra` connection keys), once
/// the link is up.
async fn bridged(m: &Mosquitto, topics: &[&str], extra: &str) -> Broker {
    let b = Broker::start();
    let topics: Vec<String> = topics.iter().map(|t| format!("{t:?}")).collect();
    b.plugin_config(
        "bridge",
        &format!(
            "[[connection]]\nname = \"link\"\naddress = \"127.0.0.1:{}\"\ntopics = [{}]\nreconnect_min_ms = 100\nreconnect_max_ms = 500\n{extra}\n",
            m.port,
            topics.join(", ")
        ),
    );
    b.ctl_ok(&["plugins", "load", "bridge"]);
    wait_until("the bridge is connected", || {
        b.ctl_ok(&["bridge", "status"]).contains("state=connected")
    })
    .await;
    b
}

#[tokio::test]
async fn out_and_in_with_prefixes_qos_and_retain() {
    let Some(m) = Mosquitto::start() else {
        return;
    };
    let b = bridged(
        &m,
        &[
            "sensors/# out 1 edge/ cloud/",
            "cmd/# in 1 \"\" site1/",
            "low/# out 0",
        ],
        "",
    )
    .await;
    let mut remote = V4Client::connect(m.port, "remote").await;
    remote.subscribe("cloud/#", QoS::AtLeastOnce).await;
    remote.subscribe("low/#", QoS::AtLeastOnce).await;
    let mut local = V4Client::connect(b.port(), "local").await;
    local.subscribe("cmd/#", QoS::AtLeastOnce).await;
    // mosquitto_sub on the remote side, as an operator would watch: publish until it has
    // subscribed and printed the message.
    let mut sub = std::process::Command::new("mosquitto_sub")
        .args([
            "-p",
            &m.port.to_string(),
            "-t",
            "cloud/#",
            "-C",
            "1",
            "-W",
            "10",
            "-v",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    let deadline = std::time::Instant::now() + WAIT;
    while sub.try_wait().expect("mosquitto_sub").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "mosquitto_sub got nothing"
        );
        local
            .client
            .publish("edge/sensors/1", QoS::AtLeastOnce, false, "21.5")
            .await
            .expect("publish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // It has exited: collecting its output does not block.
    let out = sub.wait_with_output().expect("mosquitto_sub");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "cloud/sensors/1 21.5"
    );
    // The remote subscriber got every copy; take them all.
    while remote
        .recv_publish_within(Duration::from_millis(300))
        .await
        .is_some()
    {}
    local
        .client
        .publish("edge/sensors/1", QoS::AtLeastOnce, false, "21.5")
        .await
        .expect("publish");
    let p = remote.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.qos),
        ("cloud/sensors/1", &b"21.5"[..], QoS::AtLeastOnce)
    );

    // QoS downgraded by the rule; unprefixed topics stay home.
    local
        .client
        .publish("sensors/unprefixed", QoS::AtLeastOnce, false, "no")
        .await
        .expect("publish");
    local
        .client
        .publish("low/x", QoS::AtLeastOnce, false, "q0")
        .await
        .expect("publish");
    let p = remote.recv_publish().await;
    assert_eq!((p.topic.as_str(), p.qos), ("low/x", QoS::AtMostOnce));

    // In: remote site1/cmd/… arrives locally as cmd/….
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let p = loop {
        remote
            .client
            .publish("site1/cmd/reboot", QoS::AtLeastOnce, false, "now")
            .await
            .expect("publish");
        if let Some(p) = local.recv_publish_within(Duration::from_millis(300)).await {
            break p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the in rule brought nothing"
        );
    };
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("cmd/reboot", &b"now"[..])
    );

    // Retained: the remote broker keeps it for a later subscriber.
    local
        .client
        .publish("edge/sensors/r", QoS::AtLeastOnce, true, "kept")
        .await
        .expect("publish");
    // Once the live copy reached the remote side, the retained one is stored there.
    loop {
        let p = remote.recv_publish().await;
        if p.topic == "cloud/sensors/r" {
            break;
        }
    }
    let mut late = V4Client::connect(m.port, "late").await;
    late.subscribe("cloud/sensors/r", QoS::AtLeastOnce).await;
    let p = late.recv_publish().await;
    assert!(p.retain, "the retained flag crossed the bridge: {p:?}");
    assert_eq!(&p.payload[..], b"kept");
    let metrics = b.ctl_ok(&["metrics"]);
    assert!(
        metrics.contains("broker_plugin_bridge_link_connected 1")
            && metrics.contains("broker_plugin_bridge_link_forwarded_out_total")
            && metrics.contains("broker_plugin_bridge_link_forwarded_in_total"),
        "{metrics}"
    );
}

/// A persistent session `id` on the remote broker subscribed to `filter` at QoS 1, left
/// offline so that it collects what the bridge forwards; the options reconnect to it.
async fn remote_collector(
    m: &Mosquitto,
    id: &str,
    filter: &str,
) -> broker_tests::rumqttc::MqttOptions {
    let mut o = v4_options(m.port, id);
    o.set_clean_session(false);
    let (mut sub, _) = V4Client::connect_with(o.clone()).await;
    sub.subscribe(filter, QoS::AtLeastOnce).await;
    sub.disconnect().await;
    o
}

/// Reconnects the collector and expects payloads `0..total` (each once at least), naming the
/// first missing ones and the bridge's status if some never arrive.
async fn expect_all(collector: broker_tests::rumqttc::MqttOptions, total: u32, b: &Broker) {
    let (mut sub, _) = V4Client::connect_with(collector).await;
    let mut got = std::collections::BTreeSet::new();
    while got.len() < total as usize {
        let Some(p) = sub.recv_publish_within(WAIT).await else {
            let missing: Vec<u32> = (0..total).filter(|i| !got.contains(i)).take(20).collect();
            panic!(
                "only {} of {total} arrived; first missing {missing:?}; {}",
                got.len(),
                b.ctl_ok(&["bridge", "status"])
            );
        };
        got.insert(
            String::from_utf8_lossy(&p.payload)
                .parse::<u32>()
                .expect("n"),
        );
    }
}

/// Stops the remote broker and waits until the bridge has seen it.
async fn remote_down(m: &mut Mosquitto, b: &Broker) {
    tokio::task::block_in_place(|| m.stop());
    wait_until("the bridge sees the outage", || {
        b.ctl_ok(&["bridge", "status"])
            .contains("state=disconnected")
    })
    .await;
}

/// Starts the remote broker again and waits until the bridge has forwarded all it queued.
async fn remote_back(m: &mut Mosquitto, b: &Broker) {
    tokio::task::block_in_place(|| m.start_again());
    wait_until("everything forwarded", || {
        let s = b.ctl_ok(&["bridge", "status"]);
        s.contains("state=connected") && s.contains("queued=0 ")
    })
    .await;
}

/// The remote broker stops under QoS 1 traffic: what the bridge could not send waits and goes
/// out when it returns; a persistent subscriber there gets every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_outage_loses_nothing() {
    let Some(mut m) = Mosquitto::start() else {
        return;
    };
    let b = bridged(&m, &["q/# out 1"], "").await;
    let collector = remote_collector(&m, "remote-sub", "q/#").await;

    let publisher = V4Client::connect(b.port(), "pub").await;
    let total = 200u32;
    let client = publisher.client.clone();
    let sender = tokio::spawn(async move {
        for i in 0..total {
            client
                .publish(format!("q/{i}"), QoS::AtLeastOnce, false, i.to_string())
                .await
                .expect("publish");
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    remote_down(&mut m, &b).await;
    // Down for 10 s, while the publisher goes on (it finishes in about 3 s).
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        !b.ctl_ok(&["bridge", "status"]).contains("queued=0 "),
        "messages wait in the queue"
    );
    remote_back(&mut m, &b).await;
    sender.await.expect("sender");
    expect_all(collector, total, &b).await;
}

/// The remote broker stops in the middle of a burst, with the bridge's in-flight window and
/// its MQTT client's request channel full: on a clean-start link (the default) the remote side
/// forgets the bridge's session, and what was sent but not acknowledged must still be resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_in_flight_when_the_link_drops_are_resent() {
    let Some(mut m) = Mosquitto::start() else {
        return;
    };
    let b = bridged(&m, &["burst/# out 1"], "").await;
    let collector = remote_collector(&m, "burst-sub", "burst/#").await;

    let total = 3000u32;
    let publisher = V4Client::connect(b.port(), "burst-pub").await;
    for i in 0..total {
        publisher
            .client
            .publish(format!("burst/{i}"), QoS::AtLeastOnce, false, i.to_string())
            .await
            .expect("publish");
    }
    // Stopped while the bridge is still forwarding the burst.
    wait_until("the bridge is forwarding", || {
        let s = b.ctl_ok(&["bridge", "status"]);
        !s.contains("out=0,")
    })
    .await;
    remote_down(&mut m, &b).await;
    remote_back(&mut m, &b).await;
    expect_all(collector, total, &b).await;
}

/// Two brokers bridged both ways to the same remote broker: a message goes everywhere once
/// and never comes back.
#[tokio::test]
async fn two_brokers_bridged_both_ways_do_not_loop() {
    let Some(m) = Mosquitto::start() else {
        return;
    };
    let a = bridged(&m, &["loop/# both 1"], "").await;
    // Two brokers with the same node name: give one bridge its own client id.
    let b = bridged(
        &m,
        &["loop/# both 1"],
        "protocol = \"mqttv5\"\nclient_id = \"bridge-b\"",
    )
    .await;
    let mut on_a = V4Client::connect(a.port(), "on-a").await;
    on_a.subscribe("loop/#", QoS::AtLeastOnce).await;
    let mut on_b = V4Client::connect(b.port(), "on-b").await;
    on_b.subscribe("loop/#", QoS::AtLeastOnce).await;
    let mut on_m = V4Client::connect(m.port, "on-m").await;
    on_m.subscribe("loop/#", QoS::AtLeastOnce).await;
    // Both bridges have subscribed on the remote side once a remote message reaches both.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        on_m.client
            .publish("loop/probe", QoS::AtLeastOnce, false, "p")
            .await
            .expect("publish");
        let got_a = on_a.recv_publish_within(Duration::from_millis(300)).await;
        let got_b = on_b.recv_publish_within(Duration::from_millis(300)).await;
        if got_a.is_some() && got_b.is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bridges did not subscribe: {} {}",
            a.ctl_ok(&["bridge", "status"]),
            a.log()
        );
    }
    // Drain what the probes left.
    for c in [&mut on_a, &mut on_b, &mut on_m] {
        while c.recv_publish_within(QUIET).await.is_some() {}
    }

    on_a.client
        .publish("loop/1", QoS::AtLeastOnce, false, "once")
        .await
        .expect("publish");
    for (who, c) in [("A", &mut on_a), ("B", &mut on_b), ("Mosquitto", &mut on_m)] {
        let p = c.recv_publish().await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..]),
            ("loop/1", &b"once"[..]),
            "{who}"
        );
        assert!(
            c.recv_publish_within(QUIET).await.is_none(),
            "{who} got a second copy: a loop"
        );
    }
}

/// A remote subscriber `id` with a persistent session on `m` for `filter`, then Mosquitto
/// stopped and the link of `b` seen down: what `b` bridges now waits in its queue. Returns how
/// to connect that subscriber again.
async fn remote_down_with_a_subscriber(
    m: &mut Mosquitto,
    b: &Broker,
    id: &str,
    filter: &str,
) -> broker_tests::rumqttc::MqttOptions {
    let collector = remote_collector(m, id, filter).await;
    remote_down(m, b).await;
    collector
}

/// Mosquitto started again: waits until `b` has sent its queue, then reads `n` numbered
/// messages as the persistent subscriber and checks they are 0..n in order.
async fn all_arrive_in_order(
    m: &mut Mosquitto,
    b: &Broker,
    subscriber: broker_tests::rumqttc::MqttOptions,
    n: u32,
) {
    remote_back(m, b).await;
    let (mut sub, _) = V4Client::connect_with(subscriber).await;
    let mut got = Vec::new();
    while got.len() < n as usize {
        let p = sub.recv_publish().await;
        got.push(
            String::from_utf8_lossy(&p.payload)
                .parse::<u32>()
                .expect("n"),
        );
    }
    assert_eq!(got, (0..n).collect::<Vec<_>>(), "all of them, in order");
}

/// What waits for a remote broker that is down survives a reload of the plugin and a broker
/// restart (saved in the plugin's store at stop, taken up at start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_survives_a_reload_and_a_restart() {
    let Some(mut m) = Mosquitto::start() else {
        return;
    };
    let mut b = bridged(&m, &["keep/# out 1"], "").await;
    let subscriber = remote_down_with_a_subscriber(&mut m, &b, "keeper", "keep/#").await;
    let publisher = V4Client::connect(b.port(), "pub").await;
    for i in 0..30 {
        publisher
            .client
            .publish(format!("keep/{i}"), QoS::AtLeastOnce, false, i.to_string())
            .await
            .expect("publish");
    }
    wait_until("30 queued", || {
        b.ctl_ok(&["bridge", "status"]).contains("queued=30 ")
    })
    .await;
    drop(publisher);
    b.ctl_ok(&["plugins", "reload", "bridge"]);
    assert!(
        b.ctl_ok(&["bridge", "status"]).contains("queued=30 "),
        "after a reload"
    );
    tokio::task::block_in_place(|| b.restart());
    assert!(
        b.ctl_ok(&["bridge", "status"]).contains("queued=30 "),
        "after a restart"
    );
    all_arrive_in_order(&mut m, &b, subscriber, 30).await;
}

/// What waits for a remote broker that is down survives a crash of the local broker (SIGKILL):
/// it is journaled while it waits, not only saved at a graceful stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_survives_a_crash() {
    let Some(mut m) = Mosquitto::start() else {
        return;
    };
    let mut b = bridged(&m, &["crash/# out 1"], "").await;
    let subscriber = remote_down_with_a_subscriber(&mut m, &b, "survivor", "crash/#").await;
    let mut publisher = V4Client::connect(b.port(), "pub").await;
    for i in 0..40 {
        publisher
            .client
            .publish(format!("crash/{i}"), QoS::AtLeastOnce, false, i.to_string())
            .await
            .expect("publish");
    }
    publisher.wait_acks(40).await;
    wait_until("40 journaled", || {
        b.ctl_ok(&["bridge", "status"]).contains("40 journaled")
    })
    .await;
    drop(publisher);
    tokio::task::block_in_place(|| b.crash_and_restart());
    assert!(
        b.ctl_ok(&["bridge", "status"]).contains("queued=40 "),
        "after a crash: {}",
        b.ctl_ok(&["bridge", "status"])
    );
    all_arrive_in_order(&mut m, &b, subscriber, 40).await;
}
