//! The plugin host through the real broker, the real loader and real `.so` files (the fixture
//! plugins `probe` and `blocker`, built by `cargo build --workspace`), driven with `brokerctl`.

use std::path::Path;
use std::time::{Duration, Instant};

use broker_tests::rumqttc::QoS;
use broker_tests::*;

const QUIET: Duration = Duration::from_millis(300);

fn plugin_state(b: &Broker, name: &str) -> String {
    let list = b.ctl_ok(&["plugins", "list"]);
    list.lines()
        .find(|l| l.starts_with(&format!("Plugin({name},")))
        .and_then(|l| l.split("state=").nth(1))
        .map(|s| s.split([',', ')']).next().unwrap_or("").to_owned())
        .unwrap_or_else(|| panic!("{name} not listed:\n{list}"))
}

#[tokio::test]
async fn load_list_unload_with_emq_style_lines() {
    let b = Broker::start();
    assert!(b
        .ctl_ok(&["plugins", "list"])
        .contains("Plugin(probe, version=-, api=-, state=not loaded)"));
    assert_eq!(
        b.ctl_ok(&["plugins", "load", "probe"]).trim(),
        "Plugin probe loaded successfully."
    );
    let again = b.ctl(&["plugins", "load", "probe"]);
    assert_eq!(
        (again.code, again.stderr.trim()),
        (1, "plugin probe is already loaded")
    );
    let list = b.ctl_ok(&["plugins", "list"]);
    assert!(
        list.contains("Plugin(probe, version=1.0.0, api=3, state=active"),
        "{list}"
    );
    assert!(list.contains("message.publish@0"), "{list}");
    assert_eq!(
        b.ctl_ok(&["plugins", "unload", "probe"]).trim(),
        "Plugin probe unloaded successfully."
    );
    let gone = b.ctl(&["plugins", "unload", "probe"]);
    assert_eq!(
        (gone.code, gone.stderr.trim()),
        (1, "plugin probe is not loaded")
    );
    let missing = b.ctl(&["plugins", "load", "nothere"]);
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.starts_with("plugin nothere not found: no "),
        "{missing:?}"
    );
    assert_eq!(missing.stderr.trim().lines().count(), 1);
    let json = b.ctl_ok(&["--json", "plugins", "list"]);
    assert!(
        json.trim_start().starts_with('{') && json.contains("\"stale_libraries\""),
        "{json}"
    );
}

#[tokio::test]
async fn hooks_act_on_real_traffic_and_stop_at_unload() {
    let b = Broker::start();
    b.plugin_config("probe", "report = true\n");
    b.ctl_ok(&["plugins", "load", "probe"]);
    let mut watcher = V4Client::connect(b.port(), "watcher").await;
    watcher.subscribe("probe/#", QoS::AtLeastOnce).await;
    // session.subscribed of the watcher itself, then client.connected of a new client.
    let p = watcher.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("probe/events/session.subscribed", &b"watcher"[..])
    );
    let other = V4Client::connect(b.port(), "other").await;
    let p = watcher.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("probe/events/client.connected", &b"other"[..])
    );
    // message.publish fold: topic and payload changed by the plugin.
    other
        .client
        .publish("probe/upper/x", QoS::AtLeastOnce, false, "shout")
        .await
        .expect("publish");
    let p = watcher.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("probe/uppered/x", &b"SHOUT"[..])
    );
    other.disconnect().await;
    let p = watcher.recv_publish().await;
    assert_eq!(p.topic, "probe/events/client.disconnected");

    b.ctl_ok(&["plugins", "unload", "probe"]);
    let other = V4Client::connect(b.port(), "other2").await;
    other
        .client
        .publish("probe/upper/y", QoS::AtLeastOnce, false, "quiet")
        .await
        .expect("publish");
    let p = watcher.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("probe/upper/y", &b"quiet"[..]),
        "no hook after unload"
    );
    assert!(
        watcher.recv_publish_within(QUIET).await.is_none(),
        "no connected event after unload"
    );
}

#[tokio::test]
async fn two_plugins_side_by_side_with_their_commands() {
    let b = Broker::start();
    b.plugin_config("probe", "tag = \"side\"\n");
    b.ctl_ok(&["plugins", "load", "probe"]);
    b.ctl_ok(&["plugins", "load", "blocker"]);
    let mut sub = V4Client::connect(b.port(), "sub").await;
    sub.subscribe("#", QoS::AtLeastOnce).await;
    let publisher = V4Client::connect(b.port(), "pub").await;
    publisher
        .client
        .publish("blocked/a", QoS::AtLeastOnce, false, "no")
        .await
        .expect("publish");
    publisher
        .client
        .publish("open/a", QoS::AtLeastOnce, false, "yes")
        .await
        .expect("publish");
    let p = sub.recv_publish().await;
    assert_eq!(
        p.topic, "open/a",
        "blocked/a was dropped by the blocker plugin"
    );
    assert_eq!(b.ctl_ok(&["blocker", "stats"]).trim(), "dropped 1");
    assert_eq!(b.ctl_ok(&["probe", "tag"]).trim(), "side");
    assert_eq!(b.ctl_ok(&["probe", "echo", "a", "b"]).trim(), "a b");
    let unknown = b.ctl(&["nosuch", "thing"]);
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.contains("unknown command \"nosuch\""),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn reload_applies_a_changed_config() {
    let b = Broker::start();
    b.plugin_config("probe", "tag = \"one\"\n");
    b.ctl_ok(&["plugins", "load", "probe"]);
    assert_eq!(b.ctl_ok(&["probe", "tag"]).trim(), "one");
    b.plugin_config("probe", "tag = \"two\"\n");
    assert_eq!(
        b.ctl_ok(&["plugins", "reload", "probe"]).trim(),
        "Plugin probe reloaded successfully."
    );
    assert_eq!(b.ctl_ok(&["probe", "tag"]).trim(), "two");
    // A broken config: reload fails with the toml error and the running instance stays.
    b.plugin_config("probe", "tag = \"three\"\nbogus = 1\n");
    let bad = b.ctl(&["plugins", "reload", "probe"]);
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.contains("plugin probe failed to start")
            && bad.stderr.contains("bogus")
            && bad.stderr.contains("line 2"),
        "{bad:?}"
    );
    assert_eq!(plugin_state(&b, "probe"), "active");
    assert_eq!(b.ctl_ok(&["probe", "tag"]).trim(), "two");
}

