//! A user store in a Mosquitto password file, as a plugin: `auth_file` (user names, a file
//! written by `mosquitto_passwd`), and EMQ 2's `auth_username` and `auth_clientid` (user names or
//! client ids, listed in the config and added with `brokerctl`). One implementation,
//! [`UserStore`], specialised by a [`Mode`]; each plugin crate only exports its mode.
//!
//! * **Authentication**: a client whose key (user name or client id) is in the store must send
//!   the matching password, else it is refused (bad user name or password, v5 0x86). A client
//!   whose key is unknown, or that sent no user name, is ignored: the next plugin, or the
//!   broker's `auth.no_match`, decides. Names listed in `superusers` skip ACL checks.
//! * **The file** is read at load (a bad line refuses the load, naming file and line), then
//!   checked every `watch_interval_secs`: a change on disc is read again; a bad line is logged
//!   with file and line and the users in force stay.
//! * **Commands** (`brokerctl users add <name> --password P | passwd | del | list`, or
//!   `clientid …` for auth_clientid) write the file atomically (temporary file, then rename;
//!   mode 0600) in `mosquitto_passwd`'s `$7$` format and take effect at once.
//! * **Hashing** (`$7$` is PBKDF2 with 101 iterations) runs on blocking threads, at most
//!   `hash_threads` at once. Passwords are never logged.

use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

use plugin_api::*;
use serde::Deserialize;

use crate::files::{Live, Watched};
use crate::mosquitto::{valid_user, Hashed, PasswordFile, DEFAULT_ITERATIONS};
use crate::HashPool;

/// What a store is keyed by, and its names.
pub trait Mode: Send + Sync + 'static {
    /// Plugin name.
    const NAME: &'static str;
    /// Plugin description.
    const DESCRIPTION: &'static str;
    /// The `brokerctl` command that manages the store.
    const COMMAND: &'static str;
    /// What a key is, for messages (`user`, `client id`).
    const KEY: &'static str;
    /// Default password file.
    const DEFAULT_FILE: &'static str;
    /// The key of a connecting client, if it has one.
    fn key(client: &ClientInfo) -> Option<String>;
}

/// `auth_file`: user names, in a file `mosquitto_passwd` may also write.
pub struct FileMode;
/// `auth_username`: user names (EMQ 2's emq_auth_username).
pub struct UsernameMode;
/// `auth_clientid`: client ids (EMQ 2's emq_auth_clientid).
pub struct ClientIdMode;

impl Mode for FileMode {
    const NAME: &'static str = "auth_file";
    const DESCRIPTION: &'static str = "authentication from a Mosquitto password file";
    const COMMAND: &'static str = "users";
    const KEY: &'static str = "user";
    const DEFAULT_FILE: &'static str = "data/passwd";
    fn key(client: &ClientInfo) -> Option<String> {
        client.username.clone().into_option().map(Into::into)
    }
}

impl Mode for UsernameMode {
    const NAME: &'static str = "auth_username";
    const DESCRIPTION: &'static str =
        "authentication by user name and password (EMQ's emq_auth_username)";
    const COMMAND: &'static str = "users";
    const KEY: &'static str = "user";
    const DEFAULT_FILE: &'static str = "data/auth_username.passwd";
    fn key(client: &ClientInfo) -> Option<String> {
        client.username.clone().into_option().map(Into::into)
    }
}

impl Mode for ClientIdMode {
    const NAME: &'static str = "auth_clientid";
    const DESCRIPTION: &'static str =
        "authentication by client id and password (EMQ's emq_auth_clientid)";
    const COMMAND: &'static str = "clientid";
    const KEY: &'static str = "client id";
    const DEFAULT_FILE: &'static str = "data/auth_clientid.passwd";
    fn key(client: &ClientInfo) -> Option<String> {
        Some(client.client_id.to_string())
    }
}

/// One user listed in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedUser {
    /// User name (or client id for auth_clientid).
    #[serde(alias = "username", alias = "clientid")]
    pub name: String,
    /// Password, as text (hashed in memory at load).
    pub password: String,
}

/// The plugin's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The password file (Mosquitto's format). Empty = the mode's default.
    pub password_file: PathBuf,
    /// Users listed in the config, besides the file's (the file wins for the same name).
    pub users: Vec<FixedUser>,
    /// Names that skip ACL checks.
    pub superusers: Vec<String>,
    /// Password checks at once, on blocking threads; 0 = half the cores.
    pub hash_threads: usize,
    /// PBKDF2 iterations of hashes written by the commands.
    pub iterations: u32,
    /// Seconds between two checks of the file for changes; 0 = never.
    pub watch_interval_secs: u64,
    /// Hook priority (default: `priority::AUTHENTICATION`).
    pub priority: Option<i32>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            password_file: PathBuf::new(),
            users: Vec::new(),
            superusers: Vec::new(),
            hash_threads: 0,
            iterations: DEFAULT_ITERATIONS,
            watch_interval_secs: 2,
            priority: None,
        }
    }
}

