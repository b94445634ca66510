//! The durable session store: one redb database (`<data_dir>/sessions.redb`), written by one
//! thread with group commit.
//!
//! Tables, all keyed by client id first so that one session's rows are one key range:
//! * `sessions`: client id → the session record ([`super::persist`] encodes it: expiry,
//!   subscriptions, delayed will, last packet id);
//! * `messages`: (client id, sequence number) → one delivery (QoS > 0) waiting for that session,
//!   queued or in flight; the sequence numbers give the order;
//! * `inflight`: (client id, sequence number) → the packet id it was sent with, and whether
//!   PUBREC has been received (bit 16): present only for messages in flight;
//! * `incoming_qos2`: (client id, packet id) → QoS 2 messages received and routed, not yet
//!   released by PUBREL;
//! * `delayed`: id → a delayed publish (`$delayed/<seconds>/<topic>`) waiting for its time.
//!
//! **Writes** ([`Store::submit`]) go into a pending list under one lock, which numbers them: the
//! writer thread takes the whole list, applies it in one write transaction and commits it with
//! an fsync (redb's `Durability::Immediate`), then publishes how many operations are committed.
//! Whoever needs an operation on disc before answering a client (PUBACK, PUBREC, SUBACK with
//! `durability = "ack"`) waits for its number with [`Store::wait_committed`]: one fsync covers
//! every operation submitted while the previous commit ran, from every connection — group
//! commit, never one fsync per message.
//!
//! **Failures**: a commit that fails is logged and marks the store failed; waiters then get an
//! error and must not acknowledge (the connection is closed instead), so nothing that was
//! acknowledged is missing from the store. A database that cannot be opened because it is
//! damaged is moved aside (`sessions.redb.bad-<unix time>`) and reported, never deleted; redb
//! itself repairs a file whose last transaction was torn by a crash when it opens it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::watch;

/// The file name under `data_dir`.
pub const FILE: &str = "sessions.redb";

const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const INFLIGHT: TableDefinition<(&str, u64), u32> = TableDefinition::new("inflight");
const INCOMING_QOS2: TableDefinition<(&str, u16), ()> = TableDefinition::new("incoming_qos2");
const DELAYED: TableDefinition<u64, &[u8]> = TableDefinition::new("delayed");

/// Memory redb may use to cache the database's pages (its default is 1 GiB, which a broker
/// bounding its memory per client cannot afford). Writes go to disc at each commit anyway.
const CACHE_BYTES: usize = 8 * 1024 * 1024;

/// Bit of an `inflight` value set once PUBREC was received (QoS 2, PUBREL sent).
const RELEASED: u32 = 1 << 16;

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process has the database open.
    #[error("{path} is in use by another process (is another broker running with this data_dir?)")]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// redb reported an error.
    #[error("session store {path}: {message}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A commit failed earlier: nothing more can be promised durable.
    #[error("the session store failed to commit; see the log")]
    Failed,
}

/// One change to the store.
#[derive(Debug)]
pub enum Op {
    /// Writes (or replaces) a session record.
    PutSession {
        /// Client id.
        client_id: Arc<str>,
        /// The encoded record.
        record: Vec<u8>,
    },
    /// Removes a session and every row of it.
    DeleteSession {
        /// Client id.
        client_id: Arc<str>,
    },
    /// Stores a delivery waiting for a session.
    PutMessage {
        /// Client id.
        client_id: Arc<str>,
        /// Its place in the session's order.
        seq: u64,
        /// The encoded delivery.
        value: Bytes,
    },
    /// Records that a stored delivery was sent with `packet_id` (and, for QoS 2, whether
    /// PUBREC arrived).
    SetInflight {
        /// Client id.
        client_id: Arc<str>,
        /// The delivery.
        seq: u64,
        /// Packet id it was sent with.
        packet_id: u16,
        /// PUBREC received, PUBREL sent.
        released: bool,
    },
    /// Removes a delivery: acknowledged, expired or dropped.
    DeleteMessage {
        /// Client id.
        client_id: Arc<str>,
        /// The delivery.
        seq: u64,
    },
    /// Records an incoming QoS 2 packet id (routed, PUBREC due).
    PutQos2 {
        /// Client id.
        client_id: Arc<str>,
        /// Packet id.
        packet_id: u16,
    },
    /// Forgets an incoming QoS 2 packet id (PUBREL received).
    DeleteQos2 {
        /// Client id.
        client_id: Arc<str>,
        /// Packet id.
        packet_id: u16,
    },
    /// Stores a delayed publish.
    PutDelayed {
        /// Its id.
        id: u64,
        /// The encoded message and when it is due.
        value: Bytes,
    },
    /// Forgets a delayed publish (published or deleted).
    DeleteDelayed {
        /// Its id.
        id: u64,
    },
}

