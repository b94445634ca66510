//! A private MariaDB server per test: `mariadb-install-db` into a temporary data directory,
//! then `mariadbd` on a free TCP port and a socket in that directory.
//!
//! [`MariaDb::start`] returns `None` when MariaDB is not installed, so a developer without it
//! can run the rest of the suite; under `CI=true` a missing server is a failure (`.ci/run`
//! installs Debian's mariadb-server, so CI always runs these tests). The server gets the
//! database `mqtt` with the shipped schema (`etc/plugins/auth_mysql.sql`) and a user `broker`
//! (password [`MariaDb::PASSWORD`]) that the plugin logs in as.

use crate::free_port;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped) private MariaDB server; dropping it kills the server.
pub struct MariaDb {
    dir: tempfile::TempDir,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    server: PathBuf,
    client: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path
        .split(':')
        .map(PathBuf::from)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from));
    let dirs: Vec<PathBuf> = dirs.collect();
    names
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Options that keep a throw-away server small and quick to start.
const SMALL: [&str; 5] = [
    "--innodb-log-file-size=4M",
    "--innodb-data-file-path=ibdata1:4M:autoextend",
    "--innodb-buffer-pool-size=16M",
    "--performance-schema=OFF",
    "--skip-name-resolve",
];

impl MariaDb {
    /// The database password of the `broker` user.
    pub const PASSWORD: &'static str = "db-secret";

    /// Starts a server with the schema loaded; `None` when MariaDB is not installed (outside
    /// CI). `extra` are more `mariadbd` options, e.g. `--wait-timeout=2`.
    pub fn start(extra: &[&str]) -> Option<MariaDb> {
        let tools = (
            find(&["mariadb-install-db", "mysql_install_db"]),
            find(&["mariadbd", "mysqld"]),
            find(&["mariadb", "mysql"]),
        );
        let (Some(install), Some(server), Some(client)) = tools else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "MariaDB is not installed: .ci/run installs mariadb-server"
            );
            eprintln!("MariaDB is not installed: skipping (apt-get install mariadb-server)");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        // A private tmpdir too: servers clean stale temporary tables out of theirs at start,
        // which would break another server's bootstrap sharing /tmp.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("tmpdir");
        let mut cmd = Command::new(&install);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .args(SMALL)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if is_root() {
            cmd.arg("--user=root");
        }
        let out = cmd.output().expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut db = MariaDb {
            dir,
            port: free_port(),
            server,
            client,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        db.start_again();
        let schema =
            std::fs::read_to_string(crate::workspace_root().join("etc/plugins/auth_mysql.sql"))
                .expect("etc/plugins/auth_mysql.sql");
        db.root_sql(&format!(
            "create database mqtt; create user 'broker'@'%' identified by '{}'; \
             grant all on mqtt.* to 'broker'@'%'; use mqtt; {schema}",
            MariaDb::PASSWORD
        ));
        Some(db)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's Unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("mysqld.sock")
    }

    /// Starts the server (again, after [`MariaDb::stop`]) on the same port and data, and waits
    /// until it answers queries.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        let log = self.dir.path().join("error.log");
        let mut cmd = Command::new(&self.server);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.data_dir().display()))
            .arg(format!(
                "--tmpdir={}",
                self.dir.path().join("tmp").display()
            ))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("mysqld.pid").display()
            ))
            .arg(format!("--log-error={}", log.display()))
            .args(SMALL)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if is_root() {
            cmd.arg("--user=root");
        }
        self.child = Some(cmd.spawn().expect("spawn mariadbd"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.try_sql("select 1").is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "mariadbd exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not answer within 60 s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (SIGTERM, as `systemctl stop` does) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::signal_and_wait(child, libc::SIGTERM);
        }
    }

    fn try_sql_as(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(&self.client)
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["--user=root", "--batch", "--skip-column-names"])
            .args(if db.is_empty() { vec![] } else { vec![db] })
            .arg("-e")
            .arg(sql)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn try_sql(&self, sql: &str) -> Result<String, String> {
        self.try_sql_as("", sql)
    }

    fn root_sql(&self, sql: &str) -> String {
        self.try_sql(sql)
            .unwrap_or_else(|e| panic!("SQL failed: {e}\n{sql}"))
    }

    /// Runs `sql` in the `mqtt` database as root; returns the tab-separated rows.
    pub fn sql(&self, sql: &str) -> String {
        self.try_sql_as("mqtt", sql)
            .unwrap_or_else(|e| panic!("SQL failed: {e}\n{sql}"))
    }

    /// How many connections the `broker` user has open.
    pub fn broker_connections(&self) -> usize {
        self.root_sql("select count(*) from information_schema.processlist where user = 'broker'")
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// An auth_mysql config reaching this server over TCP, followed by `extra` lines.
    pub fn plugin_config(&self, extra: &str) -> String {
        format!(
            "server = \"127.0.0.1:{}\"\nusername = \"broker\"\npassword = \"{}\"\ndatabase = \"mqtt\"\n{extra}\n",
            self.port,
            MariaDb::PASSWORD
        )
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
