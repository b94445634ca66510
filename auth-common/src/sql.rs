//! What the SQL auth plugins (auth_mysql, auth_pgsql) decide, whatever the driver: each plugin
//! runs its compiled [`Query`]s and hands back the rows as text ([`TextRow`]); [`SqlChecks`]
//! turns them into authentication and ACL answers with EMQ's rules.
//!
//! * **Authentication**: the first row's `password` column (else its first column) is checked
//!   with the configured hash, salted with a `salt` column when there is one. No row → Ignore;
//!   wrong or missing password → Deny "bad user name or password". A client without a user
//!   name is not looked up. Then the superuser query: its first column is true / non-zero.
//! * **ACL**: rows (allow, ipaddr, username, clientid, access, topic) in the order returned, the
//!   first match decides ([`crate::acl`]); none → Ignore. User names starting with `$` are not
//!   looked up.

use std::future::Future;
use std::sync::Arc;

use plugin_api::{
    AclRequest, AclResult, AuthRequest, AuthResult, ClientInfo, DenyReason, PluginError,
};

use crate::acl::{self, AclRow, Subject, Verdict};
use crate::hash::PasswordHash;
use crate::query::Query;
use crate::HashPool;

/// One result row, every value as text (SQL NULL → `None`).
#[derive(Debug, Clone)]
pub struct TextRow {
    /// Column names, shared by the rows of one result.
    pub columns: Arc<[String]>,
    /// The values, in column order.
    pub values: Vec<Option<String>>,
}

impl TextRow {
    /// Column `i`.
    pub fn get(&self, i: usize) -> Option<&str> {
        self.values.get(i)?.as_deref()
    }

    /// The column called `name` (case-insensitive).
    pub fn named(&self, name: &str) -> Option<&str> {
        let i = self
            .columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))?;
        self.get(i)
    }

    fn int(&self, name: &str) -> Option<i64> {
        self.named(name)?.trim().parse().ok()
    }
}

/// A driver that runs a compiled query for one client, bounded by its timeout.
pub trait SqlBackend: Send + Sync {
    /// The rows of `query`, its placeholders bound from `client`.
    fn rows(
        &self,
        query: &Query,
        client: &ClientInfo,
    ) -> impl Future<Output = Result<Vec<TextRow>, PluginError>> + Send;
}

/// The configured checks of one SQL auth plugin.
pub struct SqlChecks {
    /// How stored passwords are hashed.
    pub hash: PasswordHash,
    /// Authentication query.
    pub auth: Option<Query>,
    /// Superuser query.
    pub superuser: Option<Query>,
    /// ACL query.
    pub acl: Option<Query>,
    /// Threads for slow hashes.
    pub hashing: HashPool,
}

impl SqlChecks {
    /// `client.authenticate`.
    pub async fn authenticate<B: SqlBackend>(
        &self,
        backend: &B,
        request: AuthRequest,
    ) -> Result<AuthResult, PluginError> {
        let Some(q) = &self.auth else {
            return Ok(AuthResult::Ignore);
        };
        if request.client.username.is_none() {
            return Ok(AuthResult::Ignore);
        }
        let rows = backend.rows(q, &request.client).await?;
        let Some(row) = rows.first() else {
            return Ok(AuthResult::Ignore);
        };
        let stored = row.named("password").or_else(|| row.get(0));
        let salt = row.named("salt").unwrap_or_default().to_owned();
        let (Some(stored), Some(password)) = (stored, request.password.into_option()) else {
            return Ok(AuthResult::Deny(DenyReason::BadCredentials));
        };
        let ok = crate::check_password(
            self.hash,
            &self.hashing,
            password.into_vec(),
            stored.to_owned(),
            salt,
        )
        .await
        .ok_or_else(|| PluginError::backend("password check failed"))?;
        if !ok {
            return Ok(AuthResult::Deny(DenyReason::BadCredentials));
        }
        let superuser = match &self.superuser {
            Some(q) => backend
                .rows(q, &request.client)
                .await?
                .first()
                .and_then(|r| r.get(0))
                .is_some_and(crate::is_superuser_value),
            None => false,
        };
        Ok(AuthResult::Allow { superuser })
    }

    /// `client.check_acl`.
    pub async fn check_acl<B: SqlBackend>(
        &self,
        backend: &B,
        request: AclRequest,
    ) -> Result<AclResult, PluginError> {
        let Some(q) = &self.acl else {
            return Ok(AclResult::Ignore);
        };
        let subject = Subject::of(&request);
        if subject.username.starts_with('$') {
            return Ok(AclResult::Ignore);
        }
        let rows: Vec<AclRow> = backend
            .rows(q, &request.client)
            .await?
            .iter()
            .map(|r| AclRow {
                allow: r.int("allow"),
                ipaddr: r.named("ipaddr").map(str::to_owned),
                username: r.named("username").map(str::to_owned),
                clientid: r.named("clientid").map(str::to_owned),
                access: r.int("access"),
                topic: r.named("topic").map(str::to_owned),
            })
            .collect();
        Ok(match acl::decide(&rows, &subject) {
            Some(Verdict::Allow) => AclResult::Allow,
            Some(Verdict::Deny) => AclResult::Deny,
            None => AclResult::Ignore,
        })
    }
}