#[tokio::test]
async fn bad_config_fails_the_load_with_line_and_column() {
    let b = Broker::start();
    b.plugin_config("probe", "tag = 5\n");
    let out = b.ctl(&["plugins", "load", "probe"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("plugin probe failed to start") && out.stderr.contains("line 1"),
        "{out:?}"
    );
    assert_eq!(plugin_state(&b, "probe"), "not loaded");
}

#[tokio::test]
async fn panicking_hooks_fault_the_plugin_not_the_broker() {
    let b = Broker::start_with("[plugins]\nfault_threshold = 3\n");
    b.plugin_config(
        "probe",
        "panic_in = [\"message.publish\", \"client.connected\"]\n",
    );
    b.ctl_ok(&["plugins", "load", "probe"]);
    let mut sub = V4Client::connect(b.port(), "sub").await; // client.connected panics: 1
    sub.subscribe("boom/#", QoS::AtLeastOnce).await;
    let publisher = V4Client::connect(b.port(), "pub").await; // 2
    for i in 0..3 {
        publisher
            .client
            .publish(format!("boom/{i}"), QoS::AtLeastOnce, false, "x")
            .await
            .expect("publish");
        // The message is still delivered: a failing callback is skipped.
        assert_eq!(sub.recv_publish().await.topic, format!("boom/{i}"));
    }
    assert_eq!(plugin_state(&b, "probe"), "faulted");
    let list = b.ctl_ok(&["plugins", "list"]);
    assert!(
        list.contains("faulted: ") && list.contains("panicked in"),
        "{list}"
    );
    assert!(
        b.log().contains("plugin faulted"),
        "the broker logs why:\n{}",
        b.log()
    );
    // Reload gives it a fresh start.
    b.plugin_config("probe", "");
    b.ctl_ok(&["plugins", "reload", "probe"]);
    assert_eq!(plugin_state(&b, "probe"), "active");
}

#[tokio::test]
async fn panics_in_create_command_and_shutdown_are_contained() {
    let b = Broker::start();
    b.plugin_config("probe", "panic_in = [\"create\"]\n");
    let out = b.ctl(&["plugins", "load", "probe"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("panicked in create"), "{out:?}");

    b.plugin_config("probe", "panic_in = [\"command\", \"shutdown\"]\n");
    b.ctl_ok(&["plugins", "load", "probe"]);
    let cmd = b.ctl(&["probe", "tag"]);
    assert_eq!(cmd.code, 1);
    assert!(cmd.stderr.contains("panicked in command"), "{cmd:?}");
    b.ctl_ok(&["plugins", "unload", "probe"]);
    let c = V4Client::connect(b.port(), "still-alive").await;
    c.disconnect().await;
}

/// A caught panic is one structured log record tagged with the plugin and hook, with its
/// location; nothing raw reaches stderr (JSON logs stay JSON).
#[tokio::test]
async fn caught_panics_are_one_log_record_and_nothing_raw() {
    let b = Broker::start_with("[log]\nformat = \"json\"\n");
    // An async hook: the panic refuses the client (on_error = ignore, then auth.no_match).
    b.plugin_config(
        "probe",
        "auth = \"allow\"\npanic_in = [\"client.authenticate\"]\n",
    );
    b.ctl_ok(&["plugins", "load", "probe"]);
    let mut w = Wire::open(b.port()).await;
    w.send(&connect_packet(4, "x", true, 60)).await;
    assert_eq!(w.recv().await.expect("CONNACK").body, [0, 5]);
    // A synchronous hook and a command.
    b.plugin_config(
        "probe",
        "auth = \"allow\"\npanic_in = [\"message.publish\", \"command\"]\n",
    );
    b.ctl_ok(&["plugins", "reload", "probe"]);
    let c = V4Client::connect(b.port(), "p").await;
    c.client
        .publish("boom", QoS::AtMostOnce, false, "x")
        .await
        .expect("publish");
    assert_eq!(b.ctl(&["probe", "tag"]).code, 1);
    // The record is read back from the log file while the broker may still be writing it
    // (with a backtrace it is tens of kilobytes): wait until it is whole, and look only at
    // lines that are complete.
    let whole = |log: &str| {
        log.lines().any(|l| {
            l.contains("panicked in on_message_publish")
                && serde_json::from_str::<serde_json::Value>(l).is_ok()
        })
    };
    wait_until("the publish hook's panic logged", || whole(&b.log())).await;
    let log = b.log();
    let complete = log.rsplit_once('\n').map_or("", |(done, _)| done);
    for line in complete.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a JSON record: {line:?}"
        );
    }
    let record = log
        .lines()
        .find(|l| l.contains("panicked in on_message_publish"))
        .expect("the panic is logged");
    assert!(
        record.contains("\"plugin\":\"probe\"")
            && record.contains("\"hook\":\"message.publish\"")
            && record.contains("probe/src/lib.rs:"),
        "tagged with the plugin, hook and location: {record}"
    );
    assert!(log.contains("panicked in authenticate"), "{log}");
}

