//! auth_mysql: authentication, superuser and ACL checks against MySQL / MariaDB tables
//! (README, "Authentication with MySQL / MariaDB"), with EMQ's default queries and table layout.
//!
//! * **Authentication** (`auth_query`): the row's `password` column (or its first column) is
//!   checked against the client's password with `password_hash` (see [`hash`]); a `salt`
//!   column feeds salted hashes. No row → Ignore (the next plugin decides), wrong or missing
//!   password → Deny "bad user name or password". A client without a user name is not looked
//!   up (Ignore).
//! * **Superuser** (`super_query`, after a successful authentication): the first column of the
//!   first row, 1 / true → superuser (superusers skip ACL checks in the broker).
//! * **ACL** (`acl_query`): rows evaluated in the order returned, first match decides (see
//!   [`acl`]); none → Ignore. User names starting with `$` are not looked up.
//!
//! Queries take quoted placeholders (`'%u'`, `'%c'`, `'%a'`, `'%C'`, `'%d'`) that are bound as
//! parameters of a prepared statement (see [`query`]); nothing from a client is spliced into
//! SQL. Statements are prepared once per pooled connection.
//!
//! **The pool** (mysql_async): at most `pool_size` connections, opened on demand. An idle
//! connection is checked before it is handed out, so connections the server closed
//! (`wait_timeout`, a restart) are replaced rather than failing a login; a query that still
//! meets a broken connection is retried on another one. Each check is bounded by
//! `query_timeout_ms` in all (waiting for a connection, connecting, querying); past it, or
//! with the server down, the `on_error` policy decides (`deny`: CONNACK "server unavailable",
//! ACL deny; `ignore`: ask the next plugin). All I/O runs on the plugin's own runtime; bcrypt
//! and pbkdf2 run on its blocking threads, at most `hash_threads` at once (default half the
//! cores) so that a login storm leaves CPU to message routing. Passwords are never logged.
//!
//! The connection to the database is TCP, optionally TLS (`tls`, rustls; the server certificate
//! is verified against `ca_file` or the public web roots, and its name against `server`), or a
//! Unix socket.

use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Pool, Row, Value};
use plugin_api::*;
use serde::Deserialize;

use auth_common::hash::PasswordHash;
use auth_common::query::Query;
use auth_common::sql::{SqlBackend, SqlChecks, TextRow};
use auth_common::vars::Vars;
use auth_common::{HashPool, OnErrorConfig};

/// etc/plugins/auth_mysql.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `host:port` of the server.
    pub server: String,
    /// Unix socket path; when set it is used instead of `server`.
    pub socket: String,
    /// Database user.
    pub username: String,
    /// Database password.
    pub password: String,
    /// Database name.
    pub database: String,
    /// TLS to the server (TCP only; a Unix socket is never encrypted).
    pub tls: bool,
    /// PEM file of the CA certificates trusted for the server ("" = the public web roots).
    pub ca_file: String,
    /// Most connections kept open.
    pub pool_size: usize,
    /// Bound on one check (waiting for a connection, connecting, querying), milliseconds.
    pub query_timeout_ms: u64,
    /// deny | ignore.
    pub on_error: OnErrorConfig,
    /// Position in the auth and ACL chains (higher first). Default: the broker's
    /// AUTHENTICATION (970) and ACL (960) priorities.
    pub priority: Option<i32>,
    /// How stored passwords are hashed.
    pub password_hash: String,
    /// Most bcrypt / pbkdf2 checks computed at once (0 = half the CPU cores, at least 1), so a
    /// login storm cannot take every core from message routing.
    pub hash_threads: usize,
    /// Authentication query ("" = no authentication).
    pub auth_query: String,
    /// Superuser query ("" = nobody is a superuser through this plugin).
    pub super_query: String,
    /// ACL query ("" = no ACL checks).
    pub acl_query: String,
}

/// EMQ's default authentication query.
pub const DEFAULT_AUTH_QUERY: &str =
    "select password, salt from mqtt_user where username = '%u' limit 1";
/// EMQ's default superuser query.
pub const DEFAULT_SUPER_QUERY: &str =
    "select is_superuser from mqtt_user where username = '%u' limit 1";
/// EMQ's default ACL query, plus rows whose `ipaddr` is a CIDR block and a deterministic order.
pub const DEFAULT_ACL_QUERY: &str = "select allow, ipaddr, username, clientid, access, topic \
     from mqtt_acl where ipaddr = '%a' or username = '%u' or username = '$all' or clientid = '%c' \
     or ipaddr like '%/%' order by id";

impl Default for Config {
    fn default() -> Self {
        Config {
            server: "127.0.0.1:3306".into(),
            socket: String::new(),
            username: "root".into(),
            password: String::new(),
            database: "mqtt".into(),
            tls: false,
            ca_file: String::new(),
            pool_size: 8,
            query_timeout_ms: 5000,
            on_error: OnErrorConfig::Deny,
            priority: None,
            password_hash: "sha256".into(),
            hash_threads: 0,
            auth_query: DEFAULT_AUTH_QUERY.into(),
            super_query: DEFAULT_SUPER_QUERY.into(),
            acl_query: DEFAULT_ACL_QUERY.into(),
        }
    }
}

