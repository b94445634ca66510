//! `auth_scram`: MQTT 5 enhanced authentication with SCRAM (RFC 5802 / RFC 7677), methods
//! `SCRAM-SHA-256` and `SCRAM-SHA-512`, as EMQX 5 offers it.
//!
//! The broker runs the CONNECT / AUTH exchange and calls this plugin at each step:
//!
//! 1. CONNECT carries the client-first message `n,,n=<user>,r=<client nonce>`; the plugin
//!    answers the server-first message `r=<nonce>,s=<salt>,i=<iterations>` (AUTH 0x18).
//! 2. The client's AUTH carries the client-final message `c=biws,r=<nonce>,p=<proof>`; the
//!    plugin checks the proof against the stored key and answers `v=<server signature>` in
//!    CONNACK (success), or refuses with 0x87 (not authorized).
//!
//! Re-authentication (AUTH 0x19) runs the same two steps. An unknown user goes through the
//! exchange with a made-up salt and fails at the end, so the answers do not tell which users
//! exist. Users are kept in their own file (`users_file`), one line per user and mechanism —
//! `user:SCRAM-SHA-256:<iterations>:<salt>:<stored key>:<server key>` (base64) — never the
//! password; `brokerctl scram add <user> --password P | del <user> | list` manage it while the
//! broker runs (written atomically, re-read when it changes on disc).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auth_common::files::{Live, Watched};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use plugin_api::*;
use serde::Deserialize;
use sha2::{Digest, Sha256, Sha512};

/// `etc/plugins/auth_scram.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    users_file: PathBuf,
    iterations: u32,
    superusers: Vec<String>,
    watch_interval_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            users_file: PathBuf::from("data/scram_users"),
            iterations: 4096,
            superusers: Vec::new(),
            watch_interval_secs: 2,
        }
    }
}

/// SHA-256 or SHA-512.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mech {
    Sha256,
    Sha512,
}

impl Mech {
    fn from_method(m: &str) -> Option<Mech> {
        match m {
            "SCRAM-SHA-256" => Some(Mech::Sha256),
            "SCRAM-SHA-512" => Some(Mech::Sha512),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mech::Sha256 => "SCRAM-SHA-256",
            Mech::Sha512 => "SCRAM-SHA-512",
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Mech::Sha256 => {
                let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Mech::Sha512 => {
                let mut m = <Hmac<Sha512> as Mac>::new_from_slice(key).expect("any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Mech::Sha256 => Sha256::digest(data).to_vec(),
            Mech::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    fn salted(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Mech::Sha256 => {
                let mut out = vec![0u8; 32];
                let _ = pbkdf2::pbkdf2::<Hmac<Sha256>>(password, salt, iterations, &mut out);
                out
            }
            Mech::Sha512 => {
                let mut out = vec![0u8; 64];
                let _ = pbkdf2::pbkdf2::<Hmac<Sha512>>(password, salt, iterations, &mut out);
                out
            }
        }
    }
}

/// One user's credentials for one mechanism.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    user: String,
    mech: Mech,
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl Entry {
    fn new(user: &str, mech: Mech, password: &str, iterations: u32) -> Result<Entry, String> {
        let mut salt = vec![0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| format!("no random salt: {e}"))?;
        let salted = mech.salted(password.as_bytes(), &salt, iterations);
        let client_key = mech.hmac(&salted, b"Client Key");
        Ok(Entry {
            user: user.to_owned(),
            mech,
            iterations,
            salt,
            stored_key: mech.hash(&client_key),
            server_key: mech.hmac(&salted, b"Server Key"),
        })
    }

    fn line(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}:{}\n",
            self.user,
            self.mech.name(),
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(&self.stored_key),
            B64.encode(&self.server_key)
        )
    }
}

/// Parses the users file; an error names the line.
fn parse_users(text: &str) -> Result<Vec<Entry>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split(':').collect();
        let bad = |why: &str| (i + 1, why.to_owned());
        let [user, mech, iterations, salt, stored, server] = parts.as_slice() else {
            return Err(bad(
                "expected user:mechanism:iterations:salt:stored_key:server_key",
            ));
        };
        let mech = Mech::from_method(mech).ok_or_else(|| bad("unknown mechanism"))?;
        let b64 = |s: &str| B64.decode(s).map_err(|_| bad("not base64"));
        out.push(Entry {
            user: (*user).to_owned(),
            mech,
            iterations: iterations
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad("bad iteration count"))?,
            salt: b64(salt)?,
            stored_key: b64(stored)?,
            server_key: b64(server)?,
        });
    }
    Ok(out)
}

