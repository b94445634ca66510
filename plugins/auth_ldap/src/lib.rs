//! auth_ldap: authentication, superuser and ACL checks against an LDAP directory (README,
//! "Authentication with LDAP"), with EMQ's options (`servers`, `port`, `bind_dn`,
//! `bind_password`, `device_dn`, `match_objectclass`, `username.attributetype`,
//! `password.attributetype`) and EMQX's attribute names (`isSuperuser`, `mqttPublishTopic`,
//! `mqttSubscriptionTopic`, `mqttPubSubTopic`; `etc/plugins/auth_ldap.schema`).
//!
//! **Finding the device.** The plugin binds as the service account (`bind_dn`) and searches
//! `device_dn` (subtree) for `(&(objectClass=<match_objectclass>)(<username attribute>=<user
//! name>))`, the user name escaped as RFC 4515 asks, so `*`, `(`, `)` or `\` in it only ever match
//! themselves. No entry → Ignore (the next plugin decides).
//!
//! **Checking the password**, two ways (`bind_as_user`):
//! * `false` (default, EMQ's way): the entry's password attribute is read and compared here.
//!   Values in the directory's own schemes are understood — `{SSHA}`, `{SHA}`, `{SSHA256}`,
//!   `{SHA256}`, `{SSHA512}`, `{SHA512}`, `{SMD5}`, `{MD5}` (what `slappasswd` writes) — and a
//!   value without a scheme is checked with `password_hash` (default `plain`). The service
//!   account must be allowed to read the password attribute.
//! * `true`: the plugin binds as the device's DN with the client's password on a connection
//!   of its own; the directory checks it (any scheme it supports, its password policy, its
//!   lockouts), and the service account never reads passwords.
//!
//! **Superuser**: the `isSuperuser` attribute (`is_superuser_attribute`) is `TRUE`.
//! **ACL** (`acl = true`): the device's `mqttPublishTopic`, `mqttSubscriptionTopic` and
//! `mqttPubSubTopic` values are filters (`%u` / `%c` as a whole level) it may use; one that
//! matches allows, none → Ignore.
//!
//! **Connections**: one connection bound as the service account carries every search
//! (LDAP multiplexes operations); it is opened at the first check and opened again after it
//! breaks, so a restarted directory is used without a reload. Every check is bounded by
//! `timeout_ms`; past it, or with the directory down, `on_error` decides. `servers` are tried
//! in order. TLS: `ssl = true` (ldaps://, default port 636) or `starttls = true`, the server's
//! certificate checked against `ca_file` (or the public web roots) and its name.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use auth_common::hash::PasswordHash;
use auth_common::{HashPool, OnErrorConfig};
use base64::Engine as _;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use plugin_api::*;
use serde::Deserialize;

/// `username.attributetype` / `password.attributetype`, as EMQ spells them.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AttributeType {
    /// The attribute's name.
    pub attributetype: String,
}

/// etc/plugins/auth_ldap.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory servers (host names or addresses), tried in order.
    pub servers: Vec<String>,
    /// Port (0 = 389, or 636 with `ssl`).
    pub port: u16,
    /// The service account searches run as ("" = anonymous).
    pub bind_dn: String,
    /// Its password.
    pub bind_password: String,
    /// Where devices are searched (subtree).
    pub device_dn: String,
    /// The object class a device entry has.
    pub match_objectclass: String,
    /// The attribute holding the user name.
    pub username: AttributeType,
    /// The attribute holding the password.
    pub password: AttributeType,
    /// Check passwords by binding as the device (the directory checks them).
    pub bind_as_user: bool,
    /// The attribute that makes a device a superuser when `TRUE` ("" = nobody).
    pub is_superuser_attribute: String,
    /// Allow what the device's topic attributes list.
    pub acl: bool,
    /// How a password value without a `{SCHEME}` prefix is hashed.
    pub password_hash: String,
    /// ldaps:// (TLS from the start).
    pub ssl: bool,
    /// StartTLS on the plain port.
    pub starttls: bool,
    /// PEM file of the CA certificates trusted for the servers ("" = the public web roots).
    pub ca_file: String,
    /// Bound on one check (connecting, binding, searching), milliseconds.
    pub timeout_ms: u64,
    /// deny | ignore.
    pub on_error: OnErrorConfig,
    /// Position in the auth and ACL chains (higher first).
    pub priority: Option<i32>,
    /// Most pbkdf2 / bcrypt checks computed at once (0 = half the CPU cores, at least 1).
    pub hash_threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            servers: vec!["127.0.0.1".into()],
            port: 0,
            bind_dn: "cn=root,dc=emqx,dc=io".into(),
            bind_password: "public".into(),
            device_dn: "ou=device,dc=emqx,dc=io".into(),
            match_objectclass: "mqttUser".into(),
            username: AttributeType {
                attributetype: "uid".into(),
            },
            password: AttributeType {
                attributetype: "userPassword".into(),
            },
            bind_as_user: false,
            is_superuser_attribute: "isSuperuser".into(),
            acl: false,
            password_hash: "plain".into(),
            ssl: false,
            starttls: false,
            ca_file: String::new(),
            timeout_ms: 5000,
            on_error: OnErrorConfig::Deny,
            priority: None,
            hash_threads: 0,
        }
    }
}

