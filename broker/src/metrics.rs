//! Broker-wide counters: relaxed atomics, incremented on the message path without locks.
//!
//! Read them with [`Metrics::snapshot`]; the management API (`/api/v5/status`, `/metrics`) and the
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
    /// Clients refused because limits.max_sessions sessions were held, all of them connected.
    Counter sessions_refused,
    /// Persistent sessions ended to make room for a new client at limits.max_sessions (the one
    /// offline longest first).
    Counter sessions_evicted,
    /// Bytes of read buffers holding packets still arriving and of topic-alias topics, beyond
    /// the first 64 KiB of each connection's (limits.max_incoming_bytes).
    Gauge incoming_bytes,
    /// Bytes of topic filters and share group names of every session's subscriptions
    /// (limits.max_total_subscription_bytes).
    Gauge subscription_bytes,
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
    /// The part of queued_bytes waiting for sessions with no connection
    /// (limits.max_offline_queued_bytes).
    Gauge offline_queued_bytes,
    /// Messages dropped for offline sessions because limits.max_offline_queued_bytes was reached
    /// (also counted in messages_dropped).
    Counter offline_messages_dropped,
    /// Times a publisher was paused because the bytes queued for connected sessions reached
    /// limits.memory_high_watermark.
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
    /// Delayed publishes (`$delayed/<seconds>/<topic>`) waiting for their time.
    Gauge delayed_messages,
    /// Bytes the waiting delayed publishes hold (limits.max_delayed_bytes).
    Gauge delayed_bytes,
    /// Bytes held by wills waiting for their Will Delay Interval (limits.max_pending_will_bytes).
    Gauge pending_will_bytes,
    /// Wills published without their delay because limits.max_pending_will_bytes was reached.
    Counter wills_not_delayed,
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

/// Counters, gauges and histograms that plugins register through the host services
/// (`metric_register`, `metric_update`). They appear in `/metrics` as
/// `broker_plugin_<plugin>_<name>` (counters with `_total`; histograms as `_seconds` with
/// `_bucket`, `_sum` and `_count`) and under `$SYS/brokers/<node>/plugins/<plugin>/<name>`
/// (a histogram's count there). A metric outlives its plugin's reloads: registering the same
/// name again returns the same id and value.
#[derive(Debug, Default)]
pub struct PluginMetrics {
    entries: parking_lot::RwLock<Vec<PluginMetric>>,
}

/// One plugin metric.
#[derive(Debug)]
pub struct PluginMetric {
    /// Plugin name.
    pub plugin: String,
    /// Metric name (`[a-z0-9_]`).
    pub name: String,
    /// Counter, gauge or histogram.
    pub kind: PluginMetricKind,
    /// Description.
    pub help: String,
    /// The value (counter, gauge) or the sum of observations in microseconds (histogram).
    value: std::sync::atomic::AtomicI64,
    /// A histogram's observations per bucket of [`HISTOGRAM_BUCKETS`], the last one `+Inf`.
    buckets: Option<Box<[AtomicU64]>>,
}

/// What a plugin metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginMetricKind {
    /// Only goes up.
    Counter,
    /// Set or moved either way.
    Gauge,
    /// Durations observed in microseconds, shown in seconds.
    Histogram,
}

/// Upper bounds of a plugin histogram's buckets, in seconds (100 µs to 10 s; `+Inf` follows).
pub const HISTOGRAM_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A copy of one plugin metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginMetricValue {
    /// Plugin name.
    pub plugin: String,
    /// Metric name.
    pub name: String,
    /// Counter, gauge or histogram.
    pub kind: PluginMetricKind,
    /// Description.
    pub help: String,
    /// Current value; for a histogram the sum of observations in microseconds.
    pub value: i64,
    /// A histogram's cumulative counts per bucket of [`HISTOGRAM_BUCKETS`], then `+Inf` (the
    /// count of observations). Empty for counters and gauges.
    pub cumulative: Vec<u64>,
}

