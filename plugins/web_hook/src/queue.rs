//! The web hook's queue: events recorded by the hooks, gathered into batches, handed to the
//! senders.
//!
//! **Publishers on different threads do not contend.** A hook runs on the thread of the
//! connection that published, so at full rate several threads record events at once. Each
//! thread records into its own *shard*: a batch being filled, under its own lock, on its own
//! cache lines. The queue's totals (events and bytes waiting, for the bounds and the gauge)
//! are shared atomics, and they change once per batch, not once per event: profiled at 4
//! publishers, one shared lock and two shared counters touched per event cost about 300 ns of
//! cache-line traffic per message on this 2-core machine, more than recording the event.
//!
//! **The bounds.** `capacity` events and `max_bytes` of records may wait. A shard charges its
//! bytes to the shared total every [`CHARGE_EVERY`] bytes and when its batch leaves, and its
//! events when its batch leaves; so the queue can pass either bound by at most what each
//! shard has not charged yet: one batch of events, [`CHARGE_EVERY`] bytes.

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::{mpsc, Notify};

/// Bytes a shard records before it charges them to the shared total.
pub const CHARGE_EVERY: usize = 64 * 1024;

/// Events on their way to the service, as records one after another.
pub struct Batch {
    /// The records.
    pub records: Vec<u8>,
    /// How many.
    pub count: usize,
}

/// The batch a shard is filling.
#[derive(Default)]
struct Filling {
    records: Vec<u8>,
    count: usize,
    /// Bytes of `records` not yet in [`Queue::queued_bytes`].
    uncharged: usize,
}

/// One thread's batch, and the events it dropped, alone on their cache lines.
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    filling: Mutex<Filling>,
    dropped: AtomicU64,
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Filling> {
        self.filling.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn drop_events(&self, n: usize) {
        self.dropped.fetch_add(n as u64, Ordering::Relaxed);
    }
}