/// The topic attributes and the access each grants (1 subscribe, 2 publish, 3 both).
const TOPIC_ATTRIBUTES: [(&str, u8); 3] = [
    ("mqttSubscriptionTopic", 1),
    ("mqttPublishTopic", 2),
    ("mqttPubSubTopic", 3),
];

struct Settings {
    config: Config,
    hash: PasswordHash,
    urls: Vec<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Settings {
    fn parse(text: &str) -> Result<Settings, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        if config.servers.is_empty() {
            return Err("servers: name at least one directory server".into());
        }
        if config.timeout_ms == 0 {
            return Err("timeout_ms must be at least 1".into());
        }
        if config.ssl && config.starttls {
            return Err("ssl and starttls: choose one".into());
        }
        if config.username.attributetype.is_empty() || config.match_objectclass.is_empty() {
            return Err("username.attributetype and match_objectclass must be set".into());
        }
        let attr_ok = |a: &str| a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        for (key, a) in [
            ("username.attributetype", &config.username.attributetype),
            ("password.attributetype", &config.password.attributetype),
            ("match_objectclass", &config.match_objectclass),
            ("is_superuser_attribute", &config.is_superuser_attribute),
        ] {
            if !attr_ok(a) {
                return Err(format!(
                    "{key} {a:?}: an attribute name is letters, digits and -"
                ));
            }
        }
        let port = match (config.port, config.ssl) {
            (0, true) => 636,
            (0, false) => 389,
            (p, _) => p,
        };
        let scheme = if config.ssl { "ldaps" } else { "ldap" };
        let urls = config
            .servers
            .iter()
            .map(|s| {
                let host = if s.contains(':') && !s.starts_with('[') {
                    format!("[{s}]")
                } else {
                    s.clone()
                };
                format!("{scheme}://{host}:{port}")
            })
            .collect();
        let tls = if config.ssl || config.starttls {
            Some(Arc::new(auth_common::tls::client_config(
                &config.ca_file,
                "",
                "",
            )?))
        } else {
            None
        };
        Ok(Settings {
            hash: PasswordHash::parse(&config.password_hash)?,
            urls,
            tls,
            config,
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }

    fn conn_settings(&self) -> LdapConnSettings {
        let mut s = LdapConnSettings::new()
            .set_conn_timeout(self.timeout())
            .set_starttls(self.config.starttls);
        if let Some(tls) = &self.tls {
            s = s.set_config(tls.clone());
        }
        s
    }

    fn target(&self) -> &str {
        self.urls.first().map_or("", String::as_str)
    }
}

/// An error of the directory or the way to it (as opposed to "no such device").
type Failure = String;

struct Shared {
    settings: Settings,
    hashing: HashPool,
    /// The connection bound as the service account, once opened.
    service: tokio::sync::Mutex<Option<Ldap>>,
}

impl Shared {
    /// A new connection to the first server that answers.
    async fn open(&self) -> Result<Ldap, Failure> {
        let mut last = String::from("no server configured");
        for url in &self.settings.urls {
            match LdapConnAsync::with_settings(self.settings.conn_settings(), url).await {
                Ok((conn, ldap)) => {
                    tokio::spawn(async move {
                        if let Err(e) = conn.drive().await {
                            tracing::debug!(error = %e, "auth_ldap connection ended");
                        }
                    });
                    return Ok(ldap);
                }
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(last)
    }

    /// The service connection, opened and bound if needed.
    async fn service(&self) -> Result<Ldap, Failure> {
        let mut slot = self.service.lock().await;
        if let Some(l) = slot.as_ref() {
            return Ok(l.clone());
        }
        let mut ldap = self.open().await?;
        let c = &self.settings.config;
        if !c.bind_dn.is_empty() {
            ldap.simple_bind(&c.bind_dn, &c.bind_password)
                .await
                .and_then(|r| r.success())
                .map_err(|e| format!("bind as {}: {e}", c.bind_dn))?;
        }
        *slot = Some(ldap.clone());
        Ok(ldap)
    }

    /// The device entry of `username` with `attrs`, if there is one.
    async fn find(&self, username: &str, attrs: &[&str]) -> Result<Option<SearchEntry>, Failure> {
        let c = &self.settings.config;
        let filter = format!(
            "(&(objectClass={})({}={}))",
            c.match_objectclass,
            c.username.attributetype,
            ldap3::ldap_escape(username)
        );
        let mut ldap = self.service().await?;
        let result = ldap
            .search(&c.device_dn, Scope::Subtree, &filter, attrs.to_vec())
            .await;
        let entries = match result.and_then(|r| r.success()) {
            Ok((entries, _)) => entries,
            Err(e) => {
                if !matches!(e, ldap3::LdapError::LdapResult { .. }) {
                    // The connection broke: open a new one next time.
                    *self.service.lock().await = None;
                }
                return Err(format!("search {filter} under {}: {e}", c.device_dn));
            }
        };
        Ok(entries.into_iter().next().map(SearchEntry::construct))
    }

    /// Whether `password` opens `dn` (a bind on a connection of its own).
    async fn bind_as(&self, dn: &str, password: &str) -> Result<bool, Failure> {
        if password.is_empty() {
            // An empty password would be an unauthenticated bind, which "succeeds".
            return Ok(false);
        }
        let mut ldap = self.open().await?;
        let result = ldap.simple_bind(dn, password).await;
        let _ = ldap.unbind().await;
        match result {
            Ok(r) if r.rc == 0 => Ok(true),
            // invalidCredentials; inappropriateAuthentication.
            Ok(r) if r.rc == 49 || r.rc == 48 => Ok(false),
            Ok(r) => Err(format!("bind as {dn}: {r}")),
            Err(e) => Err(format!("bind as {dn}: {e}")),
        }
    }

    async fn bounded<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, Failure>>,
    ) -> Result<T, PluginError> {
        match tokio::time::timeout(self.settings.timeout(), work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::warn!(server = %self.settings.target(), error = %e, "auth_ldap: the directory failed");
                Err(PluginError::backend(format!("directory error: {e}")))
            }
            Err(_) => {
                tracing::warn!(server = %self.settings.target(), timeout_ms = self.settings.config.timeout_ms, "auth_ldap: the directory timed out");
                *self.service.lock().await = None;
                Err(PluginError::backend("directory timed out"))
            }
        }
    }

    async fn authenticate(&self, request: AuthRequest) -> Result<AuthResult, PluginError> {
        let Some(username) = request
            .client
            .username
            .as_ref()
            .into_option()
            .map(|u| u.to_string())
        else {
            return Ok(AuthResult::Ignore);
        };
        let c = &self.settings.config;
        let mut attrs = vec![c.is_superuser_attribute.as_str()];
        if !c.bind_as_user {
            attrs.push(c.password.attributetype.as_str());
        }
        attrs.retain(|a| !a.is_empty());
        let Some(entry) = self.bounded(self.find(&username, &attrs)).await? else {
            return Ok(AuthResult::Ignore);
        };
        let password = request
            .password
            .into_option()
            .map(|p| p.into_vec())
            .unwrap_or_default();
        let ok = if c.bind_as_user {
            let password = String::from_utf8_lossy(&password).into_owned();
            self.bounded(self.bind_as(&entry.dn, &password)).await?
        } else {
            let stored = values(&entry, &c.password.attributetype);
            let mut ok = false;
            for value in stored {
                if self.check(&value, &password).await? {
                    ok = true;
                    break;
                }
            }
            ok
        };
        if !ok {
            return Ok(AuthResult::Deny(DenyReason::BadCredentials));
        }
        let superuser = !c.is_superuser_attribute.is_empty()
            && values(&entry, &c.is_superuser_attribute)
                .iter()
                .any(|v| auth_common::is_superuser_value(&String::from_utf8_lossy(v)));
        Ok(AuthResult::Allow { superuser })
    }

    /// Checks `password` against one stored value (a `{SCHEME}` one, or `password_hash`).
    async fn check(&self, stored: &[u8], password: &[u8]) -> Result<bool, PluginError> {
        if let Some(result) = check_scheme(stored, password) {
            return Ok(result);
        }
        let stored = String::from_utf8_lossy(stored).into_owned();
        auth_common::check_password(
            self.settings.hash,
            &self.hashing,
            password.to_vec(),
            stored,
            String::new(),
        )
        .await
        .ok_or_else(|| PluginError::backend("password check failed"))
    }

    async fn check_acl(&self, request: AclRequest) -> Result<AclResult, PluginError> {
        let username = request.client.username.as_ref().map_or("", |u| u.as_str());
        if username.is_empty() || username.starts_with('$') {
            return Ok(AclResult::Ignore);
        }
        let attrs: Vec<&str> = TOPIC_ATTRIBUTES.iter().map(|(a, _)| *a).collect();
        let Some(entry) = self.bounded(self.find(username, &attrs)).await? else {
            return Ok(AclResult::Ignore);
        };
        let wanted = match request.access {
            Access::Subscribe => 1,
            Access::Publish => 2,
        };
        let client_id = request.client.client_id.as_str();
        for (attr, access) in TOPIC_ATTRIBUTES {
            if access != wanted && access != 3 {
                continue;
            }
            for filter in values(&entry, attr) {
                let filter = String::from_utf8_lossy(&filter);
                let Some(filter) =
                    auth_common::topic::substitute(&filter, client_id, Some(username))
                else {
                    continue;
                };
                if topic_matches(&filter, request.topic.as_str()) {
                    return Ok(AclResult::Allow);
                }
            }
        }
        Ok(AclResult::Ignore)
    }

    /// Connects and binds once at load, so a wrong address or account shows in the log.
    async fn probe(&self) {
        match tokio::time::timeout(self.settings.timeout(), self.service()).await {
            Ok(Ok(_)) => tracing::info!(server = %self.settings.target(), "auth_ldap connected"),
            Ok(Err(e)) => {
                tracing::warn!(server = %self.settings.target(), error = %e, "auth_ldap cannot use the directory; checks follow on_error until it can")
            }
            Err(_) => {
                tracing::warn!(server = %self.settings.target(), "auth_ldap: connecting to the directory timed out; checks follow on_error until it answers")
            }
        }
    }
}

/// Every value of `attr` in `entry` (text or binary), matched case-insensitively.
fn values(entry: &SearchEntry, attr: &str) -> Vec<Vec<u8>> {
    fn pick<'a, T>(map: &'a HashMap<String, Vec<T>>, attr: &str) -> Option<&'a Vec<T>> {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(attr))
            .map(|(_, v)| v)
    }
    let mut out: Vec<Vec<u8>> = pick(&entry.attrs, attr)
        .map(|v| v.iter().map(|s| s.as_bytes().to_vec()).collect())
        .unwrap_or_default();
    if let Some(bin) = pick(&entry.bin_attrs, attr) {
        out.extend(bin.iter().cloned());
    }
    out
}