#[tokio::test]
async fn panicking_async_hook_follows_on_error() {
    let b = Broker::start();
    // probe declares on_error = ignore: a panic in authenticate asks the next plugin; with no
    // other auth plugin, auth.no_match (deny) decides.
    b.plugin_config(
        "probe",
        "auth = \"allow\"\npanic_in = [\"client.authenticate\"]\n",
    );
    b.ctl_ok(&["plugins", "load", "probe"]);
    let mut w = Wire::open(b.port()).await;
    w.send(&connect_packet(4, "x", true, 60)).await;
    assert_eq!(w.recv().await.expect("CONNACK").body, [0, 5]);
    let list = b.ctl_ok(&["plugins", "list"]);
    assert!(list.contains("panics=1"), "{list}");
}

#[tokio::test]
async fn authentication_chain_through_a_plugin() {
    let b = Broker::start();
    b.plugin_config("probe", "auth = \"password\"\n");
    b.ctl_ok(&["plugins", "load", "probe"]);
    let mut o = v4_options(b.port(), "good");
    o.set_credentials("u", "secret");
    let (ok, _) = V4Client::connect_with(o).await;
    ok.disconnect().await;
    let mut body = mqtt_string("MQTT");
    body.extend([4, 0xC2, 0, 60]);
    body.extend(mqtt_string("bad"));
    body.extend(mqtt_string("u"));
    body.extend(mqtt_string("wrong"));
    let mut w = Wire::open(b.port()).await;
    w.send(&packet(0x10, &body)).await;
    assert_eq!(
        w.recv().await.expect("CONNACK").body,
        [0, 4],
        "bad user name or password"
    );
    // Unload takes effect for the next CONNECT: allow_anonymous decides again.
    b.ctl_ok(&["plugins", "unload", "probe"]);
    let mut w = Wire::open(b.port()).await;
    w.send(&packet(0x10, &body)).await;
    assert_eq!(w.recv().await.expect("CONNACK").body, [0, 0]);
}

#[tokio::test]
async fn acl_denies_subscribe_and_publish() {
    let b = Broker::start();
    b.plugin_config("probe", "acl_deny_prefix = \"secret/\"\n");
    b.ctl_ok(&["plugins", "load", "probe"]);
    let mut sub = V4Client::connect(b.port(), "sub").await;
    let codes = sub.subscribe("secret/#", QoS::AtLeastOnce).await;
    assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Failure]);
    sub.subscribe("open/#", QoS::AtLeastOnce).await;
    let mut w = Wire::connected(b.port(), 5, "v5pub").await;
    let mut body = mqtt_string("secret/x");
    body.extend([0x00, 0x01, 0x00, b'x']);
    w.send(&packet(0x32, &body)).await;
    let ack = w.recv().await.expect("PUBACK");
    assert_eq!(ack.body[..3], [0, 1, 0x87], "v5 PUBACK not authorized");
    let mut body = mqtt_string("open/x");
    body.extend([0x00, 0x02, 0x00, b'y']);
    w.send(&packet(0x32, &body)).await;
    assert_eq!(w.recv().await.expect("PUBACK").kind(), 4);
    assert_eq!(sub.recv_publish().await.topic, "open/x");
}

#[tokio::test]
async fn loaded_set_survives_a_restart() {
    let mut b = Broker::start();
    b.ctl_ok(&["plugins", "load", "blocker"]);
    b.restart();
    assert_eq!(plugin_state(&b, "blocker"), "active");
    b.ctl_ok(&["plugins", "unload", "blocker"]);
    b.restart();
    assert_eq!(plugin_state(&b, "blocker"), "not loaded");
}

#[tokio::test]
async fn first_start_loads_the_enabled_set() {
    let b = Broker::start_with("[plugins]\nenabled = [\"blocker\"]\n");
    assert_eq!(plugin_state(&b, "blocker"), "active");
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} → {}: {e}", from.display(), to.display()));
}

#[tokio::test]
async fn files_that_are_not_plugins_get_one_clear_line() {
    let plugins = tempfile::tempdir().expect("tmp");
    std::fs::write(
        plugins.path().join("libjunk.so"),
        b"this is not an ELF file",
    )
    .expect("write");
    // A real shared library that is not a plugin.
    let libm = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
        "/usr/lib64/libm.so.6",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    if let Some(libm) = libm {
        copy(Path::new(libm), &plugins.path().join("libnoexport.so"));
    }
    copy(
        &bin_dir().join("libblocker.so"),
        &plugins.path().join("libimpostor.so"),
    );
    let b = Broker::start_in(tempfile::tempdir().expect("tmp"), plugins.path(), "");
    let junk = b.ctl(&["plugins", "load", "junk"]);
    assert_eq!(junk.code, 1);
    assert!(
        junk.stderr.contains("is not a loadable plugin library"),
        "{junk:?}"
    );
    assert_eq!(junk.stderr.trim().lines().count(), 1);
    if libm.is_some() {
        let no = b.ctl(&["plugins", "load", "noexport"]);
        assert_eq!(no.code, 1);
        assert!(
            no.stderr.contains("exports no broker plugin") && no.stderr.contains("export_plugin!"),
            "{no:?}"
        );
    }
    let imp = b.ctl(&["plugins", "load", "impostor"]);
    assert_eq!(imp.code, 1);
    assert!(
        imp.stderr.contains("declares plugin name \"blocker\""),
        "{imp:?}"
    );
    let bad_name = b.ctl(&["plugins", "load", "../etc"]);
    assert_eq!(bad_name.code, 1);
    assert!(
        bad_name.stderr.contains("invalid plugin name"),
        "{bad_name:?}"
    );
    // The broker kept serving through all of it.
    let c = V4Client::connect(b.port(), "fine").await;
    c.disconnect().await;
}

