//! `acl_file`: ACL rules from a file, in Mosquitto's `acl_file` syntax or EMQ's `acl.conf`
//! form ([`rules`] describes both and how they decide).
//!
//! Every PUBLISH and SUBSCRIBE of a client that is not a superuser is checked. A rule that
//! allows gives `allow`, one that denies gives `deny`; when no rule applies the answer is
//! `nomatch` (`deny`, as Mosquitto, or `ignore`, to let the next ACL plugin or the broker's
//! `acl.no_match` decide).
//!
//! The file is read at load (a bad line refuses the load, naming file and line) and checked for
//! changes every `watch_interval_secs`: a changed file is read again, and a bad line is logged
//! with file and line while the rules in force stay. `brokerctl acl check <user> <client id>
//! <publish|subscribe> <topic>` prints the decision and the rule that made it.

pub mod rules;

use std::path::PathBuf;
use std::sync::Arc;

use auth_common::files::{Live, Watched};
use plugin_api::*;
use rules::{Rules, Verdict, Want, Who};
use serde::Deserialize;

/// What to answer when no rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum NoMatch {
    Deny,
    Ignore,
}

/// `etc/plugins/acl_file.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    acl_file: PathBuf,
    nomatch: NoMatch,
    watch_interval_secs: u64,
    priority: Option<i32>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            acl_file: PathBuf::from("etc/acl"),
            nomatch: NoMatch::Deny,
            watch_interval_secs: 2,
            priority: None,
        }
    }
}

/// Rules in force, with the file's lines to quote them.
struct Loaded {
    rules: Rules,
    lines: Vec<String>,
}

struct Shared {
    config: Config,
    file: Watched,
    loaded: Live<Loaded>,
}

impl Shared {
    fn read(&self) -> Result<Loaded, String> {
        let text = self
            .file
            .read()?
            .ok_or_else(|| format!("{} does not exist", self.file.path().display()))?;
        let rules = Rules::parse(&text)
            .map_err(|(line, why)| format!("{}:{line}: {why}", self.file.path().display()))?;
        Ok(Loaded {
            rules,
            lines: text.lines().map(str::to_owned).collect(),
        })
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded.current()
    }

    fn reload_if_changed(&self) {
        self.loaded
            .reload_if_changed(&self.file, "ACL file", || self.read(), |l| l.rules.len());
    }

    /// The decision and the text explaining it.
    fn explain(&self, who: Who<'_>, want: Want, topic: &str) -> (AclResult, String) {
        let loaded = self.current();
        let quote = |line: usize| {
            format!(
                "{}:{line}: {}",
                self.file.path().display(),
                loaded.lines.get(line - 1).map_or("", |l| l.trim())
            )
        };
        match loaded.rules.decide(who, want, topic) {
            Verdict::Allow(line) => (AclResult::Allow, format!("allow ({})", quote(line))),
            Verdict::Deny(line) => (AclResult::Deny, format!("deny ({})", quote(line))),
            Verdict::NoMatch => match self.config.nomatch {
                NoMatch::Deny => (AclResult::Deny, "deny (no rule applies; nomatch = \"deny\")".into()),
                NoMatch::Ignore => (
                    AclResult::Ignore,
                    "ignore (no rule applies; nomatch = \"ignore\": the next ACL plugin or acl.no_match decides)".into(),
                ),
            },
        }
    }
}

/// The plugin.
pub struct AclFile {
    shared: Arc<Shared>,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

const USAGE: &str = "acl check <user|-> <client id> <publish|subscribe> <topic> | acl info";

impl Plugin for AclFile {
    const NAME: &'static str = "acl_file";
    const DESCRIPTION: &'static str = "ACL rules from a Mosquitto acl_file or an EMQ acl.conf";
    /// Only the file watcher runs on the runtime.
    const RUNTIME_THREADS: usize = 1;

    fn create(ctx: Context, config: &str) -> Result<Self, PluginError> {
        let config: Config =
            toml::from_str(config).map_err(|e| PluginError::config(e.to_string()))?;
        let shared = Arc::new(Shared {
            file: Watched::new(config.acl_file.clone()),
            config,
            loaded: Live::new(Loaded {
                rules: Rules::parse("").map_err(|(_, e)| PluginError::config(e))?,
                lines: Vec::new(),
            }),
        });
        let loaded = shared.read().map_err(PluginError::config)?;
        tracing::info!(file = %shared.file.path().display(), rules = loaded.rules.len(), syntax = loaded.rules.syntax(), "ACL rules loaded");
        shared.loaded.install(loaded);
        let s = shared.clone();
        let watcher =
            auth_common::files::poll_every(&ctx, shared.config.watch_interval_secs, move || {
                s.reload_if_changed()
            });
        Ok(AclFile { shared, watcher })
    }

    fn registration(&self) -> Registration {
        Registration {
            hooks: vec![HookSpec {
                point: HookPoint::CLIENT_CHECK_ACL,
                priority: self.shared.config.priority.unwrap_or(priority::ACL),
            }]
            .into(),
            commands: vec![CommandSpec {
                name: "acl".into(),
                usage: USAGE.into(),
            }]
            .into(),
            ..Registration::default()
        }
    }

    fn check_acl(
        &self,
        request: AclRequest,
    ) -> impl std::future::Future<Output = Result<AclResult, PluginError>> + Send + 'static {
        let c = &request.client;
        let who = Who {
            username: c.username.as_ref().into_option().map(|u| u.as_str()),
            client_id: c.client_id.as_str(),
            ip: c.peer_ip.as_str().parse().ok(),
        };
        let want = match request.access {
            Access::Publish => Want::Publish,
            _ => Want::Subscribe,
        };
        let (decision, _) = self.shared.explain(who, want, request.topic.as_str());
        async move { Ok(decision) }
    }

    fn command(
        &self,
        args: Vec<String>,
    ) -> impl std::future::Future<Output = Result<String, PluginError>> + Send + 'static {
        let usage = || PluginError::new(ErrorKind::INVALID, format!("usage: {USAGE}"));
        let answer = match args
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["acl", "check", user, client_id, access, topic] => {
                let want = match *access {
                    "publish" | "pub" => Ok(Want::Publish),
                    "subscribe" | "sub" => Ok(Want::Subscribe),
                    _ => Err(usage()),
                };
                want.map(|want| {
                    let who = Who {
                        username: (*user != "-").then_some(*user),
                        client_id,
                        ip: None,
                    };
                    self.shared.explain(who, want, topic).1
                })
            }
            ["acl", "info"] => {
                let l = self.shared.current();
                Ok(format!(
                    "file: {}\nsyntax: {}\nrules: {}\nnomatch: {:?}",
                    self.shared.file.path().display(),
                    l.rules.syntax(),
                    l.rules.len(),
                    self.shared.config.nomatch
                ))
            }
            _ => Err(usage()),
        };
        async move { answer }
    }

    fn shutdown(&self) {
        if let Some(w) = &self.watcher {
            w.abort();
        }
    }
}

plugin_api::export_plugin!(AclFile);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_files_are_valid() {
        let c: Config = toml::from_str(include_str!("../../../etc/plugins/acl_file.toml"))
            .expect("shipped acl_file.toml");
        assert_eq!(c.nomatch, NoMatch::Deny);
        let rules = Rules::parse(include_str!("../../../etc/acl")).expect("shipped etc/acl");
        assert!(!rules.is_empty());
    }
}
