//! The Windows build, run under Wine (Debian's `wine64`): `broker.exe` starts with the shipped
//! configuration and its plugins as `.dll` files, `brokerctl.exe` loads, reloads and unloads a
//! plugin `.dll` while Linux `mosquitto_pub` / `mosquitto_sub` exchange QoS 1 messages with it
//! over TCP, and a crate made by `brokerctl plugins new` builds as a `.dll` that loads.
//!
//! It needs the Windows build and Wine, so it is ignored in a plain `cargo test`; tests/run.sh
//! runs it when Wine is installed:
//!
//! ```text
//! cargo build --workspace --target x86_64-pc-windows-gnu
//! BROKER_WINE=wine BROKER_BIN_DIR=target/x86_64-pc-windows-gnu/debug \
//!     cargo test -p broker-tests --test windows -- --ignored
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use broker_tests::*;

/// The Linux build's directory (the test executable's `target/<profile>`), for the tools that
/// run here rather than under Wine.
fn native_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile> directory")
        .to_path_buf()
}

/// Copies the Windows plugin libraries `names` from the build into `dir`.
fn install_plugins(dir: &Path, names: &[&str]) {
    std::fs::create_dir_all(dir).expect("plugin dir");
    for name in names {
        let file = format!("{name}.dll");
        std::fs::copy(bin_dir().join(&file), dir.join(&file))
            .unwrap_or_else(|e| panic!("{file} from the Windows build: {e}"));
    }
}

#[test]
#[ignore = "needs Wine and the Windows build: tests/run.sh runs it when Wine is installed"]
fn windows_build_under_wine_serves_mqtt_and_loads_dll_plugins() {
    assert!(
        std::env::var_os("BROKER_WINE").is_some(),
        "set BROKER_WINE=wine and BROKER_BIN_DIR=target/x86_64-pc-windows-gnu/debug (tests/run.sh does)"
    );
    assert!(
        tool_available("mosquitto_pub") && tool_available("mosquitto_sub"),
        "mosquitto-clients not installed: tests/run.sh installs them"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let plugin_dir = dir.path().join("plugin-libs");
    install_plugins(
        &plugin_dir,
        &["retainer", "presence", "dashboard", "rewrite"],
    );
    let config = shipped_config(dir.path(), &plugin_dir);
    let b = Broker::start_config(dir, &config);

    // The shipped plugins were loaded at start from their .dll files.
    for name in ["retainer", "presence", "dashboard"] {
        let line = b.plugin_line(name);
        assert!(line.contains("state=active"), "{line}");
    }

    // QoS 1 both ways between Linux clients through broker.exe, MQTT 3.1.1 and 5.
    for version in ["mqttv311", "mqttv5"] {
        let got = mosquitto_roundtrip(b.port(), version, "1", "plain/+", "plain/t", version);
        assert_eq!(got, version);
    }

    // brokerctl.exe loads a plugin .dll; its rule applies to the traffic.
    b.plugin_config(
        "rewrite",
        "[[rules]]\naction = \"publish\"\nsource_topic = \"src/#\"\nre = \"^src/(.+)$\"\ndest_topic = \"dst/$1\"\n",
    );
    assert_eq!(
        b.ctl_ok(&["plugins", "load", "rewrite"]).trim(),
        "Plugin rewrite loaded successfully."
    );
    let rewritten = || mosquitto_roundtrip(b.port(), "mqttv311", "1", "dst/#", "src/a", "moved");
    assert_eq!(rewritten(), "moved");
    b.ctl_ok(&["plugins", "reload", "rewrite"]);
    assert!(b.plugin_line("rewrite").contains("state=active"));
    assert_eq!(rewritten(), "moved", "still rewriting after the reload");
    b.ctl_ok(&["plugins", "unload", "rewrite"]);
    let same = mosquitto_roundtrip(b.port(), "mqttv311", "1", "src/#", "src/b", "kept");
    assert_eq!(same, "kept", "unloaded: topics stay as published");

    // A plugin crate from `brokerctl plugins new` builds as a .dll for this target and loads.
    let work = tempfile::tempdir().expect("tmp");
    let crate_dir = work.path().join("winplug");
    let out = Command::new(native_bin_dir().join("brokerctl"))
        .args(["plugins", "new", "winplug", "--dir"])
        .arg(&crate_dir)
        .output()
        .expect("brokerctl plugins new");
    assert!(out.status.success(), "{out:?}");
    std::fs::copy(
        workspace_root().join("Cargo.lock"),
        crate_dir.join("Cargo.lock"),
    )
    .expect("lock");
    let target = work.path().join("target");
    run_cargo(
        &crate_dir,
        &["build", "--target", "x86_64-pc-windows-gnu"],
        &target,
    );
    std::fs::copy(
        target.join("x86_64-pc-windows-gnu/debug/winplug.dll"),
        plugin_dir.join("winplug.dll"),
    )
    .expect("winplug.dll built");
    b.plugin_config(
        "winplug",
        &std::fs::read_to_string(crate_dir.join("winplug.toml")).expect("config"),
    );
    assert_eq!(
        b.ctl_ok(&["plugins", "load", "winplug"]).trim(),
        "Plugin winplug loaded successfully."
    );
    // Its hook drops blocked/#: what follows it arrives, and its command counts one drop.
    let port = b.port().to_string();
    let status = Command::new("mosquitto_pub")
        .args(["-p", &port, "-q", "1", "-t", "blocked/x", "-m", "no"])
        .status()
        .expect("mosquitto_pub");
    assert!(status.success());
    let after = mosquitto_roundtrip(b.port(), "mqttv311", "1", "#", "open/x", "yes");
    assert_eq!(after, "yes");
    assert_eq!(b.ctl_ok(&["winplug", "stats"]).trim(), "dropped 1");
}
