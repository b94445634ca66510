//! auth_file, auth_username, auth_clientid and acl_file against the real broker: password files
//! made by the real `mosquitto_passwd`, real `mosquitto_pub` clients, raw MQTT 5 packets for
//! exact reason codes, `brokerctl users` / `acl check`, and files changed on disc.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use broker_tests::*;

fn mosquitto_passwd(file: &Path, user: &str, password: &str, create: bool) {
    assert!(
        tool_available("mosquitto_passwd"),
        "mosquitto (for mosquitto_passwd) not installed: run tests/run.sh"
    );
    let mut cmd = Command::new("mosquitto_passwd");
    if create {
        cmd.arg("-c");
    }
    let out = cmd
        .arg("-b")
        .arg(file)
        .args([user, password])
        .output()
        .expect("mosquitto_passwd");
    assert!(out.status.success(), "{out:?}");
}

/// `mosquitto_pub` once; returns (success, stderr).
fn mosquitto_pub(port: u16, user: &str, password: &str, v5: bool) -> (bool, String) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        "t",
        "-m",
        "x",
    ]);
    cmd.args([
        "-q",
        "1",
        "-u",
        user,
        "-P",
        password,
        "-i",
        &format!("pub-{user}"),
    ]);
    if v5 {
        cmd.args(["-V", "mqttv5"]);
    }
    let out = cmd.stderr(Stdio::piped()).output().expect("mosquitto_pub");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn config_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

#[tokio::test]
async fn auth_file_reads_mosquitto_passwd_files_and_manages_users() {
    assert!(
        tool_available("mosquitto_pub"),
        "mosquitto-clients not installed: run tests/run.sh"
    );
    let b = Broker::start();
    let passwd = b.data_dir().join("passwd");
    std::fs::create_dir_all(b.data_dir()).expect("data dir");
    mosquitto_passwd(&passwd, "alice", "right", true);
    b.plugin_config(
        "auth_file",
        &format!(
            "password_file = {}\nwatch_interval_secs = 1\n",
            config_path(&passwd)
        ),
    );
    b.ctl_ok(&["plugins", "load", "auth_file"]);

    let (ok, err) = mosquitto_pub(b.port(), "alice", "right", false);
    assert!(ok, "alice with the right password: {err}");
    let (ok, err) = mosquitto_pub(b.port(), "alice", "wrong", false);
    assert!(!ok && err.contains("Connection Refused"), "{err}");
    assert_eq!(connack_code(b.port(), "a3", "alice", "wrong").await, 4);
    let (_, code) = connect_v5_as(b.port(), "a5", "alice", "wrong").await;
    assert_eq!(code, 0x86, "v5: bad user name or password");
    let (ok, err) = mosquitto_pub(b.port(), "alice", "wrong", true);
    assert!(!ok, "{err}");
    let (_, code) = connect_v5_as(b.port(), "a6", "alice", "right").await;
    assert_eq!(code, 0);
    // Unknown users and anonymous clients are left to auth.no_match (deny).
    assert_eq!(connack_code(b.port(), "n", "nobody", "x").await, 5);
    let mut anon = Wire::open(b.port()).await;
    anon.send(&connect_packet(4, "anon", true, 60)).await;
    assert_eq!(anon.recv().await.expect("CONNACK").body[1], 5);

    // Users added and removed by brokerctl take effect at once, in mosquitto_passwd's format.
    let out = b.ctl_ok(&["users", "add", "bob", "--password", "pw"]);
    assert!(out.contains("User bob added."), "{out}");
    assert_eq!(connack_code(b.port(), "b1", "bob", "pw").await, 0);
    let text = std::fs::read_to_string(&passwd).expect("passwd");
    assert!(text.lines().any(|l| l.starts_with("bob:$7$101$")), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("alice:$7$")),
        "alice kept: {text}"
    );
    let dup = b.ctl(&["users", "add", "bob", "--password", "x"]);
    assert_eq!(dup.code, 1, "{dup:?}");
    b.ctl_ok(&["users", "passwd", "bob", "--password", "pw2"]);
    assert_eq!(connack_code(b.port(), "b2", "bob", "pw").await, 4);
    assert_eq!(connack_code(b.port(), "b3", "bob", "pw2").await, 0);
    let out = b.ctl_ok(&["users", "del", "bob"]);
    assert!(out.contains("User bob deleted."), "{out}");
    assert_eq!(connack_code(b.port(), "b4", "bob", "pw2").await, 5, "gone");
    // Without --password, brokerctl reads it (here from a pipe, as a script would).
    let mut ctl = Command::new(binary("brokerctl"))
        .arg("--config")
        .arg(b.data_dir().parent().expect("dir").join("broker.toml"))
        .args(["users", "add", "dave"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("brokerctl");
    use std::io::Write as _;
    ctl.stdin
        .take()
        .expect("stdin")
        .write_all(b"from-stdin\n")
        .expect("write");
    assert!(ctl.wait().expect("wait").success());
    assert_eq!(connack_code(b.port(), "d", "dave", "from-stdin").await, 0);
    let list = b.ctl_ok(&["users", "list"]);
    assert!(
        list.contains("alice") && list.contains("dave") && list.contains("2 user(s)"),
        "{list}"
    );
    // The real mosquitto_passwd reads what brokerctl wrote and adds to it; the plugin sees the
    // change on disc.
    mosquitto_passwd(&passwd, "carol", "c4rol", false);
    let deadline = tokio::time::Instant::now() + WAIT;
    while connack_code(b.port(), "c", "carol", "c4rol").await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "carol never let in");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(connack_code(b.port(), "d2", "dave", "from-stdin").await, 0);
    // A bad line on disc is reported with file:line; the users in force stay.
    let mut text = std::fs::read_to_string(&passwd).expect("passwd");
    text.push_str("mallory:plaintext\n");
    std::fs::write(&passwd, text).expect("write");
    wait_until("bad line reported", || b.log().contains("passwd:4:")).await;
    assert_eq!(connack_code(b.port(), "a7", "alice", "right").await, 0);
    assert_eq!(connack_code(b.port(), "m", "mallory", "plaintext").await, 5);
}

