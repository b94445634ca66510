//! auth_pgsql: authentication, superuser and ACL checks against PostgreSQL tables (README,
//! "Authentication with PostgreSQL"), with EMQ's queries and table layout — the same rules as
//! auth_mysql, through the shared `auth_common` modules:
//!
//! * **Authentication** (`auth_query`): the row's `password` column (or its first column) is
//!   checked with `password_hash` against the client's password, salted with a `salt` column
//!   when there is one. No row → Ignore (the next plugin decides); wrong or missing password →
//!   Deny "bad user name or password". A client without a user name is not looked up.
//! * **Superuser** (`super_query`, after a successful authentication): first column of the
//!   first row is true / non-zero → superuser.
//! * **ACL** (`acl_query`): EMQ's rows (allow, ipaddr, username, clientid, access, topic), the
//!   first matching one in the order returned decides; none → Ignore.
//!
//! Placeholders (`'%u'`, `'%c'`, `'%a'`, `'%C'`, `'%d'`) stand alone in quotes and become the
//! numbered parameters `$1`, `$2` … of a prepared statement (cached per pooled connection):
//! nothing from a client is spliced into SQL.
//!
//! **The pool** (deadpool-postgres over tokio-postgres): at most `pool_size` connections,
//! opened on demand. A connection whose server went away is dropped when it is handed out, and
//! a query that still meets one is retried on a fresh connection; each check is bounded in all
//! by `query_timeout_ms`, past which — or with the server down — `on_error` decides. So a
//! restarted server is used again without a reload. TLS (`tls`) goes through rustls and checks
//! the server's certificate against `ca_file` (or the public web roots) and its name against
//! the host of `server`.

use std::sync::Arc;
use std::time::Duration;

use auth_common::hash::PasswordHash;
use auth_common::query::{Marker, Query};
use auth_common::sql::{SqlBackend, SqlChecks, TextRow};
use auth_common::vars::Vars;
use auth_common::{HashPool, OnErrorConfig};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use plugin_api::*;
use serde::Deserialize;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;

/// etc/plugins/auth_pgsql.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `host:port` of the server.
    pub server: String,
    /// Directory of the server's Unix socket (e.g. `/var/run/postgresql`); when set it is used
    /// instead of `server`.
    pub socket_dir: String,
    /// Database user.
    pub username: String,
    /// Database password.
    pub password: String,
    /// Database name.
    pub database: String,
    /// TLS to the server (TCP only).
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
    /// Most bcrypt / pbkdf2 checks computed at once (0 = half the CPU cores, at least 1).
    pub hash_threads: usize,
    /// Authentication query ("" = no authentication).
    pub auth_query: String,
    /// Superuser query ("" = nobody is a superuser through this plugin).
    pub super_query: String,
    /// ACL query ("" = no ACL checks).
    pub acl_query: String,
}

/// EMQ's default authentication query, with the salt column.
pub const DEFAULT_AUTH_QUERY: &str =
    "select password, salt from mqtt_user where username = '%u' limit 1";
/// EMQ's default superuser query.
pub const DEFAULT_SUPER_QUERY: &str =
    "select is_superuser from mqtt_user where username = '%u' limit 1";
/// EMQ's default ACL query, plus CIDR rows and a deterministic order.
pub const DEFAULT_ACL_QUERY: &str = "select allow, ipaddr, username, clientid, access, topic \
     from mqtt_acl where ipaddr = '%a' or username = '%u' or username = '$all' or clientid = '%c' \
     or ipaddr like '%/%' order by id";