/// Largest SCRAM message accepted, bytes.
const MAX_MESSAGE: usize = 1024;

/// Exchanges in progress at once; beyond that, new ones are refused until old ones finish or
/// time out (a minute).
const MAX_PENDING: usize = 10_000;

/// An exchange between its two steps.
struct Pending {
    entry: Entry,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    since: Instant,
}

struct Shared {
    config: Config,
    file: Watched,
    users: Live<Vec<Entry>>,
    pending: Mutex<HashMap<(String, u64, bool), Pending>>,
    /// Makes the salts of unknown users look like real ones, and stable.
    decoy_key: [u8; 32],
    writing: tokio::sync::Mutex<()>,
}

fn nonce() -> String {
    let mut raw = [0u8; 18];
    let _ = getrandom::fill(&mut raw);
    B64.encode(raw)
}

/// The value of `key=` in a SCRAM attribute list.
fn attr<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message
        .split(',')
        .find_map(|part| part.strip_prefix(key)?.strip_prefix('='))
}

impl Shared {
    fn read(&self) -> Result<Vec<Entry>, String> {
        match self.file.read()? {
            Some(text) => parse_users(&text)
                .map_err(|(line, why)| format!("{}:{line}: {why}", self.file.path().display())),
            None => Ok(Vec::new()),
        }
    }

    fn lookup(&self, user: &str, mech: Mech) -> Option<Entry> {
        self.users
            .current()
            .iter()
            .find(|e| e.user == user && e.mech == mech)
            .cloned()
    }

    /// Credentials no password matches, with a salt that is the same for the same name.
    fn decoy(&self, user: &str, mech: Mech) -> Entry {
        let salt = mech.hmac(&self.decoy_key, user.as_bytes())[..16].to_vec();
        Entry {
            user: user.to_owned(),
            mech,
            iterations: self.config.iterations,
            salt,
            stored_key: mech.hash(&self.decoy_key),
            server_key: mech.hmac(&self.decoy_key, b"decoy"),
        }
    }