/// One delivery as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its place in the session's order.
    pub seq: u64,
    /// The encoded delivery.
    pub value: Vec<u8>,
    /// Set while in flight: the packet id it was sent with, and whether PUBREC arrived.
    pub inflight: Option<(u16, bool)>,
}

/// One session as read back from the store.
#[derive(Debug, Default)]
pub struct StoredSession {
    /// The encoded session record.
    pub record: Vec<u8>,
    /// Its deliveries, in order.
    pub messages: Vec<StoredMessage>,
    /// Incoming QoS 2 packet ids not yet released.
    pub incoming_qos2: Vec<u16>,
}

struct Pending {
    ops: Vec<Op>,
    /// Operations submitted since the store opened; the last one's number.
    submitted: u64,
    closed: bool,
}

/// Counters for `brokerctl status` and the metrics.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Commits (fsyncs) since start.
    pub commits: AtomicU64,
    /// Operations committed since start.
    pub ops: AtomicU64,
}

/// The store and its writer thread. See the module docs.
pub struct Store {
    path: PathBuf,
    db: Arc<redb::Database>,
    pending: Mutex<Pending>,
    wake: Condvar,
    committed: watch::Sender<u64>,
    failed: AtomicBool,
    /// Counters.
    pub stats: StoreStats,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn db_error(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Database {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

impl Store {
    /// Opens (or creates) the database at `path` and starts the writer thread. A damaged file
    /// is moved aside and a new one created (the error is logged).
    pub fn open(path: &Path) -> Result<Arc<Store>, StoreError> {
        let create = |path: &Path| {
            redb::Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create(path)
        };
        let db = match create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::InUse {
                    path: path.to_owned(),
                })
            }
            Err(e) => {
                let aside = aside_path(path);
                tracing::error!(file = %path.display(), error = %e, moved_to = %aside.display(),
                    "session store unreadable: starting without its sessions; the file is kept");
                std::fs::rename(path, &aside).map_err(|e| db_error(path, e))?;
                create(path).map_err(|e| db_error(path, e))?
            }
        };
        let txn = db.begin_write().map_err(|e| db_error(path, e))?;
        {
            txn.open_table(SESSIONS).map_err(|e| db_error(path, e))?;
            txn.open_table(MESSAGES).map_err(|e| db_error(path, e))?;
            txn.open_table(INFLIGHT).map_err(|e| db_error(path, e))?;
            txn.open_table(INCOMING_QOS2)
                .map_err(|e| db_error(path, e))?;
            txn.open_table(DELAYED).map_err(|e| db_error(path, e))?;
        }
        txn.commit().map_err(|e| db_error(path, e))?;
        let (committed, _) = watch::channel(0);
        let store = Arc::new(Store {
            path: path.to_owned(),
            db: Arc::new(db),
            pending: Mutex::new(Pending {
                ops: Vec::new(),
                submitted: 0,
                closed: false,
            }),
            wake: Condvar::new(),
            committed,
            failed: AtomicBool::new(false),
            stats: StoreStats::default(),
        });
        let writer = store.clone();
        std::thread::Builder::new()
            .name("session-store".into())
            .spawn(move || writer.write_loop())
            .map_err(|e| db_error(path, e))?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a change; returns its number, for [`Store::wait_committed`].
    pub fn submit(&self, op: Op) -> u64 {
        let mut p = self.pending.lock();
        p.ops.push(op);
        p.submitted += 1;
        let n = p.submitted;
        drop(p);
        self.wake.notify_one();
        n
    }

    /// The number of the last change submitted so far.
    pub fn submitted(&self) -> u64 {
        self.pending.lock().submitted
    }

    /// Changes submitted but not yet committed.
    pub fn pending(&self) -> u64 {
        self.submitted().saturating_sub(*self.committed.borrow())
    }

    /// Waits until change number `n` (and every one before it) is on disc.
    pub async fn wait_committed(&self, n: u64) -> Result<(), StoreError> {
        let mut rx = self.committed.subscribe();
        let reached = rx.wait_for(|c| *c >= n).await.is_ok();
        if !reached || self.failed.load(Ordering::Acquire) {
            return Err(StoreError::Failed);
        }
        Ok(())
    }

    /// Size of the database file in bytes.
    pub fn file_size(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    fn write_loop(&self) {
        loop {
            let (ops, upto) = {
                let mut p = self.pending.lock();
                while p.ops.is_empty() && !p.closed {
                    self.wake.wait(&mut p);
                }
                if p.ops.is_empty() {
                    return;
                }
                (std::mem::take(&mut p.ops), p.submitted)
            };
            let n = ops.len() as u64;
            match self.apply(ops) {
                Ok(()) => {
                    self.stats.commits.fetch_add(1, Ordering::Relaxed);
                    self.stats.ops.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::error!(file = %self.path.display(), error = %e,
                        "session store commit failed: messages are no longer acknowledged as durable");
                    self.failed.store(true, Ordering::Release);
                }
            }
            self.mark_committed(upto);
        }
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        {
            let mut sessions = txn.open_table(SESSIONS)?;
            let mut messages = txn.open_table(MESSAGES)?;
            let mut inflight = txn.open_table(INFLIGHT)?;
            let mut qos2 = txn.open_table(INCOMING_QOS2)?;
            let mut delayed = txn.open_table(DELAYED)?;
            for op in ops {
                match op {
                    Op::PutSession { client_id, record } => {
                        sessions.insert(&*client_id, record.as_slice())?;
                    }
                    Op::DeleteSession { client_id } => {
                        let id = &*client_id;
                        sessions.remove(id)?;
                        messages.retain_in((id, 0)..=(id, u64::MAX), |_, _| false)?;
                        inflight.retain_in((id, 0)..=(id, u64::MAX), |_, _| false)?;
                        qos2.retain_in((id, 0)..=(id, u16::MAX), |_, _| false)?;
                    }
                    Op::PutMessage {
                        client_id,
                        seq,
                        value,
                    } => {
                        messages.insert((&*client_id, seq), &*value)?;
                    }
                    Op::SetInflight {
                        client_id,
                        seq,
                        packet_id,
                        released,
                    } => {
                        let v = u32::from(packet_id) | if released { RELEASED } else { 0 };
                        inflight.insert((&*client_id, seq), v)?;
                    }
                    Op::DeleteMessage { client_id, seq } => {
                        messages.remove((&*client_id, seq))?;
                        inflight.remove((&*client_id, seq))?;
                    }
                    Op::PutQos2 {
                        client_id,
                        packet_id,
                    } => {
                        qos2.insert((&*client_id, packet_id), ())?;
                    }
                    Op::DeleteQos2 {
                        client_id,
                        packet_id,
                    } => {
                        qos2.remove((&*client_id, packet_id))?;
                    }
                    Op::PutDelayed { id, value } => {
                        delayed.insert(id, &*value)?;
                    }
                    Op::DeleteDelayed { id } => {
                        delayed.remove(id)?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Every stored delayed publish, by id. Run before the first connection.
    pub fn load_delayed(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let e = |e: redb::Error| db_error(&self.path, e);
        let txn = self.db.begin_read().map_err(|x| e(x.into()))?;
        let table = txn.open_table(DELAYED).map_err(|x| e(x.into()))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|x| e(x.into()))? {
            let (k, v) = row.map_err(|x| e(x.into()))?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Every stored session, by client id. Run before the first connection.
    pub fn load(&self) -> Result<Vec<(String, StoredSession)>, StoreError> {
        let e = |e: redb::Error| db_error(&self.path, e);
        let txn = self.db.begin_read().map_err(|x| e(x.into()))?;
        let sessions = txn.open_table(SESSIONS).map_err(|x| e(x.into()))?;
        let messages = txn.open_table(MESSAGES).map_err(|x| e(x.into()))?;
        let inflight = txn.open_table(INFLIGHT).map_err(|x| e(x.into()))?;
        let qos2 = txn.open_table(INCOMING_QOS2).map_err(|x| e(x.into()))?;
        let mut out = Vec::new();
        for row in sessions.iter().map_err(|x| e(x.into()))? {
            let (k, v) = row.map_err(|x| e(x.into()))?;
            let id = k.value().to_owned();
            let mut s = StoredSession {
                record: v.value().to_vec(),
                ..StoredSession::default()
            };
            let range = (id.as_str(), 0)..=(id.as_str(), u64::MAX);
            for row in messages.range(range.clone()).map_err(|x| e(x.into()))? {
                let (k, v) = row.map_err(|x| e(x.into()))?;
                let seq = k.value().1;
                let state = inflight
                    .get((id.as_str(), seq))
                    .map_err(|x| e(x.into()))?
                    .map(|f| {
                        let f = f.value();
                        ((f & 0xFFFF) as u16, f & RELEASED != 0)
                    });
                s.messages.push(StoredMessage {
                    seq,
                    value: v.value().to_vec(),
                    inflight: state,
                });
            }
            for row in qos2
                .range((id.as_str(), 0)..=(id.as_str(), u16::MAX))
                .map_err(|x| e(x.into()))?
            {
                let (k, _) = row.map_err(|x| e(x.into()))?;
                s.incoming_qos2.push(k.value().1);
            }
            out.push((id, s));
        }
        Ok(out)
    }

    /// Replaces the whole content with `sessions` and `delayed_messages` in one transaction,
    /// after everything submitted so far (a graceful stop writes the complete state this way).
    pub fn replace_all(
        &self,
        sessions: Vec<(Arc<str>, StoredSession)>,
        delayed_messages: Vec<(u64, Bytes)>,
    ) -> Result<(), StoreError> {
        let e = |x: redb::Error| db_error(&self.path, x);
        // The writer finishes what it has; new submissions wait behind the lock held here.
        let mut p = self.pending.lock();
        let ops = std::mem::take(&mut p.ops);
        self.apply(ops).map_err(e)?;
        let txn = self.db.begin_write().map_err(|x| e(x.into()))?;
        {
            let mut st = txn.open_table(SESSIONS).map_err(|x| e(x.into()))?;
            let mut mt = txn.open_table(MESSAGES).map_err(|x| e(x.into()))?;
            let mut it = txn.open_table(INFLIGHT).map_err(|x| e(x.into()))?;
            let mut qt = txn.open_table(INCOMING_QOS2).map_err(|x| e(x.into()))?;
            let mut dt = txn.open_table(DELAYED).map_err(|x| e(x.into()))?;
            dt.retain(|_, _| false).map_err(|x| e(x.into()))?;
            for (id, value) in &delayed_messages {
                dt.insert(*id, &**value).map_err(|x| e(x.into()))?;
            }
            st.retain(|_, _| false).map_err(|x| e(x.into()))?;
            mt.retain(|_, _| false).map_err(|x| e(x.into()))?;
            it.retain(|_, _| false).map_err(|x| e(x.into()))?;
            qt.retain(|_, _| false).map_err(|x| e(x.into()))?;
            for (id, s) in &sessions {
                let id = &**id;
                st.insert(id, s.record.as_slice())
                    .map_err(|x| e(x.into()))?;
                for m in &s.messages {
                    mt.insert((id, m.seq), m.value.as_slice())
                        .map_err(|x| e(x.into()))?;
                    if let Some((packet_id, released)) = m.inflight {
                        let v = u32::from(packet_id) | if released { RELEASED } else { 0 };
                        it.insert((id, m.seq), v).map_err(|x| e(x.into()))?;
                    }
                }
                for packet_id in &s.incoming_qos2 {
                    qt.insert((id, *packet_id), ()).map_err(|x| e(x.into()))?;
                }
            }
        }
        txn.commit().map_err(|x| e(x.into()))?;
        let submitted = p.submitted;
        drop(p);
        self.mark_committed(submitted);
        Ok(())
    }

    /// Publishes that everything up to `n` is committed (never moving backwards: the writer
    /// and [`Store::replace_all`] may finish in either order).
    fn mark_committed(&self, n: u64) {
        self.committed.send_modify(|c| *c = (*c).max(n));
    }

    /// Number of sessions and of messages stored.
    pub fn counts(&self) -> (u64, u64) {
        let count = || -> Result<(u64, u64), redb::Error> {
            let txn = self.db.begin_read()?;
            Ok((
                txn.open_table(SESSIONS)?.len()?,
                txn.open_table(MESSAGES)?.len()?,
            ))
        };
        count().unwrap_or((0, 0))
    }

    /// Stops the writer thread once everything submitted is committed.
    pub fn close(&self) {
        self.pending.lock().closed = true;
        self.wake.notify_all();
    }
}

fn aside_path(path: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".bad-{secs}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests;
