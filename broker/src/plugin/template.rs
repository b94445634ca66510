//! `brokerctl plugins new <name>`: a ready plugin crate, written from the templates below.
//!
//! The generated crate builds as is and loads without edits: one hook (`message.publish`,
//! dropping publishes that match a configured filter), one command (`brokerctl <name> stats`),
//! its config file, and an in-process test through `plugin_api::testing`. docs/plugin-guide.md
//! walks through it.

use std::path::{Path, PathBuf};

const CARGO_TOML: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
# cdylib: the library the broker loads (lib{name}.so, or {name}.dll built for Windows); rlib: lets
# tests/ use the plugin in-process.
crate-type = ["cdylib", "rlib"]

[dependencies]
{api_dependency}
# export_plugin! names abi_stable directly; keep it at the version plugin-api uses (0.11).
abi_stable = { version = "0.11", default-features = false }
serde = { version = "1", features = ["derive"] }
toml = "0.8"
tracing = "0.1"

# A standalone crate, even when created inside another Cargo workspace.
[workspace]
"#;

const LIB_RS: &str = r#"//! {name}: a broker plugin.
//!
//! Drops every PUBLISH whose topic matches `drop_filter` (etc/plugins/{name}.toml) and answers
//! `brokerctl {name} stats` with how many it dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use plugin_api::*;
use serde::Deserialize;

/// The plugin's configuration: the text of etc/plugins/{name}.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Publishes to topics matching this filter are dropped. Default "blocked/#".
    pub drop_filter: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            drop_filter: "blocked/#".into(),
        }
    }
}

/// The plugin. Hooks are called concurrently from broker threads: state lives in atomics.
pub struct {type_name} {
    config: Config,
    dropped: Arc<AtomicU64>,
}

impl Plugin for {type_name} {
    const NAME: &'static str = "{name}";
    const DESCRIPTION: &'static str = "drops publishes matching a filter";

    fn create(_ctx: Context, config: &str) -> Result<Self, PluginError> {
        // A bad config fails the load with toml's message (key, line and column).
        let config: Config = toml::from_str(config).map_err(|e| PluginError::config(e.to_string()))?;
        tracing::info!(filter = %config.drop_filter, "{name} started");
        Ok({type_name} {
            config,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    fn registration(&self) -> Registration {
        Registration {
            hooks: vec![HookSpec {
                point: HookPoint::MESSAGE_PUBLISH,
                priority: priority::LOWEST,
            }]
            .into(),
            commands: vec![CommandSpec {
                name: "{name}".into(),
                usage: "{name} stats".into(),
            }]
            .into(),
            ..Registration::default()
        }
    }

    fn on_message_publish(&self, message: &MessageView<'_>) -> Flow<MessageEdit> {
        if topic_matches(&self.config.drop_filter, message.topic.as_str()) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Flow::StopWith(MessageEdit {
                drop: true,
                ..MessageEdit::default()
            });
        }
        Flow::Continue
    }

    fn command(&self, args: Vec<String>) -> impl std::future::Future<Output = Result<String, PluginError>> + Send + 'static {
        let dropped = self.dropped.load(Ordering::Relaxed);
        async move {
            match args.get(1).map(String::as_str) {
                Some("stats") => Ok(format!("dropped {dropped}")),
                _ => Err(PluginError::new(ErrorKind::INVALID, "usage: {name} stats")),
            }
        }
    }
}

plugin_api::export_plugin!({type_name});
"#;

const CONFIG_TOML: &str = r#"# Config of the {name} plugin: copy to etc/plugins/{name}.toml.
# Read at every `brokerctl plugins load|reload {name}`.

# Publishes to topics matching this filter are dropped (MQTT filter syntax). Default "blocked/#".
drop_filter = "blocked/#"
"#;

const TEST_RS: &str = r#"//! The plugin in-process, without a broker.

use plugin_api::testing::TestContext;
use plugin_api::*;
use {crate_name}::{type_name};

#[test]
fn drops_matching_publishes_and_counts_them() {
    let t = TestContext::new();
    let plugin = {type_name}::create(t.context(), "drop_filter = \"blocked/#\"").expect("create");
    assert!(matches!(
        plugin.on_message_publish(&MessageView::new("blocked/a", b"x")),
        Flow::StopWith(MessageEdit { drop: true, .. })
    ));
    assert_eq!(plugin.on_message_publish(&MessageView::new("open/a", b"x")), Flow::Continue);
    let stats = t.block_on(plugin.command(vec!["{name}".into(), "stats".into()]));
    assert_eq!(stats.expect("stats"), "dropped 1");
}

#[test]
fn bad_config_is_refused_with_the_key() {
    let t = TestContext::new();
    let err = {type_name}::create(t.context(), "drop_fliter = \"x\"").err().expect("refused");
    assert!(err.message.as_str().contains("drop_fliter"), "{err}");
}
"#;

/// Where the template's plugin-api dependency comes from.
#[derive(Debug, Clone)]
pub enum ApiSource {
    /// A local checkout of `plugin-api`.
    Path(PathBuf),
    /// A git repository holding `plugin-api`.
    Git(String),
}

/// The plugin-api checkout this brokerctl was built from, if it is still there.
pub fn default_api_path() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api");
    p.canonicalize()
        .ok()
        .filter(|p| p.join("Cargo.toml").exists())
}