struct Shared {
    name: &'static str,
    config: Config,
    file_on_disc: Watched,
    path: PathBuf,
    file: Live<PasswordFile>,
    fixed: Vec<(String, Hashed)>,
    pool: HashPool,
    /// Serialises the commands' read-modify-write of the file.
    writing: tokio::sync::Mutex<()>,
}

impl Shared {
    /// Reads the file; missing = empty. The error is `file:line: why`.
    fn read(&self) -> Result<PasswordFile, String> {
        match self.file_on_disc.read()? {
            Some(text) => PasswordFile::parse(&text)
                .map_err(|(line, why)| format!("{}:{line}: {why}", self.path.display())),
            None => Ok(PasswordFile::default()),
        }
    }

    fn current(&self) -> Arc<PasswordFile> {
        self.file.current()
    }

    fn install(&self, file: PasswordFile) {
        self.file.install(file);
    }

    /// Reads the file again if it changed on disc since last seen.
    fn reload_if_changed(&self) {
        self.file.reload_if_changed(
            &self.file_on_disc,
            "password file",
            || self.read(),
            |f| f.users.len(),
        );
    }

    fn lookup(&self, key: &str) -> Option<Hashed> {
        self.current().get(key).cloned().or_else(|| {
            self.fixed
                .iter()
                .find(|(n, _)| n == key)
                .map(|(_, h)| h.clone())
        })
    }

    /// Writes `file` atomically.
    fn write(&self, file: &PasswordFile) -> Result<(), String> {
        self.file_on_disc.replace(&file.render())
    }
}

/// The plugin: a user store in `M`'s mode.
pub struct UserStore<M: Mode> {
    shared: Arc<Shared>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    mode: PhantomData<M>,
}

fn usage<M: Mode>() -> PluginError {
    PluginError::new(
        ErrorKind::INVALID,
        format!(
            "usage: {c} add <{k}> --password <P> | {c} passwd <{k}> --password <P> | {c} del <{k}> | {c} list",
            c = M::COMMAND,
            k = M::KEY.replace(' ', "_")
        ),
    )
}