impl Default for Config {
    fn default() -> Self {
        Config {
            server: "127.0.0.1:5432".into(),
            socket_dir: String::new(),
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
        Query::compile_with(key, text, Marker::Dollar).map(Some)
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
        if !config.socket_dir.is_empty() && !cfg!(unix) {
            return Err("socket_dir needs Unix domain sockets, which this platform does not have: use server = \"host:port\"".into());
        }
        if config.socket_dir.is_empty() && host_port(&config.server).is_none() {
            return Err(format!(
                "server {:?} is not host:port (e.g. \"127.0.0.1:5432\")",
                config.server
            ));
        }
        Ok(Settings {
            hash: PasswordHash::parse(&config.password_hash)?,
            auth: compile("auth_query", &config.auth_query)?,
            superuser: compile("super_query", &config.super_query)?,
            acl: compile("acl_query", &config.acl_query)?,
            config,
        })
    }

    fn pool(&self) -> Result<Pool, String> {
        let c = &self.config;
        let mut pg = tokio_postgres::Config::new();
        pg.user(&c.username)
            .password(&c.password)
            .dbname(&c.database)
            .application_name("mqtt-broker auth_pgsql")
            .connect_timeout(Duration::from_millis(c.query_timeout_ms));
        if c.socket_dir.is_empty() {
            let (host, port) = host_port(&c.server).ok_or("server is not host:port")?;
            pg.host(host).port(port);
        } else {
            unix_socket(&mut pg, &c.socket_dir)?;
        }
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = if c.tls {
            let tls = auth_common::tls::client_config(&c.ca_file, "", "")?;
            Manager::from_config(
                pg,
                tokio_postgres_rustls::MakeRustlsConnect::new(tls),
                manager_config,
            )
        } else {
            Manager::from_config(pg, tokio_postgres::NoTls, manager_config)
        };
        Pool::builder(manager)
            .max_size(c.pool_size)
            .build()
            .map_err(|e| e.to_string())
    }

    fn target(&self) -> &str {
        if self.config.socket_dir.is_empty() {
            &self.config.server
        } else {
            &self.config.socket_dir
        }
    }
}

/// Connects through the server's Unix domain socket in `dir`.
#[cfg(unix)]
fn unix_socket(pg: &mut tokio_postgres::Config, dir: &str) -> Result<(), String> {
    pg.host_path(dir);
    Ok(())
}

/// Unix domain sockets do not exist here (refused when the config is read).
#[cfg(not(unix))]
fn unix_socket(_pg: &mut tokio_postgres::Config, _dir: &str) -> Result<(), String> {
    Err("socket_dir needs Unix domain sockets".into())
}

/// `host:port` split (`[v6]:port` too).
fn host_port(server: &str) -> Option<(&str, u16)> {
    let (host, port) = server.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty())
        .then_some(())
        .and_then(|()| port.parse().ok().map(|p| (host, p)))
}

/// Column `i` of `row` as text, whatever its SQL type (NULL → None).
fn text(row: &Row, i: usize) -> Option<String> {
    let ty = row.columns().get(i)?.type_().clone();
    let value = |r: Result<Option<String>, _>| r.ok().flatten();
    match ty {
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)
            .ok()
            .flatten()
            .map(|b| if b { "1" } else { "0" }.to_owned()),
        Type::INT2 => value(
            row.try_get::<_, Option<i16>>(i)
                .map(|v| v.map(|v| v.to_string())),
        ),
        Type::INT4 => value(
            row.try_get::<_, Option<i32>>(i)
                .map(|v| v.map(|v| v.to_string())),
        ),
        Type::INT8 => value(
            row.try_get::<_, Option<i64>>(i)
                .map(|v| v.map(|v| v.to_string())),
        ),
        Type::BYTEA => row
            .try_get::<_, Option<Vec<u8>>>(i)
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
        _ => value(row.try_get::<_, Option<String>>(i)),
    }
}

