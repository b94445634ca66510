//! The cluster plugin: several real broker processes joined through one real `nats-server`
//! with JetStream (`broker_tests::nats`), each test on its own free ports.

use std::collections::HashMap;
use std::time::Duration;

use broker_tests::rumqttc::QoS;
use broker_tests::*;

/// How long a test listens for deliveries that must not come.
const QUIET: Duration = Duration::from_millis(700);

/// A broker node `name` with the retainer and the cluster plugin (1 s heartbeats) on `nats`.
fn node(nats: &Nats, name: &str) -> Broker {
    let dir = tempfile::tempdir().expect("temp dir");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    std::fs::write(
        plugins.join("cluster.toml"),
        format!("servers = [{:?}]\nheartbeat_secs = 1\n", nats.url()),
    )
    .expect("cluster.toml");
    let config = format!(
        "node_name = {name:?}\ndata_dir = {:?}\nplugin_dir = {:?}\n\n[[listener]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n[sys]\ninterval_secs = 0\n\n[plugins]\nenabled = [\"retainer\", \"cluster\"]\n",
        dir.path().join("data").display().to_string(),
        bin_dir().display().to_string(),
    );
    Broker::start_config(dir, &config)
}

fn status(b: &Broker) -> String {
    b.ctl_ok(&["cluster", "status"])
}

/// Starts `names.len()` nodes and waits until each sees all of them in the membership bucket.
async fn cluster(nats: &Nats, names: &[&str]) -> Vec<Broker> {
    let nodes: Vec<Broker> = names.iter().map(|n| node(nats, n)).collect();
    let want = format!("nodes: {}", names.len());
    for b in &nodes {
        wait_until("every node to see the others", || {
            let s = status(b);
            s.contains("NATS: connected") && s.contains(&want)
        })
        .await;
    }
    nodes
}

/// Waits until node `b` holds `subjects` NATS subscriptions, confirmed by the server.
async fn interest(b: &Broker, subjects: usize) {
    let want = format!(", {subjects} NATS subjects");
    wait_until(&format!("{want} on the node"), || status(b).contains(&want)).await;
}

/// Every PUBLISH `c` receives until nothing more comes for [`QUIET`]: (topic, payload, QoS).
async fn drain(c: &mut V4Client) -> Vec<(String, String, QoS)> {
    let mut got = Vec::new();
    while let Some(p) = c.recv_publish_within(QUIET).await {
        got.push((
            p.topic.clone(),
            String::from_utf8_lossy(&p.payload).into_owned(),
            p.qos,
        ));
    }
    got
}

#[tokio::test]
async fn messages_cross_nodes_once_per_subscription_with_wildcards_and_qos() {
    let Some(nats) = Nats::start() else { return };
    let nodes = cluster(&nats, &["n1", "n2", "n3"]).await;
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut plus = V4Client::connect(n2.port(), "plus").await;
    plus.subscribe("a/+/c", QoS::AtLeastOnce).await;
    let mut hash = V4Client::connect(n2.port(), "hash").await;
    hash.subscribe("a/#", QoS::ExactlyOnce).await;
    let mut all = V4Client::connect(n3.port(), "all").await;
    all.subscribe("#", QoS::ExactlyOnce).await;
    let mut exact = V4Client::connect(n3.port(), "exact").await;
    exact.subscribe("a", QoS::AtMostOnce).await;
    let mut parent = V4Client::connect(n3.port(), "parent").await;
    parent.subscribe("a/#", QoS::AtLeastOnce).await;
    // n2: a/+/c (1 subject) and a/# (2: `a.>` and `a`); n3: # (1), a (1), a/# (2).
    interest(n2, 3).await;
    interest(n3, 4).await;

    let publisher = V4Client::connect(n1.port(), "pub").await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publisher
            .client
            .publish("a/b/c", qos, false, format!("abc{i}"))
            .await
            .expect("publish");
    }
    publisher
        .client
        .publish("a", QoS::AtLeastOnce, false, "a")
        .await
        .expect("publish");
    publisher
        .client
        .publish("x/y", QoS::AtLeastOnce, false, "xy")
        .await
        .expect("publish");

    let sorted = |mut v: Vec<(String, String, QoS)>| {
        v.sort_by(|a, b| a.1.cmp(&b.1));
        v
    };
    let m = |t: &str, p: &str, q: QoS| (t.to_string(), p.to_string(), q);
    use QoS::{AtLeastOnce as Q1, AtMostOnce as Q0, ExactlyOnce as Q2};
    assert_eq!(
        sorted(drain(&mut plus).await),
        [
            m("a/b/c", "abc0", Q0),
            m("a/b/c", "abc1", Q1),
            m("a/b/c", "abc2", Q1)
        ],
        "a/+/c on n2, granted QoS 1"
    );
    assert_eq!(
        sorted(drain(&mut hash).await),
        [
            m("a", "a", Q1),
            m("a/b/c", "abc0", Q0),
            m("a/b/c", "abc1", Q1),
            m("a/b/c", "abc2", Q2)
        ],
        "a/# on n2 (parent level included)"
    );
    assert_eq!(
        sorted(drain(&mut all).await),
        [
            m("a", "a", Q1),
            m("a/b/c", "abc0", Q0),
            m("a/b/c", "abc1", Q1),
            m("a/b/c", "abc2", Q2),
            m("x/y", "xy", Q1)
        ],
        "# on n3"
    );
    assert_eq!(
        sorted(drain(&mut exact).await),
        [m("a", "a", Q0)],
        "a on n3"
    );
    assert_eq!(
        sorted(drain(&mut parent).await),
        [
            m("a", "a", Q1),
            m("a/b/c", "abc0", Q0),
            m("a/b/c", "abc1", Q1),
            m("a/b/c", "abc2", Q1)
        ],
        "a/# on n3: `a` itself too"
    );
    let metrics = n1.ctl_ok(&["metrics"]);
    assert!(
        metrics.contains("broker_plugin_cluster_forwarded_out_total 5"),
        "five messages went to NATS from n1:\n{metrics}"
    );
}