fn type_name(name: &str) -> String {
    name.split('_')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let mut c = s.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// Why a crate could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The name is unusable.
    #[error("invalid plugin name {0:?}: use a-z, 0-9 and '_', starting with a letter (it names the crate, the library and the config file)")]
    InvalidName(String),
    /// The directory exists and is not empty.
    #[error("{0} already exists and is not empty")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Writes the crate for plugin `name` into `dir`; returns the files written.
pub fn generate(name: &str, dir: &Path, api: &ApiSource) -> Result<Vec<PathBuf>, TemplateError> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && name.len() <= 64;
    if !valid {
        return Err(TemplateError::InvalidName(name.to_owned()));
    }
    if dir.exists()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(TemplateError::Exists(dir.to_owned()));
    }
    let api_dependency = match api {
        ApiSource::Path(p) => format!("plugin-api = {{ path = {:?} }}", p.display().to_string()),
        ApiSource::Git(url) => format!("plugin-api = {{ git = {url:?} }}"),
    };
    let fill = |t: &str| {
        t.replace("{name}", name)
            .replace("{type_name}", &type_name(name))
            .replace("{crate_name}", name)
            .replace("{api_dependency}", &api_dependency)
    };
    let files = [
        ("Cargo.toml", fill(CARGO_TOML)),
        ("src/lib.rs", fill(LIB_RS)),
        (&format!("{name}.toml") as &str, fill(CONFIG_TOML)),
        ("tests/plugin.rs", fill(TEST_RS)),
        (".gitignore", "/target\n".to_owned()),
    ];
    let mut written = Vec::new();
    for (rel, text) in files {
        let path = dir.join(rel);
        let io = |source| TemplateError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, text).map_err(io)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names() {
        assert_eq!(type_name("blocker"), "Blocker");
        assert_eq!(type_name("my_fine_plugin2"), "MyFinePlugin2");
    }

    #[test]
    fn refuses_bad_names_and_non_empty_dirs() {
        let dir = std::env::temp_dir().join(format!("tmpl-{}", std::process::id()));
        let api = ApiSource::Git("https://example.invalid/repo".into());
        assert!(matches!(
            generate("My-Plugin", &dir, &api),
            Err(TemplateError::InvalidName(_))
        ));
        let files = generate("ok_name", &dir, &api).expect("generated");
        assert_eq!(files.len(), 5);
        assert!(matches!(
            generate("ok_name", &dir, &api),
            Err(TemplateError::Exists(_))
        ));
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).expect("lib.rs");
        assert!(lib.contains("impl Plugin for OkName") && !lib.contains("{name}"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
