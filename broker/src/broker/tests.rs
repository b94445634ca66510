//! The session rules that live in the registry, driven in process without a socket: takeover
//! of a client id ([MQTT-3.1.4-2], [MQTT-3.1.4-3]) and the delayed will against a new
//! connection and the session's end ([MQTT-3.1.3-9]). Time is tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;

use super::{Attached, Broker};
use crate::codec::{Properties, QoS, SubscriptionOptions};
use crate::config::Config;
use crate::message::Message;
use crate::router::{SubscriptionKey, TopicName};
use crate::session::{control_line, Control, ControlReceiver, KickReason};

fn broker() -> Arc<Broker> {
    let config = Config {
        data_dir: std::env::temp_dir().join("broker-unit-tests-unused"),
        ..Config::default()
    };
    Broker::new(config, std::env::temp_dir())
}

/// Attaches a connection for `id`; its control line's receiving end comes back with it.
async fn connect(b: &Arc<Broker>, id: &str, clean_start: bool) -> (Attached, ControlReceiver) {
    let (tx, rx) = control_line();
    let attached = b.attach(&Arc::from(id), clean_start, tx).await;
    (attached.expect("under the session limit"), rx)
}

/// A second connection for `id` while one is attached (its line `old`): the old one must be
/// told "taken over", and once it hands the session back the new one is attached.
async fn take_over(
    b: &Arc<Broker>,
    id: &'static str,
    clean_start: bool,
    old: ControlReceiver,
) -> (Attached, ControlReceiver) {
    let new = tokio::spawn({
        let b = b.clone();
        async move { connect(&b, id, clean_start).await }
    });
    let Control::Kick { reason, done } = old.recv().await else {
        panic!("a kick, not a shutdown");
    };
    assert_eq!(reason, KickReason::TakenOver);
    let _ = done.send(());
    new.await.expect("attach")
}

/// Whether `line` is told to shut down within a second.
async fn told_to_shut_down(line: &ControlReceiver) -> bool {
    let recv = tokio::time::timeout(Duration::from_secs(1), line.recv());
    matches!(recv.await, Ok(Control::Shutdown))
}

/// An offline session `id` subscribed to `filter` (`$share/…` allowed).
fn subscribed(
    b: &Arc<Broker>,
    id: &str,
    filter: &str,
    no_local: bool,
) -> Arc<crate::session::Session> {
    let s = b.new_session(Arc::from(id));
    b.register_restored(s.clone());
    let key = SubscriptionKey::parse(filter).expect("filter");
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local,
        ..SubscriptionOptions::default()
    };
    b.add_subscription(&s, key, options, None);
    s
}

/// An offline session subscribed to `filter`: where a published will lands.
fn watcher(b: &Arc<Broker>, filter: &str) -> Arc<crate::session::Session> {
    subscribed(b, "watcher", filter, false)
}

fn will(topic: &str) -> Message {
    let topic = TopicName::new(topic).expect("topic");
    let payload = bytes::Bytes::from_static(b"gone");
    Message::new(
        topic,
        payload,
        QoS::AtLeastOnce,
        false,
        Properties::default(),
        None,
    )
}

/// The connection as its task would end it: hands the control line back and goes offline.
fn disconnect(a: &Attached) {
    a.session.control.lock().take();
}

/// A watcher of `wills/#`, and client `dev` connected, then gone with its will on a `delay`.
async fn gone_with_a_will(
    b: &Arc<Broker>,
    delay: Duration,
) -> (Arc<crate::session::Session>, Attached) {
    let w = watcher(b, "wills/#");
    let (a, _rx) = connect(b, "dev", false).await;
    disconnect(&a);
    b.schedule_will(a.session.clone(), will("wills/dev"), a.generation, delay);
    (w, a)
}

/// [MQTT-3.1.4-2], [MQTT-3.1.4-3]: a second CONNECT with the same client id closes the first
/// connection (told "session taken over") and resumes its session unless it asks for a clean
/// start, which discards it.
#[tokio::test(start_paused = true)]
async fn mqtt_3_1_4_2_takeover_closes_the_old_connection_and_resumes_or_discards() {
    let b = broker();
    let (first, first_rx) = connect(&b, "dev", false).await;
    assert!(!first.session_present);

    let (second, second_rx) = take_over(&b, "dev", false, first_rx).await;
    assert!(second.session_present, "clean start 0: the session goes on");
    assert!(Arc::ptr_eq(&first.session, &second.session));
    assert!(second.generation > first.generation);
    assert!(!second.discarded);

    let (third, _rx) = take_over(&b, "dev", true, second_rx).await;
    assert!(!third.session_present, "clean start 1: a new session");
    assert!(third.discarded);
    assert!(!Arc::ptr_eq(&second.session, &third.session));
    assert_eq!(b.session_count(), 1);
}

/// A connection that does not hand its session back is taken over anyway, after the takeover
/// timeout: a stuck connection cannot lock its client id out.
#[tokio::test(start_paused = true)]
async fn takeover_does_not_wait_for_ever_on_a_stuck_connection() {
    let b = broker();
    let (first, _first_rx) = connect(&b, "stuck", false).await;
    let (second, _rx) = connect(&b, "stuck", false).await;
    assert!(second.session_present);
    assert!(Arc::ptr_eq(&first.session, &second.session));
}

