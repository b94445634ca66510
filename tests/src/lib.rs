//! End-to-end test harness: starts the real `broker` binary and talks to it over real sockets.
//!
//! * [`Broker::start`] writes a config into a fresh temporary directory (listeners on
//!   `127.0.0.1:0`, its own `data_dir`), starts the binary built by `cargo build --workspace`,
//!   and waits for `data_dir/listeners.json` to learn the ports. Dropping it kills the process.
//! * [`V4Client`] / [`V5Client`] wrap the rumqttc client crate (MQTT 3.1.1 / 5.0).
//! * [`Wire`] is a raw-byte client for malformed input and byte-exact expectations.
//!
//! Every test starts its own broker, so tests run in parallel without sharing anything.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

pub mod auth;
pub mod http;
// The backend servers the tests start (and the tests themselves) run on Linux; the harness
// library still builds for Windows, where `mqtt-bench` and `http-sink` are useful too.
#[cfg(unix)]
pub mod ldap;
#[cfg(unix)]
pub mod mariadb;
#[cfg(unix)]
pub mod mosquitto;
#[cfg(unix)]
pub mod nats;
#[cfg(unix)]
pub mod postgres;
pub mod redis;

pub use http::HttpServer;
#[cfg(unix)]
pub use ldap::Slapd;
#[cfg(unix)]
pub use mariadb::MariaDb;
#[cfg(unix)]
pub use mosquitto::Mosquitto;
#[cfg(unix)]
pub use nats::Nats;
#[cfg(unix)]
pub use postgres::Postgres;
pub use redis::{RedisCluster, RedisSentinel, RedisServer, RedisTls};
pub use rumqttc;

/// Default time to wait for anything the broker should do promptly.
pub const WAIT: Duration = Duration::from_secs(10);

/// Directory holding the workspace's built binaries (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("BROKER_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // The test executable lives in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile> directory")
        .to_path_buf()
}

/// Wine, when the binaries under test are the Windows build: `BROKER_WINE` names the program
/// that runs them (tests/run.sh sets it, with `BROKER_BIN_DIR`, for the Windows smoke test).
fn wine() -> Option<String> {
    std::env::var("BROKER_WINE").ok().filter(|w| !w.is_empty())
}

/// A command running workspace binary `name`: directly, or under Wine for the Windows build.
pub fn command(name: &str) -> Command {
    match wine() {
        Some(wine) => {
            let mut c = Command::new(wine);
            c.arg(binary(name)).env("WINEDEBUG", "-all");
            c
        }
        None => Command::new(binary(name)),
    }
}

