//! `auth_jwt`: authentication and ACL from JSON Web Tokens, as EMQX's JWT authenticator.
//!
//! The token travels in the password field (or the user name, `from = "username"`). It is
//! verified with exactly one key source: an HMAC `secret` (HS256/384/512), a PEM
//! `public_key_file` (RS*/PS* for RSA, ES256/ES384 for EC, EdDSA), or a JWKS (`jwks_file`, or
//! `jwks_url` fetched at load and every `jwks_refresh_secs`; the key is picked by the token's
//! `kid`). Verification uses the `jsonwebtoken` crate (ring underneath).
//!
//! * Not a JWT (not three dot-separated parts): ignored, the next plugin decides (so the same
//!   broker can also take passwords).
//! * A JWT with a bad signature, an algorithm not allowed, `exp` passed or `nbf` to come (with
//!   `leeway_secs`), or a claim of `verify_claims` that differs (`%u` user name, `%c` client
//!   id): refused as bad user name or password (MQTT 5: 0x86).
//! * Valid: let in; the boolean claim `superuser_claim` makes a superuser. When the token has
//!   an `exp` and `disconnect_after_expire` is on, the connection is closed when it expires
//!   (MQTT 5: DISCONNECT 0xA0, maximum connect time).
//! * ACL: a token with the `acl_claim` claim may do only what it lists, in EMQX's forms:
//!   `{"pub": [filters], "sub": [filters], "all": [filters]}` or a list of rules
//!   `[{"permission": "allow"|"deny", "action": "publish"|"subscribe"|"all", "topic": f}]`
//!   (first match wins; no match denies). Filters take `%u` and `%c`. A token without the claim
//!   leaves ACL checks to the other plugins.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use auth_common::topic::{covers, substitute};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use plugin_api::*;
use serde::Deserialize;
use serde_json::Value;

/// Where the token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum From {
    Password,
    Username,
}

/// `etc/plugins/auth_jwt.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    from: From,
    secret: String,
    secret_base64_encoded: bool,
    public_key_file: PathBuf,
    jwks_file: PathBuf,
    jwks_url: String,
    jwks_refresh_secs: u64,
    ca_file: String,
    algorithms: Vec<String>,
    leeway_secs: u64,
    verify_claims: BTreeMap<String, String>,
    acl_claim: String,
    superuser_claim: String,
    disconnect_after_expire: bool,
    priority: Option<i32>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            from: From::Password,
            secret: String::new(),
            secret_base64_encoded: false,
            public_key_file: PathBuf::new(),
            jwks_file: PathBuf::new(),
            jwks_url: String::new(),
            jwks_refresh_secs: 300,
            ca_file: String::new(),
            algorithms: Vec::new(),
            leeway_secs: 30,
            verify_claims: BTreeMap::new(),
            acl_claim: "acl".into(),
            superuser_claim: "is_superuser".into(),
            disconnect_after_expire: true,
            priority: None,
        }
    }
}

/// The verification keys.
enum Keys {
    /// One key (secret or PEM) and the algorithms it may verify.
    Single(DecodingKey, Vec<Algorithm>),
    /// A key set, refreshed from its source.
    Set(RwLock<JwkSet>),
}

/// What a token allows, from its ACL claim.
#[derive(Debug, Clone)]
enum Acl {
    /// `{"pub": […], "sub": […], "all": […]}`.
    Lists {
        publish: Vec<String>,
        subscribe: Vec<String>,
    },
    /// `[{"permission", "action", "topic"}]`, first match wins.
    Rules(Vec<(bool, Option<Access>, String)>),
}

