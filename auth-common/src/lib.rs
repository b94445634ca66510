//! What the authentication and ACL plugins share, so each plugin crate stays small and every
//! password check behaves the same everywhere:
//!
//! * [`vars`] — the values placeholders (`%u`, `%c`, `%a` …) stand for, and filling templates.
//! * [`query`] — SQL queries whose placeholders are bound parameters (auth_mysql, auth_pgsql).
//! * [`sql`] — what auth_mysql and auth_pgsql decide from their rows; [`registration`] is what
//!   every backend auth plugin registers.
//! * [`acl`] — EMQ's ACL rows (allow, ipaddr, username, clientid, access, topic) and how the
//!   first matching one decides.
//! * [`OnErrorConfig`] and [`check_password`] — what every backend plugin does when its backend
//!   fails, and how it checks a stored hash.
//! * [`files`] — noticing that a rules or password file changed, replacing one atomically.
//! * `http` (feature `http`) — the HTTP client of auth_http and auth_jwt.
//! * `tls` (feature `tls`) — rustls client configurations for backends.
//! * [`hash`] — EMQ's `password_hash` forms (plain, md5, sha…, salted, bcrypt, pbkdf2), used by
//!   auth_mysql and the other database plugins.
//! * [`mosquitto`] — Mosquitto's password-file hashes (`$7$` PBKDF2-SHA512, `$6$` SHA-512), read
//!   and written exactly as `mosquitto_passwd` does.
//! * [`topic`] — topic-filter rules for ACLs: matching, whether one filter covers another,
//!   whether two overlap, and `%c` / `%u` substitution.
//! * [`users`] — a user store in a Mosquitto password file as a plugin, in three modes:
//!   `auth_file`, `auth_username`, `auth_clientid`.
//! * [`HashPool`] — runs slow hashes on blocking threads, a bounded number at once, so a login
//!   storm leaves CPU to message routing.
//!
//! Every comparison of a secret is constant-time ([`constant_time_eq`]).

pub mod acl;
pub mod files;
pub mod hash;
#[cfg(feature = "http")]
pub mod http;
pub mod mosquitto;
pub mod query;
pub mod sql;
#[cfg(feature = "tls")]
pub mod tls;
pub mod topic;
pub mod users;
pub mod vars;

use std::sync::Arc;

use serde::Deserialize;

use hash::PasswordHash;

/// What a backend plugin does when its backend (HTTP service, database, directory) cannot be
/// asked: the `on_error` key of every such plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnErrorConfig {
    /// Refuse (CONNACK "server unavailable"; ACL deny): fail closed.
    #[default]
    Deny,
    /// Ask the next plugin.
    Ignore,
}

impl OnErrorConfig {
    /// The broker's policy for the registration.
    pub fn policy(self) -> plugin_api::OnError {
        match self {
            OnErrorConfig::Deny => plugin_api::OnError::Deny,
            OnErrorConfig::Ignore => plugin_api::OnError::Ignore,
        }
    }
}

/// Checks `password` against `stored` (with `salt`) as `hash` says: digests inline, bcrypt and
/// PBKDF2 on `pool`'s blocking threads. `None` when the pool failed (a backend error).
pub async fn check_password(
    hash: PasswordHash,
    pool: &HashPool,
    password: Vec<u8>,
    stored: String,
    salt: String,
) -> Option<bool> {
    match hash {
        PasswordHash::Digest(..) => Some(hash.verify(&password, &stored, &salt)),
        PasswordHash::Bcrypt | PasswordHash::Pbkdf2 { .. } => {
            pool.run(move || hash.verify(&password, &stored, &salt))
                .await
        }
    }
}

/// A superuser column's value: 1 (or any non-zero number) or `true` (any case).
pub fn is_superuser_value(value: &str) -> bool {
    let v = value.trim();
    v.parse::<i64>()
        .map_or_else(|_| v.eq_ignore_ascii_case("true"), |n| n != 0)
}

/// Equality whose time depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs CPU-heavy password checks on blocking threads, at most `threads` at once.
#[derive(Debug, Clone)]
pub struct HashPool {
    permits: Arc<tokio::sync::Semaphore>,
}

impl HashPool {
    /// A pool of `threads` concurrent checks; 0 = half the cores (at least one).
    pub fn new(threads: usize) -> HashPool {
        let threads = match threads {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get().div_ceil(2))
                .max(1),
            n => n,
        };
        HashPool {
            permits: Arc::new(tokio::sync::Semaphore::new(threads)),
        }
    }

    /// Runs `check` on a blocking thread of the current runtime once a slot is free. `None`
    /// when the pool or the thread failed (treat as a backend error).
    pub async fn run<T: Send + 'static>(
        &self,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let _permit = self.permits.acquire().await.ok()?;
        tokio::task::spawn_blocking(check).await.ok()
    }
}

/// The registration of a backend auth plugin: `client.authenticate` and / or
/// `client.check_acl` at `priority` (default: the broker's AUTHENTICATION 970 and ACL 960), its
/// `on_error`, and a hook timeout of two backend round trips plus a margin.
pub fn registration(
    auth: bool,
    acl: bool,
    priority: Option<i32>,
    on_error: OnErrorConfig,
    check_timeout_ms: u64,
) -> plugin_api::Registration {
    use plugin_api::{priority as p, HookPoint, HookSpec};
    let mut hooks = Vec::new();
    if auth {
        hooks.push(HookSpec {
            point: HookPoint::CLIENT_AUTHENTICATE,
            priority: priority.unwrap_or(p::AUTHENTICATION),
        });
    }
    if acl {
        hooks.push(HookSpec {
            point: HookPoint::CLIENT_CHECK_ACL,
            priority: priority.unwrap_or(p::ACL),
        });
    }
    plugin_api::Registration {
        hooks: hooks.into(),
        on_error: on_error.policy(),
        timeout_ms: (2 * check_timeout_ms + 500).min(u32::MAX as u64) as u32,
        ..plugin_api::Registration::default()
    }
}
