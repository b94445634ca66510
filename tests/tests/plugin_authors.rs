//! A plugin author's path, as docs/plugin-guide.md tells it: `brokerctl plugins new` writes a
//! crate outside this workspace; it is tested and built in its own target directory, loaded into
//! a running broker, acts on real traffic, answers its command, is changed, rebuilt and reloaded
//! without a broker restart, and unloaded.

use std::path::Path;
use std::process::Command;

use broker_tests::rumqttc::QoS;
use broker_tests::*;

fn replace(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read");
    assert!(text.contains(from), "{from:?} not in {}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_plugin_from_empty_directory_to_reload() {
    let work = tempfile::tempdir().expect("tmp");
    let crate_dir = work.path().join("gatekeeper");
    // 1. Generate the crate, as the guide says.
    let out = Command::new(binary("brokerctl"))
        .args(["plugins", "new", "gatekeeper", "--dir"])
        .arg(&crate_dir)
        .output()
        .expect("brokerctl plugins new");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Plugin crate gatekeeper created"));

    // 2. Test and build it in its own target directory (offline: the workspace build has
    //    fetched every crate it needs).
    let target = work.path().join("target");
    std::fs::copy(
        workspace_root().join("Cargo.lock"),
        crate_dir.join("Cargo.lock"),
    )
    .expect("lock");
    run_cargo(&crate_dir, &["test"], &target);
    run_cargo(&crate_dir, &["build"], &target);
    let plugin_dir = work.path().join("installed");
    std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
    let install = || {
        let tmp = plugin_dir.join(".libgatekeeper.so.new");
        std::fs::copy(target.join("debug/libgatekeeper.so"), &tmp).expect("copy library");
        std::fs::rename(&tmp, plugin_dir.join("libgatekeeper.so")).expect("install library");
    };
    install();

    // 3. Load it into a running broker with its config.
    let b = Broker::start_in(tempfile::tempdir().expect("tmp"), &plugin_dir, "");
    b.plugin_config(
        "gatekeeper",
        &std::fs::read_to_string(crate_dir.join("gatekeeper.toml")).expect("config"),
    );
    assert_eq!(
        b.ctl_ok(&["plugins", "load", "gatekeeper"]).trim(),
        "Plugin gatekeeper loaded successfully."
    );

    // 4. Its hook acts on real traffic; its command answers.
    let mut sub = V4Client::connect(b.port(), "sub").await;
    sub.subscribe("#", QoS::AtLeastOnce).await;
    let publisher = V4Client::connect(b.port(), "pub").await;
    for topic in ["blocked/a", "also/a", "open/a"] {
        publisher
            .client
            .publish(topic, QoS::AtLeastOnce, false, "x")
            .await
            .expect("publish");
    }
    assert_eq!(sub.recv_publish().await.topic, "also/a");
    assert_eq!(sub.recv_publish().await.topic, "open/a");
    assert_eq!(b.ctl_ok(&["gatekeeper", "stats"]).trim(), "dropped 1");

    // 5. Change the source (new behaviour), rebuild, reload: no broker restart.
    let lib = crate_dir.join("src/lib.rs");
    replace(&lib, "if topic_matches(&self.config.drop_filter, message.topic.as_str()) {", "if topic_matches(&self.config.drop_filter, message.topic.as_str()) || message.topic.as_str().starts_with(\"also/\") {");
    replace(
        &lib,
        "Ok(format!(\"dropped {dropped}\"))",
        "Ok(format!(\"gatekeeper dropped {dropped}\"))",
    );
    replace(
        &crate_dir.join("tests/plugin.rs"),
        "\"dropped 1\"",
        "\"gatekeeper dropped 1\"",
    );
    run_cargo(&crate_dir, &["build"], &target);
    install();
    assert_eq!(
        b.ctl_ok(&["plugins", "reload", "gatekeeper"]).trim(),
        "Plugin gatekeeper reloaded successfully."
    );
    for topic in ["also/b", "open/b"] {
        publisher
            .client
            .publish(topic, QoS::AtLeastOnce, false, "x")
            .await
            .expect("publish");
    }
    assert_eq!(
        sub.recv_publish().await.topic,
        "open/b",
        "also/b dropped by the new code"
    );
    assert_eq!(
        b.ctl_ok(&["gatekeeper", "stats"]).trim(),
        "gatekeeper dropped 1"
    );

    // 6. Unload: its behaviour stops at once.
    b.ctl_ok(&["plugins", "unload", "gatekeeper"]);
    publisher
        .client
        .publish("blocked/c", QoS::AtLeastOnce, false, "x")
        .await
        .expect("publish");
    assert_eq!(sub.recv_publish().await.topic, "blocked/c");
    let gone = b.ctl(&["gatekeeper", "stats"]);
    assert_eq!(gone.code, 1);
}
