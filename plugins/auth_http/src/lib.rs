//! auth_http: authentication, superuser and ACL checks against an HTTP service (every key in
//! `etc/plugins/auth_http.toml`).
//!
//! Three requests, each optional (absent = that check is not made): `auth_req`, `super_req`,
//! `acl_req`, each with a `url`, a `method` (get | post | put), `headers`, `params` (name →
//! template) and, for POST / PUT, `content_type` (`form` or `json`). GET sends the params as a
//! query string. Templates: `%u` user name, `%c` client id, `%a` peer IP, `%p` listener port,
//! `%P` password (auth only), `%t` topic and `%A` access (ACL only: 1 subscribe, 2 publish),
//! `%r` protocol (`mqtt` / `mqtt-ws`), `%C` / `%d` TLS client certificate CN / subject; the
//! `${username}`-style names work too. Values are URL-encoded where they go into a URL or a
//! form body.
//!
//! Answers: a JSON body with `result` = `allow | deny | ignore` (plus `is_superuser`, and `acl`:
//! a list of `{permission, action, topic}` rules that pre-authorise this client, so no per-topic
//! request is needed); otherwise the status: 200 / 204 allow (200 with the body `ignore` →
//! ignore), 401 / 400 → bad user name or password, 403 and other 4xx → not authorised; 5xx, a
//! timeout or a refused connection → the `on_error` policy (`deny` fails closed with "server
//! unavailable", `ignore` asks the next plugin). Network I/O runs on the plugin's runtime:
//! a slow or dead backend never stalls other clients.
//!
//! Optional auth-result cache (`cache_ttl_secs`, 0 = off): keyed by user name, client id and a
//! sha256 of the password, at most `cache_max_entries` (clients trying one password after
//! another must not grow it without end: expired results are dropped when it is full, and a
//! result that still finds no room is not cached). Passwords are never logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auth_common::vars::{fill, url_encode, Vars};
use auth_common::OnErrorConfig;
use plugin_api::*;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// HTTP method of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Params in the query string.
    Get,
    /// Params in the body.
    #[default]
    Post,
    /// Params in the body.
    Put,
}

/// Body encoding for POST / PUT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ContentType {
    /// application/x-www-form-urlencoded.
    #[default]
    Form,
    /// application/json.
    Json,
}

/// One request (`[auth_req]`, `[super_req]`, `[acl_req]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestConfig {
    /// URL (http:// or https://); templates allowed.
    pub url: String,
    /// get | post | put (default post).
    #[serde(default)]
    pub method: Method,
    /// form | json (default form).
    #[serde(default)]
    pub content_type: ContentType,
    /// Extra headers.
    #[serde(default)]
    pub headers: HashMap<String, String>,
    /// Parameters: name → template (sent in name order).
    #[serde(default)]
    pub params: std::collections::BTreeMap<String, String>,
}

/// etc/plugins/auth_http.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Authentication request.
    pub auth_req: Option<RequestConfig>,
    /// Superuser request (made after a successful authentication).
    pub super_req: Option<RequestConfig>,
    /// ACL request.
    pub acl_req: Option<RequestConfig>,
    /// Timeout of one request, milliseconds.
    pub timeout_ms: u64,
    /// deny | ignore.
    pub on_error: OnErrorConfig,
    /// Idle keep-alive connections kept per host.
    pub pool_max_idle: usize,
    /// PEM file of CA certificates for https:// URLs (empty = none; https then fails closed).
    pub ca_file: String,
    /// Seconds an authentication result is cached; 0 = no cache.
    pub cache_ttl_secs: u64,
    /// Most results cached at once (expired ones are dropped first when it is reached).
    pub cache_max_entries: usize,
    /// Position in the auth and ACL chains (higher first). Default: the broker's
    /// AUTHENTICATION (970) and ACL (960) priorities.
    pub priority: Option<i32>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            auth_req: None,
            super_req: None,
            acl_req: None,
            timeout_ms: 5000,
            on_error: OnErrorConfig::Deny,
            pool_max_idle: 32,
            ca_file: String::new(),
            cache_ttl_secs: 0,
            cache_max_entries: 100_000,
            priority: None,
        }
    }
}

/// What the service answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Allowed (superuser flag, pre-authorised ACL rules).
    Allow(bool, Vec<AclRule>),
    /// Denied, with the reason for CONNACK.
    Deny(DenyReason),
    /// No opinion.
    Ignore,
}

