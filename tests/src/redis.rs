//! Private Redis servers per test: `redis-server` on free ports in a temporary directory, no
//! persistence, a password ([`RedisServer::PASSWORD`]); optionally TLS, a sentinel watching
//! the server, or a three-node cluster.
//!
//! [`RedisServer::start`] returns `None` when Redis is not installed, outside CI; under
//! `CI=true` that is a failure (`.ci/run` installs Debian's redis-server).

use crate::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn installed() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Redis is not installed: .ci/run installs redis-server"
        );
        eprintln!("Redis is not installed: skipping (apt-get install redis-server)");
    }
    found
}

/// TLS files for a server: certificate, key and the CA clients trust.
pub struct RedisTls {
    /// Server certificate (PEM).
    pub cert: PathBuf,
    /// Server key (PEM).
    pub key: PathBuf,
    /// CA certificate (PEM).
    pub ca: PathBuf,
}

/// One running (or stopped) redis-server; dropping it kills the server.
pub struct RedisServer {
    dir: tempfile::TempDir,
    /// The port clients use (TLS when started with TLS).
    pub port: u16,
    args: Vec<String>,
    tls: Option<PathBuf>,
    child: Option<Child>,
}

impl RedisServer {
    /// The password every test server requires.
    pub const PASSWORD: &'static str = "redis-secret";

    /// Starts a plain server; `None` when Redis is not installed (outside CI).
    pub fn start() -> Option<RedisServer> {
        RedisServer::start_with(&[], None)
    }

    /// Starts a server with more `redis-server` options, and TLS only when `tls` is given.
    /// A port taken between choosing it and the server binding it is retried with another.
    pub fn start_with(extra: &[&str], tls: Option<&RedisTls>) -> Option<RedisServer> {
        if !installed() {
            return None;
        }
        for _ in 0..4 {
            match RedisServer::try_start_with(extra, tls) {
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("redis-server did not start: {log}"),
                Ok(server) => return Some(server),
            }
        }
        RedisServer::try_start_with(extra, tls)
            .map(Some)
            .unwrap_or_else(|log| panic!("redis-server did not start: {log}"))
    }

    /// One attempt of [`RedisServer::start_with`]: `Err` with the server's log if it exited.
    pub fn try_start_with(extra: &[&str], tls: Option<&RedisTls>) -> Result<RedisServer, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--requirepass".into(),
            RedisServer::PASSWORD.into(),
            "--masterauth".into(),
            RedisServer::PASSWORD.into(),
            "--dir".into(),
            dir.path().display().to_string(),
        ];
        match tls {
            Some(t) => args.extend([
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                t.cert.display().to_string(),
                "--tls-key-file".into(),
                t.key.display().to_string(),
                "--tls-ca-cert-file".into(),
                t.ca.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ]),
            None => args.extend(["--port".into(), port.to_string()]),
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = RedisServer {
            dir,
            port,
            args,
            tls: tls.map(|t| t.ca.clone()),
            child: None,
        };
        server.try_start_again()?;
        Ok(server)
    }

    /// Starts the server again after [`RedisServer::stop`] (same port, empty data) and waits
    /// until it answers.
    pub fn start_again(&mut self) {
        if let Err(log) = self.try_start_again() {
            panic!("redis-server exited: {log}");
        }
    }

    /// Starts the server and waits until it answers; `Err` with its log if it exits first.
    fn try_start_again(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "already running");
        let log = self.dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args(&self.args)
            .arg("--logfile")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.try_cli(&["PING"]).map(|s| s.trim().to_owned()) != Ok("PONG".into()) {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!(
                    "exit {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops the server and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// This server's directory (for extra files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-a", RedisServer::PASSWORD, "--no-auth-warning"]);
        if let Some(ca) = &self.tls {
            cmd.arg("--tls").arg("--cacert").arg(ca);
        }
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && !text.starts_with("ERR") && !text.starts_with("NOAUTH") {
            Ok(text)
        } else {
            Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// Runs one command through `redis-cli` (each argument as given); returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|e| panic!("redis-cli {args:?}: {e}"))
    }

    /// An auth_redis config reaching this server, followed by `extra` lines.
    pub fn plugin_config(&self, extra: &str) -> String {
        format!(
            "server = \"127.0.0.1:{}\"\npassword = \"{}\"\n{extra}\n",
            self.port,
            RedisServer::PASSWORD
        )
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A sentinel watching one master under the name `mymaster`.
pub struct RedisSentinel {
    /// The sentinel's port.
    pub port: u16,
    _server: RedisServer,
    child: Child,
}

impl RedisSentinel {
    /// Starts a sentinel for `master` (which it then owns).
    pub fn watch(master: RedisServer) -> RedisSentinel {
        let port = free_port();
        let conf = master.dir().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {} 1\nsentinel auth-pass mymaster {}\n",
                master.dir().display(),
                master.port,
                RedisServer::PASSWORD
            ),
        )
        .expect("sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis sentinel");
        let s = RedisSentinel {
            port,
            _server: master,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .args(["SENTINEL", "get-master-addr-by-name", "mymaster"])
                .output();
            if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("127.0.0.1")) {
                return s;
            }
            assert!(Instant::now() < deadline, "the sentinel did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A three-master Redis Cluster.
pub struct RedisCluster {
    /// The nodes (each serves a third of the slots).
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three nodes and joins them; `None` when Redis is not installed (outside CI).
    pub fn start() -> Option<RedisCluster> {
        let mut nodes = Vec::new();
        if !installed() {
            return None;
        }
        for _ in 0..3 {
            // Both ports are chosen free, but another process may take either before the node
            // binds it: then both are chosen again.
            let mut attempts = 0;
            let node = loop {
                let bus = free_port().to_string();
                let extra = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus,
                    "--cluster-node-timeout",
                    "2000",
                ];
                match RedisServer::try_start_with(&extra, None) {
                    Ok(node) => break node,
                    Err(log) if attempts < 4 && log.contains("Address already in use") => {
                        attempts += 1;
                    }
                    Err(log) => panic!("redis cluster node did not start: {log}"),
                }
            };
            nodes.push(node);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args([
                "-a",
                RedisServer::PASSWORD,
                "--no-auth-warning",
                "--cluster",
                "create",
            ])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(RedisCluster { nodes })
    }

    /// Runs a command on the cluster (following redirections).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-c", "-p", &self.nodes[0].port.to_string()])
            .args(["-a", RedisServer::PASSWORD, "--no-auth-warning"])
            .args(args)
            .output()
            .expect("redis-cli -c");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The `server` value listing every node.
    pub fn servers(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }
}