thread_local! {
    /// This thread's shard number (`usize::MAX` until it first records).
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Shard numbers handed to threads, round robin.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

/// The queue (see the module docs).
pub struct Queue {
    shards: Box<[Shard]>,
    capacity: i64,
    max_bytes: i64,
    batch_size: usize,
    /// Events of batches that have left their shard and are not yet with a sender.
    queued: AtomicI64,
    /// Bytes charged by the shards and not yet with a sender.
    queued_bytes: AtomicI64,
    batches: mpsc::Sender<Batch>,
    /// Tells the dispatcher that a batch was started (it takes it after `batch_wait_ms`).
    pub started: Notify,
}

impl Queue {
    /// A queue of at most `capacity` events and `max_bytes` bytes of records, whose full
    /// batches of `batch_size` go to `batches`.
    pub fn new(
        capacity: usize,
        max_bytes: usize,
        batch_size: usize,
        batches: mpsc::Sender<Batch>,
    ) -> Queue {
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
        Queue {
            shards: (0..(threads * 2).clamp(2, 128))
                .map(|_| Shard::default())
                .collect(),
            capacity: capacity as i64,
            max_bytes: max_bytes as i64,
            batch_size,
            queued: AtomicI64::new(0),
            queued_bytes: AtomicI64::new(0),
            batches,
            started: Notify::new(),
        }
    }

    fn shard(&self) -> &Shard {
        let n = SHARD.with(|s| {
            if s.get() == usize::MAX {
                s.set(NEXT_SHARD.fetch_add(1, Ordering::Relaxed));
            }
            s.get()
        });
        &self.shards[n % self.shards.len()]
    }

    /// Whether the queue may have room for one more event (a cheap check before an event is
    /// built; [`Queue::append`] decides). When it has none the event is counted as dropped.
    pub fn room(&self) -> bool {
        if self.queued.load(Ordering::Relaxed) < self.capacity {
            return true;
        }
        self.shard().drop_events(1);
        false
    }

    /// Adds one event to this thread's batch: `write` appends its record. An event that does
    /// not fit the bounds is dropped, and a full batch the dispatcher cannot take: both are
    /// counted ([`Queue::take_dropped`]). A full batch goes to the dispatcher; the first event
    /// of a batch tells it, so that it takes a batch that does not fill in time.
    pub fn append(&self, write: impl FnOnce(&mut Vec<u8>)) {
        let shard = self.shard();
        let dropped = self.append_to(shard, write);
        if dropped > 0 {
            shard.drop_events(dropped);
        }
    }

    /// [`Queue::append`] to `shard`; returns how many events were dropped.
    fn append_to(&self, shard: &Shard, write: impl FnOnce(&mut Vec<u8>)) -> usize {
        let mut f = shard.lock();
        if self.queued.load(Ordering::Relaxed) + f.count as i64 >= self.capacity {
            return 1;
        }
        let start = f.records.len();
        write(&mut f.records);
        let added = f.records.len() - start;
        let uncharged = f.uncharged + added;
        if uncharged > CHARGE_EVERY {
            let before = self
                .queued_bytes
                .fetch_add(uncharged as i64, Ordering::Relaxed);
            f.uncharged = 0;
            if before + uncharged as i64 > self.max_bytes {
                self.queued_bytes.fetch_sub(added as i64, Ordering::Relaxed);
                f.records.truncate(start);
                return 1;
            }
        } else if self.queued_bytes.load(Ordering::Relaxed) + uncharged as i64 > self.max_bytes {
            f.records.truncate(start);
            return 1;
        } else {
            f.uncharged = uncharged;
        }
        f.count += 1;
        if f.count < self.batch_size {
            if f.count == 1 {
                drop(f);
                self.started.notify_one();
            }
            return 0;
        }
        let batch = self.take(&mut f, start + 256);
        drop(f);
        match self.batches.try_send(batch) {
            Ok(()) => 0,
            Err(e) => {
                let batch = e.into_inner();
                self.forget(&batch);
                batch.count
            }
        }
    }

    /// Takes a shard's batch, charging what it had not charged.
    fn take(&self, f: &mut Filling, capacity: usize) -> Batch {
        self.queued.fetch_add(f.count as i64, Ordering::Relaxed);
        self.queued_bytes
            .fetch_add(std::mem::take(&mut f.uncharged) as i64, Ordering::Relaxed);
        Batch {
            records: std::mem::replace(&mut f.records, Vec::with_capacity(capacity)),
            count: std::mem::take(&mut f.count),
        }
    }

    /// Every batch being filled that has an event (for the dispatcher, after `batch_wait_ms`).
    pub fn take_pending(&self) -> Vec<Batch> {
        self.shards
            .iter()
            .filter_map(|s| {
                let mut f = s.lock();
                (f.count > 0).then(|| self.take(&mut f, 0))
            })
            .collect()
    }

    /// Un-counts a batch leaving the queue (to a sender, or dropped).
    pub fn forget(&self, batch: &Batch) {
        self.queued.fetch_sub(batch.count as i64, Ordering::Relaxed);
        self.queued_bytes
            .fetch_sub(batch.records.len() as i64, Ordering::Relaxed);
    }

    /// Events dropped by [`Queue::room`] and [`Queue::append`] since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.dropped.swap(0, Ordering::Relaxed))
            .sum()
    }

    /// Events waiting: in batches being filled and handed over, not yet with a sender.
    pub fn depth(&self) -> i64 {
        let filling: usize = self.shards.iter().map(|s| s.lock().count).sum();
        self.queued.load(Ordering::Relaxed) + filling as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(out: &mut Vec<u8>, n: usize) {
        out.extend(std::iter::repeat_n(b'x', n));
    }

    #[test]
    fn full_batches_go_and_the_rest_waits_for_the_dispatcher() {
        let (tx, mut rx) = mpsc::channel(16);
        let q = Queue::new(100, 1 << 20, 3, tx);
        for _ in 0..7 {
            q.append(|o| record(o, 10));
        }
        assert_eq!(q.take_dropped(), 0);
        assert_eq!(q.depth(), 7);
        for _ in 0..2 {
            let b = rx.try_recv().expect("a full batch");
            assert_eq!((b.count, b.records.len()), (3, 30));
            q.forget(&b);
        }
        assert!(rx.try_recv().is_err());
        let rest = q.take_pending();
        assert_eq!(rest.iter().map(|b| b.count).sum::<usize>(), 1);
        rest.iter().for_each(|b| q.forget(b));
        assert_eq!(q.depth(), 0);
        assert_eq!(q.queued_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn events_past_the_bounds_are_dropped() {
        let (tx, _rx) = mpsc::channel(16);
        let q = Queue::new(4, 1 << 20, 2, tx);
        (0..10).for_each(|_| q.append(|o| record(o, 1)));
        assert_eq!((q.take_dropped(), q.depth()), (6, 4));
        assert!(!q.room());
        assert_eq!(q.take_dropped(), 1);

        let (tx, _rx) = mpsc::channel(16);
        let q = Queue::new(1000, 3 * CHARGE_EVERY, 1000, tx);
        // Small records fit until the bytes bound, charged or not.
        let mut kept = 0;
        loop {
            q.append(|o| record(o, 1000));
            if q.take_dropped() > 0 {
                break;
            }
            kept += 1;
        }
        assert!(
            (3 * CHARGE_EVERY / 1000 - 1..=3 * CHARGE_EVERY / 1000).contains(&kept),
            "{kept}"
        );
        // One record larger than the bound never fits; the charge is given back.
        let charged = q.queued_bytes.load(Ordering::Relaxed);
        q.append(|o| record(o, 4 * CHARGE_EVERY));
        assert_eq!(q.take_dropped(), 1);
        assert!(q.queued_bytes.load(Ordering::Relaxed) <= charged + CHARGE_EVERY as i64);
    }

    #[test]
    fn a_batch_the_dispatcher_cannot_take_is_dropped_whole() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let q = Queue::new(100, 1 << 20, 2, tx);
        q.append(|o| record(o, 5));
        assert_eq!(q.take_dropped(), 0);
        q.append(|o| record(o, 5));
        assert_eq!(q.take_dropped(), 2);
        assert_eq!(q.depth(), 0);
        assert_eq!(q.queued_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn threads_fill_their_own_batches() {
        let (tx, _rx) = mpsc::channel(16);
        let q = Queue::new(10_000, 1 << 20, 1000, tx);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        q.append(|o| record(o, 1));
                    }
                });
            }
        });
        assert_eq!((q.depth(), q.take_dropped()), (400, 0));
        let batches = q.take_pending();
        assert_eq!(batches.iter().map(|b| b.count).sum::<usize>(), 400);
    }
}