#[tokio::test]
async fn rebuilt_library_at_the_install_path_is_picked_up_by_reload() {
    // Simulate a rebuild: the install path first holds blocker, then probe renamed... the
    // plugin name must match, so instead swap between two copies of the same plugin with
    // different contents: the library file changes (a byte appended after the ELF image does
    // not change what it does, but changes its hash and so its cache path).
    let plugins = tempfile::tempdir().expect("tmp");
    let installed = plugins.path().join("libblocker.so");
    copy(&bin_dir().join("libblocker.so"), &installed);
    let b = Broker::start_in(tempfile::tempdir().expect("tmp"), plugins.path(), "");
    b.ctl_ok(&["plugins", "load", "blocker"]);
    let sha = |b: &Broker| {
        let json = b.ctl_ok(&["--json", "plugins", "list"]);
        json.split("\"sha256\":\"")
            .nth(1)
            .map(|s| s[..16].to_owned())
            .expect("sha256 in list")
    };
    let first = sha(&b);
    let mut bytes = std::fs::read(&installed).expect("read");
    bytes.extend_from_slice(b"rebuilt");
    let tmp = plugins.path().join("libblocker.so.new");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, &installed).expect("replace");
    b.ctl_ok(&["plugins", "reload", "blocker"]);
    assert_ne!(sha(&b), first, "the new library is in use");
    assert!(b
        .ctl_ok(&["plugins", "list"])
        .contains("stale libraries mapped: 1"));
}

#[tokio::test]
async fn unload_with_in_flight_auth_returns_within_the_drain_deadline() {
    let b = Broker::start_with("[plugins]\ndrain_timeout_ms = 2000\n");
    b.plugin_config("probe", "auth = \"allow\"\nauth_delay_ms = 1000\n");
    b.ctl_ok(&["plugins", "load", "probe"]);
    let mut pending = Vec::new();
    for i in 0..20 {
        let mut w = Wire::open(b.port()).await;
        w.send(&connect_packet(4, &format!("slow{i}"), true, 60))
            .await;
        pending.push(w);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    b.ctl_ok(&["plugins", "unload", "probe"]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "unload took {took:?}");
    for mut w in pending {
        // Each pending login completes: allowed by the plugin, or decided without it.
        let ack = w.recv().await.expect("CONNACK");
        assert_eq!(ack.kind(), 2);
    }
}

/// Acceptance: 100 clients publishing QoS 1 while a plugin is loaded, unloaded and reloaded
/// 20 times: nobody is disconnected and no QoS 1 message is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_churn_under_load_loses_nothing() {
    // The collector must be able to hold everything: this checks loss, not queue limits.
    let b = Broker::start_with("[limits]\nmax_queued_messages = 1000000\n");
    b.plugin_config("probe", "");
    let mut sub = V4Client::connect(b.port(), "collector").await;
    sub.subscribe("load/#", QoS::AtLeastOnce).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut publishers = Vec::new();
    for i in 0..100 {
        let port = b.port();
        let stop = stop.clone();
        publishers.push(tokio::spawn(async move {
            let mut c = V4Client::connect(port, &format!("p{i}")).await;
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.client
                    .publish(
                        format!("load/{i}"),
                        QoS::AtLeastOnce,
                        false,
                        sent.to_be_bytes().to_vec(),
                    )
                    .await
                    .expect("publish");
                c.wait_acks(1).await;
                sent += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(
                !c.closed_within(Duration::from_millis(1)).await,
                "publisher {i} was disconnected"
            );
            sent
        }));
    }
    let ctl = tokio::task::spawn_blocking({
        let config = b.dir.path().join("broker.toml");
        move || {
            for round in 0..20 {
                for action in ["load", "reload", "unload"] {
                    let out = std::process::Command::new(binary("brokerctl"))
                        .arg("--config")
                        .arg(&config)
                        .args(["plugins", action, "probe"])
                        .output()
                        .expect("brokerctl");
                    assert!(out.status.success(), "round {round} {action}: {out:?}");
                }
            }
        }
    });
    ctl.await.expect("plugin churn");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for p in publishers {
        total += p.await.expect("publisher");
    }
    let mut received = 0;
    while received < total {
        match sub.recv_publish_within(WAIT).await {
            Some(_) => received += 1,
            None => break,
        }
    }
    assert_eq!(received, total, "every acknowledged QoS 1 message arrived");
    assert!(
        total > 100,
        "publishers made progress during the churn ({total})"
    );
}

/// Replaces `from` with `to` in `file` under `dir`, insisting that it was there.
fn edit(dir: &Path, file: &str, from: &str, to: &str) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.contains(from), "{from:?} not in {file}");
    std::fs::write(&path, text.replacen(from, to, 1)).expect("write");
}