/// Checks a value in one of the directory's `{SCHEME}` forms; `None` when it has no scheme
/// this plugin knows (then `password_hash` applies). Comparisons are constant-time.
pub fn check_scheme(stored: &[u8], password: &[u8]) -> Option<bool> {
    use md5::Md5;
    use sha1::{Digest, Sha1};
    use sha2::{Sha256, Sha512};
    let text = std::str::from_utf8(stored).ok()?;
    let close = text.find('}')?;
    if !text.starts_with('{') {
        return None;
    }
    let scheme = text[1..close].to_ascii_uppercase();
    let encoded = &text[close + 1..];
    let decoded = || {
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
    };
    fn digest<D: Digest>(password: &[u8], salt: &[u8]) -> Vec<u8> {
        let mut d = D::new();
        d.update(password);
        d.update(salt);
        d.finalize().to_vec()
    }
    // (digest length, salted, digest of password ++ salt)
    type Digester = fn(&[u8], &[u8]) -> Vec<u8>;
    let (len, salted, f): (usize, bool, Digester) = match scheme.as_str() {
        "SHA" => (20, false, digest::<Sha1>),
        "SSHA" => (20, true, digest::<Sha1>),
        "SHA256" => (32, false, digest::<Sha256>),
        "SSHA256" => (32, true, digest::<Sha256>),
        "SHA512" => (64, false, digest::<Sha512>),
        "SSHA512" => (64, true, digest::<Sha512>),
        "MD5" => (16, false, digest::<Md5>),
        "SMD5" => (16, true, digest::<Md5>),
        "CLEARTEXT" => return Some(auth_common::constant_time_eq(encoded.as_bytes(), password)),
        _ => return None,
    };
    let Some(raw) = decoded() else {
        return Some(false);
    };
    if raw.len() < len || (!salted && raw.len() != len) {
        return Some(false);
    }
    let (hash, salt) = raw.split_at(len);
    Some(auth_common::constant_time_eq(&f(password, salt), hash))
}