#[tokio::test]
async fn acl_file_enforces_mosquitto_rules_on_publish_and_subscribe() {
    let b = Broker::start();
    let dir = b.data_dir().parent().expect("dir").to_path_buf();
    let acl = dir.join("acl");
    std::fs::write(
        &acl,
        "# anonymous: nothing\n\
         user alice\n\
         topic write sensors/#\n\
         topic read alerts/#\n\
         topic deny sensors/private/#\n\
         pattern readwrite devices/%c/#\n",
    )
    .expect("acl");
    b.plugin_config(
        "auth_file",
        "users = [{ name = \"alice\", password = \"a\" }, { name = \"root\", password = \"r\" }]\nsuperusers = [\"root\"]\n",
    );
    b.plugin_config(
        "acl_file",
        &format!(
            "acl_file = {}\nwatch_interval_secs = 1\n",
            config_path(&acl)
        ),
    );
    b.ctl_ok(&["plugins", "load", "auth_file"]);
    b.ctl_ok(&["plugins", "load", "acl_file"]);

    // A superuser watches everything.
    let mut o = v4_options(b.port(), "root-watch");
    o.set_credentials("root", "r");
    let (mut root, _) = V4Client::connect_with(o).await;
    root.subscribe("#", rumqttc::QoS::AtLeastOnce).await;

    let (mut w, code) = connect_v5_as(b.port(), "dev1", "alice", "a").await;
    assert_eq!(code, 0);
    let publish = |topic: &str, id: u16| {
        let mut body = mqtt_string(topic);
        body.extend(id.to_be_bytes());
        body.extend([0x00, b'p']);
        packet(0x32, &body)
    };
    let reason = |p: RawPacket| p.body.get(2).copied().unwrap_or(0);
    // topic write sensors/# → allowed, delivered.
    w.send(&publish("sensors/1/temp", 1)).await;
    assert_eq!(reason(w.recv().await.expect("PUBACK")), 0, "allowed");
    assert_eq!(&root.recv_publish().await.topic, "sensors/1/temp");
    // deny wins; read-only topics cannot be published; pattern %c.
    w.send(&publish("sensors/private/x", 2)).await;
    assert_eq!(reason(w.recv().await.expect("PUBACK")), 0x87);
    w.send(&publish("alerts/fire", 3)).await;
    assert_eq!(reason(w.recv().await.expect("PUBACK")), 0x87, "read only");
    w.send(&publish("devices/dev1/state", 4)).await;
    assert_ne!(reason(w.recv().await.expect("PUBACK")), 0x87, "own subtree");
    w.send(&publish("devices/dev2/state", 5)).await;
    assert_eq!(
        reason(w.recv().await.expect("PUBACK")),
        0x87,
        "another client's subtree"
    );
    // SUBSCRIBE is checked too (v5 SUBACK 0x87).
    let mut sub = subscribe_packet(5, 10, "alerts/#", 1);
    w.send(&sub).await;
    assert_eq!(
        w.recv().await.expect("SUBACK").body[3],
        1,
        "read allowed, granted QoS 1"
    );
    sub = subscribe_packet(5, 11, "sensors/#", 1);
    w.send(&sub).await;
    assert_eq!(
        w.recv().await.expect("SUBACK").body[3],
        0x87,
        "write-only topic"
    );
    sub = subscribe_packet(5, 12, "#", 0);
    w.send(&sub).await;
    assert_eq!(w.recv().await.expect("SUBACK").body[3], 0x87);

    let out = b.ctl_ok(&[
        "acl",
        "check",
        "alice",
        "dev1",
        "publish",
        "sensors/private/x",
    ]);
    assert!(
        out.starts_with("deny") && out.contains("acl:5: topic deny sensors/private/#"),
        "{out}"
    );
    let out = b.ctl_ok(&[
        "acl",
        "check",
        "alice",
        "dev1",
        "subscribe",
        "devices/dev1/#",
    ]);
    assert!(out.starts_with("allow") && out.contains("acl:6:"), "{out}");
    let out = b.ctl_ok(&["acl", "check", "-", "x", "publish", "a"]);
    assert!(out.starts_with("deny (no rule applies"), "{out}");

    // A changed file is read again; a bad line keeps the rules in force.
    std::fs::write(&acl, "user alice\ntopic readwrite alerts/#\n").expect("acl");
    b.ctl_ok(&["acl-cache", "clean"]);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut id = 20;
    loop {
        id += 1;
        w.send(&publish("alerts/fire", id)).await;
        if reason(w.recv().await.expect("PUBACK")) != 0x87 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new rules never applied"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        b.ctl_ok(&["acl-cache", "clean"]);
    }
    std::fs::write(
        &acl,
        "user alice\ntopic readwrite alerts/#\ntopic read a/#/b\n",
    )
    .expect("acl");
    wait_until("bad line reported", || b.log().contains("acl:3:")).await;
    let out = b.ctl_ok(&["acl", "check", "alice", "dev1", "publish", "alerts/x"]);
    assert!(out.starts_with("allow"), "old rules stay: {out}");
    // Loading with a bad file is refused with file:line.
    b.ctl_ok(&["plugins", "unload", "acl_file"]);
    let refused = b.ctl(&["plugins", "load", "acl_file"]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("acl:3:"), "{refused:?}");
}