/// Plugins built against an incompatible plugin-api are refused with one line naming the fix,
/// and the broker keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abi_mismatches_are_refused_with_one_clear_line() {
    let plugins = tempfile::tempdir().expect("tmp");
    let variants: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "otherversion",
            build_blocker_variant(false, |api| {
                edit(api, "Cargo.toml", "version = \"0.1.2\"", "version = \"0.2.0\"");
            }),
            "plugin built against plugin-api 0.2.0, this broker uses plugin-api 0.1.2; rebuild the plugin against plugin-api 0.1.2",
        ),
        (
            "drifted",
            build_blocker_variant(false, |api| {
                edit(api, "src/abi.rs", "    /// v5 Retain Handling (0, 1, 2).\n    pub retain_handling: u8,", "    /// v5 Retain Handling (0, 1, 2).\n    pub retain_handling: u16,");
            }),
            "ABI mismatch: type layout differs from this broker's plugin-api (mismatched type in SubOptions.retain_handling: broker has u8, plugin has u16)",
        ),
        (
            "newerapi",
            build_blocker_variant(false, |api| {
                edit(api, "Cargo.toml", "version = \"0.1.2\"", "version = \"0.1.3\"");
                edit(api, "src/abi.rs", "pub const API_VERSION: u32 = 3;", "pub const API_VERSION: u32 = 4;");
            }),
            "plugin built for plugin API v4, this broker speaks v3",
        ),
        (
            // Claims an older release of the line, but its types are not a prefix of ours.
            "olderdrifted",
            build_blocker_variant(false, |api| {
                edit(api, "Cargo.toml", "version = \"0.1.2\"", "version = \"0.1.0\"");
                edit(api, "src/abi.rs", "    /// v5 Retain Handling (0, 1, 2).\n    pub retain_handling: u8,", "    /// v5 Retain Handling (0, 1, 2).\n    pub retain_handling: u16,");
            }),
            "ABI mismatch: type layout differs from this broker's plugin-api (mismatched type in SubOptions.retain_handling: broker has u8, plugin has u16)",
        ),
        (
            "abortive",
            build_blocker_variant(true, |_| {}),
            "plugin was built with panic = \"abort\"",
        ),
    ];
    for (name, bytes, _) in &variants {
        std::fs::write(plugins.path().join(format!("lib{name}.so")), bytes).expect("install");
    }
    let b = Broker::start_in(tempfile::tempdir().expect("tmp"), plugins.path(), "");
    for (name, _, expected) in &variants {
        let out = b.ctl(&["plugins", "load", name]);
        assert_eq!(out.code, 1, "{name}: {out:?}");
        assert!(
            out.stderr.contains(expected),
            "{name}: expected {expected:?} in {:?}",
            out.stderr
        );
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "{name}: one line: {:?}",
            out.stderr
        );
    }
    let c = V4Client::connect(b.port(), "unharmed").await;
    c.disconnect().await;
}

/// Acceptance: a plugin rebuilt with a new version (and new behaviour) at its install path is
/// picked up by `reload` without a broker restart, and `list` shows the new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilt_plugin_with_a_new_version_runs_after_reload() {
    let build = |version: &'static str, prefix: &'static str| {
        build_fixture_variant(
            false,
            |_| {},
            move |plugin| {
                edit(
                    plugin,
                    "Cargo.toml",
                    "version = \"1.0.0\"",
                    &format!("version = \"{version}\""),
                );
                edit(
                    plugin,
                    "src/lib.rs",
                    "starts_with(\"blocked/\")",
                    &format!("starts_with(\"{prefix}\")"),
                );
            },
        )
    };
    let v1 = build("1.1.0", "blocked/");
    let v2 = build("2.0.0", "barred/");
    let plugins = tempfile::tempdir().expect("tmp");
    let installed = plugins.path().join("libblocker.so");
    std::fs::write(&installed, &v1).expect("install v1");
    let b = Broker::start_in(tempfile::tempdir().expect("tmp"), plugins.path(), "");
    b.ctl_ok(&["plugins", "load", "blocker"]);
    let list = b.ctl_ok(&["plugins", "list"]);
    assert!(list.contains("Plugin(blocker, version=1.1.0"), "{list}");
    let mut sub = V4Client::connect(b.port(), "sub").await;
    sub.subscribe("#", QoS::AtLeastOnce).await;
    let publisher = V4Client::connect(b.port(), "pub").await;
    publisher
        .client
        .publish("barred/x", QoS::AtLeastOnce, false, "v1 lets it through")
        .await
        .expect("publish");
    assert_eq!(sub.recv_publish().await.topic, "barred/x");

    // "cargo build" of the new version replaces the file at the install path.
    let tmp = plugins.path().join(".libblocker.so.new");
    std::fs::write(&tmp, &v2).expect("write v2");
    std::fs::rename(&tmp, &installed).expect("install v2");
    assert_eq!(
        b.ctl_ok(&["plugins", "reload", "blocker"]).trim(),
        "Plugin blocker reloaded successfully."
    );
    assert!(b
        .ctl_ok(&["plugins", "list"])
        .contains("Plugin(blocker, version=2.0.0"));
    publisher
        .client
        .publish("barred/y", QoS::AtLeastOnce, false, "v2 drops it")
        .await
        .expect("publish");
    publisher
        .client
        .publish("blocked/z", QoS::AtLeastOnce, false, "v2 lets it through")
        .await
        .expect("publish");
    assert_eq!(
        sub.recv_publish().await.topic,
        "blocked/z",
        "the new code runs"
    );
}

#[tokio::test]
async fn acl_cache_holds_decisions_until_cleaned() {
    let b = Broker::start();
    b.plugin_config("probe", "acl_deny_prefix = \"secret/\"\n");
    b.ctl_ok(&["plugins", "load", "probe"]);
    let mut w = Wire::connected(b.port(), 5, "pub5").await;
    let publish = |id: u8| {
        let mut body = mqtt_string("secret/x");
        body.extend([0x00, id, 0x00, b'x']);
        packet(0x32, &body)
    };
    w.send(&publish(1)).await;
    assert_eq!(w.recv().await.expect("PUBACK").body[2], 0x87);
    // The plugin stops denying; the cached decision still applies …
    b.plugin_config("probe", "acl = \"allow\"\n");
    b.ctl_ok(&["plugins", "reload", "probe"]);
    w.send(&publish(2)).await;
    assert_eq!(w.recv().await.expect("PUBACK").body[2], 0x87, "cached deny");
    // … until the cache is cleaned.
    assert_eq!(
        b.ctl_ok(&["acl-cache", "clean", "pub5"]).trim(),
        "ACL cache cleaned for 1 client(s)."
    );
    w.send(&publish(3)).await;
    let ack = w.recv().await.expect("PUBACK");
    assert!(
        ack.body.len() == 2 || ack.body[2] < 0x80,
        "allowed after cleaning: {ack:?}"
    );
}