/// Path of a workspace binary (`name.exe` for the Windows build); panics with the command to
/// run if it was not built.
pub fn binary(name: &str) -> PathBuf {
    let file = match wine() {
        Some(_) => format!("{name}.exe"),
        None => name.to_owned(),
    };
    let path = bin_dir().join(file);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace` before the tests (the README's test command does)",
        path.display()
    );
    path
}

/// A running broker process with its own temporary directory.
pub struct Broker {
    child: Option<Child>,
    /// Temporary directory holding config, data_dir and the log.
    pub dir: tempfile::TempDir,
    /// Address of the first listener.
    pub addr: SocketAddr,
    config_path: PathBuf,
    data_dir: PathBuf,
}

/// What `brokerctl` printed.
#[derive(Debug)]
pub struct CtlOutput {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Broker {
    /// Starts a broker with default settings.
    pub fn start() -> Broker {
        Broker::start_with("")
    }

    /// Starts a broker; `extra` is appended to the generated config (TOML tables such as
    /// `[limits]`).
    pub fn start_with(extra: &str) -> Broker {
        Broker::start_in(tempfile::tempdir().expect("temp dir"), &bin_dir(), extra)
    }

    /// Starts a broker in `dir` loading plugins from `plugin_dir`; plugin configs written into
    /// `dir/plugins/` before the start are seen by it.
    /// The `$SYS` metrics topics are off unless `extra` has a `[sys]` table, so that tests
    /// subscribing to `$SYS/#` see only what they publish.
    pub fn start_in(dir: tempfile::TempDir, plugin_dir: &Path, extra: &str) -> Broker {
        let data = dir.path().join("data");
        let sys = if extra.contains("[sys]") {
            ""
        } else {
            "[sys]\ninterval_secs = 0\n"
        };
        let config = format!(
            "data_dir = {:?}\nplugin_dir = {:?}\n\n[[listener]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n{sys}{extra}\n",
            data.display().to_string(),
            plugin_dir.display().to_string(),
        );
        Broker::start_config(dir, &config)
    }

    /// Starts a broker with exactly `config` as its configuration file.
    pub fn start_config(dir: tempfile::TempDir, config: &str) -> Broker {
        let config_path = dir.path().join("broker.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("broker.log")).expect("log file");
        let child = command("broker")
            .arg("--config")
            .arg(&config_path)
            .env(
                "RUST_LOG",
                std::env::var("BROKER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn broker");
        let data_dir = config
            .lines()
            .find_map(|l| l.strip_prefix("data_dir = "))
            .map(|v| PathBuf::from(v.trim_matches('"')))
            .unwrap_or_else(|| dir.path().join("data"));
        let mut broker = Broker {
            child: Some(child),
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            config_path,
            data_dir,
        };
        broker.wait_ready();
        broker
    }

    /// Waits for `listeners.json` (written once the broker accepts) and reads the address.
    fn wait_ready(&mut self) {
        let listeners = self.data_dir.join("listeners.json");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&listeners) {
                if let Some(addr) = first_addr(&text) {
                    self.addr = addr;
                    break;
                }
            }
            if let Some(status) = self.try_status() {
                panic!(
                    "broker exited with {status} during start-up:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "broker did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker (SIGTERM) and starts it again with the same config and data_dir.
    pub fn restart(&mut self) {
        let status = self.terminate();
        assert!(status.success(), "exit status {status}");
        self.restart_stopped();
    }

    /// Starts a broker stopped by [`Broker::terminate`] again, same config and data_dir.
    pub fn restart_stopped(&mut self) {
        assert!(self.child.is_none(), "the broker is still running");
        let _ = std::fs::remove_file(self.data_dir.join("listeners.json"));
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("broker.log"))
            .expect("log file");
        let child = command("broker")
            .arg("--config")
            .arg(&self.config_path)
            .env(
                "RUST_LOG",
                std::env::var("BROKER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn broker");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Writes `plugins/<name>.toml` next to the broker's config.
    pub fn plugin_config(&self, name: &str, text: &str) {
        let dir = self.dir.path().join("plugins");
        std::fs::create_dir_all(&dir).expect("plugins dir");
        std::fs::write(dir.join(format!("{name}.toml")), text).expect("plugin config");
    }

    /// Loads the retainer plugin with `storage = "disc"`, its database in this broker's
    /// directory.
    pub fn load_retainer_on_disc(&self) {
        let db = self.dir.path().join("retained.redb");
        self.plugin_config(
            "retainer",
            &format!(
                "storage = \"disc\"\npath = {:?}\n",
                db.display().to_string()
            ),
        );
        self.ctl_ok(&["plugins", "load", "retainer"]);
    }

    /// Runs `brokerctl --config <this broker's config> args…`.
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        let out = command("brokerctl")
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .output()
            .expect("run brokerctl");
        CtlOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The line `brokerctl plugins list` prints for plugin `name` (`Plugin(name, …, state=…`).
    pub fn plugin_line(&self, name: &str) -> String {
        let list = self.ctl_ok(&["plugins", "list"]);
        list.lines()
            .find(|l| l.starts_with(&format!("Plugin({name},")))
            .unwrap_or_else(|| panic!("{name} not listed:\n{list}"))
            .to_owned()
    }

    /// Runs brokerctl and asserts it succeeded; returns its standard output.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert_eq!(
            out.code,
            0,
            "brokerctl {args:?} failed: {out:?}\nbroker log:\n{}",
            self.log()
        );
        out.stdout
    }

    /// The broker's data_dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Port of the first listener.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("broker.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Resident memory of the broker process in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Sends SIGTERM and waits for the process to exit; returns its status.
    /// Kills the broker with SIGKILL (a crash: nothing runs at exit) and waits for it.
    pub fn kill_hard(&mut self) {
        let mut child = self.child.take().expect("broker running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the broker with SIGKILL and starts it again with the same config and data_dir.
    pub fn crash_and_restart(&mut self) {
        self.kill_hard();
        self.restart_stopped();
    }

    /// Stops the broker with SIGTERM and waits for it to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("broker running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.try_status() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "broker did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn first_addr(json: &str) -> Option<SocketAddr> {
    let start = json.find("\"addr\"")?;
    let rest = &json[start + 6..];
    let open = rest.find('"')?;
    let rest = &rest[open + 1..];
    let close = rest.find('"')?;
    rest[..close].parse().ok()
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for the private servers tests start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The first of `paths` that is a file: where a Debian package installs a server. `None` when
/// none is, which outside CI skips the test (`package` says what to install) and under
/// `CI=true` fails it (`.ci/run` installs every server the tests use).
pub fn server_binary(paths: &[&str], package: &str) -> Option<PathBuf> {
    let found = paths.iter().map(PathBuf::from).find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{package} is not installed: .ci/run installs it"
        );
        eprintln!("{package} is not installed: skipping (apt-get install {package})");
    }
    found
}

/// Sends `signal` to a server the test started and waits for it to exit (SIGTERM: the
/// server's own clean shutdown, as `systemctl stop` does).
#[cfg(unix)]
pub fn signal_and_wait(mut child: std::process::Child, signal: libc::c_int) {
    // SAFETY: plain kill(2) on our own child's pid, which `wait` below still holds.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
    let _ = child.wait();
}

/// Waits up to 30 s until a server the test started listens on `port` of 127.0.0.1; panics
/// with its log (`log`) if it exits first or never listens.
pub fn wait_listening(child: &mut std::process::Child, port: u16, name: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{name} exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "{name} did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `cond` holds, polling; panics with `what` after [`WAIT`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------- rumqttc wrappers

/// An MQTT 3.1.1 client (rumqttc) whose event loop runs in a task.
pub struct V4Client {
    /// The rumqttc client handle.
    pub client: rumqttc::AsyncClient,
    events: mpsc::UnboundedReceiver<Result<rumqttc::Event, String>>,
    task: tokio::task::JoinHandle<()>,
}

/// Options for a V4 client.
pub fn v4_options(port: u16, id: &str) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024);
    o
}

impl V4Client {
    /// Connects with clean session and waits for CONNACK.
    pub async fn connect(port: u16, id: &str) -> V4Client {
        V4Client::connect_with(v4_options(port, id)).await.0
    }

    /// Connects with `options`; returns the client and CONNACK's session-present flag.
    pub async fn connect_with(options: rumqttc::MqttOptions) -> (V4Client, bool) {
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10_000);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(ev) => {
                        if tx.send(Ok(ev)).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        break;
                    }
                }
            }
        });
        let mut c = V4Client {
            client,
            events,
            task,
        };
        let present = loop {
            match c.next_event().await {
                Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)))) => {
                    break a.session_present
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("connect failed: {e}"),
                None => panic!("connect: no CONNACK within {WAIT:?}"),
            }
        };
        (c, present)
    }

    /// The next event, or None after [`WAIT`].
    pub async fn next_event(&mut self) -> Option<Result<rumqttc::Event, String>> {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next incoming PUBLISH within `within`; None if none arrives or the connection ends.
    pub async fn recv_publish_within(&mut self, within: Duration) -> Option<rumqttc::Publish> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))))) => {
                    return Some(p)
                }
                Ok(Some(Ok(_))) => {}
                _ => return None,
            }
        }
    }

    /// The next incoming PUBLISH; panics after [`WAIT`].
    pub async fn recv_publish(&mut self) -> rumqttc::Publish {
        self.recv_publish_within(WAIT)
            .await
            .expect("expected a PUBLISH within the wait time")
    }

    /// Subscribes and waits for SUBACK; returns its return codes.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("subscribe request");
        loop {
            match self.next_event().await {
                Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(a)))) => {
                    return a.return_codes
                }
                Some(Ok(_)) => {}
                other => panic!("no SUBACK: {other:?}"),
            }
        }
    }

    /// Waits until the outgoing request queue has been acknowledged (PUBACK / PUBCOMP of `n`
    /// QoS > 0 publishes).
    pub async fn wait_acks(&mut self, mut n: usize) {
        while n > 0 {
            match self.next_event().await {
                Some(Ok(rumqttc::Event::Incoming(
                    rumqttc::Packet::PubAck(_) | rumqttc::Packet::PubComp(_),
                ))) => n -= 1,
                Some(Ok(_)) => {}
                other => panic!("waiting for acks: {other:?}"),
            }
        }
    }

    /// Sends DISCONNECT and waits for the event loop to finish.
    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        while let Some(Ok(_)) = self.next_event().await {}
        self.task.abort();
    }

    /// Drops the connection without DISCONNECT (an abnormal close).
    pub fn kill(self) {
        self.task.abort();
    }

    /// Whether the broker closed the connection within `within`.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) | Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }
}

