//! Broker-wide counters: relaxed atomics, incremented on the message path without locks.
//!
//! Read them with [`Metrics::snapshot`]; the admin API (`/api/v1/status`, `/metrics`) and the
//! `$SYS` topics publish that snapshot (see [`crate::sys`]).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! metrics {
    ($($(#[doc = $doc:literal])+ $kind:ident $name:ident),* $(,)?) => {
        /// Counters and gauges of one broker.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[doc = $doc])+ pub $name: AtomicU64,)*
        }

        /// A point-in-time copy of [`Metrics`].
        #[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub struct MetricsSnapshot {
            $($(#[doc = $doc])+ pub $name: u64,)*
        }

        impl Metrics {
            /// Copies every counter.
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }

        impl MetricsSnapshot {
            /// Every value with its name, kind and description, in declaration order.
            pub fn entries(&self) -> Vec<MetricEntry> {
                vec![$(MetricEntry {
                    name: stringify!($name),
                    kind: MetricKind::$kind,
                    help: concat!($($doc),+),
                    value: self.$name,
                },)*]
            }
        }
    };
}

/// Whether a metric only grows or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only grows (since start).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// One metric's value and description (see [`MetricsSnapshot::entries`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricEntry {
    /// Field name, e.g. `messages_received`.
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// The field's doc comment (with a leading space).
    pub help: &'static str,
    /// The value.
    pub value: u64,
}

metrics! {
    /// Connections currently open (after CONNACK).
    Gauge connections,
    /// Connections accepted since start.
    Counter connections_accepted,
    /// Connections refused because a connection limit was reached.
    Counter connections_refused,
    /// Sessions currently held (online and offline).
    Gauge sessions,
    /// PUBLISH packets received from clients.
    Counter messages_received,
    /// PUBLISH packets sent to clients.
    Counter messages_sent,
    /// Messages dropped: queue full, expired, or too large for the receiver.
    Counter messages_dropped,
    /// Bytes read from clients.
    Counter bytes_received,
    /// Bytes written to clients.
    Counter bytes_sent,
    /// Bytes of messages waiting in session queues (limits.max_queued_bytes per session,
    /// limits.memory_high_watermark in all).
    Gauge queued_bytes,
    /// Times a publisher was paused because queued_bytes reached limits.memory_high_watermark.
    Counter publishers_paused,
    /// Clients disconnected for leaving the broker's output unread (limits.slow_consumer_timeout).
    Counter slow_consumers_disconnected,
    /// Connections closed for breaking the protocol or a limit.
    Counter protocol_errors,
    /// Size of the session store file in bytes (0 with durability = "none").
    Gauge store_bytes,
    /// Session store commits (each one fsync) since start.
    Counter store_commits,
    /// Changes submitted to the session store and not yet committed.
    Gauge store_pending,
}

/// Adds `n` to a counter.
#[inline]
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Subtracts `n` from a gauge.
#[inline]
pub fn sub(counter: &AtomicU64, n: u64) {
    counter.fetch_sub(n, Ordering::Relaxed);
}