#[tokio::test]
async fn no_local_holds_and_a_node_never_gets_its_own_messages_back() {
    let Some(nats) = Nats::start() else { return };
    let nodes = cluster(&nats, &["n1", "n2"]).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    // The same filter on both nodes: n2's interest would echo n1's messages back to n1 if the
    // link were not no_echo.
    let mut me = V5Client::connect(n1.port(), "me").await;
    let options = rumqttc::v5::mqttbytes::v5::Filter {
        path: "nl/#".into(),
        qos: rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        nolocal: true,
        preserve_retain: false,
        retain_forward_rule: rumqttc::v5::mqttbytes::v5::RetainForwardRule::OnEverySubscribe,
    };
    me.client
        .subscribe_many([options])
        .await
        .expect("subscribe");
    let mut local = V4Client::connect(n1.port(), "local").await;
    local.subscribe("nl/#", QoS::AtLeastOnce).await;
    let mut remote = V4Client::connect(n2.port(), "remote").await;
    remote.subscribe("nl/#", QoS::AtLeastOnce).await;
    interest(n1, 2).await;
    interest(n2, 2).await;
    me.client
        .publish(
            "nl/x",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "own",
        )
        .await
        .expect("publish");
    assert_eq!(
        drain(&mut remote).await.len(),
        1,
        "the other node gets it once"
    );
    assert_eq!(
        drain(&mut local).await.len(),
        1,
        "a local subscriber gets it once, not echoed"
    );
    let own = me
        .recv_packet_within(QUIET, |p| match p {
            V5Packet::Publish(p) => Some(p),
            _ => None,
        })
        .await;
    assert!(
        own.is_none(),
        "No Local: the publisher does not get its own message: {own:?}"
    );
    // A message from the other node reaches the no-local subscriber.
    let other = V4Client::connect(n2.port(), "other").await;
    other
        .client
        .publish("nl/y", QoS::AtLeastOnce, false, "theirs")
        .await
        .expect("publish");
    let p = me.recv_publish().await;
    assert_eq!(&p.payload[..], b"theirs");
}