impl Acl {
    fn parse(v: &Value) -> Result<Acl, String> {
        let strings = |v: Option<&Value>| -> Result<Vec<String>, String> {
            match v {
                None => Ok(Vec::new()),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| "ACL filters must be strings".to_owned())
                    })
                    .collect(),
                Some(_) => Err("ACL lists must be arrays of filters".into()),
            }
        };
        match v {
            Value::Object(m) => {
                let all = strings(m.get("all"))?;
                let mut publish = strings(m.get("pub"))?;
                let mut subscribe = strings(m.get("sub"))?;
                publish.extend(all.iter().cloned());
                subscribe.extend(all);
                Ok(Acl::Lists { publish, subscribe })
            }
            Value::Array(rules) => {
                let mut out = Vec::new();
                for r in rules {
                    let allow = match r["permission"].as_str() {
                        Some("allow") => true,
                        Some("deny") => false,
                        _ => return Err("an ACL rule's permission is allow or deny".into()),
                    };
                    let action = match r["action"].as_str() {
                        Some("publish") => Some(Access::Publish),
                        Some("subscribe") => Some(Access::Subscribe),
                        Some("all") | None => None,
                        _ => return Err("an ACL rule's action is publish, subscribe or all".into()),
                    };
                    let mut topics = strings(r.get("topics"))?;
                    if let Some(t) = r["topic"].as_str() {
                        topics.push(t.to_owned());
                    }
                    for t in topics {
                        out.push((allow, action, t));
                    }
                }
                Ok(Acl::Rules(out))
            }
            _ => Err("the ACL claim is an object {pub, sub, all} or a list of rules".into()),
        }
    }

    fn allows(&self, access: Access, topic: &str, client_id: &str, username: Option<&str>) -> bool {
        let matches = |filter: &str| match substitute(filter, client_id, username) {
            Some(f) if access == Access::Publish => topic_matches(&f, topic),
            Some(f) => covers(&f, topic),
            None => false,
        };
        match self {
            Acl::Lists { publish, subscribe } => {
                let list = if access == Access::Publish {
                    publish
                } else {
                    subscribe
                };
                list.iter().any(|f| matches(f))
            }
            Acl::Rules(rules) => rules
                .iter()
                .find(|(_, action, f)| action.is_none_or(|a| a == access) && matches(f))
                .is_some_and(|(allow, _, _)| *allow),
        }
    }
}

/// A connected client's token-derived state.
struct Granted {
    connected_at_ms: u64,
    acl: Option<Arc<Acl>>,
    expiry: Option<tokio::task::JoinHandle<()>>,
}

struct Shared {
    config: Config,
    host: HostRef,
    keys: Keys,
    runtime: tokio::runtime::Handle,
    clients: Mutex<HashMap<String, Granted>>,
}

/// Why a token was refused (logged; never the token itself).
fn refuse(client_id: &str, why: &str) -> AuthResult {
    tracing::info!(client_id, why, "JWT refused");
    AuthResult::Deny(DenyReason::BadCredentials)
}