/// The rows of one result as text.
fn text_rows(rows: &[Row]) -> Vec<TextRow> {
    let Some(first) = rows.first() else {
        return Vec::new();
    };
    let columns: std::sync::Arc<[String]> = first
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    rows.iter()
        .map(|r| TextRow {
            columns: columns.clone(),
            values: (0..r.len()).map(|i| text(r, i)).collect(),
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
    /// Runs `q` for `client`, retrying on connections the server closed, bounded in all by the
    /// query timeout.
    async fn run(&self, q: &Query, client: &ClientInfo) -> Result<Vec<Row>, PluginError> {
        let vars = Vars::of(client);
        let values: Vec<&str> = q.params.iter().map(|v| vars.get(*v)).collect();
        let params: Vec<&(dyn ToSql + Sync)> =
            values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let timeout = Duration::from_millis(self.settings.config.query_timeout_ms);
        let attempts = self.settings.config.pool_size + 1;
        let work = async {
            let mut last = String::from("no connection attempt was made");
            for _ in 0..attempts {
                let conn = match self.pool.get().await {
                    Ok(c) => c,
                    Err(e) => return Err(e.to_string()),
                };
                let result = async {
                    let statement = conn.prepare_cached(&q.sql).await?;
                    conn.query(&statement, &params).await
                }
                .await;
                match result {
                    Ok(rows) => return Ok(rows),
                    Err(e) if e.is_closed() || conn.is_closed() => {
                        // The server closed this connection: drop it, try a fresh one.
                        last = e.to_string();
                        let _ = deadpool_postgres::Object::take(conn);
                    }
                    Err(e) => return Err(db_error(&e)),
                }
            }
            Err(last)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => {
                tracing::warn!(server = %self.settings.target(), error = %e, "auth_pgsql query failed");
                Err(PluginError::backend(format!("database error: {e}")))
            }
            Err(_) => {
                tracing::warn!(
                    server = %self.settings.target(),
                    timeout_ms = self.settings.config.query_timeout_ms,
                    "auth_pgsql query timed out"
                );
                Err(PluginError::backend("database query timed out"))
            }
        }
    }

    /// Connects once and prepares every query, so a wrong address, password, database or table
    /// shows in the log right after the load instead of at the first login.
    async fn probe(&self) {
        let target = self.settings.target();
        let conn = match self.pool.get().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(
                    server = %target,
                    error = %e,
                    "auth_pgsql cannot reach the database; checks follow on_error until it is reachable"
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
                if let Err(e) = conn.prepare_cached(&q.sql).await {
                    tracing::warn!(query = key, sql = %q.sql, error = %db_error(&e), "auth_pgsql query does not prepare");
                }
            }
        }
        tracing::info!(server = %target, "auth_pgsql connected");
    }
}

/// The server's own message when there is one (tokio-postgres' Display says only "db error").
fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// The plugin.
pub struct AuthPgsql {
    shared: Arc<Shared>,
}

impl Plugin for AuthPgsql {
    const NAME: &'static str = "auth_pgsql";
    const DESCRIPTION: &'static str = "authentication and ACL from PostgreSQL tables";

    fn create(ctx: Context, config: &str) -> Result<Self, PluginError> {
        let settings = Settings::parse(config).map_err(PluginError::config)?;
        let pool = {
            // deadpool reads the runtime when it builds the pool.
            let _enter = ctx.runtime().enter();
            settings.pool().map_err(PluginError::config)?
        };
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
        Ok(AuthPgsql { shared })
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
        self.shared.pool.close();
    }
}

plugin_api::export_plugin!(AuthPgsql);

#[cfg(test)]
mod tests {
    use super::*;
    use auth_common::query::Var;

    #[test]
    fn shipped_defaults_compile_with_numbered_parameters() {
        let s = Settings::parse("").expect("defaults");
        let acl = s.acl.expect("acl query");
        assert_eq!(acl.params, vec![Var::PeerIp, Var::Username, Var::ClientId]);
        assert!(
            acl.sql.contains("ipaddr = $1 or username = $2"),
            "{}",
            acl.sql
        );
        assert!(acl.sql.contains("like '%/%'"));
    }

    #[test]
    fn shipped_config_spells_out_the_defaults() {
        let shipped = Settings::parse(include_str!("../../../etc/plugins/auth_pgsql.toml"))
            .expect("etc/plugins/auth_pgsql.toml parses");
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
        let e = Settings::parse("server = \"db\"").err().expect("no port");
        assert!(e.contains("host:port"), "{e}");
        let e = Settings::parse("pool_sise = 3").err().expect("typo");
        assert!(e.contains("pool_sise"), "{e}");
    }
}