#[tokio::test]
async fn timed_out_authentication_follows_on_error_and_is_counted() {
    let b = Broker::start_with("[plugins]\nhook_timeout_ms = 200\n");
    b.plugin_config("probe", "auth = \"allow\"\nauth_delay_ms = 3000\n");
    b.ctl_ok(&["plugins", "load", "probe"]);
    let started = Instant::now();
    let mut w = Wire::open(b.port()).await;
    w.send(&connect_packet(4, "patient", true, 60)).await;
    // probe's on_error is ignore → next plugin → none → auth.no_match = deny.
    assert_eq!(w.recv().await.expect("CONNACK").body, [0, 5]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at the timeout, not the backend's pace"
    );
    let list = b.ctl_ok(&["plugins", "list"]);
    assert!(list.contains("timeouts=1"), "{list}");
}

/// Host services of the second API release: data and config directories, and unsubscribe.
#[tokio::test]
async fn data_directory_and_unsubscribe_for_plugins() {
    let b = Broker::start();
    b.ctl_ok(&["plugins", "load", "probe"]);
    let dir = b.ctl_ok(&["probe", "datadir"]);
    let dir = std::path::PathBuf::from(dir.trim());
    assert!(dir.is_dir(), "{}", dir.display());
    assert_eq!(dir, b.data_dir().join("plugins").join("probe"));
    let config = std::path::PathBuf::from(b.ctl_ok(&["probe", "configdir"]).trim());
    assert!(config.is_absolute(), "{}", config.display());
    b.plugin_config("probe", "tag = \"here\"\n");
    assert_eq!(
        std::fs::read_to_string(config.join("probe.toml")).expect("the probe's config file"),
        "tag = \"here\"\n"
    );
    let mut c = V4Client::connect(b.port(), "s").await;
    c.subscribe("a/#", QoS::AtLeastOnce).await;
    assert_eq!(
        b.ctl_ok(&["probe", "unsubscribe", "s", "a/#"]).trim(),
        "true"
    );
    assert_eq!(
        b.ctl_ok(&["probe", "unsubscribe", "s", "a/#"]).trim(),
        "false"
    );
    let subs = b.ctl_ok(&["subscriptions", "list", "--client", "s"]);
    assert!(subs.contains("0 subscription(s)"), "{subs}");
}

/// `edit_message`: every field of a message edited by a plugin reaches a real MQTT 5
/// subscriber; a plugin can also drop a message and disconnect its publisher.
#[tokio::test]
async fn every_message_field_is_editable() {
    use broker_tests::rumqttc::v5::mqttbytes::v5::PublishProperties;
    use broker_tests::rumqttc::v5::mqttbytes::QoS as V5QoS;
    let b = Broker::start();
    b.ctl_ok(&["plugins", "load", "probe"]);
    let mut sub = V5Client::connect(b.port(), "sub").await;
    sub.client
        .subscribe("probe/edited/#", V5QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let mut publisher = V5Client::connect(b.port(), "pub").await;
    let props = PublishProperties {
        user_properties: vec![
            ("secret".into(), "x".into()),
            ("site".into(), "south".into()),
            ("keep".into(), "me".into()),
        ],
        ..Default::default()
    };
    wait_until("subscribed", || {
        b.ctl_ok(&["subscriptions", "list", "--client", "sub"])
            .contains("probe/edited/#")
    })
    .await;
    publisher
        .client
        .publish_with_properties("probe/edit/a", V5QoS::AtLeastOnce, true, "hi", props)
        .await
        .expect("publish");
    let p = sub.recv_publish().await;
    assert_eq!(&p.topic[..], b"probe/edited/a");
    assert_eq!(&p.payload[..], b"hi!");
    assert_eq!(p.qos, V5QoS::AtMostOnce, "QoS lowered to 0");
    assert!(!p.retain, "RETAIN cleared");
    let got = p.properties.expect("properties");
    assert_eq!(
        got.user_properties,
        vec![
            ("keep".to_owned(), "me".to_owned()),
            ("by".to_owned(), "probe".to_owned()),
            ("site".to_owned(), "north".to_owned()),
        ]
    );
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.response_topic.as_deref(), Some("probe/replies"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"req-1"[..]));
    assert!(got
        .message_expiry_interval
        .is_some_and(|s| (58..=60).contains(&s)));

    // A plugin drops a message and disconnects its publisher.
    publisher
        .client
        .publish("probe/kick/x", V5QoS::AtLeastOnce, false, "bye")
        .await
        .expect("publish");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, publisher.next_event()).await {
            Ok(Some(Err(_))) | Ok(None) => break,
            Ok(Some(Ok(_))) => {}
            Err(_) => panic!("the publisher was not disconnected"),
        }
    }
    assert!(b.log().contains("connection closed by a plugin"));
    wait_until("the publisher is gone", || {
        !b.ctl_ok(&["clients", "list", "--connected"])
            .contains("Client(pub,")
    })
    .await;
}

/// `decide_subscribe`: a plugin grants a lower QoS, refuses one filter of a SUBSCRIBE with its
/// own reason code while the others proceed, and attaches a subscription identifier.
#[tokio::test]
async fn subscribe_decisions_lower_qos_refuse_and_tag() {
    let b = Broker::start();
    b.ctl_ok(&["plugins", "load", "probe"]);
    let mut w = Wire::connected(b.port(), 5, "decided").await;
    let mut body = vec![0, 7, 0];
    for (filter, qos) in [
        ("probe/firehose/#", 2u8),
        ("probe/quota/x", 1),
        ("plain/#", 1),
    ] {
        body.extend(mqtt_string(filter));
        body.push(qos);
    }
    w.send(&packet(0x82, &body)).await;
    let ack = w.recv().await.expect("SUBACK");
    assert_eq!(ack.body[3..], [0, 0x97, 1], "QoS 0 granted, 0x97, QoS 1");
    let mut v3 = Wire::connected(b.port(), 4, "v3").await;
    v3.send(&subscribe_packet(4, 1, "probe/quota/y", 1)).await;
    assert_eq!(
        v3.recv().await.expect("SUBACK").body[2],
        0x80,
        "MQTT 3: failure"
    );
    let subs = b.ctl_ok(&["subscriptions", "list", "--client", "decided"]);
    assert!(
        subs.contains("probe/firehose/#, qos=0") && !subs.contains("probe/quota"),
        "{subs}"
    );

    use broker_tests::rumqttc::v5::mqttbytes::QoS as V5QoS;
    let mut tagged = V5Client::connect(b.port(), "tagged").await;
    tagged
        .client
        .subscribe("probe/tagsub/#", V5QoS::AtMostOnce)
        .await
        .expect("subscribe");
    wait_until("subscribed", || {
        b.ctl_ok(&["subscriptions", "list", "--client", "tagged"])
            .contains("probe/tagsub/#")
    })
    .await;
    b.ctl_ok(&["publish", "probe/tagsub/1", "x"]);
    let p = tagged.recv_publish().await;
    assert_eq!(
        p.properties.expect("properties").subscription_identifiers,
        vec![42]
    );
}