#[tokio::test]
async fn a_shared_subscription_gets_each_message_once_across_nodes() {
    let Some(nats) = Nats::start() else { return };
    let nodes = cluster(&nats, &["n1", "n2", "n3"]).await;
    let mut members = Vec::new();
    for (i, b) in nodes.iter().enumerate() {
        let mut c = V4Client::connect(b.port(), &format!("member{}", i + 1)).await;
        c.subscribe("$share/g/jobs/+", QoS::AtLeastOnce).await;
        members.push(c);
    }
    for b in &nodes {
        interest(b, 1).await;
    }
    let mut publisher = V4Client::connect(nodes[0].port(), "pub").await;
    let client = publisher.client.clone();
    let send = |from: usize| {
        let client = client.clone();
        async move {
            for i in 0..20 {
                client
                    .publish("jobs/x", QoS::AtLeastOnce, false, format!("{from}-{i}"))
                    .await
                    .expect("publish");
            }
        }
    };
    // A member on the publisher's own node: it gets them all (local preference), once each.
    send(1).await;
    publisher.wait_acks(20).await;
    let mut per_member: Vec<Vec<String>> = Vec::new();
    for m in &mut members {
        per_member.push(drain(m).await.into_iter().map(|(_, p, _)| p).collect());
    }
    assert_eq!(
        per_member[0].len(),
        20,
        "all to the local member: {per_member:?}"
    );
    assert!(per_member[1].is_empty() && per_member[2].is_empty());

    // Without a member on the publisher's node, NATS's queue group picks one node each time.
    let first = members.remove(0);
    first.disconnect().await;
    interest(&nodes[0], 0).await;
    send(2).await;
    publisher.wait_acks(20).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut counts = Vec::new();
    for m in &mut members {
        let got = drain(m).await;
        counts.push(got.len());
        for (_, p, _) in got {
            *seen.entry(p).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 20, "every message delivered: {seen:?}");
    assert!(
        seen.values().all(|&n| n == 1),
        "each exactly once: {seen:?}"
    );
    assert!(
        counts.iter().all(|&n| n > 0),
        "both remote members took some: {counts:?}"
    );
}

#[tokio::test]
async fn a_client_id_connecting_on_another_node_takes_over() {
    let Some(nats) = Nats::start() else { return };
    let nodes = cluster(&nats, &["n1", "n2", "n3"]).await;
    // MQTT 5: DISCONNECT with 0x8E Session taken over.
    let mut first = Wire::connected(nodes[0].port(), 5, "device-7").await;
    let _second = V5Client::connect(nodes[2].port(), "device-7").await;
    let d = first
        .recv()
        .await
        .expect("the older connection gets DISCONNECT");
    assert_eq!((d.kind(), d.body[0]), (14, 0x8E), "session taken over");
    let mut rest = Vec::new();
    assert!(first.closed_within(WAIT, &mut rest).await);
    // MQTT 3.1.1: the connection is closed.
    let mut old = V4Client::connect(nodes[1].port(), "device-8").await;
    let _new = V4Client::connect(nodes[0].port(), "device-8").await;
    assert!(
        old.closed_within(WAIT).await,
        "the older connection is closed\nnode 2:\n{}\nnode 1:\n{}",
        nodes[1].log(),
        nodes[0].log()
    );
    let metrics = nodes[1].ctl_ok(&["metrics"]);
    assert!(
        metrics.contains("broker_plugin_cluster_taken_over_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_retained_message_reaches_a_later_subscriber_on_another_node() {
    let Some(nats) = Nats::start() else { return };
    let nodes = cluster(&nats, &["n1", "n2", "n3"]).await;
    let mut publisher = V4Client::connect(nodes[0].port(), "pub").await;
    publisher
        .client
        .publish("state/door", QoS::AtLeastOnce, true, "open")
        .await
        .expect("publish");
    publisher.wait_acks(1).await;
    // No subscriber anywhere when it was published: node 3 learns it from the bucket.
    let retained_on = |b: &Broker, payload: &str| {
        let text = b.ctl_ok(&["retained", "list"]);
        text.contains(&format!(
            "Retained(state/door, qos=1, bytes={},",
            payload.len()
        ))
    };
    wait_until("node 3 to hold the retained message", || {
        retained_on(&nodes[2], "open")
    })
    .await;
    let mut late = V4Client::connect(nodes[2].port(), "late").await;
    late.subscribe("state/#", QoS::AtLeastOnce).await;
    let p = late.recv_publish().await;
    assert!(p.retain, "delivered as retained");
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("state/door", &b"open"[..])
    );
    // Replaced on another node, then cleared: every node follows.
    let other = V4Client::connect(nodes[1].port(), "other").await;
    other
        .client
        .publish("state/door", QoS::AtLeastOnce, true, "closed")
        .await
        .expect("publish");
    wait_until("node 1 to hold the new value", || {
        retained_on(&nodes[0], "closed")
    })
    .await;
    other
        .client
        .publish("state/door", QoS::AtLeastOnce, true, "")
        .await
        .expect("publish");
    for b in &nodes {
        wait_until("the retained message to be cleared everywhere", || {
            !b.ctl_ok(&["retained", "list"]).contains("state/door")
        })
        .await;
    }
}

/// The sequence numbers in the payloads `c` receives until nothing comes for [`QUIET`].
async fn sequence(c: &mut V4Client) -> Vec<u64> {
    drain(c)
        .await
        .into_iter()
        .map(|(_, p, _)| p.parse().expect("a sequence number"))
        .collect()
}

#[tokio::test]
async fn nats_down_keeps_local_service_and_cross_node_delivery_resumes() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let nodes = cluster(&nats, &["n1", "n2"]).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let mut far = V4Client::connect(n2.port(), "far").await;
    far.subscribe("t/#", QoS::AtLeastOnce).await;
    let mut near = V4Client::connect(n1.port(), "near").await;
    near.subscribe("t/#", QoS::AtLeastOnce).await;
    interest(n2, 2).await;

    // Traffic all along: QoS 1, one message every 10 ms, numbered.
    let publisher = V4Client::connect(n1.port(), "pub").await;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let traffic = tokio::spawn({
        let (c, sent) = (publisher.client.clone(), sent.clone());
        async move {
            loop {
                let i = sent.load(std::sync::atomic::Ordering::SeqCst);
                c.publish("t/1", QoS::AtLeastOnce, false, i.to_string())
                    .await
                    .expect("publish");
                sent.store(i + 1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let first = far.recv_publish().await;
    assert_eq!(first.payload, "0", "crossing before the outage");

    nats.stop();
    for b in &nodes {
        wait_until("the nodes to notice", || {
            status(b).contains("NATS: disconnected")
        })
        .await;
    }
    let during = sent.load(std::sync::atomic::Ordering::SeqCst);
    wait_until("traffic during the outage", || {
        sent.load(std::sync::atomic::Ordering::SeqCst) > during + 50
    })
    .await;
    nats.start_again();
    for b in &nodes {
        wait_until("the nodes to reconnect", || {
            status(b).contains("NATS: connected")
        })
        .await;
    }
    let back = sent.load(std::sync::atomic::Ordering::SeqCst);
    // Cross-node delivery resumes (the client restored its subscriptions by itself).
    let mut resumed = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    while resumed.is_none() && tokio::time::Instant::now() < deadline {
        if let Some(p) = far.recv_publish_within(Duration::from_millis(200)).await {
            let i: u64 = String::from_utf8_lossy(&p.payload).parse().expect("number");
            if i >= back {
                resumed = Some(i);
            }
        }
    }
    let resumed = resumed.expect("cross-node delivery resumed without a broker restart");
    wait_until("some more traffic", || {
        sent.load(std::sync::atomic::Ordering::SeqCst) > resumed + 20
    })
    .await;
    traffic.abort();
    let total = sent.load(std::sync::atomic::Ordering::SeqCst);

    // The local subscriber got every message, in order, outage or not.
    let local = sequence(&mut near).await;
    assert_eq!(
        local,
        (0..total).collect::<Vec<_>>(),
        "local delivery never stopped"
    );
    // The remote one: in order, no duplicates, everything after the resumption.
    let remote = sequence(&mut far).await;
    assert!(remote.windows(2).all(|w| w[0] < w[1]), "{remote:?}");
    assert_eq!(
        remote,
        ((resumed + 1)..total).collect::<Vec<_>>(),
        "every message after the link came back"
    );
    let metrics = n1.ctl_ok(&["metrics"]);
    assert!(
        metrics.contains("broker_plugin_cluster_nats_reconnects_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_killed_node_leaves_the_membership_after_its_heartbeats_stop() {
    let Some(nats) = Nats::start() else { return };
    let mut nodes = cluster(&nats, &["n1", "n2"]).await;
    let text = status(&nodes[0]);
    assert!(
        text.contains("n1  clients") && text.contains("n2  clients"),
        "{text}"
    );
    let _c = V4Client::connect(nodes[1].port(), "somebody").await;
    wait_until("n2's heartbeat to count its client", || {
        status(&nodes[0]).contains("n2  clients 1")
    })
    .await;
    nodes[1].kill_hard();
    wait_until("n2 to leave after three missed heartbeats", || {
        status(&nodes[0]).contains("nodes: 1\n")
    })
    .await;
}

/// A client id that connected on one node while NATS was away takes over an older connection
/// on another node once the link is back: ownership is written again after the outage.
#[tokio::test]
async fn ownership_is_caught_up_after_a_nats_outage() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let nodes = cluster(&nats, &["n1", "n2"]).await;
    let mut older = Wire::connected(nodes[1].port(), 5, "roamer").await;
    assert!(older.ping().await);
    nats.stop();
    for b in &nodes {
        wait_until("the nodes to notice", || {
            status(b).contains("NATS: disconnected")
        })
        .await;
    }
    let _newer = V5Client::connect(nodes[0].port(), "roamer").await;
    assert!(
        older.ping().await,
        "no takeover while the nodes cannot talk"
    );
    nats.start_again();
    let Some(d) = older.recv().await else {
        panic!(
            "the older connection gets DISCONNECT once NATS is back\nnode 2:\n{}\nnode 1:\n{}",
            nodes[1].log(),
            nodes[0].log()
        );
    };
    assert_eq!((d.kind(), d.body[0]), (14, 0x8E), "session taken over");
}
