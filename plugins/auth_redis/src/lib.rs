//! auth_redis: authentication, superuser and ACL checks against Redis hashes (README,
//! "Authentication with Redis"), with EMQ's commands and data layout:
//!
//! * **Authentication** (`auth_cmd`, default `HMGET mqtt_user:%u password salt`): the first
//!   value is the stored password, checked with `password_hash`; the second, if any, is its
//!   salt. No user (nil) → Ignore (the next plugin decides); wrong or missing password → Deny
//!   "bad user name or password". A client without a user name is not looked up.
//! * **Superuser** (`super_cmd`, default `HGET mqtt_user:%u is_superuser`): `1` / `true` →
//!   superuser, after a successful authentication.
//! * **ACL** (`acl_cmd`, default `HGETALL mqtt_acl:%u`): field = topic filter, value = access
//!   (1 subscribe, 2 publish, 3 both). A filter that matches the topic with an access that
//!   covers the action allows it; otherwise Ignore (EMQ's rules: Redis ACLs only allow; the next
//!   plugin or `acl.no_match` decides the rest). `%u` / `%c` as a whole level of a filter stand
//!   for the user name / client id.
//!
//! **Placeholders** (`%u`, `%c`, `%a`, `%C`, `%d`) are substituted inside the words of a
//! command, and each word is sent as one argument of the Redis protocol: a user name with
//! spaces or Redis syntax in it stays one argument, never another command or key.
//!
//! **Connections** (redis-rs): `type = "single"` keeps one multiplexed connection that
//! reconnects by itself; `"sentinel"` asks the sentinels in `server` for the master named
//! `sentinel` and asks again after an error (a failover); `"cluster"` follows the cluster's
//! slots from the nodes in `server`. One multiplexed connection carries every concurrent check
//! (Redis pipelines them), so there is no pool to size. The connection is opened at the first
//! check, not at load: a server that is down at load only makes checks follow `on_error` until
//! it is back. Each check is bounded by `query_timeout_ms`.

use std::sync::Arc;
use std::time::Duration;

use auth_common::hash::PasswordHash;
use auth_common::vars::{Var, Vars};
use auth_common::{HashPool, OnErrorConfig};
use plugin_api::*;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo, Value};
use serde::Deserialize;

/// How the Redis deployment is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One server.
    #[default]
    Single,
    /// Sentinels that name the current master.
    Sentinel,
    /// A Redis Cluster.
    Cluster,
}

/// etc/plugins/auth_redis.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// single | sentinel | cluster.
    #[serde(rename = "type")]
    pub mode: Mode,
    /// `host:port`; for sentinel and cluster a comma-separated list of them.
    pub server: String,
    /// The master's name (sentinel mode).
    pub sentinel: String,
    /// The sentinels' own password, when they have one (`requirepass` in sentinel.conf).
    pub sentinel_password: String,
    /// Database index (single and sentinel; a cluster has only 0).
    pub database: i64,
    /// Redis 6 ACL user name ("" = the default user).
    pub username: String,
    /// Password ("" = none).
    pub password: String,
    /// TLS to the servers.
    pub tls: bool,
    /// PEM file of the CA certificates trusted for the servers ("" = the system's roots).
    pub ca_file: String,
    /// PEM client certificate and key, when the servers ask for one.
    pub cert_file: String,
    /// PEM key of `cert_file`.
    pub key_file: String,
    /// Bound on one check (connecting and every command), milliseconds.
    pub query_timeout_ms: u64,
    /// deny | ignore.
    pub on_error: OnErrorConfig,
    /// Position in the auth and ACL chains (higher first).
    pub priority: Option<i32>,
    /// How stored passwords are hashed.
    pub password_hash: String,
    /// Most bcrypt / pbkdf2 checks computed at once (0 = half the CPU cores, at least 1).
    pub hash_threads: usize,
    /// Authentication command ("" = no authentication).
    pub auth_cmd: String,
    /// Superuser command ("" = nobody is a superuser through this plugin).
    pub super_cmd: String,
    /// ACL command ("" = no ACL checks).
    pub acl_cmd: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Single,
            server: "127.0.0.1:6379".into(),
            sentinel: String::new(),
            sentinel_password: String::new(),
            database: 0,
            username: String::new(),
            password: String::new(),
            tls: false,
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            query_timeout_ms: 5000,
            on_error: OnErrorConfig::Deny,
            priority: None,
            password_hash: "plain".into(),
            hash_threads: 0,
            auth_cmd: "HMGET mqtt_user:%u password salt".into(),
            super_cmd: "HGET mqtt_user:%u is_superuser".into(),
            acl_cmd: "HGETALL mqtt_acl:%u".into(),
        }
    }
}

