//! A private `nats-server` with JetStream per test (Debian's `nats-server`, the messaging layer
//! of the cluster tests): a free port on 127.0.0.1, its JetStream store in a temporary
//! directory so [`Nats::stop`] / [`Nats::start_again`] keep the key-value buckets.
//!
//! [`Nats::start`] returns `None` when nats-server is not installed, outside CI; under
//! `CI=true` that is a failure (`.ci/run` installs it).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A running (or stopped) private NATS server; dropping it kills it.
pub struct Nats {
    dir: tempfile::TempDir,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    binary: PathBuf,
    child: Option<Child>,
}

impl Nats {
    /// Starts one; `None` when nats-server is not installed (outside CI).
    pub fn start() -> Option<Nats> {
        let paths = [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ];
        let binary = crate::server_binary(&paths, "nats-server")?;
        let dir = tempfile::tempdir().expect("temp dir");
        let port = crate::free_port();
        let mut n = Nats {
            dir,
            port,
            binary,
            child: None,
        };
        n.start_again();
        Some(n)
    }

    /// The URL brokers connect to.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it again after [`Nats::stop`] (same port and JetStream store) and waits until
    /// it accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let store = self.dir.path().join("jetstream");
        let log = self.dir.path().join("nats.log");
        let mut child = Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&store)
            .arg("-l")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        crate::wait_listening(&mut child, self.port, "nats-server", &log);
        self.child = Some(child);
    }

    /// Stops it (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::signal_and_wait(child, libc::SIGTERM);
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