/// A pre-authorised ACL rule from a JSON answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AclRule {
    /// allow | deny.
    pub permission: String,
    /// publish | subscribe | all.
    pub action: String,
    /// Topic filter.
    pub topic: String,
}

#[derive(Deserialize)]
struct JsonAnswer {
    result: String,
    #[serde(default)]
    is_superuser: bool,
    #[serde(default)]
    acl: Vec<AclRule>,
}

/// Interprets a status and body (the answer rules documented in `etc/plugins/auth_http.toml`).
/// `None` = backend failure.
pub fn interpret(status: u16, body: &str) -> Option<Answer> {
    if let Ok(j) = serde_json::from_str::<JsonAnswer>(body) {
        return Some(match j.result.as_str() {
            "allow" => Answer::Allow(j.is_superuser, j.acl),
            "deny" => Answer::Deny(DenyReason::NotAuthorized),
            _ => Answer::Ignore,
        });
    }
    match status {
        200 if body.trim() == "ignore" => Some(Answer::Ignore),
        200 | 204 => Some(Answer::Allow(false, Vec::new())),
        400 | 401 => Some(Answer::Deny(DenyReason::BadCredentials)),
        400..=499 => Some(Answer::Deny(DenyReason::NotAuthorized)),
        _ => None,
    }
}

struct Shared {
    config: Config,
    client: reqwest::Client,
    /// Pre-authorised ACL rules per client id, from JSON auth answers.
    acls: Mutex<HashMap<String, Vec<AclRule>>>,
    /// Auth result cache: key → (answer, stored at).
    cache: Mutex<ResultCache>,
}

impl Shared {
    /// Sends one request; `None` on a transport error, timeout or 5xx.
    async fn ask(&self, req: &RequestConfig, vars: &Vars<'_>) -> Option<Answer> {
        let url = fill(&req.url, vars, true);
        let params: Vec<(String, String)> = req
            .params
            .iter()
            .map(|(k, t)| (k.clone(), fill(t, vars, false)))
            .collect();
        let mut builder = match req.method {
            Method::Get => {
                let query: Vec<String> = params
                    .iter()
                    .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v)))
                    .collect();
                let sep = if url.contains('?') { '&' } else { '?' };
                let full = if query.is_empty() {
                    url.clone()
                } else {
                    format!("{url}{sep}{}", query.join("&"))
                };
                self.client.get(full)
            }
            Method::Post | Method::Put => {
                let b = if req.method == Method::Post {
                    self.client.post(&url)
                } else {
                    self.client.put(&url)
                };
                match req.content_type {
                    ContentType::Json => {
                        let map: serde_json::Map<String, serde_json::Value> = params
                            .iter()
                            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                            .collect();
                        b.json(&map)
                    }
                    ContentType::Form => {
                        let body: Vec<String> = params
                            .iter()
                            .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v)))
                            .collect();
                        b.header("content-type", "application/x-www-form-urlencoded")
                            .body(body.join("&"))
                    }
                }
            }
        };
        for (k, v) in &req.headers {
            builder = builder.header(k, fill(v, vars, false));
        }
        let response = match builder.send().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(url = %req.url, error = %e, "auth_http request failed");
                return None;
            }
        };
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        let answer = interpret(status, &body);
        if answer.is_none() {
            tracing::warn!(url = %req.url, status, "auth_http service error");
        }
        answer
    }
}

/// Authentication results by [`cache_key`], with when each was stored.
#[derive(Default)]
struct ResultCache {
    entries: HashMap<[u8; 32], (AuthResult, Instant)>,
    /// Set when dropping the expired entries left the cache full: until then, looking again
    /// is pointless (a scan of every entry per authentication would be its own flood).
    full_until: Option<Instant>,
}

impl ResultCache {
    /// A result younger than `ttl`.
    fn get(&self, key: &[u8; 32], ttl: Duration) -> Option<AuthResult> {
        let (r, at) = self.entries.get(key)?;
        (at.elapsed() < ttl).then(|| r.clone())
    }

    /// Caches `result` under `key`, keeping at most `max` entries: when full, the expired
    /// entries go first (at most once a second); if it is still full, `result` is not cached.
    fn insert(&mut self, key: [u8; 32], result: AuthResult, ttl: Duration, max: usize) {
        let now = Instant::now();
        if self.entries.len() >= max && !self.entries.contains_key(&key) {
            if self.full_until.is_some_and(|until| now < until) {
                return;
            }
            self.entries
                .retain(|_, (_, at)| now.duration_since(*at) < ttl);
            if self.entries.len() >= max {
                self.full_until = Some(now + Duration::from_secs(1));
                return;
            }
            self.full_until = None;
        }
        self.entries.insert(key, (result, now));
    }
}

