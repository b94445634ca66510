//! What the authentication and ACL plugins share, so each plugin crate stays small and every
//! password check behaves the same everywhere:
//!
//! * [`files`] — noticing that a rules or password file changed, replacing one atomically.
//! * `http` (feature `http`) — the HTTP client of auth_http and auth_jwt.
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

pub mod files;
pub mod hash;
#[cfg(feature = "http")]
pub mod http;
pub mod mosquitto;
pub mod topic;
pub mod users;

use std::sync::Arc;

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