impl<M: Mode> UserStore<M> {
    async fn answer(shared: Arc<Shared>, args: Vec<String>) -> Result<String, PluginError> {
        let invalid = |m: String| PluginError::new(ErrorKind::INVALID, m);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let password = |rest: &[&str]| match rest {
            ["--password", p] if !p.is_empty() => Ok(p.to_string()),
            _ => Err(usage::<M>()),
        };
        match args.get(1..).unwrap_or_default() {
            ["list"] => {
                let file = shared.current();
                let mut lines: Vec<String> = file
                    .users
                    .iter()
                    .map(|(n, _)| n.clone())
                    .chain(shared.fixed.iter().map(|(n, _)| format!("{n} (config)")))
                    .map(|n| {
                        let bare = n.trim_end_matches(" (config)");
                        if shared.config.superusers.iter().any(|s| s == bare) {
                            format!("{n} superuser")
                        } else {
                            n
                        }
                    })
                    .collect();
                lines.push(format!("{} {}(s)", lines.len(), M::KEY));
                Ok(lines.join("\n"))
            }
            [verb @ ("add" | "passwd"), name, rest @ ..] => {
                let password = password(rest)?;
                if !valid_user(name) {
                    return Err(invalid(format!(
                        "invalid {} {name:?}: it may not be empty or contain ':' or line breaks",
                        M::KEY
                    )));
                }
                let _writing = shared.writing.lock().await;
                let mut file = shared.read().map_err(|e| invalid(e.to_string()))?;
                let exists = file.get(name).is_some();
                match (*verb, exists) {
                    ("add", true) => {
                        return Err(invalid(format!(
                            "{} {name} exists already (use `{} passwd`)",
                            M::KEY,
                            M::COMMAND
                        )))
                    }
                    ("passwd", false) => {
                        return Err(invalid(format!(
                            "no {} {name} in {}",
                            M::KEY,
                            shared.path.display()
                        )))
                    }
                    _ => {}
                }
                let iterations = shared.config.iterations;
                let hashed = shared
                    .pool
                    .run(move || Hashed::create(password.as_bytes(), iterations))
                    .await
                    .ok_or_else(|| PluginError::new(ErrorKind::OTHER, "hashing failed"))?
                    .map_err(|e| PluginError::new(ErrorKind::OTHER, e))?;
                file.set(name, hashed);
                shared
                    .write(&file)
                    .map_err(|e| PluginError::new(ErrorKind::OTHER, e))?;
                shared.install(file);
                Ok(if *verb == "add" {
                    format!("{} {name} added.", capitalised(M::KEY))
                } else {
                    format!("Password of {name} changed.")
                })
            }
            ["del", name] => {
                let _writing = shared.writing.lock().await;
                let mut file = shared.read().map_err(|e| invalid(e.to_string()))?;
                if !file.remove(name) {
                    return Err(invalid(format!(
                        "no {} {name} in {}",
                        M::KEY,
                        shared.path.display()
                    )));
                }
                shared
                    .write(&file)
                    .map_err(|e| PluginError::new(ErrorKind::OTHER, e))?;
                shared.install(file);
                Ok(format!("{} {name} deleted.", capitalised(M::KEY)))
            }
            _ => Err(usage::<M>()),
        }
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

impl<M: Mode> Plugin for UserStore<M> {
    const NAME: &'static str = M::NAME;
    const DESCRIPTION: &'static str = M::DESCRIPTION;

    fn create(ctx: Context, config: &str) -> Result<Self, PluginError> {
        let config: Config =
            toml::from_str(config).map_err(|e| PluginError::config(e.to_string()))?;
        if config.iterations == 0 {
            return Err(PluginError::config("iterations must be at least 1"));
        }
        let path = if config.password_file.as_os_str().is_empty() {
            PathBuf::from(M::DEFAULT_FILE)
        } else {
            config.password_file.clone()
        };
        let mut fixed = Vec::with_capacity(config.users.len());
        for u in &config.users {
            if !valid_user(&u.name) {
                return Err(PluginError::config(format!(
                    "invalid {} {:?} in users",
                    M::KEY,
                    u.name
                )));
            }
            let h = Hashed::create(u.password.as_bytes(), config.iterations)
                .map_err(PluginError::config)?;
            fixed.push((u.name.clone(), h));
        }
        let shared = Arc::new(Shared {
            name: M::NAME,
            pool: HashPool::new(config.hash_threads),
            file_on_disc: Watched::new(path.clone()),
            path,
            file: Live::new(PasswordFile::default()),
            fixed,
            writing: tokio::sync::Mutex::new(()),
            config,
        });
        let initial = shared.read().map_err(PluginError::config)?;
        if !shared.path.exists() {
            tracing::warn!(file = %shared.path.display(), "no password file yet: `brokerctl {} add` creates it", M::COMMAND);
        }
        tracing::info!(plugin = shared.name, file = %shared.path.display(), users = initial.users.len(), listed = shared.fixed.len(), "user store loaded");
        shared.install(initial);
        let s = shared.clone();
        let watcher =
            crate::files::poll_every(&ctx, shared.config.watch_interval_secs, move || {
                s.reload_if_changed()
            });
        Ok(UserStore {
            shared,
            watcher,
            mode: PhantomData,
        })
    }

    fn registration(&self) -> Registration {
        Registration {
            hooks: vec![HookSpec {
                point: HookPoint::CLIENT_AUTHENTICATE,
                priority: self
                    .shared
                    .config
                    .priority
                    .unwrap_or(priority::AUTHENTICATION),
            }]
            .into(),
            commands: vec![CommandSpec {
                name: M::COMMAND.into(),
                usage: usage::<M>()
                    .message
                    .as_str()
                    .trim_start_matches("usage: ")
                    .into(),
            }]
            .into(),
            ..Registration::default()
        }
    }

    fn authenticate(
        &self,
        request: AuthRequest,
    ) -> impl std::future::Future<Output = Result<AuthResult, PluginError>> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            let Some(key) = M::key(&request.client) else {
                return Ok(AuthResult::Ignore);
            };
            let Some(hash) = shared.lookup(&key) else {
                return Ok(AuthResult::Ignore);
            };
            let Some(password) = request.password.into_option() else {
                return Ok(AuthResult::Deny(DenyReason::BadCredentials));
            };
            let ok = shared
                .pool
                .run(move || hash.verify(password.as_slice()))
                .await
                .ok_or_else(|| PluginError::new(ErrorKind::OTHER, "password check failed"))?;
            if !ok {
                return Ok(AuthResult::Deny(DenyReason::BadCredentials));
            }
            let superuser = shared.config.superusers.contains(&key);
            Ok(AuthResult::Allow { superuser })
        }
    }

    fn command(
        &self,
        args: Vec<String>,
    ) -> impl std::future::Future<Output = Result<String, PluginError>> + Send + 'static {
        Self::answer(self.shared.clone(), args)
    }

    fn shutdown(&self) {
        if let Some(w) = &self.watcher {
            w.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_configs_parse() {
        for (name, text) in [
            (
                "auth_file",
                include_str!("../../etc/plugins/auth_file.toml"),
            ),
            (
                "auth_username",
                include_str!("../../etc/plugins/auth_username.toml"),
            ),
            (
                "auth_clientid",
                include_str!("../../etc/plugins/auth_clientid.toml"),
            ),
        ] {
            let c: Config = toml::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.iterations, DEFAULT_ITERATIONS, "{name}");
        }
        let listed: Config =
            toml::from_str("users = [{ clientid = \"c1\", password = \"p\" }]").expect("alias");
        assert_eq!(listed.users[0].name, "c1");
    }
}