fn cache_key(c: &ClientInfo, password: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(c.username.as_ref().map_or("", |u| u.as_str()).as_bytes());
    h.update([0]);
    h.update(c.client_id.as_bytes());
    h.update([0]);
    h.update(password);
    h.finalize().into()
}

/// The plugin.
pub struct AuthHttp {
    shared: Arc<Shared>,
}

fn build_client(config: &Config) -> Result<reqwest::Client, String> {
    auth_common::http::client(
        &config.ca_file,
        Duration::from_millis(config.timeout_ms),
        config.pool_max_idle,
    )
}

impl Plugin for AuthHttp {
    const NAME: &'static str = "auth_http";
    const DESCRIPTION: &'static str = "authentication and ACL over HTTP";

    fn create(_ctx: Context, config: &str) -> Result<Self, PluginError> {
        let config: Config =
            toml::from_str(config).map_err(|e| PluginError::config(e.to_string()))?;
        for (name, r) in [
            ("auth_req", &config.auth_req),
            ("super_req", &config.super_req),
            ("acl_req", &config.acl_req),
        ] {
            if let Some(r) = r {
                if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
                    return Err(PluginError::config(format!(
                        "{name}.url {:?} is not an http:// or https:// URL",
                        r.url
                    )));
                }
            }
        }
        let client = build_client(&config).map_err(PluginError::config)?;
        Ok(AuthHttp {
            shared: Arc::new(Shared {
                config,
                client,
                acls: Mutex::new(HashMap::new()),
                cache: Mutex::new(ResultCache::default()),
            }),
        })
    }

    fn registration(&self) -> Registration {
        let c = &self.shared.config;
        let mut hooks = vec![HookSpec {
            point: HookPoint::CLIENT_DISCONNECTED,
            priority: priority::AUTHENTICATION,
        }];
        if c.auth_req.is_some() {
            hooks.push(HookSpec {
                point: HookPoint::CLIENT_AUTHENTICATE,
                priority: c.priority.unwrap_or(priority::AUTHENTICATION),
            });
        }
        if c.acl_req.is_some() || c.auth_req.is_some() {
            hooks.push(HookSpec {
                point: HookPoint::CLIENT_CHECK_ACL,
                priority: c.priority.unwrap_or(priority::ACL),
            });
        }
        Registration {
            hooks: hooks.into(),
            on_error: c.on_error.policy(),
            // The plugin's own request timeout, plus a margin for the bridge.
            timeout_ms: (c.timeout_ms + 500).min(u32::MAX as u64) as u32,
            ..Registration::default()
        }
    }

    fn on_event(&self, point: HookPoint, event: &EventView<'_>) {
        if point == HookPoint::CLIENT_DISCONNECTED {
            if let Ok(mut acls) = self.shared.acls.lock() {
                acls.remove(event.client.client_id.as_str());
            }
        }
    }

    fn authenticate(
        &self,
        request: AuthRequest,
    ) -> impl std::future::Future<Output = Result<AuthResult, PluginError>> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            let Some(auth) = shared.config.auth_req.clone() else {
                return Ok(AuthResult::Ignore);
            };
            let password_bytes: Vec<u8> = request
                .password
                .as_ref()
                .map(|p| p.to_vec())
                .into_option()
                .unwrap_or_default();
            let key = cache_key(&request.client, &password_bytes);
            let ttl = Duration::from_secs(shared.config.cache_ttl_secs);
            if !ttl.is_zero() {
                if let Some(r) = shared.cache.lock().ok().and_then(|c| c.get(&key, ttl)) {
                    return Ok(r);
                }
            }
            let password = String::from_utf8_lossy(&password_bytes).into_owned();
            let v = Vars::of(&request.client).with_password(&password);
            let result = match shared.ask(&auth, &v).await {
                None => return Err(PluginError::backend("authentication service unavailable")),
                Some(Answer::Ignore) => AuthResult::Ignore,
                Some(Answer::Deny(r)) => AuthResult::Deny(r),
                Some(Answer::Allow(mut superuser, acl)) => {
                    if !acl.is_empty() {
                        if let Ok(mut acls) = shared.acls.lock() {
                            acls.insert(request.client.client_id.to_string(), acl);
                        }
                    }
                    if let (false, Some(sup)) = (superuser, shared.config.super_req.clone()) {
                        superuser = matches!(shared.ask(&sup, &v).await, Some(Answer::Allow(..)));
                    }
                    AuthResult::Allow { superuser }
                }
            };
            if !ttl.is_zero() && !matches!(result, AuthResult::Ignore) {
                if let Ok(mut c) = shared.cache.lock() {
                    c.insert(key, result.clone(), ttl, shared.config.cache_max_entries);
                }
            }
            Ok(result)
        }
    }

    fn check_acl(
        &self,
        request: AclRequest,
    ) -> impl std::future::Future<Output = Result<AclResult, PluginError>> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            let action = match request.access {
                Access::Subscribe => "subscribe",
                Access::Publish => "publish",
            };
            let pre = shared
                .acls
                .lock()
                .ok()
                .and_then(|a| a.get(request.client.client_id.as_str()).cloned())
                .unwrap_or_default();
            // Pre-authorised rules from the auth answer: first match decides.
            for rule in &pre {
                if (rule.action == action || rule.action == "all")
                    && topic_matches(&rule.topic, request.topic.as_str())
                {
                    return Ok(if rule.permission == "allow" {
                        AclResult::Allow
                    } else {
                        AclResult::Deny
                    });
                }
            }
            let Some(acl) = shared.config.acl_req.clone() else {
                return Ok(AclResult::Ignore);
            };
            let access = match request.access {
                Access::Subscribe => "1",
                Access::Publish => "2",
            };
            let v = Vars::of(&request.client).with_topic(request.topic.as_str(), access);
            match shared.ask(&acl, &v).await {
                None => Err(PluginError::backend("ACL service unavailable")),
                Some(Answer::Allow(..)) => Ok(AclResult::Allow),
                Some(Answer::Deny(_)) => Ok(AclResult::Deny),
                Some(Answer::Ignore) => Ok(AclResult::Ignore),
            }
        }
    }
}

