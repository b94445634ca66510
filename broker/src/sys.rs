//! `$SYS` topics and the Prometheus exposition of the broker's metrics.
//!
//! **`$SYS` topics.** Every `sys.interval_secs` (0 = never) the broker publishes, retained at
//! QoS 0, under `$SYS/brokers/<node>/`:
//! * `version` — the broker's version; `uptime` — seconds since start;
//! * `metrics/<name>` — each counter and gauge of [`crate::metrics::Metrics`]
//!   (`metrics/connections`, `metrics/messages_received`, …);
//! * `stats/subscriptions` — subscriptions held.
//!
//! They go through the ordinary publish path (the `message.publish` hooks see them, so the
//! retainer keeps the latest values for clients that subscribe later). `#` and `+/…` never match
//! them: subscribe to `$SYS/#`. Client presence documents (`$SYS/brokers/<node>/clients/…`)
//! are the presence plugin's.
//!
//! **Prometheus.** [`prometheus`] renders the same values, plus each loaded plugin's state and
//! hook counters, in the Prometheus text format; the admin API serves it at `GET /metrics`
//! (with the admin token, like every admin endpoint) and `brokerctl metrics` prints it.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::broker::Broker;
use crate::codec::QoS;
use crate::metrics::{MetricKind, PluginMetricKind, HISTOGRAM_BUCKETS};
use crate::router::TopicName;
use crate::session::Message;

/// The values published under `$SYS/brokers/<node>/`: (topic suffix, payload).
pub fn sys_values(broker: &Broker) -> Vec<(String, String)> {
    let mut out = vec![
        ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        (
            "uptime".to_owned(),
            broker.started.elapsed().as_secs().to_string(),
        ),
        (
            "stats/subscriptions".to_owned(),
            broker.subscription_count().to_string(),
        ),
    ];
    for e in broker.metrics_snapshot().entries() {
        out.push((format!("metrics/{}", e.name), e.value.to_string()));
    }
    for m in broker.plugin_metrics.values() {
        // A histogram's $SYS value is its count of observations.
        let value = match m.kind {
            PluginMetricKind::Histogram => m.cumulative.last().copied().unwrap_or(0) as i64,
            _ => m.value,
        };
        out.push((
            format!("plugins/{}/{}", m.plugin, m.name),
            value.to_string(),
        ));
    }
    out
}

/// Publishes the `$SYS` values once; returns how many topics were published.
pub fn publish_sys(broker: &Broker) -> usize {
    let prefix = format!("$SYS/brokers/{}/", broker.config.node_name);
    let mut published = 0;
    for (suffix, value) in sys_values(broker) {
        let Ok(topic) = TopicName::new(&format!("{prefix}{suffix}")) else {
            tracing::warn!(node = %broker.config.node_name, "node name makes an invalid $SYS topic");
            return published;
        };
        let payload = Bytes::from(value);
        let message = Message::new(
            topic,
            payload,
            QoS::AtMostOnce,
            true,
            Default::default(),
            None,
        );
        broker.publish(message, None, false);
        published += 1;
    }
    published
}

