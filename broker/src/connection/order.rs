//! Which connection on a worker goes first, when one connection's input wakes others.
//!
//! tokio runs the task woken last first on the worker that woke it (its LIFO slot). That is
//! what keeps a delivery on the publisher's worker, without a cross-CPU wake-up, but it also
//! decides the order of what the connections write and read. Two rules are kept here:
//!
//! * **Input that arrived together is acted on in arrival order**: a connection whose input
//!   starts with a PUBLISH after a quiet spell ([`Quiet::Idle`]) yields once before acting on
//!   it when a few other tasks are waiting ([`others_waiting`]), so a SUBSCRIBE that another
//!   client sent just before it is in place first.
//! * **At light load, deliveries go out before the publisher's own answers**, as Mosquitto
//!   sends them: a publisher whose messages woke a subscriber waits
//!   ([`after_deliveries`]) until a connection on its worker has written (its woken
//!   subscriber, which runs next), and only then writes its PUBACK.
//!
//! The second wait is not a `yield_now`. tokio runs a yielded task only after the worker has
//! run out of other work and polled its I/O driver, and the worker that does so is then
//! "searching" for work: running the yielded task made it wake the other worker (a `futex`
//! call and two context switches per message, on the path of the PUBACK and competing with
//! the client for the other CPU). Instead the publisher leaves its waker here and the next
//! connection that writes on this worker wakes it ([`let_answers_go`]): the publisher then
//! runs right after that connection, from the LIFO slot, and the other worker sleeps on.
//! Whatever happens, the waker is woken: by the next connection on this worker that polls
//! its socket or ends, or when the worker runs out of work (the broker binary calls
//! [`let_answers_go`] when a worker parks). Only a runtime built that way may let publishers
//! wait ([`wait_for_deliveries_on_this_runtime`]): elsewhere (a test's runtime, the fuzz
//! target) a publisher whose message woke only its own session would wait for nothing.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Poll, Waker};
use std::time::Duration;

/// How long a connection had read nothing before the input it acts on (see
/// [`super::Connection::act`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Quiet {
    /// Input follows input: a stream, or a busy client.
    Busy,
    /// At least [`QUIET_BEFORE_DELIVERIES_FIRST`]: paced input, as at light load.
    Paced,
    /// At least [`QUIET_BEFORE_ORDERED`].
    Idle,
}

impl Quiet {
    /// How quiet a connection that had read nothing for `since_read` was.
    pub(super) fn of(since_read: Duration) -> Quiet {
        if since_read >= QUIET_BEFORE_ORDERED {
            Quiet::Idle
        } else if since_read >= QUIET_BEFORE_DELIVERIES_FIRST {
            Quiet::Paced
        } else {
            Quiet::Busy
        }
    }
}

/// How long a connection has read nothing before the deliveries its PUBLISH causes are
/// written ahead of its own answers: a client publishing up to 5 000 times a second, one
/// message at a time. A publisher streaming faster sends again before its answers are out,
/// and the order gains it nothing.
const QUIET_BEFORE_DELIVERIES_FIRST: Duration = Duration::from_micros(200);

/// How long a connection has read nothing before a PUBLISH it reads is ordered after the
/// input woken with it.
///
/// The order conformance suites rely on is that of two clients' packets reaching an idle
/// broker. A yield parks the task until its worker has run everything else, where the other
/// worker cannot take it: a publisher streaming messages, which reads again within
/// microseconds, would be held back behind every other task on every read (always yielding
/// cost 28 % of fan-out throughput). It has nothing to order: on a busy broker inputs that
/// arrive together have no order to keep.
const QUIET_BEFORE_ORDERED: Duration = Duration::from_millis(1);

/// Most tasks waiting to run for which a connection still lets others go first: a broker
/// with more is busy (see [`QUIET_BEFORE_ORDERED`]), and the wait would be behind all of them.
pub(super) const YIELD_TO_AT_MOST: usize = 2;

/// Whether between one and [`YIELD_TO_AT_MOST`] tasks are waiting to run besides the one
/// asking (in the workers' queues and the shared one). Needs the `tokio_unstable` build flag
/// (`.cargo/config.toml`) to see the workers' queues; without it, assumed (a fresh PUBLISH
/// then always yields first: ordered, at some cost in throughput).
pub(super) fn others_waiting() -> bool {
    (1..=YIELD_TO_AT_MOST).contains(&waiting_tasks())
}

