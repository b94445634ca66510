//! Who may use the management API: the admin token and API keys.
//!
//! * The **admin token** (a file created with mode 0600 at first start, 32 random bytes in hex)
//!   is sent as `Authorization: Bearer <token>`. It may do everything, including managing API
//!   keys.
//! * **API keys** (`brokerctl apikey create <name>`) are sent as EMQX sends them,
//!   `Authorization: Basic base64(<key>:<secret>)`, or as `Bearer <key>:<secret>`. They may do
//!   everything except create, list or delete API keys, so a leaked key cannot mint more. Only
//!   a SHA-256 of each secret is kept, in `api_keys.json` beside the token (mode 0600).
//! * **Plugins** call the API in process through the `management_request` host service; a
//!   request without credentials acts with the plugin's own authority (a plugin runs inside
//!   the broker anyway), one with credentials is checked like any other.
//!
//! Every comparison of a secret is constant-time.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::types::{rfc3339, ApiKeyCreated, ApiKeyInfo};

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The admin token.
    Admin,
    /// An API key, by name.
    ApiKey(String),
    /// A plugin calling in process, by name.
    Plugin(String),
}

impl Caller {
    /// Whether this caller may manage API keys.
    pub fn may_manage_keys(&self) -> bool {
        matches!(self, Caller::Admin)
    }
}

/// Random bytes from the operating system, through the TLS stack's generator.
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut raw = [0u8; N];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut raw)
        .map_err(|_| std::io::Error::other("the system random generator failed"))?;
    Ok(raw)
}

/// Reads the admin token, creating the file (mode 0600) with a fresh random token if absent.
///
/// An existing file that other users may read or write is refused, as sshd refuses a private
/// key with loose permissions: whoever reads the token controls the broker.
pub fn ensure_token(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => {
            check_private(path)?;
            return Ok(t.trim().to_owned());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token = crate::hex::encode(&random_bytes::<32>()?);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = private_file(path, true)?;
    std::io::Write::write_all(&mut f, token.as_bytes())?;
    Ok(token)
}

/// Opens `path` for writing, readable by its owner only (`create_new`: fail if it exists).
fn private_file(path: &Path, create_new: bool) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if create_new {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(path)?;
    crate::platform::restrict_to_owner(path)?;
    Ok(file)
}

/// Fails when `path` is readable or writable by anyone but its owner.
#[cfg(unix)]
pub fn check_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} has mode {mode:04o}: other users could read the admin token; run `chmod 600 {}`",
                path.display(),
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Not checked on Windows: the broker gives the file an owner-only ACL when it creates it
/// ([`crate::platform::restrict_to_owner`]).
#[cfg(not(unix))]
pub fn check_private(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Constant-time comparison, so a secret cannot be guessed byte by byte from timings.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One stored API key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    name: String,
    api_key: String,
    /// SHA-256 of the secret, hex.
    secret_sha256: String,
    desc: String,
    created_at_ms: u64,
    expires_at_ms: Option<u64>,
    enable: bool,
}

impl StoredKey {
    fn info(&self) -> ApiKeyInfo {
        ApiKeyInfo {
            name: self.name.clone(),
            api_key: self.api_key.clone(),
            desc: self.desc.clone(),
            created_at: rfc3339(self.created_at_ms),
            expired_at: self.expires_at_ms.map(rfc3339),
            enable: self.enable,
        }
    }
}

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Bad name.
    #[error("invalid API key name {0:?}: use 1-64 letters, digits, '_' and '-'")]
    InvalidName(String),
    /// Name taken.
    #[error("an API key named {0:?} exists already")]
    Exists(String),
    /// Unknown name.
    #[error("no API key named {0:?}")]
    NotFound(String),
    /// The key file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The credentials the API accepts.
#[derive(Debug)]
pub struct Credentials {
    token: String,
    keys_file: PathBuf,
    keys: RwLock<Vec<StoredKey>>,
}

impl Credentials {
    /// The admin token plus the API keys saved in `keys_file` (absent = none yet).
    pub fn load(token: String, keys_file: PathBuf) -> std::io::Result<Credentials> {
        let keys = match std::fs::read_to_string(&keys_file) {
            Ok(text) => {
                check_private(&keys_file)?;
                serde_json::from_str(&text).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} is not a valid API key file: {e}", keys_file.display()),
                    )
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(Credentials {
            token,
            keys_file,
            keys: RwLock::new(keys),
        })
    }