/// An MQTT 5.0 client (rumqttc v5) whose event loop runs in a task.
pub struct V5Client {
    /// The rumqttc client handle.
    pub client: rumqttc::v5::AsyncClient,
    events: mpsc::UnboundedReceiver<Result<rumqttc::v5::Event, String>>,
    task: tokio::task::JoinHandle<()>,
}

/// Options for a v5 client.
pub fn v5_options(port: u16, id: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// rumqttc's v5 packet type.
pub use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;

impl V5Client {
    /// Connects and waits for CONNACK; returns it.
    pub async fn connect_with(
        options: rumqttc::v5::MqttOptions,
    ) -> (V5Client, rumqttc::v5::mqttbytes::v5::ConnAck) {
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 10_000);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(ev) => {
                        if tx.send(Ok(ev)).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:?}")));
                        break;
                    }
                }
            }
        });
        let mut c = V5Client {
            client,
            events,
            task,
        };
        let ack = loop {
            match c.next_event().await {
                Some(Ok(rumqttc::v5::Event::Incoming(V5Packet::ConnAck(a)))) => break a,
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("connect failed: {e}"),
                None => panic!("connect: no CONNACK within {WAIT:?}"),
            }
        };
        (c, ack)
    }

    /// Connects with clean start and default options.
    pub async fn connect(port: u16, id: &str) -> V5Client {
        V5Client::connect_with(v5_options(port, id)).await.0
    }

    /// The next event, or None after [`WAIT`].
    pub async fn next_event(&mut self) -> Option<Result<rumqttc::v5::Event, String>> {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next incoming packet matching `pick`, or None after `within`.
    pub async fn recv_packet_within<T>(
        &mut self,
        within: Duration,
        mut pick: impl FnMut(V5Packet) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(rumqttc::v5::Event::Incoming(p)))) => {
                    if let Some(t) = pick(p) {
                        return Some(t);
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => return None,
            }
        }
    }

    /// The next incoming PUBLISH; panics after [`WAIT`].
    pub async fn recv_publish(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
        self.recv_packet_within(WAIT, |p| match p {
            V5Packet::Publish(p) => Some(p),
            _ => None,
        })
        .await
        .expect("expected a PUBLISH within the wait time")
    }

    /// Sends DISCONNECT and waits for the event loop to finish.
    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        while let Some(Ok(_)) = self.next_event().await {}
        self.task.abort();
    }
}