/// How many tasks are waiting to run besides the one asking, in the workers' queues and the
/// shared one (not counting the one a worker runs next, its LIFO slot). Needs the
/// `tokio_unstable` build flag (`.cargo/config.toml`) to see the queues; without it, or
/// outside the runtime, assumed 1.
pub(super) fn waiting_tasks() -> usize {
    #[cfg(tokio_unstable)]
    {
        thread_local! {
            /// The runtime this thread runs tasks for (a worker stays with its runtime).
            static METRICS: Option<tokio::runtime::RuntimeMetrics> =
                tokio::runtime::Handle::try_current().ok().map(|h| h.metrics());
        }
        METRICS.with(|m| {
            m.as_ref().map_or(1, |m| {
                let local = (0..m.num_workers()).map(|w| m.worker_local_queue_depth(w));
                m.global_queue_depth() + local.sum::<usize>()
            })
        })
    }
    #[cfg(not(tokio_unstable))]
    1
}

/// Whether publishers may wait for their deliveries ([`wait_for_deliveries_on_this_runtime`]).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Lets publishers wait for the deliveries they caused to go first ([`after_deliveries`]).
/// Call only when every worker of the runtime that serves connections calls
/// [`let_answers_go`] before it parks (`on_thread_park`), as the broker binary's does.
pub fn wait_for_deliveries_on_this_runtime() {
    ENABLED.store(true, Ordering::Relaxed);
}

thread_local! {
    /// The publisher on this worker waiting for the connections it woke to write first (see
    /// [`after_deliveries`]).
    static WAITING: Cell<Option<Waker>> = const { Cell::new(None) };
}

/// Ready once a connection on this worker has written or ended, or the worker has run out of
/// work (see the module docs); at once when another publisher on this worker is already
/// waiting, or when the runtime does not wake waiters as it parks
/// ([`wait_for_deliveries_on_this_runtime`]). A wake-up for any other reason also ends the
/// wait: the caller goes on.
pub(super) fn after_deliveries() -> impl Future<Output = ()> {
    let mut waited = !ENABLED.load(Ordering::Relaxed);
    std::future::poll_fn(move |cx| {
        if waited {
            return Poll::Ready(());
        }
        let free = WAITING.with(|w| match w.take() {
            Some(other) => {
                w.set(Some(other));
                false
            }
            None => {
                w.set(Some(cx.waker().clone()));
                true
            }
        });
        if !free {
            return Poll::Ready(());
        }
        waited = true;
        Poll::Pending
    })
}

/// Wakes the publisher waiting on this worker for deliveries to go first, if one is (see the
/// module docs). Called by every connection that polls its socket or ends, and by the broker
/// binary when a runtime worker runs out of work.
pub fn let_answers_go() {
    if let Some(waker) = WAITING.with(Cell::take) {
        waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// The wait ends when another task on the worker lets answers go, and a second waiter on
    /// the same worker does not wait at all.
    #[tokio::test]
    async fn a_waiting_publisher_goes_on_once_another_task_writes() {
        wait_for_deliveries_on_this_runtime();
        let done = Arc::new(AtomicBool::new(false));
        let waiter = {
            let done = done.clone();
            tokio::spawn(async move {
                after_deliveries().await;
                done.store(true, Ordering::SeqCst);
            })
        };
        // The spawned task runs on this (current-thread) runtime once this one yields.
        while WAITING.with(|w| {
            let v = w.take();
            let some = v.is_some();
            w.set(v);
            !some
        }) {
            tokio::task::yield_now().await;
        }
        assert!(
            !done.load(Ordering::SeqCst),
            "the publisher went on before a write"
        );
        // Another waiter on the same worker goes on at once.
        tokio::time::timeout(Duration::from_secs(5), after_deliveries())
            .await
            .expect("a second waiter must not wait");
        let_answers_go();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiting publisher was not woken")
            .expect("task");
        assert!(done.load(Ordering::SeqCst));
    }
}