/// One piece of a command word: literal text or a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var),
}

/// A configured command: words, each sent as one argument.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Command {
    words: Vec<Vec<Piece>>,
}

impl Command {
    fn parse(key: &str, text: &str) -> Result<Option<Command>, String> {
        let mut words = Vec::new();
        for word in text.split_whitespace() {
            let mut pieces = Vec::new();
            let mut literal = String::new();
            let mut chars = word.char_indices().peekable();
            while let Some((_, c)) = chars.next() {
                if c == '%' {
                    if let Some(v) = chars
                        .peek()
                        .and_then(|(_, l)| u8::try_from(*l).ok())
                        .and_then(Var::from_letter)
                    {
                        chars.next();
                        if !literal.is_empty() {
                            pieces.push(Piece::Text(std::mem::take(&mut literal)));
                        }
                        pieces.push(Piece::Var(v));
                        continue;
                    }
                }
                literal.push(c);
            }
            if !literal.is_empty() {
                pieces.push(Piece::Text(literal));
            }
            words.push(pieces);
        }
        if words.is_empty() {
            return Ok(None);
        }
        if matches!(words[0].as_slice(), [Piece::Var(_), ..]) {
            return Err(format!(
                "{key}: the command name cannot be a placeholder ({text:?})"
            ));
        }
        Ok(Some(Command { words }))
    }

    /// The command for one client.
    fn build(&self, vars: &Vars<'_>) -> redis::Cmd {
        let mut words = self.words.iter().map(|pieces| {
            let mut arg = String::new();
            for p in pieces {
                match p {
                    Piece::Text(t) => arg.push_str(t),
                    Piece::Var(v) => arg.push_str(vars.get(*v)),
                }
            }
            arg
        });
        let mut cmd = redis::cmd(&words.next().unwrap_or_default());
        for w in words {
            cmd.arg(w);
        }
        cmd
    }
}

/// Parsed configuration.
struct Settings {
    config: Config,
    hash: PasswordHash,
    nodes: Vec<(String, u16)>,
    auth: Option<Command>,
    superuser: Option<Command>,
    acl: Option<Command>,
}

fn host_port(server: &str) -> Option<(String, u16)> {
    let (host, port) = server.trim().rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_owned(), port.parse().ok()?))
}