/// Server error codes that mean "this connection is gone", not "this query is wrong":
/// shutdown in progress, connection killed, and MySQL 8's idle-timeout notice.
const CONNECTION_GONE: [u16; 3] = [1053, 1927, 4031];

/// Parsed configuration.
struct Settings {
    config: Config,
    hash: PasswordHash,
    auth: Option<Query>,
    superuser: Option<Query>,
    acl: Option<Query>,
}

fn compile(key: &str, text: &str) -> Result<Option<Query>, String> {
    if text.trim().is_empty() {
        Ok(None)
    } else {
        Query::compile(key, text).map(Some)
    }
}

impl Settings {
    fn parse(text: &str) -> Result<Settings, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        if config.pool_size == 0 {
            return Err("pool_size must be at least 1".into());
        }
        if config.query_timeout_ms == 0 {
            return Err("query_timeout_ms must be at least 1".into());
        }
        if !config.ca_file.is_empty() {
            std::fs::metadata(&config.ca_file)
                .map_err(|e| format!("ca_file {:?}: {e}", config.ca_file))?;
        }
        if config.socket.is_empty() {
            let port_ok = config
                .server
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !port_ok {
                return Err(format!(
                    "server {:?} is not host:port (e.g. \"127.0.0.1:3306\")",
                    config.server
                ));
            }
        }
        Ok(Settings {
            hash: PasswordHash::parse(&config.password_hash)?,
            auth: compile("auth_query", &config.auth_query)?,
            superuser: compile("super_query", &config.super_query)?,
            acl: compile("acl_query", &config.acl_query)?,
            config,
        })
    }

    fn pool(&self) -> Pool {
        let c = &self.config;
        let mut opts = mysql_async::OptsBuilder::default()
            .user(Some(c.username.clone()))
            .pass(Some(c.password.clone()))
            .db_name(Some(c.database.clone()))
            .prefer_socket(false)
            .tcp_nodelay(true)
            .pool_opts(
                mysql_async::PoolOpts::default()
                    .with_constraints(
                        mysql_async::PoolConstraints::new(0, c.pool_size).unwrap_or_default(),
                    )
                    .with_inactive_connection_ttl(Duration::from_secs(60)),
            );
        if c.tls {
            let mut ssl = mysql_async::SslOpts::default();
            if !c.ca_file.is_empty() {
                ssl = ssl
                    .with_root_certs(vec![std::path::PathBuf::from(&c.ca_file).into()])
                    .with_disable_built_in_roots(true);
            }
            opts = opts.ssl_opts(ssl);
        }
        if c.socket.is_empty() {
            let (host, port) = c.server.rsplit_once(':').unwrap_or((&c.server, "3306"));
            opts = opts
                .ip_or_hostname(host.trim_start_matches('[').trim_end_matches(']'))
                .tcp_port(port.parse().unwrap_or(3306));
        } else {
            opts = opts.socket(Some(c.socket.clone()));
        }
        Pool::new(opts)
    }

    fn target(&self) -> String {
        if self.config.socket.is_empty() {
            self.config.server.clone()
        } else {
            self.config.socket.clone()
        }
    }
}

/// A column value as text (NULL → None).
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Double(d) => Some(d.to_string()),
        other => Some(other.as_sql(true).trim_matches('\'').to_owned()),
    }
}

/// The rows of one result as text.
fn text_rows(rows: &[Row]) -> Vec<TextRow> {
    let Some(first) = rows.first() else {
        return Vec::new();
    };
    let columns: std::sync::Arc<[String]> = first
        .columns_ref()
        .iter()
        .map(|c| c.name_str().into_owned())
        .collect();
    rows.iter()
        .map(|r| TextRow {
            columns: columns.clone(),
            values: (0..r.len()).map(|i| text(r.as_ref(i))).collect(),
        })
        .collect()
}

struct Shared {
    settings: Settings,
    pool: Pool,
    checks: SqlChecks,
}

impl SqlBackend for Shared {
    async fn rows(&self, query: &Query, client: &ClientInfo) -> Result<Vec<TextRow>, PluginError> {
        self.run(query, client).await.map(|rows| text_rows(&rows))
    }
}

impl Shared {
    /// Runs `q` for `client`: retries on connections the server has closed, bounded in all by
    /// the query timeout.
    async fn run(&self, q: &Query, client: &ClientInfo) -> Result<Vec<Row>, PluginError> {
        let vars = Vars::of(client);
        let params: Vec<Value> = q.params.iter().map(|v| Value::from(vars.get(*v))).collect();
        let timeout = Duration::from_millis(self.settings.config.query_timeout_ms);
        let attempts = self.settings.config.pool_size + 1;
        let work = async {
            let mut last = None;
            for _ in 0..attempts {
                let result = async {
                    let mut conn = self.pool.get_conn().await?;
                    conn.exec::<Row, _, _>(q.sql.as_str(), params.clone()).await
                }
                .await;
                match result {
                    Ok(rows) => return Ok(rows),
                    Err(e) if connection_gone(&e) => last = Some(e),
                    Err(e) => return Err(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                mysql_async::Error::Other("no connection attempt was made".into())
            }))
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => {
                tracing::warn!(server = %self.settings.target(), error = %e, "auth_mysql query failed");
                Err(PluginError::backend(format!("database error: {e}")))
            }
            Err(_) => {
                tracing::warn!(
                    server = %self.settings.target(),
                    timeout_ms = self.settings.config.query_timeout_ms,
                    "auth_mysql query timed out"
                );
                Err(PluginError::backend("database query timed out"))
            }
        }
    }