#[tokio::test]
async fn emq_names_auth_username_and_auth_clientid() {
    let b = Broker::start();
    let users_file = b.data_dir().join("auth_username.passwd");
    let ids_file = b.data_dir().join("auth_clientid.passwd");
    b.plugin_config(
        "auth_username",
        &format!(
            "users = [{{ username = \"admin\", password = \"public\" }}]\npassword_file = {}\n",
            config_path(&users_file)
        ),
    );
    b.plugin_config(
        "auth_clientid",
        &format!(
            "users = [{{ clientid = \"sensor-1\", password = \"s3\" }}]\npassword_file = {}\n",
            config_path(&ids_file)
        ),
    );
    b.ctl_ok(&["plugins", "load", "auth_username"]);
    b.ctl_ok(&["plugins", "load", "auth_clientid"]);
    assert_eq!(connack_code(b.port(), "x", "admin", "public").await, 0);
    assert_eq!(connack_code(b.port(), "x", "admin", "nope").await, 4);
    assert_eq!(connack_code(b.port(), "sensor-1", "any", "s3").await, 0);
    assert_eq!(connack_code(b.port(), "sensor-1", "any", "bad").await, 4);
    assert_eq!(connack_code(b.port(), "other", "any", "s3").await, 5);
    let out = b.ctl_ok(&["clientid", "add", "sensor-2", "--password", "p2"]);
    assert!(out.contains("Client id sensor-2 added."), "{out}");
    assert_eq!(connack_code(b.port(), "sensor-2", "u", "p2").await, 0);
    let stored = std::fs::read_to_string(&ids_file).expect("written");
    assert!(stored.starts_with("sensor-2:$7$"), "hashed: {stored}");
    b.ctl_ok(&["users", "add", "ops", "--password", "o"]);
    assert_eq!(connack_code(b.port(), "y", "ops", "o").await, 0);
    let list = b.ctl_ok(&["clientid", "list"]);
    assert!(
        list.contains("sensor-1 (config)") && list.contains("sensor-2"),
        "{list}"
    );
}