/// A plugin built against API 1 — a snapshot of `plugin-api` 0.1.0 and of the blocker fixture
/// at that release, in `tests/fixtures/api-v1` — loads unchanged on this broker, whose `Host`
/// and `PluginInstance` vtables have grown since, and works: it drops what it drops, answers its
/// command, and the hooks it never heard of (edit operations, subscribe decisions) fall back to
/// what API 1 did.
#[tokio::test]
async fn a_plugin_built_against_api_1_loads_and_works_unchanged() {
    let v1 = workspace_root().join("tests/fixtures/api-v1");
    let replace = |from: std::path::PathBuf| {
        move |dir: &std::path::Path| {
            let src = dir.join("src");
            std::fs::remove_dir_all(&src).expect("remove src");
            copy_dir(&from, &src);
        }
    };
    let api_1 = replace(v1.join("plugin-api/src"));
    let bytes = build_fixture_variant(
        false,
        |api| {
            api_1(api);
            edit(
                api,
                "Cargo.toml",
                "version = \"0.1.2\"",
                "version = \"0.1.0\"",
            );
        },
        replace(v1.join("tests/fixtures/blocker/src")),
    );
    let plugins = tempfile::tempdir().expect("tmp");
    std::fs::write(plugins.path().join("libblocker.so"), bytes).expect("install");
    let b = Broker::start_in(tempfile::tempdir().expect("tmp"), plugins.path(), "");
    b.ctl_ok(&["plugins", "load", "blocker"]);
    let listed = b.ctl_ok(&["plugins", "list"]);
    assert!(
        listed.contains("Plugin(blocker, version=1.0.0, api=1, state=active"),
        "{listed}"
    );

    let mut sub = V4Client::connect(b.port(), "v1-sub").await;
    sub.subscribe("#", QoS::AtLeastOnce).await;
    let publisher = V4Client::connect(b.port(), "v1-pub").await;
    for (topic, payload) in [("blocked/x", "dropped"), ("open/x", "kept")] {
        publisher
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }
    let p = sub.recv_publish().await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("open/x", &b"kept"[..]));
    assert_eq!(b.ctl_ok(&["blocker", "stats"]).trim(), "dropped 1");
    b.ctl_ok(&["plugins", "reload", "blocker"]);
    b.ctl_ok(&["plugins", "unload", "blocker"]);
    publisher.disconnect().await;
}

/// broker.started and broker.stopping reach the plugins loaded at start-up.
#[tokio::test]
async fn broker_started_and_stopping_hooks() {
    let mut b = Broker::start_with("[plugins]\nenabled = [\"probe\"]\n");
    wait_until("broker.started seen", || {
        b.log().contains("probe saw broker.started")
    })
    .await;
    assert!(!b.log().contains("probe saw broker.stopping"));
    assert!(b.terminate().success());
    let log = b.log();
    let stopping = log
        .find("probe saw broker.stopping")
        .expect("broker.stopping seen");
    let closed = log.find("shutting down").expect("shutdown logged");
    assert!(stopping > closed, "fired when the shutdown began");
    assert!(log.contains("probe shut down"), "{log}");
}

/// The plugins' durable key-value store: per plugin, across reloads and broker restarts.
#[tokio::test]
async fn plugin_key_value_store_survives_reloads_and_restarts() {
    let mut b = Broker::start();
    b.ctl_ok(&["plugins", "load", "probe"]);
    assert_eq!(b.ctl_ok(&["probe", "kv", "get", "count"]).trim(), "(none)");
    assert_eq!(
        b.ctl_ok(&["probe", "kv", "set", "count", "41"]).trim(),
        "stored"
    );
    b.ctl_ok(&["probe", "kv", "set", "counter/b", "x"]);
    b.ctl_ok(&["plugins", "reload", "probe"]);
    assert_eq!(b.ctl_ok(&["probe", "kv", "get", "count"]).trim(), "41");
    b.restart();
    assert_eq!(
        b.ctl_ok(&["probe", "kv", "get", "count"]).trim(),
        "41",
        "after a restart"
    );
    assert_eq!(
        b.ctl_ok(&["probe", "kv", "keys", "count"]).trim(),
        "count,counter/b"
    );
    b.ctl_ok(&["probe", "kv", "del", "count"]);
    assert_eq!(b.ctl_ok(&["probe", "kv", "get", "count"]).trim(), "(none)");
    assert!(b.data_dir().join("plugin_kv.redb").exists());
}