impl PluginMetrics {
    /// Registers `plugin`'s metric `name` (or finds it); returns its id.
    pub fn register(
        &self,
        plugin: &str,
        name: &str,
        kind: PluginMetricKind,
        help: &str,
    ) -> Result<u32, String> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(format!(
                "invalid metric name {name:?}: use 1-64 of a-z, 0-9 and _"
            ));
        }
        let mut entries = self.entries.write();
        if let Some((i, e)) = entries
            .iter()
            .enumerate()
            .find(|(_, e)| e.plugin == plugin && e.name == name)
        {
            if e.kind != kind {
                return Err(format!("metric {name:?} exists with another kind"));
            }
            return Ok(i as u32);
        }
        if entries.len() >= 10_000 {
            return Err("too many plugin metrics (10 000)".into());
        }
        entries.push(PluginMetric {
            plugin: plugin.to_owned(),
            name: name.to_owned(),
            kind,
            help: help.to_owned(),
            value: std::sync::atomic::AtomicI64::new(0),
            buckets: (kind == PluginMetricKind::Histogram).then(|| {
                (0..=HISTOGRAM_BUCKETS.len())
                    .map(|_| AtomicU64::new(0))
                    .collect()
            }),
        });
        Ok((entries.len() - 1) as u32)
    }

    /// Adds `value` (or sets it, gauges only) to metric `id` if `plugin` owns it; for a
    /// histogram, observes `value` microseconds. Counters never go down and histograms take no
    /// negative observation: a negative value is ignored.
    pub fn update(&self, plugin: &str, id: u32, value: i64, set: bool) {
        let entries = self.entries.read();
        let Some(e) = entries.get(id as usize).filter(|e| e.plugin == plugin) else {
            return;
        };
        match (e.kind, set) {
            (PluginMetricKind::Gauge, true) => e.value.store(value, Ordering::Relaxed),
            (PluginMetricKind::Counter | PluginMetricKind::Histogram, _) if value < 0 => {}
            (PluginMetricKind::Histogram, _) => {
                let seconds = value as f64 / 1e6;
                let at = HISTOGRAM_BUCKETS
                    .iter()
                    .position(|upper| seconds <= *upper)
                    .unwrap_or(HISTOGRAM_BUCKETS.len());
                if let Some(bucket) = e.buckets.as_ref().and_then(|b| b.get(at)) {
                    bucket.fetch_add(1, Ordering::Relaxed);
                }
                e.value.fetch_add(value, Ordering::Relaxed);
            }
            (_, false) => {
                e.value.fetch_add(value, Ordering::Relaxed);
            }
            (PluginMetricKind::Counter, true) => {}
        }
    }

    /// Every metric, in registration order.
    pub fn values(&self) -> Vec<PluginMetricValue> {
        self.entries
            .read()
            .iter()
            .map(|e| PluginMetricValue {
                plugin: e.plugin.clone(),
                name: e.name.clone(),
                kind: e.kind,
                help: e.help.clone(),
                value: e.value.load(Ordering::Relaxed),
                cumulative: e
                    .buckets
                    .iter()
                    .flat_map(|b| b.iter())
                    .scan(0u64, |total, b| {
                        *total += b.load(Ordering::Relaxed);
                        Some(*total)
                    })
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_metrics_keep_their_value_across_registrations() {
        let m = PluginMetrics::default();
        let c = m
            .register("p", "hits", PluginMetricKind::Counter, "h")
            .expect("c");
        let g = m
            .register("p", "depth", PluginMetricKind::Gauge, "d")
            .expect("g");
        m.update("p", c, 3, false);
        m.update("p", c, -1, false);
        m.update("p", c, 100, true);
        m.update("other", c, 5, false);
        m.update("p", g, 7, true);
        m.update("p", g, -2, false);
        assert_eq!(
            m.register("p", "hits", PluginMetricKind::Counter, "h"),
            Ok(c)
        );
        assert!(m
            .register("p", "hits", PluginMetricKind::Gauge, "h")
            .is_err());
        assert!(m
            .register("p", "Bad-Name", PluginMetricKind::Gauge, "h")
            .is_err());
        let v = m.values();
        assert_eq!((v[0].value, v[1].value), (3, 5));
    }

    #[test]
    fn plugin_histograms_count_per_bucket() {
        let m = PluginMetrics::default();
        let h = m
            .register("p", "latency", PluginMetricKind::Histogram, "h")
            .expect("h");
        for micros in [50, 100, 700, 2_000_000, 60_000_000, -5] {
            m.update("p", h, micros, false);
        }
        let v = &m.values()[0];
        assert_eq!(v.value, 50 + 100 + 700 + 2_000_000 + 60_000_000);
        // <= 100 µs: 2; <= 1 ms: 3; <= 2.5 s: 4; +Inf: 5.
        assert_eq!(v.cumulative[0], 2);
        assert_eq!(v.cumulative[3], 3);
        assert_eq!(v.cumulative[13], 4);
        assert_eq!(v.cumulative.last(), Some(&5));
        assert_eq!(v.cumulative.len(), HISTOGRAM_BUCKETS.len() + 1);
    }
}