    /// Who an `Authorization` header value identifies, if anyone.
    pub fn check(&self, authorization: &str, now_ms: u64) -> Option<Caller> {
        let (scheme, value) = authorization.trim().split_once(' ')?;
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            if same(value.as_bytes(), self.token.as_bytes()) {
                return Some(Caller::Admin);
            }
            let (key, secret) = value.split_once(':')?;
            return self.check_key(key, secret, now_ms);
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value)
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (key, secret) = text.split_once(':')?;
            return self.check_key(key, secret, now_ms);
        }
        None
    }

    fn check_key(&self, key: &str, secret: &str, now_ms: u64) -> Option<Caller> {
        let digest = crate::hex::encode(&Sha256::digest(secret.as_bytes()));
        let keys = self.keys.read();
        let k = keys.iter().find(|k| k.api_key == key)?;
        let fresh = k.expires_at_ms.is_none_or(|at| now_ms < at);
        (k.enable && fresh && same(digest.as_bytes(), k.secret_sha256.as_bytes()))
            .then(|| Caller::ApiKey(k.name.clone()))
    }

    /// Every key, without secrets.
    pub fn list(&self) -> Vec<ApiKeyInfo> {
        self.keys.read().iter().map(StoredKey::info).collect()
    }

    /// Creates a key; the answer holds its secret, which is not kept.
    pub fn create(
        &self,
        name: &str,
        desc: &str,
        expires_in_secs: Option<u64>,
        now_ms: u64,
    ) -> Result<ApiKeyCreated, KeyError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(KeyError::InvalidName(name.to_owned()));
        }
        let io = |source| KeyError::Io {
            path: self.keys_file.clone(),
            source,
        };
        let api_key = format!(
            "key_{}",
            crate::hex::encode(&random_bytes::<8>().map_err(io)?)
        );
        let api_secret = crate::hex::encode(&random_bytes::<24>().map_err(io)?);
        let stored = StoredKey {
            name: name.to_owned(),
            api_key,
            secret_sha256: crate::hex::encode(&Sha256::digest(api_secret.as_bytes())),
            desc: desc.to_owned(),
            created_at_ms: now_ms,
            expires_at_ms: expires_in_secs.map(|s| now_ms.saturating_add(s.saturating_mul(1000))),
            enable: true,
        };
        let mut keys = self.keys.write();
        if keys.iter().any(|k| k.name == name) {
            return Err(KeyError::Exists(name.to_owned()));
        }
        let info = stored.info();
        let mut next = keys.clone();
        next.push(stored);
        self.save(&next).map_err(io)?;
        *keys = next;
        Ok(ApiKeyCreated { info, api_secret })
    }

    /// Deletes a key by name.
    pub fn delete(&self, name: &str) -> Result<(), KeyError> {
        let mut keys = self.keys.write();
        let next: Vec<StoredKey> = keys.iter().filter(|k| k.name != name).cloned().collect();
        if next.len() == keys.len() {
            return Err(KeyError::NotFound(name.to_owned()));
        }
        self.save(&next).map_err(|source| KeyError::Io {
            path: self.keys_file.clone(),
            source,
        })?;
        *keys = next;
        Ok(())
    }

    /// Writes the key file atomically (temporary file, then rename), mode 0600.
    fn save(&self, keys: &[StoredKey]) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(keys).map_err(std::io::Error::other)?;
        if let Some(dir) = self.keys_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.keys_file.with_extension("json.tmp");
        let mut f = private_file(&tmp, false)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.keys_file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_and_keys_are_checked() {
        let dir = std::env::temp_dir().join(format!("apikeys-{}", std::process::id()));
        let file = dir.join("api_keys.json");
        let _ = std::fs::remove_file(&file);
        let c = Credentials::load("t0ken".into(), file.clone()).expect("load");
        assert_eq!(c.check("Bearer t0ken", 0), Some(Caller::Admin));
        assert_eq!(c.check("Bearer t0ke", 0), None);
        assert_eq!(c.check("t0ken", 0), None);
        let created = c.create("ci", "for CI", Some(10), 1_000).expect("create");
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", created.info.api_key, created.api_secret));
        assert_eq!(
            c.check(&format!("Basic {basic}"), 2_000),
            Some(Caller::ApiKey("ci".into()))
        );
        assert_eq!(
            c.check(
                &format!("Bearer {}:{}", created.info.api_key, created.api_secret),
                2_000
            ),
            Some(Caller::ApiKey("ci".into()))
        );
        assert_eq!(c.check(&format!("Basic {basic}"), 11_000), None, "expired");
        assert_eq!(
            c.check(&format!("Bearer {}:wrong", created.info.api_key), 2_000),
            None
        );
        assert!(matches!(
            c.create("ci", "", None, 0),
            Err(KeyError::Exists(_))
        ));
        assert!(matches!(
            c.create("a b", "", None, 0),
            Err(KeyError::InvalidName(_))
        ));
        let again = Credentials::load("t0ken".into(), file.clone()).expect("reload");
        assert_eq!(again.list().len(), 1, "keys survive a restart");
        assert!(!std::fs::read_to_string(&file)
            .expect("read")
            .contains(&created.api_secret));
        again.delete("ci").expect("delete");
        assert!(again.check(&format!("Basic {basic}"), 2_000).is_none());
        let _ = std::fs::remove_dir_all(dir);
    }
}
