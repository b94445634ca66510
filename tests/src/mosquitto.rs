//! A private Mosquitto broker per test (Debian's `mosquitto`, the remote side of the bridge
//! tests): anonymous access on a free port, persistence in a temporary directory so persistent
//! sessions survive [`Mosquitto::stop`] / [`Mosquitto::start_again`].
//!
//! [`Mosquitto::start`] returns `None` when Mosquitto is not installed, outside CI; under
//! `CI=true` that is a failure (`.ci/run` installs it).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A running (or stopped) private Mosquitto; dropping it kills it.
pub struct Mosquitto {
    dir: tempfile::TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
    binary: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts one; `None` when Mosquitto is not installed (outside CI).
    pub fn start() -> Option<Mosquitto> {
        let paths = [
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ];
        let binary = crate::server_binary(&paths, "mosquitto")?;
        let dir = tempfile::tempdir().expect("temp dir");
        let port = crate::free_port();
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nautosave_interval 1\nmax_queued_messages 100000\nlog_dest file {}/mosquitto.log\n",
            dir.path().display(),
            dir.path().display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("mosquitto.conf");
        let mut m = Mosquitto {
            dir,
            port,
            binary,
            child: None,
        };
        m.start_again();
        Some(m)
    }

    /// Starts it again after [`Mosquitto::stop`] (same port and data) and waits until it
    /// accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: geteuid has no preconditions. As root Mosquitto drops to the `mosquitto`
        // account, which could not write our directory: let it keep root here.
        if unsafe { libc::geteuid() } == 0 {
            let conf = self.dir.path().join("mosquitto.conf");
            let mut text = std::fs::read_to_string(&conf).expect("conf");
            if !text.contains("\nuser root") {
                text.push_str("user root\n");
                std::fs::write(&conf, text).expect("conf");
            }
        }
        let mut child = cmd.spawn().expect("spawn mosquitto");
        let log = self.dir.path().join("mosquitto.log");
        crate::wait_listening(&mut child, self.port, "mosquitto", &log);
        self.child = Some(child);
    }

    /// Stops it (SIGTERM: it saves its persistent sessions) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::signal_and_wait(child, libc::SIGTERM);
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