plugin_api::export_plugin!(AuthHttp);

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache stays within its bound: a full cache drops what has expired, and caches
    /// nothing more while every entry is still fresh (looking again at most once a second).
    #[test]
    fn the_cache_is_bounded() {
        let mut cache = ResultCache::default();
        let deny = AuthResult::Deny(DenyReason::BadCredentials);
        let ttl = Duration::from_secs(60);
        for i in 0..10u8 {
            cache.insert([i; 32], deny.clone(), ttl, 4);
        }
        assert_eq!(
            cache.entries.len(),
            4,
            "fresh entries kept, new ones not cached"
        );
        assert!(cache.get(&[0; 32], ttl).is_some() && cache.get(&[9; 32], ttl).is_none());
        assert!(cache.full_until.is_some());
        cache.insert([0; 32], deny.clone(), ttl, 4);
        assert_eq!(cache.entries.len(), 4, "a cached key can be refreshed");
        cache.full_until = None;
        let expired = Duration::ZERO;
        cache.insert([42; 32], deny, expired, 4);
        assert_eq!(cache.entries.len(), 1, "expired entries make room");
        assert!(cache.get(&[42; 32], ttl).is_some());
        assert!(
            cache.get(&[42; 32], expired).is_none(),
            "older than the ttl"
        );
    }

    #[test]
    fn answers() {
        assert_eq!(interpret(200, ""), Some(Answer::Allow(false, vec![])));
        assert_eq!(interpret(204, ""), Some(Answer::Allow(false, vec![])));
        assert_eq!(interpret(200, "ignore"), Some(Answer::Ignore));
        assert_eq!(
            interpret(401, ""),
            Some(Answer::Deny(DenyReason::BadCredentials))
        );
        assert_eq!(
            interpret(403, ""),
            Some(Answer::Deny(DenyReason::NotAuthorized))
        );
        assert_eq!(interpret(503, ""), None);
        assert_eq!(
            interpret(200, r#"{"result":"deny"}"#),
            Some(Answer::Deny(DenyReason::NotAuthorized))
        );
        assert_eq!(
            interpret(200, r#"{"result":"allow","is_superuser":true}"#),
            Some(Answer::Allow(true, vec![]))
        );
        assert_eq!(
            interpret(200, r#"{"result":"ignore"}"#),
            Some(Answer::Ignore)
        );
    }
}
