//! The plugins' durable key-value store (host services `kv_get`, `kv_put`, `kv_delete`,
//! `kv_keys`): one redb file, `<data_dir>/plugin_kv.redb`, opened on first use, one namespace
//! per plugin name, so what a plugin keeps survives its reloads and broker restarts.
//!
//! Reads are short read transactions. Writes commit (fsync) on a blocking thread: the host
//! services hand the plugin a future that completes once the value is on disc.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use redb::{ReadableDatabase, TableDefinition};

/// Key = `<plugin>\0<key>`.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

/// Largest key, bytes.
pub const MAX_KEY: usize = 1024;
/// Largest value, bytes.
pub const MAX_VALUE: usize = 1024 * 1024;

/// The store, opened lazily.
#[derive(Debug)]
pub struct PluginKv {
    path: PathBuf,
    db: OnceLock<Result<Arc<redb::Database>, String>>,
}

fn full_key(plugin: &str, key: &str) -> String {
    format!("{plugin}\0{key}")
}

impl PluginKv {
    /// A store in `path`, not opened yet.
    pub fn new(path: PathBuf) -> PluginKv {
        PluginKv {
            path,
            db: OnceLock::new(),
        }
    }

    fn db(&self) -> Result<Arc<redb::Database>, String> {
        self.db
            .get_or_init(|| {
                redb::Database::create(&self.path)
                    .map(Arc::new)
                    .map_err(|e| format!("cannot open {}: {e}", self.path.display()))
            })
            .clone()
    }

    fn check_key(key: &str) -> Result<(), String> {
        if key.is_empty() || key.len() > MAX_KEY || key.contains('\0') {
            return Err(format!("a key is 1 to {MAX_KEY} bytes without NUL"));
        }
        Ok(())
    }

    /// The value of `plugin`'s `key`.
    pub fn get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        Self::check_key(key)?;
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| e.to_string())?;
        let table = match tx.open_table(KV) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let value = table
            .get(full_key(plugin, key).as_str())
            .map_err(|e| e.to_string())?
            .map(|v| v.value().to_vec());
        Ok(value)
    }

    /// `plugin`'s keys starting with `prefix`, in order.
    pub fn keys(&self, plugin: &str, prefix: &str) -> Result<Vec<String>, String> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| e.to_string())?;
        let table = match tx.open_table(KV) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.to_string()),
        };
        let start = full_key(plugin, prefix);
        let mut out = Vec::new();
        for entry in table.range(start.as_str()..).map_err(|e| e.to_string())? {
            let (k, _) = entry.map_err(|e| e.to_string())?;
            match k.value().strip_prefix(start.as_str()) {
                Some(_) => out.push(k.value()[plugin.len() + 1..].to_owned()),
                None => break,
            }
        }
        Ok(out)
    }

    /// Stores (`Some`) or deletes (`None`) `plugin`'s `key`, durably. Blocking: call it from a
    /// blocking thread.
    pub fn write(&self, plugin: &str, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        Self::check_key(key)?;
        if value.is_some_and(|v| v.len() > MAX_VALUE) {
            return Err(format!("a value is at most {MAX_VALUE} bytes"));
        }
        let db = self.db()?;
        let tx = db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut table = tx.open_table(KV).map_err(|e| e.to_string())?;
            let k = full_key(plugin, key);
            match value {
                Some(v) => {
                    table.insert(k.as_str(), v).map_err(|e| e.to_string())?;
                }
                None => {
                    table.remove(k.as_str()).map_err(|e| e.to_string())?;
                }
            }
        }
        tx.commit().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_durable_values() {
        let dir = std::env::temp_dir().join(format!("kv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("plugin_kv.redb");
        let _ = std::fs::remove_file(&path);
        let kv = PluginKv::new(path.clone());
        assert_eq!(kv.get("a", "k"), Ok(None));
        kv.write("a", "k", Some(b"1")).expect("put");
        kv.write("a", "k2", Some(b"2")).expect("put");
        kv.write("ab", "k", Some(b"x")).expect("put");
        assert_eq!(kv.get("a", "k"), Ok(Some(b"1".to_vec())));
        assert_eq!(kv.keys("a", "k"), Ok(vec!["k".to_owned(), "k2".to_owned()]));
        assert_eq!(kv.keys("a", ""), Ok(vec!["k".to_owned(), "k2".to_owned()]));
        kv.write("a", "k", None).expect("delete");
        assert_eq!(kv.get("a", "k"), Ok(None));
        assert!(kv.write("a", "", Some(b"x")).is_err());
        drop(kv);
        let again = PluginKv::new(path);
        assert_eq!(
            again.get("ab", "k"),
            Ok(Some(b"x".to_vec())),
            "survives a reopen"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
