//! subscription (auto-subscribe): on `client.connected`, subscribes the client to each
//! configured topic (every key in `etc/plugins/subscription.toml`).
//!
//! `%c` (client id) and `%u` (user name) may stand as whole levels of a topic
//! (`devices/%c/commands`); a topic that needs a user name the client did not send is skipped
//! with a warning. Options: `qos`, `nl` (no local), `rap` (retain as published), `rh` (retain
//! handling 0/1/2). The subscriptions are made as if the client had sent SUBSCRIBE, so a
//! retainer replays retained messages per retain handling.

use plugin_api::*;
use serde::Deserialize;

/// One auto-subscription in etc/plugins/subscription.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Topic filter; `%c` / `%u` as whole levels.
    pub topic: String,
    /// Maximum QoS (0..2). Default 0.
    #[serde(default)]
    pub qos: u8,
    /// No Local. Default false.
    #[serde(default)]
    pub nl: bool,
    /// Retain As Published. Default false.
    #[serde(default)]
    pub rap: bool,
    /// Retain Handling (0 send, 1 send if new, 2 do not send). Default 0.
    #[serde(default)]
    pub rh: u8,
}

/// etc/plugins/subscription.toml.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Topics every client is subscribed to.
    pub topics: Vec<TopicConfig>,
}

fn check(n: usize, t: &TopicConfig) -> Result<(), String> {
    if t.topic.is_empty() {
        return Err(format!("topics[{n}]: topic is empty"));
    }
    let levels: Vec<&str> = t.topic.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        let wildcard_ok = (!l.contains('#') || (*l == "#" && i == levels.len() - 1))
            && (!l.contains('+') || *l == "+");
        let placeholder_ok = !(l.contains("%c") || l.contains("%u")) || *l == "%c" || *l == "%u";
        if !wildcard_ok {
            return Err(format!(
                "topics[{n}]: {:?} is not a valid topic filter",
                t.topic
            ));
        }
        if !placeholder_ok {
            return Err(format!(
                "topics[{n}]: %c and %u must stand as whole levels in {:?}",
                t.topic
            ));
        }
    }
    if t.qos > 2 || t.rh > 2 {
        return Err(format!("topics[{n}]: qos and rh must be 0, 1 or 2"));
    }
    Ok(())
}

/// The topic for one client, or None when it needs a user name the client lacks.
pub fn expand(topic: &str, client_id: &str, username: Option<&str>) -> Option<String> {
    let mut out = Vec::new();
    for level in topic.split('/') {
        out.push(match level {
            "%c" => client_id,
            "%u" => username?,
            other => other,
        });
    }
    Some(out.join("/"))
}

/// The plugin.
pub struct Subscription {
    topics: Vec<TopicConfig>,
    host: HostRef,
}

impl Plugin for Subscription {
    const NAME: &'static str = "subscription";
    const DESCRIPTION: &'static str = "auto-subscribe on connect";
    /// Subscribes from the broker's threads; nothing runs on the runtime.
    const RUNTIME_THREADS: usize = 1;

    fn create(ctx: Context, config: &str) -> Result<Self, PluginError> {
        let config: Config =
            toml::from_str(config).map_err(|e| PluginError::config(e.to_string()))?;
        for (n, t) in config.topics.iter().enumerate() {
            check(n, t).map_err(PluginError::config)?;
        }
        Ok(Subscription {
            topics: config.topics,
            host: ctx.host().clone(),
        })
    }

    fn registration(&self) -> Registration {
        Registration {
            hooks: vec![HookSpec {
                point: HookPoint::CLIENT_CONNECTED,
                priority: priority::AUTO_SUBSCRIBE,
            }]
            .into(),
            ..Registration::default()
        }
    }

    fn on_event(&self, point: HookPoint, event: &EventView<'_>) {
        if point != HookPoint::CLIENT_CONNECTED {
            return;
        }
        let client_id = event.client.client_id.as_str();
        let username = event.client.username.map(|u| u.as_str()).into_option();
        for t in &self.topics {
            let Some(filter) = expand(&t.topic, client_id, username) else {
                tracing::warn!(client_id, topic = %t.topic, "auto-subscription skipped: the client sent no user name");
                continue;
            };
            let options = SubOptions {
                qos: t.qos,
                no_local: t.nl,
                retain_as_published: t.rap,
                retain_handling: t.rh,
            };
            if let RResult::RErr(e) =
                self.host
                    .subscribe(client_id.into(), filter.as_str().into(), options)
            {
                tracing::warn!(client_id, filter = %filter, error = %e, "auto-subscription failed");
            }
        }
    }
}

plugin_api::export_plugin!(Subscription);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_whole_levels() {
        assert_eq!(
            expand("d/%c/cmd", "dev1", None).as_deref(),
            Some("d/dev1/cmd")
        );
        assert_eq!(
            expand("u/%u/#", "dev1", Some("bob")).as_deref(),
            Some("u/bob/#")
        );
        assert_eq!(expand("u/%u/#", "dev1", None), None);
        let bad = TopicConfig {
            topic: "d/x%c".into(),
            qos: 0,
            nl: false,
            rap: false,
            rh: 0,
        };
        assert!(check(0, &bad).is_err());
    }
}
