//! Broker-wide counters: relaxed atomics, incremented on the message path without locks.
//!
//! Read them with [`Metrics::snapshot`]; the admin API and `$SYS` publish that snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! metrics {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Counters and gauges of one broker.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A point-in-time copy of [`Metrics`].
        #[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub struct MetricsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Metrics {
            /// Copies every counter.
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

metrics! {
    /// Connections currently open (after CONNACK).
    connections,
    /// Connections accepted since start.
    connections_accepted,
    /// Connections refused because a connection limit was reached.
    connections_refused,
    /// Sessions currently held (online and offline).
    sessions,
    /// PUBLISH packets received from clients.
    messages_received,
    /// PUBLISH packets sent to clients.
    messages_sent,
    /// Messages dropped: queue full, expired, or too large for the receiver.
    messages_dropped,
    /// Bytes read from clients.
    bytes_received,
    /// Bytes written to clients.
    bytes_sent,
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