    fn step(&self, r: &EnhancedAuthRequest) -> EnhancedAuthResult {
        let Some(mech) = Mech::from_method(r.method.as_str()) else {
            return EnhancedAuthResult::ignore();
        };
        let key = (
            r.client.client_id.to_string(),
            r.client.connected_at_ms,
            r.reauthenticate,
        );
        // SCRAM messages are short; a large one is not a client we can authenticate (and would
        // sit in `pending` for a minute).
        if r.data.len() > MAX_MESSAGE {
            return EnhancedAuthResult::failure(0x87);
        }
        let Ok(text) = std::str::from_utf8(r.data.as_slice()) else {
            return EnhancedAuthResult::failure(0x87);
        };
        let Ok(mut pending) = self.pending.lock() else {
            return EnhancedAuthResult::failure(0x80);
        };
        pending.retain(|_, p| p.since.elapsed() < Duration::from_secs(60));
        match pending.remove(&key) {
            None => {
                // client-first: gs2 header "n,," (no channel binding), then the bare message.
                let Some(bare) = text.strip_prefix("n,,") else {
                    return EnhancedAuthResult::failure(0x87);
                };
                let (Some(user), Some(client_nonce)) = (attr(bare, "n"), attr(bare, "r")) else {
                    return EnhancedAuthResult::failure(0x87);
                };
                if pending.len() >= MAX_PENDING {
                    tracing::warn!("{MAX_PENDING} SCRAM exchanges in progress: refusing more");
                    return EnhancedAuthResult::failure(0x88);
                }
                let entry = self
                    .lookup(user, mech)
                    .unwrap_or_else(|| self.decoy(user, mech));
                let nonce = format!("{client_nonce}{}", nonce());
                let server_first = format!(
                    "r={nonce},s={},i={}",
                    B64.encode(&entry.salt),
                    entry.iterations
                );
                pending.insert(
                    key,
                    Pending {
                        entry,
                        client_first_bare: bare.to_owned(),
                        server_first: server_first.clone(),
                        nonce,
                        since: Instant::now(),
                    },
                );
                EnhancedAuthResult::continue_with(server_first.into_bytes())
            }
            Some(p) => {
                // client-final: c=<gs2 header>,r=<nonce>,p=<proof>
                let Some((without_proof, proof)) = text.rsplit_once(",p=") else {
                    return EnhancedAuthResult::failure(0x87);
                };
                let binding_ok = attr(without_proof, "c") == Some("biws");
                let nonce_ok = attr(without_proof, "r") == Some(p.nonce.as_str());
                let Ok(proof) = B64.decode(proof) else {
                    return EnhancedAuthResult::failure(0x87);
                };
                let auth_message =
                    format!("{},{},{without_proof}", p.client_first_bare, p.server_first);
                let e = &p.entry;
                let signature = e.mech.hmac(&e.stored_key, auth_message.as_bytes());
                let client_key: Vec<u8> = proof
                    .iter()
                    .zip(signature.iter())
                    .map(|(a, b)| a ^ b)
                    .collect();
                let proof_ok = proof.len() == signature.len()
                    && auth_common::constant_time_eq(&e.mech.hash(&client_key), &e.stored_key);
                if !(binding_ok && nonce_ok && proof_ok) {
                    tracing::info!(user = %e.user, client_id = %r.client.client_id, "SCRAM authentication failed");
                    return EnhancedAuthResult::failure(0x87);
                }
                let server_signature = e.mech.hmac(&e.server_key, auth_message.as_bytes());
                let superuser = self.config.superusers.contains(&e.user);
                EnhancedAuthResult::success(
                    format!("v={}", B64.encode(server_signature)).into_bytes(),
                    superuser,
                )
            }
        }
    }