// ---------------------------------------------------------------- raw bytes

/// A v3.1.1 CONNECT (clean session, keep-alive 60 s) with a user name and password.
pub fn connect_with_password(id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = mqtt_string("MQTT");
    body.extend([4, 0xC2, 0, 60]);
    body.extend(mqtt_string(id));
    body.extend(mqtt_string(user));
    body.extend(mqtt_string(password));
    packet(0x10, &body)
}

/// An MQTT 5 CONNECT (clean start, keep-alive 60 s, no properties) with a user name and
/// password.
pub fn connect_v5_with_password(id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = mqtt_string("MQTT");
    body.extend([5, 0xC2, 0, 60, 0]);
    body.extend(mqtt_string(id));
    body.extend(mqtt_string(user));
    body.extend(mqtt_string(password));
    packet(0x10, &body)
}

/// Connects with MQTT 5 and a user name and password; returns the connection and the CONNACK
/// reason code (0 success, 0x86 bad user name or password, 0x87 not authorized, …).
pub async fn connect_v5_as(port: u16, id: &str, user: &str, password: &str) -> (Wire, u8) {
    let mut w = Wire::open(port).await;
    w.send(&connect_v5_with_password(id, user, password)).await;
    let code = w.recv().await.expect("CONNACK").body[1];
    (w, code)
}

/// Connects with a user name and password (MQTT 3.1.1) and returns the CONNACK return code
/// (0 accepted, 3 server unavailable, 4 bad user name or password, 5 not authorised).
pub async fn connack_code(port: u16, id: &str, user: &str, password: &str) -> u8 {
    let mut w = Wire::open(port).await;
    w.send(&connect_with_password(id, user, password)).await;
    w.recv().await.expect("CONNACK").body[1]
}

/// A raw-byte MQTT client for malformed input and exact wire expectations.
pub struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A packet read off the wire: first byte and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPacket {
    /// Fixed header byte 1 (type and flags).
    pub byte1: u8,
    /// Everything after the remaining length.
    pub body: Vec<u8>,
}

impl RawPacket {
    /// Packet type (high nibble).
    pub fn kind(&self) -> u8 {
        self.byte1 >> 4
    }
}

/// Encodes a string with its two-byte length.
pub fn mqtt_string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

/// Encodes a remaining length.
pub fn var_int(mut n: usize) -> Vec<u8> {
    let mut v = Vec::new();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        v.push(b);
        if n == 0 {
            return v;
        }
    }
}

/// A whole packet from its first byte and body.
pub fn packet(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![byte1];
    v.extend(var_int(body.len()));
    v.extend_from_slice(body);
    v
}

/// CONNECT bytes. `level` 3 uses protocol name `MQIsdp`; level 5 adds an empty property block.
pub fn connect_packet(level: u8, client_id: &str, clean: bool, keep_alive: u16) -> Vec<u8> {
    let mut body = mqtt_string(if level == 3 { "MQIsdp" } else { "MQTT" });
    body.push(level);
    body.push(if clean { 0x02 } else { 0x00 });
    body.extend(keep_alive.to_be_bytes());
    if level == 5 {
        body.push(0);
    }
    body.extend(mqtt_string(client_id));
    packet(0x10, &body)
}