impl Shared {
    fn verify(&self, token: &str) -> Result<Value, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("bad header: {e}"))?;
        let (key, allowed) = match &self.keys {
            Keys::Single(key, allowed) => (key.clone(), allowed.clone()),
            Keys::Set(set) => {
                let set = set.read().map_err(|_| "key set poisoned".to_owned())?;
                let jwk = match &header.kid {
                    Some(kid) => set.find(kid),
                    None if set.keys.len() == 1 => set.keys.first(),
                    None => None,
                }
                .ok_or_else(|| format!("no key in the JWKS for kid {:?}", header.kid))?;
                let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable JWK: {e}"))?;
                let alg = jwk
                    .common
                    .key_algorithm
                    .and_then(|a| a.to_string().parse::<Algorithm>().ok());
                (key, alg.map_or_else(|| vec![header.alg], |a| vec![a]))
            }
        };
        let allowed = if self.config.algorithms.is_empty() {
            allowed
        } else {
            self.config
                .algorithms
                .iter()
                .filter_map(|a| a.parse::<Algorithm>().ok())
                .collect()
        };
        if !allowed.contains(&header.alg) {
            return Err(format!("algorithm {:?} is not allowed", header.alg));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.config.leeway_secs;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map(|d| d.claims)
            .map_err(|e| format!("invalid token: {e}"))
    }

    fn authenticate(self: &Arc<Self>, request: AuthRequest) -> AuthResult {
        let client = &request.client;
        let client_id = client.client_id.as_str();
        let username = client.username.as_ref().into_option().map(|u| u.as_str());
        let token = match self.config.from {
            From::Password => request
                .password
                .as_ref()
                .into_option()
                .and_then(|p| std::str::from_utf8(p.as_slice()).ok()),
            From::Username => username,
        };
        let Some(token) = token.filter(|t| t.split('.').count() == 3) else {
            return AuthResult::Ignore;
        };
        let claims = match self.verify(token) {
            Ok(c) => c,
            Err(why) => return refuse(client_id, &why),
        };
        for (claim, expected) in &self.config.verify_claims {
            let Some(expected) = substitute(expected, client_id, username) else {
                return refuse(client_id, &format!("claim {claim} needs a user name"));
            };
            let actual = match &claims[claim] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            if actual != expected {
                return refuse(client_id, &format!("claim {claim} does not match"));
            }
        }
        let acl = match claims.get(&self.config.acl_claim) {
            Some(v) => match Acl::parse(v) {
                Ok(a) => Some(Arc::new(a)),
                Err(why) => return refuse(client_id, &why),
            },
            None => None,
        };
        let expiry = match (self.config.disconnect_after_expire, claims["exp"].as_u64()) {
            (true, Some(exp)) => {
                let at_ms = exp
                    .saturating_add(self.config.leeway_secs)
                    .saturating_mul(1000);
                let wait = Duration::from_millis(at_ms.saturating_sub(self.host.now_ms()));
                let (host, id, since) = (
                    self.host.clone(),
                    client_id.to_owned(),
                    client.connected_at_ms,
                );
                Some(self.runtime.spawn(async move {
                    tokio::time::sleep(wait).await;
                    // 0xA0: maximum connect time.
                    if host.disconnect(id.as_str().into(), since, 0xA0) {
                        tracing::info!(client_id = %id, "token expired: connection closed");
                    }
                }))
            }
            _ => None,
        };
        let previous = self.clients.lock().ok().and_then(|mut m| {
            m.insert(
                client_id.to_owned(),
                Granted {
                    connected_at_ms: client.connected_at_ms,
                    acl,
                    expiry,
                },
            )
        });
        if let Some(p) = previous.and_then(|p| p.expiry) {
            p.abort();
        }
        let superuser = claims[&self.config.superuser_claim].as_bool() == Some(true);
        AuthResult::Allow { superuser }
    }

    /// Forgets a client's connection (when it closed, or was refused after authentication).
    fn forget(&self, client_id: &str, connected_at_ms: u64) {
        let removed = self
            .clients
            .lock()
            .ok()
            .and_then(|mut m| match m.get(client_id) {
                Some(g) if g.connected_at_ms == connected_at_ms => m.remove(client_id),
                _ => None,
            });
        if let Some(e) = removed.and_then(|g| g.expiry) {
            e.abort();
        }
    }
}

/// Reads a key set from a JWKS document.
fn parse_jwks(text: &str, source: &str) -> Result<JwkSet, String> {
    serde_json::from_str::<JwkSet>(text).map_err(|e| format!("{source} is not a JWKS: {e}"))
}

async fn fetch_jwks(http: &reqwest::Client, url: &str) -> Result<JwkSet, String> {
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("cannot fetch {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    let text = response
        .text()
        .await
        .map_err(|e| format!("cannot read {url}: {e}"))?;
    parse_jwks(&text, url)
}

/// The single key of `secret` or `public_key_file`, with the algorithms it may verify.
fn single_key(c: &Config) -> Result<Option<(DecodingKey, Vec<Algorithm>)>, String> {
    use Algorithm::*;
    if !c.secret.is_empty() {
        let key = if c.secret_base64_encoded {
            DecodingKey::from_base64_secret(&c.secret).map_err(|e| format!("secret: {e}"))?
        } else {
            DecodingKey::from_secret(c.secret.as_bytes())
        };
        return Ok(Some((key, vec![HS256, HS384, HS512])));
    }
    if c.public_key_file.as_os_str().is_empty() {
        return Ok(None);
    }
    let pem = std::fs::read(&c.public_key_file)
        .map_err(|e| format!("public_key_file {}: {e}", c.public_key_file.display()))?;
    if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
        return Ok(Some((k, vec![ES256, ES384])));
    }
    if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
        return Ok(Some((k, vec![RS256, RS384, RS512, PS256, PS384, PS512])));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
        return Ok(Some((k, vec![EdDSA])));
    }
    Err(format!(
        "public_key_file {}: not a PEM RSA, EC or Ed25519 public key",
        c.public_key_file.display()
    ))
}

