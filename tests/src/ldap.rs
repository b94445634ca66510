//! A private OpenLDAP server per test: `slapd` with a slapd.conf of its own (the shipped
//! `etc/plugins/auth_ldap.schema` included, an mdb database for `dc=emqx,dc=io`) on a free
//! port, plain or ldaps://.
//!
//! [`Slapd::start`] returns `None` when slapd is not installed, outside CI; under `CI=true`
//! that is a failure (`.ci/run` installs Debian's slapd and ldap-utils). The directory starts
//! with `dc=emqx,dc=io` and `ou=device,dc=emqx,dc=io`; the password attribute is readable only
//! by the root DN (the account the plugin binds as) and usable by anyone to bind.

use crate::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn slapd_binary() -> Option<PathBuf> {
    [
        "/usr/sbin/slapd",
        "/usr/local/sbin/slapd",
        "/usr/libexec/slapd",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// A running (or stopped) private slapd; dropping it kills the server.
pub struct Slapd {
    dir: tempfile::TempDir,
    /// The port (ldaps:// when started with TLS).
    pub port: u16,
    binary: PathBuf,
    ca: Option<PathBuf>,
    child: Option<Child>,
}

impl Slapd {
    /// The root DN (the service account in the tests).
    pub const ROOT_DN: &'static str = "cn=root,dc=emqx,dc=io";
    /// Its password.
    pub const ROOT_PASSWORD: &'static str = "ldap-secret";

    /// Starts a plain-LDAP server; `None` when slapd is not installed (outside CI).
    pub fn start() -> Option<Slapd> {
        Slapd::start_inner(None)
    }

    /// Starts an ldaps:// server with `cert` / `key` (PEM); `ca` is what clients trust.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> Option<Slapd> {
        Slapd::start_inner(Some((cert, key, ca)))
    }

    fn start_inner(tls: Option<(&Path, &Path, &Path)>) -> Option<Slapd> {
        let Some(binary) = slapd_binary() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "slapd is not installed: .ci/run installs slapd and ldap-utils"
            );
            eprintln!("slapd is not installed: skipping (apt-get install slapd ldap-utils)");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("db")).expect("db dir");
        let schema = crate::workspace_root().join("etc/plugins/auth_ldap.schema");
        let tls_conf = match tls {
            Some((cert, key, _)) => format!(
                "TLSCertificateFile {}\nTLSCertificateKeyFile {}\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include {schema}\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             pidfile {dir}/slapd.pid\n\
             {tls_conf}\
             database mdb\n\
             maxsize 10485760\n\
             suffix \"dc=emqx,dc=io\"\n\
             rootdn \"{root}\"\n\
             rootpw {password}\n\
             directory {dir}/db\n\
             access to attrs=userPassword by dn.exact=\"{root}\" read by anonymous auth by * none\n\
             access to * by * read\n",
            schema = schema.display(),
            dir = dir.path().display(),
            root = Slapd::ROOT_DN,
            password = Slapd::ROOT_PASSWORD,
        );
        std::fs::write(dir.path().join("slapd.conf"), conf).expect("slapd.conf");
        let mut s = Slapd {
            dir,
            port: free_port(),
            binary,
            ca: tls.map(|(_, _, ca)| ca.to_owned()),
            child: None,
        };
        s.start_again();
        s.add(
            "dn: dc=emqx,dc=io\nobjectClass: dcObject\nobjectClass: organization\no: emqx\ndc: emqx\n\n\
             dn: ou=device,dc=emqx,dc=io\nobjectClass: organizationalUnit\nou: device\n",
        );
        Some(s)
    }

    fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "ldaps" } else { "ldap" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Starts the server again after [`Slapd::stop`] (same port and data) and waits until it
    /// answers.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(&self.binary)
            .arg("-f")
            .arg(self.dir.path().join("slapd.conf"))
            .arg("-h")
            .arg(format!("{}/", self.url()))
            // A debug level keeps slapd in the foreground (our child); 0 logs nothing.
            .args(["-d", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn slapd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self
                .tool("ldapwhoami")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("slapd exited with {status}");
            }
            assert!(Instant::now() < deadline, "slapd did not answer");
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// Stops the server and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::signal_and_wait(child, libc::SIGTERM);
        }
    }

    /// An OpenLDAP client tool, bound as the root DN.
    fn tool(&self, name: &str) -> Command {
        let mut cmd = Command::new(name);
        cmd.args([
            "-x",
            "-H",
            &self.url(),
            "-D",
            Slapd::ROOT_DN,
            "-w",
            Slapd::ROOT_PASSWORD,
        ]);
        if let Some(ca) = &self.ca {
            cmd.env("LDAPTLS_CACERT", ca);
        }
        cmd
    }

    /// Adds entries (LDIF) as the root DN.
    pub fn add(&self, ldif: &str) {
        use std::io::Write;
        let mut child = self
            .tool("ldapadd")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ldapadd");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(ldif.as_bytes())
            .expect("write LDIF");
        let out = child.wait_with_output().expect("ldapadd");
        assert!(
            out.status.success(),
            "ldapadd failed: {}\n{ldif}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Adds a device `uid=<uid>,ou=device,dc=emqx,dc=io` with `password` (a userPassword value)
    /// and `extra` attribute lines.
    pub fn add_device(&self, uid: &str, password: &str, extra: &str) {
        use base64::Engine as _;
        // Base64 LDIF values (`::`): any byte of a user name survives.
        let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
        let dn = format!("uid={},ou=device,dc=emqx,dc=io", escape_dn_value(uid));
        self.add(&format!(
            "dn:: {}\nobjectClass: account\nobjectClass: simpleSecurityObject\nobjectClass: mqttUser\nuid:: {}\nuserPassword:: {}\n{extra}",
            b64(&dn),
            b64(uid),
            b64(password)
        ));
    }

    /// `slappasswd -h <scheme> -s <secret>`.
    pub fn slappasswd(scheme: &str, secret: &str) -> String {
        let out = Command::new("/usr/sbin/slappasswd")
            .args(["-h", scheme, "-s", secret])
            .output()
            .expect("slappasswd");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// An auth_ldap config reaching this server as the root DN, followed by `extra` lines.
    pub fn plugin_config(&self, extra: &str) -> String {
        format!(
            "servers = [\"127.0.0.1\"]\nport = {}\nbind_dn = \"{}\"\nbind_password = \"{}\"\n{extra}\n",
            self.port,
            Slapd::ROOT_DN,
            Slapd::ROOT_PASSWORD
        )
    }
}

/// RFC 4514 escaping of an attribute value inside a DN.
fn escape_dn_value(v: &str) -> String {
    let mut out = String::new();
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (c == '#' || c == ' '));
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Drop for Slapd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