/// The plugin.
pub struct AuthLdap {
    shared: Arc<Shared>,
}

impl Plugin for AuthLdap {
    const NAME: &'static str = "auth_ldap";
    const DESCRIPTION: &'static str = "authentication and ACL from an LDAP directory";

    fn create(ctx: Context, config: &str) -> Result<Self, PluginError> {
        let settings = Settings::parse(config).map_err(PluginError::config)?;
        let shared = Arc::new(Shared {
            hashing: HashPool::new(settings.config.hash_threads),
            settings,
            service: tokio::sync::Mutex::new(None),
        });
        let probe = shared.clone();
        ctx.spawn(async move { probe.probe().await });
        Ok(AuthLdap { shared })
    }

    fn registration(&self) -> Registration {
        let c = &self.shared.settings.config;
        auth_common::registration(true, c.acl, c.priority, c.on_error, c.timeout_ms)
    }

    fn authenticate(
        &self,
        request: AuthRequest,
    ) -> impl std::future::Future<Output = Result<AuthResult, PluginError>> + Send + 'static {
        let shared = self.shared.clone();
        async move { shared.authenticate(request).await }
    }

    fn check_acl(
        &self,
        request: AclRequest,
    ) -> impl std::future::Future<Output = Result<AclResult, PluginError>> + Send + 'static {
        let shared = self.shared.clone();
        async move { shared.check_acl(request).await }
    }
}

