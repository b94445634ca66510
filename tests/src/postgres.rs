//! A private PostgreSQL server per test: `initdb` into a temporary directory, then `postgres`
//! on a free TCP port with its socket in that directory.
//!
//! PostgreSQL refuses to run as root; under root (CI) the server and `initdb` run as the
//! `postgres` account Debian's package creates. [`Postgres::start`] returns `None` when
//! PostgreSQL is not installed, outside CI; under `CI=true` that is a failure (`.ci/run`
//! installs it). The server gets a login `broker` (password [`Postgres::PASSWORD`], checked
//! with SCRAM over TCP) owning the database `mqtt` with the shipped schema
//! (`etc/plugins/auth_pgsql.sql`).

use crate::free_port;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped) private PostgreSQL server; dropping it kills the server.
pub struct Postgres {
    dir: tempfile::TempDir,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    /// The account the server runs as when the tests run as root.
    account: Option<(u32, u32)>,
    child: Option<Child>,
}

/// The newest `/usr/lib/postgresql/<version>/bin` with a server, or the one on PATH.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("postgres").is_file() && b.join("initdb").is_file())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop().or_else(|| {
        let path = std::env::var("PATH").unwrap_or_default();
        path.split(':')
            .map(PathBuf::from)
            .find(|d| d.join("postgres").is_file() && d.join("initdb").is_file())
    })
}

/// uid and gid of `name`.
fn account(name: &str) -> Option<(u32, u32)> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam with a valid C string; the result is read at once, before any other
    // call that could reuse its static buffer.
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        if pw.is_null() {
            None
        } else {
            Some(((*pw).pw_uid, (*pw).pw_gid))
        }
    }
}

impl Postgres {
    /// The database password of the `broker` login.
    pub const PASSWORD: &'static str = "db-secret";

    /// Starts a server with the schema loaded; `None` when PostgreSQL is not installed
    /// (outside CI).
    pub fn start() -> Option<Postgres> {
        Postgres::start_inner(None)
    }

    /// Like [`Postgres::start`], with TLS (`cert` and `key`, PEM) required of TCP clients.
    pub fn start_tls(cert: &Path, key: &Path) -> Option<Postgres> {
        Postgres::start_inner(Some((cert, key)))
    }

    fn start_inner(tls: Option<(&Path, &Path)>) -> Option<Postgres> {
        let Some(bin) = bin_dir() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL is not installed: .ci/run installs postgresql"
            );
            eprintln!("PostgreSQL is not installed: skipping (apt-get install postgresql)");
            return None;
        };
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let account = if root {
            Some(account("postgres").expect("the postgres account (Debian's postgresql package)"))
        } else {
            None
        };
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some((uid, gid)) = account {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        let mut pg = Postgres {
            dir,
            port: free_port(),
            bin,
            account,
            child: None,
        };
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(pg.data_dir())
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some((cert, key)) = tls {
            pg.require_tls(cert, key);
        }
        pg.start_again();
        pg.sql_in(
            "postgres",
            &format!("create user broker password '{}'", Postgres::PASSWORD),
        );
        pg.sql_in("postgres", "create database mqtt owner broker");
        let schema =
            std::fs::read_to_string(crate::workspace_root().join("etc/plugins/auth_pgsql.sql"))
                .expect("etc/plugins/auth_pgsql.sql");
        pg.psql("broker", "mqtt", &schema)
            .unwrap_or_else(|e| panic!("schema: {e}"));
        Some(pg)
    }

    /// Serves TLS with `cert` / `key` and accepts TCP logins only over it.
    fn require_tls(&self, cert: &Path, key: &Path) {
        let data = self.data_dir();
        for (from, to, mode) in [(cert, "server.crt", 0o644), (key, "server.key", 0o600)] {
            let path = data.join(to);
            std::fs::copy(from, &path).expect("copy TLS file");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            if let Some((uid, gid)) = self.account {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
            }
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).expect("write postgresql.conf");
        let hba = data.join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba).expect("pg_hba.conf");
        let text: String = text
            .lines()
            .map(|l| match l.strip_prefix("host ") {
                Some(rest) => format!("hostssl {rest}\n"),
                None => format!("{l}\n"),
            })
            .collect();
        std::fs::write(&hba, text).expect("write pg_hba.conf");
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(tool));
        if let Some((uid, gid)) = self.account {
            cmd.uid(uid).gid(gid);
        }
        cmd.env("LC_ALL", "C");
        cmd
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the server (again, after [`Postgres::stop`]) and waits until it answers.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        let log = self.dir.path().join("server.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        if let Some((uid, gid)) = self.account {
            std::os::unix::fs::chown(&log, Some(uid), Some(gid)).expect("chown log");
        }
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.socket_dir())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "shared_buffers=16MB",
                "-c",
                "max_connections=40",
            ])
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.psql("postgres", "postgres", "select 1").is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "postgres exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not answer within 60 s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (SIGTERM: smart shutdown) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::signal_and_wait(child, libc::SIGINT);
        }
    }

    fn psql(&self, user: &str, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args([
                "-U",
                user,
                "-d",
                db,
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn sql_in(&self, db: &str, sql: &str) -> String {
        self.psql("postgres", db, sql)
            .unwrap_or_else(|e| panic!("SQL failed: {e}\n{sql}"))
    }

    /// Runs `sql` in the `mqtt` database as the superuser; returns the rows, `|`-separated.
    pub fn sql(&self, sql: &str) -> String {
        self.sql_in("mqtt", sql)
    }

    /// How many connections the `broker` login has open.
    pub fn broker_connections(&self) -> usize {
        self.sql("select count(*) from pg_stat_activity where usename = 'broker'")
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// An auth_pgsql config reaching this server over TCP, followed by `extra` lines.
    pub fn plugin_config(&self, extra: &str) -> String {
        format!(
            "server = \"127.0.0.1:{}\"\nusername = \"broker\"\npassword = \"{}\"\ndatabase = \"mqtt\"\n{extra}\n",
            self.port,
            Postgres::PASSWORD
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            // SIGQUIT: immediate shutdown, which still removes the server's shared memory.
            crate::signal_and_wait(child, libc::SIGQUIT);
        }
    }
}