    /// Connects once and prepares every query, so a wrong address, password, database or table
    /// shows in the log right after the load instead of at the first login.
    async fn probe(&self) {
        let target = self.settings.target();
        let mut conn = match self.pool.get_conn().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(
                    server = %target,
                    error = %e,
                    "auth_mysql cannot reach the database; checks follow on_error until it is reachable"
                );
                return;
            }
        };
        let s = &self.settings;
        for (key, q) in [
            ("auth_query", &s.auth),
            ("super_query", &s.superuser),
            ("acl_query", &s.acl),
        ] {
            if let Some(q) = q {
                if let Err(e) = conn.prep(q.sql.as_str()).await {
                    tracing::warn!(query = key, sql = %q.sql, error = %e, "auth_mysql query does not prepare");
                }
            }
        }
        let (major, minor, patch) = conn.server_version();
        tracing::info!(server = %target, version = %format!("{major}.{minor}.{patch}"), "auth_mysql connected");
    }
}

fn connection_gone(e: &mysql_async::Error) -> bool {
    match e {
        mysql_async::Error::Server(s) => CONNECTION_GONE.contains(&s.code),
        other => other.is_fatal(),
    }
}

/// The plugin.
pub struct AuthMysql {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
}

impl Plugin for AuthMysql {
    const NAME: &'static str = "auth_mysql";
    const DESCRIPTION: &'static str = "authentication and ACL from MySQL / MariaDB tables";

    fn create(ctx: Context, config: &str) -> Result<Self, PluginError> {
        let settings = Settings::parse(config).map_err(PluginError::config)?;
        let pool = settings.pool();
        let checks = SqlChecks {
            hash: settings.hash,
            auth: settings.auth.clone(),
            superuser: settings.superuser.clone(),
            acl: settings.acl.clone(),
            hashing: HashPool::new(settings.config.hash_threads),
        };
        let shared = Arc::new(Shared {
            settings,
            pool,
            checks,
        });
        let probe = shared.clone();
        ctx.spawn(async move { probe.probe().await });
        Ok(AuthMysql {
            shared,
            runtime: ctx.runtime().clone(),
        })
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
        async move { shared.checks.authenticate(&*shared, request).await }
    }

    fn check_acl(
        &self,
        request: AclRequest,
    ) -> impl std::future::Future<Output = Result<AclResult, PluginError>> + Send + 'static {
        let shared = self.shared.clone();
        async move { shared.checks.check_acl(&*shared, request).await }
    }

    fn shutdown(&self) {
        let pool = self.shared.pool.clone();
        let closed = self.runtime.block_on(async move {
            tokio::time::timeout(Duration::from_secs(2), pool.disconnect()).await
        });
        if !matches!(closed, Ok(Ok(()))) {
            tracing::debug!("auth_mysql: pool did not close cleanly");
        }
    }
}

plugin_api::export_plugin!(AuthMysql);

#[cfg(test)]
mod tests {
    use super::*;
    use auth_common::query::Var;

    #[test]
    fn shipped_defaults_compile() {
        let s = Settings::parse("").expect("defaults");
        assert_eq!(s.hash, PasswordHash::parse("sha256").expect("sha256"));
        let acl = s.acl.expect("acl query");
        assert_eq!(
            acl.params,
            vec![Var::PeerIp, Var::Username, Var::ClientId],
            "'$all' and '%/%' are literals, not placeholders"
        );
        assert!(acl.sql.contains("like '%/%'"));
    }

    #[test]
    fn shipped_config_spells_out_the_defaults() {
        let shipped = Settings::parse(include_str!("../../../etc/plugins/auth_mysql.toml"))
            .expect("etc/plugins/auth_mysql.toml parses");
        let defaults = Settings::parse("").expect("defaults");
        assert_eq!(
            format!("{:?}", shipped.config),
            format!("{:?}", defaults.config)
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = Settings::parse("auth_query = \"select password from u where n = %u\"")
            .err()
            .expect("unquoted placeholder");
        assert!(e.contains("auth_query"), "{e}");
        let e = Settings::parse("password_hash = \"sha1\"")
            .err()
            .expect("bad hash");
        assert!(e.contains("sha1"), "{e}");
        let e = Settings::parse("server = \"localhost\"")
            .err()
            .expect("no port");
        assert!(e.contains("host:port"), "{e}");
        let e = Settings::parse("pool_sise = 3").err().expect("typo");
        assert!(e.contains("pool_sise"), "{e}");
    }
}