/// Publishes the `$SYS` values every `interval` (the first time one interval from now) until
/// the broker shuts down.
pub async fn run(broker: Arc<Broker>, interval: Duration) {
    let mut shutdown = broker.shutdown_signal();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                publish_sys(&broker);
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", help.trim());
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The broker's metrics in the Prometheus text exposition format (version 0.0.4).
pub fn prometheus(broker: &Broker) -> String {
    let mut out = String::with_capacity(4096);
    family(
        &mut out,
        "broker_info",
        "gauge",
        "Broker version and node name.",
    );
    let _ = writeln!(
        out,
        "broker_info{{version=\"{}\",node=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        label(&broker.config.node_name)
    );
    family(
        &mut out,
        "broker_uptime_seconds",
        "gauge",
        "Seconds since the broker started.",
    );
    let _ = writeln!(
        out,
        "broker_uptime_seconds {}",
        broker.started.elapsed().as_secs()
    );
    family(
        &mut out,
        "broker_subscriptions",
        "gauge",
        "Subscriptions currently held.",
    );
    let _ = writeln!(out, "broker_subscriptions {}", broker.subscription_count());
    for e in broker.metrics_snapshot().entries() {
        let (name, kind) = match e.kind {
            MetricKind::Counter => (format!("broker_{}_total", e.name), "counter"),
            MetricKind::Gauge => (format!("broker_{}", e.name), "gauge"),
        };
        family(&mut out, &name, kind, e.help);
        let _ = writeln!(out, "{name} {}", e.value);
    }

    for m in broker.plugin_metrics.values() {
        let plugin = &m.plugin;
        match m.kind {
            PluginMetricKind::Counter => {
                let name = format!(
                    "broker_plugin_{plugin}_{}_total",
                    m.name.trim_end_matches("_total")
                );
                family(&mut out, &name, "counter", &m.help);
                let _ = writeln!(out, "{name} {}", m.value);
            }
            PluginMetricKind::Gauge => {
                let name = format!("broker_plugin_{plugin}_{}", m.name);
                family(&mut out, &name, "gauge", &m.help);
                let _ = writeln!(out, "{name} {}", m.value);
            }
            PluginMetricKind::Histogram => {
                let name = format!(
                    "broker_plugin_{plugin}_{}_seconds",
                    m.name.trim_end_matches("_seconds")
                );
                family(&mut out, &name, "histogram", &m.help);
                for (upper, count) in HISTOGRAM_BUCKETS.iter().zip(&m.cumulative) {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{upper}\"}} {count}");
                }
                let count = m.cumulative.last().copied().unwrap_or(0);
                let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
                let _ = writeln!(out, "{name}_sum {}", m.value as f64 / 1e6);
                let _ = writeln!(out, "{name}_count {count}");
            }
        }
    }
    let plugins: Vec<_> = broker
        .plugins
        .list()
        .plugins
        .into_iter()
        .filter(|p| p.stats.is_some())
        .collect();
    family(
        &mut out,
        "broker_plugin_state",
        "gauge",
        "Loaded plugins: 1 for the state each is in (active, draining, stopped, faulted).",
    );
    for p in &plugins {
        let _ = writeln!(
            out,
            "broker_plugin_state{{plugin=\"{}\",state=\"{}\"}} 1",
            label(&p.name),
            label(p.state.as_str())
        );
    }
    type Pick = fn(&crate::hooks::StatsSnapshot) -> f64;
    let series: [(&str, &str, &str, Pick); 6] = [
        (
            "broker_plugin_hook_calls_total",
            "counter",
            "Hook calls made into the plugin.",
            |s| s.calls as f64,
        ),
        (
            "broker_plugin_hook_errors_total",
            "counter",
            "Hook calls that returned an error.",
            |s| s.errors as f64,
        ),
        (
            "broker_plugin_hook_panics_total",
            "counter",
            "Hook calls that panicked (caught at the boundary).",
            |s| s.panics as f64,
        ),
        (
            "broker_plugin_hook_timeouts_total",
            "counter",
            "Async hook calls that timed out.",
            |s| s.timeouts as f64,
        ),
        (
            "broker_plugin_hook_latency_mean_seconds",
            "gauge",
            "Mean latency of sampled hook calls.",
            |s| s.mean_us / 1e6,
        ),
        (
            "broker_plugin_hook_latency_p99_seconds",
            "gauge",
            "99th percentile latency of sampled hook calls (bucket upper bound).",
            |s| s.p99_us / 1e6,
        ),
    ];
    for (name, kind, help, pick) in series {
        family(&mut out, name, kind, help);
        for p in &plugins {
            if let Some(s) = &p.stats {
                let _ = writeln!(out, "{name}{{plugin=\"{}\"}} {}", label(&p.name), pick(s));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn every_metric_has_help_and_a_kind() {
        let entries = crate::metrics::Metrics::default().snapshot().entries();
        assert!(entries.len() >= 9);
        for e in entries {
            assert!(!e.help.trim().is_empty(), "{}", e.name);
        }
    }
}