/// The plugin.
pub struct AuthJwt {
    shared: Arc<Shared>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl Plugin for AuthJwt {
    const NAME: &'static str = "auth_jwt";
    const DESCRIPTION: &'static str = "authentication and ACL from JSON Web Tokens";

    fn create(ctx: Context, config: &str) -> Result<Self, PluginError> {
        let config: Config =
            toml::from_str(config).map_err(|e| PluginError::config(e.to_string()))?;
        let sources = [
            !config.secret.is_empty(),
            !config.public_key_file.as_os_str().is_empty(),
            !config.jwks_file.as_os_str().is_empty(),
            !config.jwks_url.is_empty(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(PluginError::config(
                "set exactly one of secret, public_key_file, jwks_file, jwks_url",
            ));
        }
        for a in &config.algorithms {
            if a.parse::<Algorithm>().is_err() {
                return Err(PluginError::config(format!("unknown algorithm {a:?}")));
            }
        }
        let mut http = None;
        let keys = match single_key(&config).map_err(PluginError::config)? {
            Some((key, algorithms)) => Keys::Single(key, algorithms),
            None if !config.jwks_file.as_os_str().is_empty() => {
                let text = std::fs::read_to_string(&config.jwks_file).map_err(|e| {
                    PluginError::config(format!("jwks_file {}: {e}", config.jwks_file.display()))
                })?;
                let source = config.jwks_file.display().to_string();
                Keys::Set(RwLock::new(
                    parse_jwks(&text, &source).map_err(PluginError::config)?,
                ))
            }
            None => {
                let client = auth_common::http::client(&config.ca_file, Duration::from_secs(10), 2)
                    .map_err(PluginError::config)?;
                // The first fetch happens now, so a wrong URL fails the load; on a thread of
                // its own, as this one may be inside the broker's runtime.
                let (handle, url, c) = (
                    ctx.runtime().clone(),
                    config.jwks_url.clone(),
                    client.clone(),
                );
                let set = std::thread::spawn(move || handle.block_on(fetch_jwks(&c, &url)))
                    .join()
                    .map_err(|_| PluginError::config("the JWKS fetch panicked"))?
                    .map_err(PluginError::config)?;
                http = Some(client);
                Keys::Set(RwLock::new(set))
            }
        };
        let shared = Arc::new(Shared {
            host: ctx.host().clone(),
            runtime: ctx.runtime().clone(),
            keys,
            clients: Mutex::new(HashMap::new()),
            config,
        });
        let refresher = http.map(|client| {
            let s = shared.clone();
            ctx.spawn(async move {
                let every = Duration::from_secs(s.config.jwks_refresh_secs.max(1));
                loop {
                    tokio::time::sleep(every).await;
                    match fetch_jwks(&client, &s.config.jwks_url).await {
                        Ok(set) => {
                            if let Keys::Set(lock) = &s.keys {
                                if let Ok(mut keys) = lock.write() {
                                    *keys = set;
                                }
                            }
                        }
                        Err(e) => tracing::warn!("{e}; the keys fetched before stay"),
                    }
                }
            })
        });
        Ok(AuthJwt { shared, refresher })
    }

    fn registration(&self) -> Registration {
        let priority = self.shared.config.priority;
        Registration {
            hooks: vec![
                HookSpec {
                    point: HookPoint::CLIENT_AUTHENTICATE,
                    priority: priority.unwrap_or(priority::AUTHENTICATION),
                },
                HookSpec {
                    point: HookPoint::CLIENT_CHECK_ACL,
                    priority: priority.unwrap_or(priority::ACL),
                },
                HookSpec {
                    point: HookPoint::CLIENT_CONNACK,
                    priority: priority::LOWEST,
                },
                HookSpec {
                    point: HookPoint::CLIENT_DISCONNECTED,
                    priority: priority::LOWEST,
                },
            ]
            .into(),
            ..Registration::default()
        }
    }

    fn on_event(&self, point: HookPoint, event: &EventView<'_>) {
        let refused = point == HookPoint::CLIENT_CONNACK && event.reason_code != 0;
        if refused || point == HookPoint::CLIENT_DISCONNECTED {
            self.shared.forget(
                event.client.client_id.as_str(),
                event.client.connected_at_ms,
            );
        }
    }

    fn authenticate(
        &self,
        request: AuthRequest,
    ) -> impl std::future::Future<Output = Result<AuthResult, PluginError>> + Send + 'static {
        let answer = self.shared.authenticate(request);
        async move { Ok(answer) }
    }

    fn check_acl(
        &self,
        request: AclRequest,
    ) -> impl std::future::Future<Output = Result<AclResult, PluginError>> + Send + 'static {
        let c = &request.client;
        let acl = self.shared.clients.lock().ok().and_then(|m| {
            m.get(c.client_id.as_str())
                .filter(|g| g.connected_at_ms == c.connected_at_ms)
                .and_then(|g| g.acl.clone())
        });
        let answer = match acl {
            None => AclResult::Ignore,
            Some(acl) => {
                let username = c.username.as_ref().into_option().map(|u| u.as_str());
                if acl.allows(
                    request.access,
                    request.topic.as_str(),
                    c.client_id.as_str(),
                    username,
                ) {
                    AclResult::Allow
                } else {
                    AclResult::Deny
                }
            }
        };
        async move { Ok(answer) }
    }