/// A delivery dropped by a full queue fires message.dropped and its EMQX 5 name,
/// delivery.dropped, with the reason and the subscriber.
#[tokio::test]
async fn dropped_deliveries_fire_message_and_delivery_dropped() {
    let b = Broker::start_with("[limits]\nmax_queued_messages = 1\n");
    b.ctl_ok(&["plugins", "load", "probe"]);
    let mut sub = Wire::open(b.port()).await;
    sub.send(&connect_packet(4, "slowpoke", false, 60)).await;
    assert_eq!(sub.recv().await.expect("CONNACK").kind(), 2);
    sub.send(&subscribe_packet(4, 1, "q", 1)).await;
    assert_eq!(sub.recv().await.expect("SUBACK").kind(), 9);
    drop(sub);
    wait_until("offline", || {
        b.ctl_ok(&["sessions", "list", "--offline"])
            .contains("slowpoke")
    })
    .await;
    let mut publisher = Wire::connected(b.port(), 4, "pub").await;
    for id in 1..=3u16 {
        publisher
            .send(&publish_packet(4, "q", 1, id, false, b"m"))
            .await;
        assert_eq!(publisher.recv().await.expect("PUBACK").kind(), 4);
    }
    wait_until("both hooks fired", || {
        let log = b.log();
        log.contains("probe saw message.dropped queue_full for slowpoke")
            && log.contains("probe saw delivery.dropped queue_full for slowpoke")
    })
    .await;
}

/// `session.select_shared`: a plugin chooses the member of a shared group that gets each
/// message (here: the member whose client id starts with "chosen"), where the broker's round
/// robin would have split them.
#[tokio::test]
async fn select_shared_lets_a_plugin_choose_the_member() {
    let b = Broker::start();
    b.plugin_config("probe", "shared_prefer = \"chosen\"\n");
    b.ctl_ok(&["plugins", "load", "probe"]);
    let mut other = V4Client::connect(b.port(), "other-1").await;
    other.subscribe("$share/g/work/#", QoS::AtLeastOnce).await;
    let mut chosen = V4Client::connect(b.port(), "chosen-1").await;
    chosen.subscribe("$share/g/work/#", QoS::AtLeastOnce).await;
    let publisher = V4Client::connect(b.port(), "pub").await;
    for i in 0..10 {
        publisher
            .client
            .publish(format!("work/{i}"), QoS::AtLeastOnce, false, "job")
            .await
            .expect("publish");
    }
    for i in 0..10 {
        let p = chosen.recv_publish().await;
        assert_eq!(p.topic, format!("work/{i}"));
    }
    assert!(
        other.recv_publish_within(QUIET).await.is_none(),
        "the plugin's choice, not round robin"
    );
    // Unloaded, the broker's round robin shares them again.
    b.ctl_ok(&["plugins", "unload", "probe"]);
    for i in 0..4 {
        publisher
            .client
            .publish(format!("work/rr{i}"), QoS::AtLeastOnce, false, "job")
            .await
            .expect("publish");
    }
    assert!(other
        .recv_publish_within(Duration::from_secs(5))
        .await
        .is_some());
}

/// `client.check_authz_complete` reports every ACL decision with its source: a plugin's
/// allow and deny, then the cached answer.
#[tokio::test]
async fn check_authz_complete_reports_each_decision_and_its_source() {
    let b = Broker::start();
    b.plugin_config(
        "probe",
        "authz_log = true\nacl = \"allow\"\nacl_deny_prefix = \"secret/\"\n",
    );
    b.ctl_ok(&["plugins", "load", "probe"]);
    let publisher = V4Client::connect(b.port(), "authz-1").await;
    for topic in ["open/a", "secret/a", "open/a"] {
        publisher
            .client
            .publish(topic, QoS::AtLeastOnce, false, "x")
            .await
            .expect("publish");
    }
    let expected = [
        "probe authz authz-1 Publish open/a Allow plugin",
        "probe authz authz-1 Publish secret/a Deny plugin",
        "probe authz authz-1 Publish open/a Allow cache",
    ];
    wait_until("three decisions reported", || {
        let log = b.log();
        expected.iter().all(|line| log.contains(line))
    })
    .await;
    let log = b.log();
    let at: Vec<usize> = expected
        .iter()
        .map(|line| log.find(line).expect("reported"))
        .collect();
    assert!(at[0] < at[1] && at[1] < at[2], "in order: {at:?}");
}

/// A timer from `Context::every` runs while the plugin is loaded and stops with it: no tick
/// after an unload, and a reload runs only the new instance's timer.
#[tokio::test]
async fn plugin_timers_stop_at_unload() {
    let b = Broker::start();
    b.plugin_config("probe", "tick_ms = 20\n");
    b.ctl_ok(&["plugins", "load", "probe"]);
    let mut watcher = V4Client::connect(b.port(), "ticks").await;
    watcher.subscribe("probe/tick", QoS::AtMostOnce).await;
    let first = watcher.recv_publish().await;
    assert!(first.payload.parse_u64() >= 1);
    b.ctl_ok(&["plugins", "reload", "probe"]);
    // Drain what the old instance sent, then the new one counts from 1 alone: a leftover old
    // timer would interleave its higher numbers.
    wait_until("the new instance ticks", || {
        b.log().matches("probe created").count() >= 2
    })
    .await;
    let mut last = 0;
    let mut restarted = false;
    for _ in 0..40 {
        let n = watcher.recv_publish().await.payload.parse_u64();
        if n == 1 {
            restarted = true;
        } else if restarted {
            assert_eq!(n, last + 1, "one timer after the reload");
        }
        last = n;
        if restarted && n >= 5 {
            break;
        }
    }
    assert!(restarted, "the new instance's timer counts from 1");
    b.ctl_ok(&["plugins", "unload", "probe"]);
    while watcher.recv_publish_within(QUIET).await.is_some() {}
    assert!(
        watcher
            .recv_publish_within(Duration::from_millis(500))
            .await
            .is_none(),
        "no tick after unload"
    );
}

trait ParseU64 {
    fn parse_u64(&self) -> u64;
}

impl ParseU64 for bytes::Bytes {
    fn parse_u64(&self) -> u64 {
        std::str::from_utf8(self)
            .ok()
            .and_then(|s| s.parse().ok())
            .expect("a number")
    }
}