    async fn command(self: Arc<Self>, args: Vec<String>) -> Result<String, PluginError> {
        let usage = || {
            PluginError::new(
                ErrorKind::INVALID,
                "usage: scram add <user> --password <P> | scram del <user> | scram list",
            )
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let _writing = self.writing.lock().await;
        let fail = |e: String| PluginError::new(ErrorKind::OTHER, e);
        match args.get(1..).unwrap_or_default() {
            ["list"] => {
                let users = self.users.current();
                let mut names: Vec<String> = users
                    .iter()
                    .map(|e| format!("{} {}", e.user, e.mech.name()))
                    .collect();
                names.push(format!("{} credential(s)", users.len()));
                Ok(names.join("\n"))
            }
            ["add", user, "--password", password] => {
                if user.is_empty() || user.contains([':', '\n', ',', '=']) {
                    return Err(PluginError::new(
                        ErrorKind::INVALID,
                        "a SCRAM user name may not be empty or contain ':', ',', '=' or line breaks",
                    ));
                }
                let mut users = self.read().map_err(fail)?;
                users.retain(|e| e.user != *user);
                let (user, password, iterations) = (
                    user.to_string(),
                    password.to_string(),
                    self.config.iterations,
                );
                let made = tokio::task::spawn_blocking(move || {
                    [Mech::Sha256, Mech::Sha512]
                        .into_iter()
                        .map(|m| Entry::new(&user, m, &password, iterations))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await
                .map_err(|e| fail(e.to_string()))?
                .map_err(fail)?;
                let name = made[0].user.clone();
                users.extend(made);
                self.save(users)?;
                Ok(format!(
                    "User {name} added (SCRAM-SHA-256 and SCRAM-SHA-512)."
                ))
            }
            ["del", user] => {
                let mut users = self.read().map_err(fail)?;
                let before = users.len();
                users.retain(|e| e.user != *user);
                if users.len() == before {
                    return Err(PluginError::new(
                        ErrorKind::INVALID,
                        format!("no SCRAM user {user}"),
                    ));
                }
                self.save(users)?;
                Ok(format!("User {user} deleted."))
            }
            _ => Err(usage()),
        }
    }

    fn save(&self, users: Vec<Entry>) -> Result<(), PluginError> {
        let text: String = users.iter().map(Entry::line).collect();
        self.file
            .replace(&text)
            .map_err(|e| PluginError::new(ErrorKind::OTHER, e))?;
        self.users.install(users);
        Ok(())
    }
}

/// The plugin.
pub struct AuthScram {
    shared: Arc<Shared>,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl Plugin for AuthScram {
    const NAME: &'static str = "auth_scram";
    const DESCRIPTION: &'static str = "MQTT 5 enhanced authentication: SCRAM-SHA-256 / -512";

    fn create(ctx: Context, config: &str) -> Result<Self, PluginError> {
        let config: Config =
            toml::from_str(config).map_err(|e| PluginError::config(e.to_string()))?;
        if config.iterations < 4096 {
            return Err(PluginError::config(
                "iterations must be at least 4096 (RFC 7677)",
            ));
        }
        let mut decoy_key = [0u8; 32];
        getrandom::fill(&mut decoy_key)
            .map_err(|e| PluginError::config(format!("no randomness: {e}")))?;
        let shared = Arc::new(Shared {
            file: Watched::new(config.users_file.clone()),
            users: Live::new(Vec::new()),
            pending: Mutex::new(HashMap::new()),
            decoy_key,
            writing: tokio::sync::Mutex::new(()),
            config,
        });
        let users = shared.read().map_err(PluginError::config)?;
        shared.users.install(users);
        let s = shared.clone();
        let watcher =
            auth_common::files::poll_every(&ctx, shared.config.watch_interval_secs, move || {
                s.users
                    .reload_if_changed(&s.file, "SCRAM users file", || s.read(), Vec::len)
            });
        Ok(AuthScram { shared, watcher })
    }

    fn registration(&self) -> Registration {
        Registration {
            hooks: vec![HookSpec {
                point: HookPoint::CLIENT_ENHANCED_AUTH,
                priority: priority::AUTHENTICATION,
            }]
            .into(),
            commands: vec![CommandSpec {
                name: "scram".into(),
                usage: "scram add <user> --password <P> | scram del <user> | scram list".into(),
            }]
            .into(),
            ..Registration::default()
        }
    }

    fn enhanced_auth(
        &self,
        request: EnhancedAuthRequest,
    ) -> impl std::future::Future<Output = Result<EnhancedAuthResult, PluginError>> + Send + 'static
    {
        let shared = self.shared.clone();
        // PBKDF2 is not run here (the stored keys are precomputed): each step is a few HMACs.
        async move { Ok(shared.step(&request)) }
    }

    fn command(
        &self,
        args: Vec<String>,
    ) -> impl std::future::Future<Output = Result<String, PluginError>> + Send + 'static {
        self.shared.clone().command(args)
    }

    fn shutdown(&self) {
        if let Some(w) = &self.watcher {
            w.abort();
        }
    }
}

plugin_api::export_plugin!(AuthScram);

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3: user "user", password "pencil", 4096 iterations.
    #[test]
    fn rfc7677_example_keys() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let salted = Mech::Sha256.salted(b"pencil", &salt, 4096);
        let client_key = Mech::Sha256.hmac(&salted, b"Client Key");
        let stored = Mech::Sha256.hash(&client_key);
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let signature = Mech::Sha256.hmac(&stored, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        assert_eq!(
            B64.encode(proof),
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        let server_key = Mech::Sha256.hmac(&salted, b"Server Key");
        assert_eq!(
            B64.encode(Mech::Sha256.hmac(&server_key, auth_message.as_bytes())),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn users_file_round_trip() {
        let e = Entry::new("alice", Mech::Sha512, "pw", 4096).expect("entry");
        let parsed = parse_users(&format!("# users\n{}", e.line())).expect("parses");
        assert_eq!(parsed, vec![e]);
        assert_eq!(parse_users("bob:SCRAM-MD5:1:a:b:c").expect_err("bad").0, 1);
    }

    #[test]
    fn shipped_config_parses() {
        let c: Config = toml::from_str(include_str!("../../../etc/plugins/auth_scram.toml"))
            .expect("shipped auth_scram.toml");
        assert_eq!(c.iterations, 4096);
    }
}