    fn shutdown(&self) {
        if let Some(r) = &self.refresher {
            r.abort();
        }
        if let Ok(mut m) = self.shared.clients.lock() {
            for (_, g) in m.drain() {
                if let Some(e) = g.expiry {
                    e.abort();
                }
            }
        }
    }
}

plugin_api::export_plugin!(AuthJwt);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_claims_in_both_forms() {
        let lists = Acl::parse(
            &serde_json::json!({"pub": ["devices/%c/#"], "sub": ["cmd/%u/#"], "all": ["shared/#"]}),
        )
        .expect("lists");
        assert!(lists.allows(Access::Publish, "devices/c1/t", "c1", Some("u")));
        assert!(!lists.allows(Access::Publish, "devices/c2/t", "c1", Some("u")));
        assert!(lists.allows(Access::Subscribe, "cmd/u/+", "c1", Some("u")));
        assert!(!lists.allows(Access::Subscribe, "cmd/#", "c1", Some("u")));
        assert!(lists.allows(Access::Publish, "shared/x", "c1", None));
        let rules = Acl::parse(&serde_json::json!([
            {"permission": "deny", "action": "publish", "topic": "a/secret"},
            {"permission": "allow", "action": "all", "topics": ["a/#"]}
        ]))
        .expect("rules");
        assert!(!rules.allows(Access::Publish, "a/secret", "c", None));
        assert!(rules.allows(Access::Subscribe, "a/secret", "c", None));
        assert!(rules.allows(Access::Publish, "a/b", "c", None));
        assert!(
            !rules.allows(Access::Publish, "b", "c", None),
            "no match denies"
        );
        assert!(Acl::parse(&serde_json::json!("x")).is_err());
    }

    #[test]
    fn shipped_config_parses() {
        let c: Config = toml::from_str(include_str!("../../../etc/plugins/auth_jwt.toml"))
            .expect("shipped auth_jwt.toml");
        assert_eq!(c.leeway_secs, 30);
    }
}