plugin_api::export_plugin!(AuthLdap);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_password_schemes() {
        // slappasswd -h '{SSHA}' -s secret -> this value (salt "abcd").
        use sha1::{Digest, Sha1};
        let mut d = Sha1::new();
        d.update(b"secret");
        d.update(b"abcd");
        let mut raw = d.finalize().to_vec();
        raw.extend_from_slice(b"abcd");
        let ssha = format!(
            "{{SSHA}}{}",
            base64::engine::general_purpose::STANDARD.encode(&raw)
        );
        assert_eq!(check_scheme(ssha.as_bytes(), b"secret"), Some(true));
        assert_eq!(check_scheme(ssha.as_bytes(), b"Secret"), Some(false));
        // {SHA} of "secret", as slappasswd -h '{SHA}' writes it.
        let sha = b"{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=";
        assert_eq!(check_scheme(sha, b"secret"), Some(true));
        assert_eq!(check_scheme(sha, b""), Some(false));
        assert_eq!(check_scheme(b"{CLEARTEXT}pw", b"pw"), Some(true));
        assert_eq!(check_scheme(b"plain-value", b"plain-value"), None);
        assert_eq!(check_scheme(b"{CRYPT}xyz", b"x"), None);
        assert_eq!(check_scheme(b"{SSHA}!!notbase64", b"x"), Some(false));
    }

    #[test]
    fn emq_dotted_keys_and_errors() {
        let s = Settings::parse(
            "servers = [\"ldap.example\"]\nusername.attributetype = \"cn\"\npassword.attributetype = \"userPassword\"\nssl = true\n",
        )
        .expect("valid");
        assert_eq!(s.config.username.attributetype, "cn");
        assert_eq!(s.urls, vec!["ldaps://ldap.example:636".to_owned()]);
        let e = Settings::parse("ssl = true\nstarttls = true")
            .err()
            .expect("both");
        assert!(e.contains("starttls"), "{e}");
        let e = Settings::parse("match_objectclass = \"x)(uid=*\"")
            .err()
            .expect("filter syntax");
        assert!(e.contains("match_objectclass"), "{e}");
        let e = Settings::parse("bind_passwd = \"x\"").err().expect("typo");
        assert!(e.contains("bind_passwd"), "{e}");
    }

    #[test]
    fn shipped_config_spells_out_the_defaults() {
        let shipped = Settings::parse(include_str!("../../../etc/plugins/auth_ldap.toml"))
            .expect("etc/plugins/auth_ldap.toml parses");
        let defaults = Settings::parse("").expect("defaults");
        assert_eq!(
            format!("{:?}", shipped.config),
            format!("{:?}", defaults.config)
        );
    }
}
