//! Files the auth plugins own: noticing that one changed on disc, and replacing one atomically.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Modification time and length: what tells a changed file.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// A file checked for changes by polling (a few `stat` calls a minute; no watcher thread).
#[derive(Debug)]
pub struct Watched {
    path: PathBuf,
    seen: Mutex<Stamp>,
}

impl Watched {
    /// Watches `path`, taking its current state as seen.
    pub fn new(path: PathBuf) -> Watched {
        let seen = Mutex::new(stamp(&path));
        Watched { path, seen }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it changed (or appeared, or vanished) since last seen; marks it seen.
    pub fn changed(&self) -> bool {
        let now = stamp(&self.path);
        match self.seen.lock() {
            Ok(mut seen) if *seen != now => {
                *seen = now;
                true
            }
            _ => false,
        }
    }

    /// Takes the current state as seen (after writing the file ourselves).
    pub fn mark(&self) {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = stamp(&self.path);
        }
    }

    /// Replaces the file with `text` atomically: a temporary file in the same directory
    /// (mode 0600), synced, then renamed over it. Marks the result seen.
    pub fn replace(&self, text: &str) -> Result<(), String> {
        let fail = |e: std::io::Error| format!("cannot write {}: {e}", self.path.display());
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp).map_err(fail)?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(fail)?;
        f.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, &self.path).map_err(fail)?;
        self.mark();
        Ok(())
    }

    /// The file's text; `Ok(None)` when it does not exist.
    pub fn read(&self) -> Result<Option<String>, String> {
        match std::fs::read_to_string(&self.path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", self.path.display())),
        }
    }
}

/// A value read from a file and swapped whole when the file changes: readers take an `Arc` of
/// the current value and never wait for a reload.
#[derive(Debug)]
pub struct Live<T> {
    value: std::sync::RwLock<std::sync::Arc<T>>,
}

impl<T> Live<T> {
    /// Starts with `value`.
    pub fn new(value: T) -> Live<T> {
        Live {
            value: std::sync::RwLock::new(std::sync::Arc::new(value)),
        }
    }

    /// The value in force.
    pub fn current(&self) -> std::sync::Arc<T> {
        match self.value.read() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `value` in force.
    pub fn install(&self, value: T) {
        let value = std::sync::Arc::new(value);
        match self.value.write() {
            Ok(mut v) => *v = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }

    /// If `file` changed on disc, reads it with `read` and puts the result in force (logging
    /// `what` and how many items `count` finds); a failure is logged and the value in force
    /// stays.
    pub fn reload_if_changed(
        &self,
        file: &Watched,
        what: &str,
        read: impl FnOnce() -> Result<T, String>,
        count: impl Fn(&T) -> usize,
    ) {
        if !file.changed() {
            return;
        }
        match read() {
            Ok(value) => {
                tracing::info!(file = %file.path().display(), items = count(&value), "{what} read again");
                self.install(value);
            }
            Err(e) => tracing::error!(
                "{e}; the {} {what} entries in force stay",
                count(&self.current())
            ),
        }
    }
}

/// Runs `check` every `every_secs` seconds on the plugin's runtime (0 = never), for a plugin
/// that re-reads its files when they change. Abort the handle in `shutdown`.
pub fn poll_every(
    ctx: &plugin_api::Context,
    every_secs: u64,
    check: impl Fn() + Send + Sync + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    (every_secs > 0).then(|| {
        let every = std::time::Duration::from_secs(every_secs);
        ctx.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                check();
            }
        })
    })
}