/// [MQTT-3.1.3-9]: a delayed will is published when its delay passes, not before.
#[tokio::test(start_paused = true)]
async fn shutdown_reaches_every_attached_connection_and_one_attaching_after_it() {
    let b = broker();
    let (_a, first) = connect(&b, "a", true).await;
    let (_b, second) = connect(&b, "b", false).await;
    b.begin_shutdown();
    assert!(told_to_shut_down(&first).await && told_to_shut_down(&second).await);
    let (_late, late) = connect(&b, "late", true).await;
    assert!(
        told_to_shut_down(&late).await,
        "attached after begin_shutdown"
    );
}

#[tokio::test(start_paused = true)]
async fn mqtt_3_1_3_9_a_delayed_will_is_published_after_its_delay() {
    let b = broker();
    let (w, a) = gone_with_a_will(&b, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(w.queued_len(), 0, "not before the delay");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.queued_len(), 1, "after it");
    assert!(a
        .session
        .parked
        .lock()
        .as_ref()
        .is_none_or(|p| p.pending_will.is_none()));
}

/// [MQTT-3.1.3-9]: a new connection to the session before the delay cancels the will.
#[tokio::test(start_paused = true)]
async fn mqtt_3_1_3_9_a_new_connection_cancels_the_delayed_will() {
    let b = broker();
    let (w, _gone) = gone_with_a_will(&b, Duration::from_secs(5)).await;
    let (again, _rx) = connect(&b, "dev", false).await;
    assert!(again.session_present);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(w.queued_len(), 0, "the will was cancelled");
}

/// [MQTT-3.1.2-8]: the connection that left a delayed will can hand its session back just
/// after a newer connection resumed it (the two run on different worker threads): the will is
/// then cancelled, never published late.
#[tokio::test(start_paused = true)]
async fn mqtt_3_1_2_8_a_will_scheduled_after_the_session_was_resumed_is_cancelled() {
    let b = broker();
    let w = watcher(&b, "wills/#");
    let (gone, _rx) = connect(&b, "dev", false).await;
    disconnect(&gone);
    let (again, _rx2) = connect(&b, "dev", false).await;
    assert!(again.session_present);
    b.schedule_will(
        gone.session.clone(),
        will("wills/dev"),
        gone.generation,
        Duration::from_secs(5),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(w.queued_len(), 0, "the will was cancelled");
}

/// A will scheduled on a session a clean start already discarded is published at once: that
/// session has ended (section 3.1.3.2).
#[tokio::test(start_paused = true)]
async fn a_will_scheduled_on_a_discarded_session_is_published_at_once() {
    let b = broker();
    let w = watcher(&b, "wills/#");
    let (gone, _rx) = connect(&b, "dev", false).await;
    disconnect(&gone);
    let (fresh, _rx2) = connect(&b, "dev", true).await;
    assert!(fresh.discarded);
    b.schedule_will(
        gone.session.clone(),
        will("wills/dev"),
        gone.generation,
        Duration::from_secs(3600),
    );
    tokio::task::yield_now().await;
    assert_eq!(w.queued_len(), 1, "published when scheduled");
}

/// [MQTT-3.1.3-9]: a session that ends before the will delay publishes the will at its end.
#[tokio::test(start_paused = true)]
async fn mqtt_3_1_3_9_the_session_end_publishes_a_will_still_waiting() {
    let b = broker();
    let (w, a) = gone_with_a_will(&b, Duration::from_secs(3600)).await;
    b.schedule_expiry(a.session.clone(), a.generation, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(w.queued_len(), 1, "published when the session ended");
    assert!(b.session("dev").is_none(), "the session ended");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(w.queued_len(), 1, "and only once");
}

/// A message from another node (host service `deliver_remote`) goes only where that node's
/// cluster link says: the plain subscriptions, and the share groups named (one member each,
/// only if the group's filter matches); No Local holds for the remote publisher.
#[tokio::test]
async fn a_remote_message_goes_to_plain_subscriptions_and_to_the_groups_named() {
    let b = broker();
    let plain = subscribed(&b, "plain", "r/#", false);
    let own = subscribed(&b, "publisher", "r/#", true);
    let members = [
        subscribed(&b, "m1", "$share/g/r/+", false),
        subscribed(&b, "m2", "$share/g/r/+", false),
    ];
    let remote = || {
        let mut m = will("r/1");
        m.publisher = Some(Arc::from("publisher"));
        m
    };
    let shared = |s: &str| SubscriptionKey::parse(s).expect("shared");
    let in_group = || members.iter().map(|m| m.queued_len()).sum::<usize>();

    assert_eq!(b.publish_remote(remote(), true, &[]), 1);
    assert_eq!(
        (plain.queued_len(), own.queued_len(), in_group()),
        (1, 0, 0)
    );

    assert_eq!(
        b.publish_remote(remote(), false, &[shared("$share/g/r/+")]),
        1
    );
    assert_eq!(
        (plain.queued_len(), in_group()),
        (1, 1),
        "one member, no plain"
    );

    let elsewhere = [shared("$share/g/x/+"), shared("$share/other/r/+")];
    assert_eq!(b.publish_remote(remote(), false, &elsewhere), 0);
    assert_eq!(
        (plain.queued_len(), in_group()),
        (1, 1),
        "groups not matching: none"
    );

    assert_eq!(
        b.route(Arc::new(will("r/1"))),
        3,
        "a local message: plain, own, one member"
    );
}