impl Settings {
    fn parse(text: &str) -> Result<Settings, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        if config.query_timeout_ms == 0 {
            return Err("query_timeout_ms must be at least 1".into());
        }
        let nodes = config
            .server
            .split(',')
            .map(|s| {
                host_port(s).ok_or_else(|| {
                    format!(
                        "server {:?}: {s:?} is not host:port (e.g. \"127.0.0.1:6379\")",
                        config.server
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if config.mode == Mode::Single && nodes.len() != 1 {
            return Err(format!(
                "server {:?}: type = \"single\" takes one host:port",
                config.server
            ));
        }
        if config.mode == Mode::Sentinel && config.sentinel.is_empty() {
            return Err("type = \"sentinel\" needs `sentinel`, the master's name".into());
        }
        if config.mode == Mode::Cluster && config.database != 0 {
            return Err("database: a Redis Cluster has only database 0".into());
        }
        for (key, file) in [
            ("ca_file", &config.ca_file),
            ("cert_file", &config.cert_file),
            ("key_file", &config.key_file),
        ] {
            if !file.is_empty() {
                std::fs::metadata(file).map_err(|e| format!("{key} {file:?}: {e}"))?;
            }
        }
        Ok(Settings {
            hash: PasswordHash::parse(&config.password_hash)?,
            auth: Command::parse("auth_cmd", &config.auth_cmd)?,
            superuser: Command::parse("super_cmd", &config.super_cmd)?,
            acl: Command::parse("acl_cmd", &config.acl_cmd)?,
            nodes,
            config,
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.query_timeout_ms)
    }

    fn redis_info(&self) -> RedisConnectionInfo {
        let c = &self.config;
        let mut info = RedisConnectionInfo::default().set_db(c.database);
        if !c.username.is_empty() {
            info = info.set_username(&c.username);
        }
        if !c.password.is_empty() {
            info = info.set_password(&c.password);
        }
        info
    }

    fn addr(&self, host: &str, port: u16) -> ConnectionAddr {
        if self.config.tls {
            ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.to_owned(), port)
        }
    }

    fn info(&self, host: &str, port: u16) -> redis::RedisResult<ConnectionInfo> {
        Ok(self
            .addr(host, port)
            .into_connection_info()?
            .set_redis_settings(self.redis_info()))
    }

    fn certificates(&self) -> Result<Option<redis::TlsCertificates>, String> {
        let c = &self.config;
        if !c.tls {
            return Ok(None);
        }
        let read = |key: &str, f: &str| std::fs::read(f).map_err(|e| format!("{key} {f:?}: {e}"));
        let root_cert = match c.ca_file.as_str() {
            "" => None,
            f => Some(read("ca_file", f)?),
        };
        let client_tls = if c.cert_file.is_empty() || c.key_file.is_empty() {
            None
        } else {
            Some(redis::ClientTlsConfig {
                client_cert: read("cert_file", &c.cert_file)?,
                client_key: read("key_file", &c.key_file)?,
            })
        };
        Ok(Some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }))
    }

    fn target(&self) -> &str {
        &self.config.server
    }
}

/// An open connection (cheap to clone: both kinds multiplex).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn run(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<Value> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

struct Shared {
    settings: Settings,
    hashing: HashPool,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

fn redis_error(e: redis::RedisError) -> String {
    e.to_string()
}

impl Shared {
    async fn connect(&self) -> Result<Conn, String> {
        let s = &self.settings;
        let timeout = s.timeout();
        let certs = s.certificates()?;
        let client = |info: ConnectionInfo| match &certs {
            Some(c) => redis::Client::build_with_tls(info, c.clone()),
            None => redis::Client::open(info),
        };
        let manager = |client: redis::Client| async move {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            client
                .get_connection_manager_with_config(config)
                .await
                .map(Conn::Single)
        };
        match s.config.mode {
            Mode::Single => {
                let (host, port) = &s.nodes[0];
                let client =
                    client(s.info(host, *port).map_err(redis_error)?).map_err(redis_error)?;
                manager(client).await.map_err(redis_error)
            }
            Mode::Sentinel => {
                let sentinels: Vec<ConnectionInfo> = s
                    .nodes
                    .iter()
                    .map(|(h, p)| {
                        // Sentinels have their own password, if any, and no database.
                        s.addr(h, *p).into_connection_info().map(|i| {
                            let mut r = RedisConnectionInfo::default();
                            if !s.config.sentinel_password.is_empty() {
                                r = r.set_password(&s.config.sentinel_password);
                            }
                            i.set_redis_settings(r)
                        })
                    })
                    .collect::<Result<_, _>>()
                    .map_err(redis_error)?;
                let mut node = redis::sentinel::SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(s.redis_info());
                if s.config.tls {
                    node = node.set_tls_mode(redis::TlsMode::Secure);
                }
                let master = s.config.sentinel.clone();
                let found = tokio::task::spawn_blocking(move || {
                    let mut sentinel = redis::sentinel::SentinelClient::build(
                        sentinels,
                        master,
                        Some(node),
                        redis::sentinel::SentinelServerType::Master,
                    )?;
                    sentinel.get_client()
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(redis_error)?;
                // The client the sentinels named, rebuilt with this plugin's certificates.
                let info = found.get_connection_info().clone();
                let client = client(info).map_err(redis_error)?;
                manager(client).await.map_err(redis_error)
            }
            Mode::Cluster => {
                let nodes: Vec<ConnectionInfo> = s
                    .nodes
                    .iter()
                    .map(|(h, p)| s.info(h, *p))
                    .collect::<Result<_, _>>()
                    .map_err(redis_error)?;
                let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(1);
                if !s.config.username.is_empty() {
                    builder = builder.username(&s.config.username);
                }
                if !s.config.password.is_empty() {
                    builder = builder.password(&s.config.password);
                }
                if let Some(c) = certs {
                    builder = builder.tls(redis::TlsMode::Secure).certs(c);
                }
                let cluster = builder.build().map_err(redis_error)?;
                cluster
                    .get_async_connection()
                    .await
                    .map(Conn::Cluster)
                    .map_err(redis_error)
            }
        }
    }

    /// Runs `cmd` for one check, connecting first if needed; bounded by the query timeout.
    async fn run(&self, cmd: &Command, client: &ClientInfo) -> Result<Value, PluginError> {
        let command = cmd.build(&Vars::of(client));
        let work = async {
            let mut conn = {
                let mut slot = self.conn.lock().await;
                match slot.as_ref() {
                    Some(c) => c.clone(),
                    None => {
                        let c = self.connect().await?;
                        *slot = Some(c.clone());
                        c
                    }
                }
            };
            match conn.run(&command).await {
                Ok(v) => Ok(v),
                Err(e) => {
                    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
                        // Sentinel: the master may have moved; ask again next time. (A single
                        // server's manager and a cluster reconnect by themselves.)
                        if self.settings.config.mode == Mode::Sentinel {
                            *self.conn.lock().await = None;
                        }
                    }
                    Err(redis_error(e))
                }
            }
        };
        match tokio::time::timeout(self.settings.timeout(), work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::warn!(server = %self.settings.target(), error = %e, "auth_redis command failed");
                Err(PluginError::backend(format!("redis error: {e}")))
            }
            Err(_) => {
                tracing::warn!(
                    server = %self.settings.target(),
                    timeout_ms = self.settings.config.query_timeout_ms,
                    "auth_redis command timed out"
                );
                Err(PluginError::backend("redis command timed out"))
            }
        }
    }

    async fn authenticate(&self, request: AuthRequest) -> Result<AuthResult, PluginError> {
        let Some(cmd) = &self.settings.auth else {
            return Ok(AuthResult::Ignore);
        };
        if request.client.username.is_none() {
            return Ok(AuthResult::Ignore);
        }
        let values = strings(self.run(cmd, &request.client).await?);
        let Some(Some(stored)) = values.first().cloned() else {
            return Ok(AuthResult::Ignore);
        };
        let salt = values.get(1).cloned().flatten().unwrap_or_default();
        let Some(password) = request.password.into_option() else {
            return Ok(AuthResult::Deny(DenyReason::BadCredentials));
        };
        let ok = auth_common::check_password(
            self.settings.hash,
            &self.hashing,
            password.into_vec(),
            stored,
            salt,
        )
        .await
        .ok_or_else(|| PluginError::backend("password check failed"))?;
        if !ok {
            return Ok(AuthResult::Deny(DenyReason::BadCredentials));
        }
        let superuser = match &self.settings.superuser {
            Some(cmd) => strings(self.run(cmd, &request.client).await?)
                .first()
                .cloned()
                .flatten()
                .is_some_and(|v| auth_common::is_superuser_value(&v)),
            None => false,
        };
        Ok(AuthResult::Allow { superuser })
    }

    async fn check_acl(&self, request: AclRequest) -> Result<AclResult, PluginError> {
        let Some(cmd) = &self.settings.acl else {
            return Ok(AclResult::Ignore);
        };
        let username = request.client.username.as_ref().map_or("", |u| u.as_str());
        if username.is_empty() || username.starts_with('$') {
            return Ok(AclResult::Ignore);
        }
        let values = strings(self.run(cmd, &request.client).await?);
        let wanted = match request.access {
            Access::Subscribe => 1,
            Access::Publish => 2,
        };
        let client_id = request.client.client_id.as_str();
        let topic = request.topic.as_str();
        for pair in values.chunks(2) {
            let [Some(filter), Some(access)] = pair else {
                continue;
            };
            let Ok(access) = access.trim().parse::<u8>() else {
                continue;
            };
            if access != wanted && access != 3 {
                continue;
            }
            let Some(filter) = auth_common::topic::substitute(filter, client_id, Some(username))
            else {
                continue;
            };
            if topic_matches(&filter, topic) {
                return Ok(AclResult::Allow);
            }
        }
        Ok(AclResult::Ignore)
    }

    /// Connects once at load, so a wrong address or password shows in the log right away.
    async fn probe(&self) {
        let conn = match tokio::time::timeout(self.settings.timeout(), self.connect()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!(server = %self.settings.target(), error = %e, "auth_redis cannot reach Redis; checks follow on_error until it is reachable");
                return;
            }
            Err(_) => {
                tracing::warn!(server = %self.settings.target(), "auth_redis: connecting to Redis timed out; checks follow on_error until it is reachable");
                return;
            }
        };
        let mut slot = self.conn.lock().await;
        if slot.is_none() {
            *slot = Some(conn);
        }
        tracing::info!(server = %self.settings.target(), "auth_redis connected");
    }
}

/// A reply as a list of optional strings: an array's items, a map's keys and values in turn,
/// or one value (nil → `[None]`).
fn strings(v: Value) -> Vec<Option<String>> {
    fn one(v: Value) -> Option<String> {
        match v {
            Value::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            Value::SimpleString(s) => Some(s),
            Value::Okay => Some("OK".into()),
            Value::Int(i) => Some(i.to_string()),
            Value::Boolean(b) => Some(if b { "1" } else { "0" }.into()),
            Value::Double(d) => Some(d.to_string()),
            Value::VerbatimString { text, .. } => Some(text),
            _ => None,
        }
    }
    match v {
        Value::Array(items) | Value::Set(items) => items.into_iter().map(one).collect(),
        Value::Map(pairs) => pairs
            .into_iter()
            .flat_map(|(k, v)| [one(k), one(v)])
            .collect(),
        other => vec![one(other)],
    }
}

/// The plugin.
pub struct AuthRedis {
    shared: Arc<Shared>,
}

impl Plugin for AuthRedis {
    const NAME: &'static str = "auth_redis";
    const DESCRIPTION: &'static str = "authentication and ACL from Redis hashes";

    fn create(ctx: Context, config: &str) -> Result<Self, PluginError> {
        let settings = Settings::parse(config).map_err(PluginError::config)?;
        settings.certificates().map_err(PluginError::config)?;
        let shared = Arc::new(Shared {
            hashing: HashPool::new(settings.config.hash_threads),
            settings,
            conn: tokio::sync::Mutex::new(None),
        });
        let probe = shared.clone();
        ctx.spawn(async move { probe.probe().await });
        Ok(AuthRedis { shared })
    }

    fn registration(&self) -> Registration {
        let s = &self.shared.settings;
        auth_common::registration(
            s.auth.is_some(),
            s.acl.is_some(),
            s.config.priority,
            s.config.on_error,
            s.config.query_timeout_ms,
        )
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

plugin_api::export_plugin!(AuthRedis);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_stay_inside_one_argument() {
        let cmd = Command::parse("auth_cmd", "HMGET mqtt_user:%u password salt")
            .expect("valid")
            .expect("a command");
        let client = ClientInfo {
            username: ROption::RSome("a b\r\nFLUSHALL".into()),
            ..ClientInfo::default()
        };
        let built = cmd.build(&Vars::of(&client));
        let args: Vec<Vec<u8>> = built
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => b.to_vec(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(
            args,
            vec![
                b"HMGET".to_vec(),
                b"mqtt_user:a b\r\nFLUSHALL".to_vec(),
                b"password".to_vec(),
                b"salt".to_vec()
            ]
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        assert!(Settings::parse("").is_ok());
        let e = Settings::parse("auth_cmd = \"%u GET x\"")
            .err()
            .expect("bad");
        assert!(e.contains("auth_cmd"), "{e}");
        let e = Settings::parse("type = \"sentinel\"")
            .err()
            .expect("no name");
        assert!(e.contains("sentinel"), "{e}");
        let e = Settings::parse("server = \"a:1,b:2\"").err().expect("two");
        assert!(e.contains("single"), "{e}");
        let e = Settings::parse("server = \"redis\"")
            .err()
            .expect("no port");
        assert!(e.contains("host:port"), "{e}");
        let e = Settings::parse("pasword = \"x\"").err().expect("typo");
        assert!(e.contains("pasword"), "{e}");
    }

    #[test]
    fn shipped_config_spells_out_the_defaults() {
        let shipped = Settings::parse(include_str!("../../../etc/plugins/auth_redis.toml"))
            .expect("etc/plugins/auth_redis.toml parses");
        let defaults = Settings::parse("").expect("defaults");
        assert_eq!(
            format!("{:?}", shipped.config),
            format!("{:?}", defaults.config)
        );
    }

    #[test]
    fn replies_become_strings() {
        let v = Value::Array(vec![
            Value::BulkString(b"pw".to_vec()),
            Value::Nil,
            Value::Int(3),
        ]);
        assert_eq!(strings(v), vec![Some("pw".into()), None, Some("3".into())]);
        assert_eq!(strings(Value::Nil), vec![None]);
    }
}