/// SUBSCRIBE bytes for one filter; `level` 5 adds an empty property block.
pub fn subscribe_packet(level: u8, packet_id: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if level == 5 {
        body.push(0);
    }
    body.extend(mqtt_string(filter));
    body.push(qos);
    packet(0x82, &body)
}

/// UNSUBSCRIBE bytes for one filter; `level` 5 adds an empty property block.
pub fn unsubscribe_packet(level: u8, packet_id: u16, filter: &str) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if level == 5 {
        body.push(0);
    }
    body.extend(mqtt_string(filter));
    packet(0xA2, &body)
}

/// PUBLISH bytes; `packet_id` is used for QoS > 0; `level` 5 adds an empty property block.
pub fn publish_packet(
    level: u8,
    topic: &str,
    qos: u8,
    packet_id: u16,
    retain: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = mqtt_string(topic);
    if qos > 0 {
        body.extend(packet_id.to_be_bytes());
    }
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1) | u8::from(retain), &body)
}

/// PINGREQ bytes.
pub const PINGREQ: [u8; 2] = [0xC0, 0x00];

impl Wire {
    /// Opens a TCP connection.
    pub async fn open(port: u16) -> Wire {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("tcp connect");
        // Each packet leaves when it is sent, as from MQTT client libraries (Nagle's algorithm
        // would hold a small write until the broker acknowledges the previous one).
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    /// Opens a connection and completes CONNECT / CONNACK at `level` (3, 4 or 5).
    pub async fn connected(port: u16, level: u8, client_id: &str) -> Wire {
        let mut w = Wire::open(port).await;
        w.send(&connect_packet(level, client_id, true, 60)).await;
        let ack = w.recv().await.expect("CONNACK");
        assert_eq!(ack.kind(), 2, "expected CONNACK, got {ack:?}");
        w
    }

    /// Sends PINGREQ and waits for PINGRESP: the broker is serving this connection.
    pub async fn ping(&mut self) -> bool {
        self.send(&PINGREQ).await;
        loop {
            match self.recv().await {
                Some(p) if p.kind() == 13 => return true,
                Some(_) => continue,
                None => return false,
            }
        }
    }

    /// Writes bytes (errors ignored: the broker may already have closed).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Writes bytes and says whether the socket took them: a client library that treats a
    /// failed write as a lost connection (Paho does) stops there.
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads one packet; None if the connection closes or nothing arrives within [`WAIT`].
    pub async fn recv(&mut self) -> Option<RawPacket> {
        self.recv_within(WAIT).await
    }

    /// Reads one packet within `within`.
    pub async fn recv_within(&mut self, within: Duration) -> Option<RawPacket> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(p) = self.take_packet() {
                return Some(p);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn take_packet(&mut self) -> Option<RawPacket> {
        let mut len = 0usize;
        let mut i = 1;
        loop {
            let b = *self.buf.get(i)?;
            len |= ((b & 0x7F) as usize) << (7 * (i - 1));
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if self.buf.len() < i + len {
            return None;
        }
        let byte1 = self.buf[0];
        let body = self.buf[i..i + len].to_vec();
        self.buf.drain(..i + len);
        Some(RawPacket { byte1, body })
    }

    /// True if the broker closes the connection within `within` (packets before the close are
    /// skipped; `seen` collects them).
    pub async fn closed_within(&mut self, within: Duration, seen: &mut Vec<RawPacket>) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(p) = self.take_packet() {
                seen.push(p);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return false,
            }
        }
    }
}

/// Publishes `payload` with `mosquitto_pub` to `topic` until a `mosquitto_sub` subscribed to
/// `filter` (same protocol `version`, e.g. `mqttv311`, and `qos`) receives one message, and
/// returns what it printed. Publishing again covers the time the subscriber needs to subscribe.
pub fn mosquitto_roundtrip(
    port: u16,
    version: &str,
    qos: &str,
    filter: &str,
    topic: &str,
    payload: &str,
) -> String {
    let port = port.to_string();
    let id = format!("sub-{version}-{qos}-{}", std::process::id());
    let common = ["-p", &port, "-V", version, "-q", qos];
    let mut sub = Command::new("mosquitto_sub")
        .args(common)
        .args(["-t", filter, "-C", "1", "-W", "10", "-i", &id])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    let deadline = Instant::now() + WAIT;
    loop {
        let status = Command::new("mosquitto_pub")
            .args(common)
            .args(["-t", topic, "-m", payload])
            .status()
            .expect("mosquitto_pub");
        assert!(status.success(), "mosquitto_pub {version} qos {qos}");
        if sub.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no delivery for {version} qos {qos}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = sub.wait_with_output().expect("sub output");
    assert!(out.status.success(), "mosquitto_sub: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// True when `name` (a command line tool, e.g. mosquitto_pub) is installed on the PATH.
pub fn tool_available(name: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

// ---------------------------------------------------------------- fixture builds

/// Turns a workspace member's manifest into a standalone one: `x.workspace = true` entries are
/// replaced by the root manifest's `[workspace.package]` / `[workspace.dependencies]` values.
fn standalone_manifest(member: &Path, root: &toml::Table) -> toml::Table {
    let text = std::fs::read_to_string(member.join("Cargo.toml")).expect("member manifest");
    let mut m: toml::Table = text.parse().expect("member manifest parses");
    let ws = root
        .get("workspace")
        .and_then(|w| w.as_table())
        .expect("[workspace]");
    let ws_pkg = ws
        .get("package")
        .and_then(|p| p.as_table())
        .cloned()
        .unwrap_or_default();
    let ws_deps = ws
        .get("dependencies")
        .and_then(|p| p.as_table())
        .cloned()
        .unwrap_or_default();
    m.remove("lints");
    if let Some(pkg) = m.get_mut("package").and_then(|p| p.as_table_mut()) {
        let keys: Vec<String> = pkg.keys().cloned().collect();
        for k in keys {
            let inherited = pkg[&k]
                .as_table()
                .is_some_and(|t| t.get("workspace").is_some());
            if inherited {
                match ws_pkg.get(&k) {
                    Some(v) => {
                        pkg.insert(k, v.clone());
                    }
                    None => {
                        pkg.remove(&k);
                    }
                }
            }
        }
    }
    if let Some(deps) = m.get_mut("dependencies").and_then(|d| d.as_table_mut()) {
        let keys: Vec<String> = deps.keys().cloned().collect();
        for k in keys {
            let Some(local) = deps[&k].as_table().cloned() else {
                continue;
            };
            if local.get("workspace").is_none() {
                continue;
            }
            let mut merged = match ws_deps.get(&k) {
                Some(toml::Value::String(v)) => {
                    let mut t = toml::Table::new();
                    t.insert("version".into(), toml::Value::String(v.clone()));
                    t
                }
                Some(toml::Value::Table(t)) => t.clone(),
                _ => toml::Table::new(),
            };
            if let Some(extra) = local.get("features").and_then(|f| f.as_array()) {
                let mut features = merged
                    .get("features")
                    .and_then(|f| f.as_array())
                    .cloned()
                    .unwrap_or_default();
                features.extend(extra.iter().cloned());
                merged.insert("features".into(), toml::Value::Array(features));
            }
            deps.insert(k, toml::Value::Table(merged));
        }
    }
    m
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Runs `cargo <args> --offline --quiet --target-dir <target>` in `dir`; panics with cargo's
/// output if it fails.
pub fn run_cargo(dir: &Path, args: &[&str], target: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(args)
        .args(["--offline", "--quiet", "--target-dir"])
        .arg(target)
        .current_dir(dir)
        .env_remove("RUSTFLAGS")
        .env("CARGO_TERM_COLOR", "never")
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo {args:?} in {} failed:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The shipped `etc/broker.toml`, made safe to run beside other tests: its listeners and
/// management API on free ports of 127.0.0.1, its data in `dir/data`, plugins loaded from
/// `plugin_dir`, and `etc/plugins/*.toml` copied into `dir/plugins` (where the shipped config
/// reads them) with the dashboard on a free port too. Every other setting is the shipped one;
/// a change to the shipped file that this cannot follow fails here, naming what is missing.
pub fn shipped_config(dir: &Path, plugin_dir: &Path) -> String {
    let etc = workspace_root().join("etc");
    let text = std::fs::read_to_string(etc.join("broker.toml")).expect("etc/broker.toml");
    let quoted = |p: &Path| format!("{:?}", p.display().to_string());
    let config = [
        (
            "data_dir = \"data\"",
            format!("data_dir = {}", quoted(&dir.join("data"))),
        ),
        (
            "plugin_dir = \"target/release\"",
            format!("plugin_dir = {}", quoted(plugin_dir)),
        ),
        ("\"0.0.0.0:1883\"", "\"127.0.0.1:0\"".to_owned()),
        ("\"0.0.0.0:8083\"", "\"127.0.0.1:0\"".to_owned()),
        ("\"127.0.0.1:18083\"", "\"127.0.0.1:0\"".to_owned()),
    ]
    .iter()
    .fold(text, |text, (from, to)| {
        assert!(text.contains(from), "etc/broker.toml no longer has {from}");
        text.replacen(from, to, 1)
    });
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    for entry in std::fs::read_dir(etc.join("plugins")).expect("etc/plugins") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).expect("plugin config");
            let text = text.replace("\"127.0.0.1:18084\"", "\"127.0.0.1:0\"");
            let name = path.file_name().expect("file name");
            std::fs::write(plugins.join(name), text).expect("write plugin config");
        }
    }
    config
}

/// The workspace root (where the top-level Cargo.toml is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Builds the `blocker` fixture plugin against a *copy* of `plugin-api` changed by `mutate`
/// (which gets the copy's directory), in a throw-away workspace outside this one, offline, with
/// `panic_abort` selecting `panic = "abort"`. Returns the built library's bytes.
///
/// This is how a plugin built against another version of the API really comes about: another
/// copy of the crate, compiled separately.
pub fn build_blocker_variant(panic_abort: bool, mutate: impl Fn(&Path)) -> Vec<u8> {
    build_fixture_variant(panic_abort, mutate, |_| {})
}

/// Like [`build_blocker_variant`], and `mutate_plugin` also gets the copied blocker crate's
/// directory (to change its version or its code: a rebuilt plugin).
pub fn build_fixture_variant(
    panic_abort: bool,
    mutate: impl Fn(&Path),
    mutate_plugin: impl Fn(&Path),
) -> Vec<u8> {
    let root_dir = workspace_root();
    let root: toml::Table = std::fs::read_to_string(root_dir.join("Cargo.toml"))
        .expect("root manifest")
        .parse()
        .expect("root manifest parses");
    let ws = tempfile::tempdir().expect("tmp");
    // Cargo hashes workspace members by their path relative to the workspace root; a unique
    // directory per build keeps variants from sharing (stale) artifacts in the shared target.
    let unique = format!(
        "v{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let api = ws.path().join(&unique).join("plugin-api");
    copy_dir(&root_dir.join("plugin-api/src"), &api.join("src"));
    let api_manifest = standalone_manifest(&root_dir.join("plugin-api"), &root);
    std::fs::write(
        api.join("Cargo.toml"),
        toml::to_string(&api_manifest).expect("toml"),
    )
    .expect("write");
    let blocker = ws.path().join(&unique).join("blocker");
    copy_dir(
        &root_dir.join("tests/fixtures/blocker/src"),
        &blocker.join("src"),
    );
    let mut blocker_manifest = standalone_manifest(&root_dir.join("tests/fixtures/blocker"), &root);
    if let Some(deps) = blocker_manifest
        .get_mut("dependencies")
        .and_then(|d| d.as_table_mut())
    {
        let mut path = toml::Table::new();
        path.insert("path".into(), toml::Value::String("../plugin-api".into()));
        deps.insert("plugin-api".into(), toml::Value::Table(path));
    }
    std::fs::write(
        blocker.join("Cargo.toml"),
        toml::to_string(&blocker_manifest).expect("toml"),
    )
    .expect("write");
    let mut ws_manifest =
        format!("[workspace]\nresolver = \"2\"\nmembers = [\"{unique}/plugin-api\", \"{unique}/blocker\"]\n");
    if panic_abort {
        ws_manifest.push_str("\n[profile.dev]\npanic = \"abort\"\n");
    }
    std::fs::write(ws.path().join("Cargo.toml"), ws_manifest).expect("write");
    std::fs::copy(root_dir.join("Cargo.lock"), ws.path().join("Cargo.lock")).expect("lock file");
    mutate(&api);
    mutate_plugin(&blocker);
    // One target directory for every variant: shared dependencies are built once, and the
    // variants' own crates differ in source path or flags, so their artifacts do not collide.
    // Cargo's lock serialises concurrent builds; each caller reads its library right away.
    let target = bin_dir()
        .parent()
        .expect("target dir")
        .join("fixture-build");
    std::fs::create_dir_all(&target).expect("fixture target dir");
    // Concurrent fixture builds (tests run in parallel, in several test binaries) would race on
    // the uplifted target/debug/libblocker.so: hold a file lock over build and read.
    let lock = std::fs::File::create(target.join(".fixture.lock")).expect("lock file");
    lock.lock().expect("lock fixture builds");
    run_cargo(ws.path(), &["build", "-p", "blocker"], &target);
    std::fs::read(target.join("debug").join("libblocker.so")).expect("built library")
}

// ---------------------------------------------------------------- TLS and WebSocket

/// A test PKI made with rcgen: a CA, a server certificate for localhost / 127.0.0.1 and a
/// client certificate, written as PEM files into `dir`.
pub struct TestPki {
    /// CA certificate (PEM file).
    pub ca: PathBuf,
    /// Server certificate chain (PEM file).
    pub server_cert: PathBuf,
    /// Server key (PEM file).
    pub server_key: PathBuf,
    /// Client certificate (PEM file), CN = the `client_cn` given.
    pub client_cert: PathBuf,
    /// Client key (PEM file).
    pub client_key: PathBuf,
}

impl TestPki {
    /// Generates the PKI into `dir`.
    pub fn generate(dir: &Path, client_cn: &str) -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "broker test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().expect("server key");
        let mut sp = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server params");
        sp.distinguished_name.push(DnType::CommonName, "localhost");
        let server_cert = sp.signed_by(&server_key, &issuer).expect("server cert");
        let client_key = KeyPair::generate().expect("client key");
        let mut cp = CertificateParams::new(Vec::<String>::new()).expect("client params");
        cp.distinguished_name.push(DnType::CommonName, client_cn);
        cp.distinguished_name
            .push(DnType::OrganizationName, "Test Devices");
        let client_cert = cp.signed_by(&client_key, &issuer).expect("client cert");
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write PEM");
            p
        };
        TestPki {
            ca: write("ca.pem", ca_cert.pem()),
            server_cert: write("server.pem", server_cert.pem()),
            server_key: write("server.key", server_key.serialize_pem()),
            client_cert: write("client.pem", client_cert.pem()),
            client_key: write("client.key", client_key.serialize_pem()),
        }
    }

    /// A `[listener.tls]`-ready listener table for the config.
    pub fn listener(&self, name: &str, kind: &str, verify: &str) -> String {
        format!(
            "[[listener]]\nname = {name:?}\nkind = {kind:?}\nbind = \"127.0.0.1:0\"\n[listener.tls]\ncert_file = {:?}\nkey_file = {:?}\nca_file = {:?}\nverify = {verify:?}\n",
            self.server_cert.display().to_string(),
            self.server_key.display().to_string(),
            self.ca.display().to_string()
        )
    }
}

/// A rustls client config trusting `ca`, optionally presenting a client certificate.
pub fn tls_client_config(
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(c.expect("CA cert")).expect("add CA");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .expect("cert")
                .map(|c| c.expect("cert"))
                .collect();
            let key = PrivateKeyDer::from_pem_file(key).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    std::sync::Arc::new(config)
}

/// Addresses of every listener, by name, from the broker's listeners.json.
pub fn listener_addr(b: &Broker, name: &str) -> SocketAddr {
    let text =
        std::fs::read_to_string(b.data_dir().join("listeners.json")).expect("listeners.json");
    let list: Vec<serde_json::Value> = serde_json::from_str(&text).expect("json");
    list.iter()
        .find(|v| v["name"] == name)
        .and_then(|v| v["addr"].as_str())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no listener {name} in {text}"))
}

// ---------------------------------------------------------------- management API

/// An HTTP client for a broker's management API (reqwest, a real HTTP client).
pub struct Api {
    /// `http://127.0.0.1:<port>` (or https).
    pub base: String,
    /// The admin token.
    pub token: String,
    http: reqwest::Client,
}

/// What the API answered.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body as JSON (`Null` when empty or not JSON).
    pub json: serde_json::Value,
    /// The body as text.
    pub text: String,
}

impl Broker {
    /// Creates an API key with `brokerctl apikey create <name>`; returns (api_key, api_secret)
    /// as it printed them.
    pub fn create_api_key(&self, name: &str) -> (String, String) {
        let out = self.ctl_ok(&["apikey", "create", name]);
        let field = |label: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(label))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("{label} in {out}"))
        };
        (field("api_key"), field("api_secret"))
    }
}

impl Api {
    /// The management API of `b`, over plain HTTP, with its admin token.
    pub fn of(b: &Broker) -> Api {
        let addr = listener_addr(b, "admin");
        let token = std::fs::read_to_string(b.data_dir().join("admin.token")).expect("token");
        Api::new(&format!("http://{addr}"), token.trim(), None)
    }

    /// A client for `base`, trusting `ca` for https.
    pub fn new(base: &str, token: &str, ca: Option<&Path>) -> Api {
        let tls = match ca {
            Some(ca) => (*tls_client_config(ca, None)).clone(),
            None => rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        };
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(WAIT)
            .build()
            .expect("http client");
        Api {
            base: base.to_owned(),
            token: token.to_owned(),
            http,
        }
    }

    /// Sends a request with `authorization` (None = no header).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(a) = authorization {
            r = r.header("Authorization", a);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let response = r.send().await.expect("management API answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        Answer {
            status,
            json: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
            text,
        }
    }

    /// A request with the admin token.
    pub async fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Answer {
        let auth = format!("Bearer {}", self.token);
        self.send(method, path, Some(&auth), body).await
    }

    /// GET with the admin token.
    pub async fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None).await
    }
}
