//! An application message as the broker routes it: topic, payload, QoS, RETAIN, the v5
//! properties forwarded to subscribers, its publisher and its expiry. Shared by the session
//! queues, the hooks and the store, below all of them.

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use crate::codec::{Properties, QoS};
use crate::router::TopicName;

/// An application message being routed. Shared by every delivery (`Arc`): the payload is never
/// copied per subscriber.
#[derive(Debug)]
pub struct Message {
    /// Topic it was published to.
    pub topic: TopicName,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// RETAIN flag as published.
    pub retain: bool,
    /// v5 properties forwarded to subscribers (payload format, content type, response topic,
    /// correlation data, user properties). Message expiry is kept in `expires_at` instead.
    pub properties: Properties,
    /// Client id of the publisher (None for messages the broker itself publishes).
    pub publisher: Option<Arc<str>>,
    /// When the message expires (v5 Message Expiry Interval).
    pub expires_at: Option<Instant>,
}

impl Message {
    /// The one constructor of a message as published (by a client, a will, a plugin, the
    /// broker): the Message Expiry Interval in `properties` becomes [`Message::expires_at`],
    /// counted from now, and the properties that belong to one hop only (Topic Alias, Will Delay
    /// Interval, Subscription Identifiers) are dropped.
    pub fn new(
        topic: TopicName,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        mut properties: Properties,
        publisher: Option<Arc<str>>,
    ) -> Message {
        Message::taking(topic, payload, qos, retain, &mut properties, publisher)
    }

    /// [`Message::new`], taking the properties out of `properties` (left empty).
    pub fn taking(
        topic: TopicName,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: &mut Properties,
        publisher: Option<Arc<str>>,
    ) -> Message {
        let mut properties = std::mem::take(properties);
        let expires_at = properties
            .get_mut()
            .and_then(|p| {
                p.topic_alias = None;
                p.will_delay_interval = None;
                p.subscription_identifiers.clear();
                p.message_expiry_interval.take()
            })
            .map(|s| Instant::now() + std::time::Duration::from_secs(u64::from(s)));
        properties.shrink();
        Message {
            topic,
            payload,
            qos,
            retain,
            properties,
            publisher,
            expires_at,
        }
    }

    /// Bytes of its variable parts: payload, topic and properties (with the properties' box).
    /// What queue bounds charge for a message beyond the fixed size of its record.
    pub fn content_size(&self) -> usize {
        let p = &self.properties;
        p.boxed_size() + self.payload.len() + self.topic.as_str().len() + p.heap_size()
    }

    /// Views of the user properties, for [`Message::view`].
    pub fn user_property_views(&self) -> Vec<plugin_api::UserPropertyView<'_>> {
        self.properties
            .user_properties
            .iter()
            .map(|(k, v)| plugin_api::UserPropertyView {
                key: k.as_str().into(),
                value: v.as_str().into(),
            })
            .collect()
    }

    /// The message as plugins see it, borrowed; `user_properties` must hold views of
    /// `self.properties.user_properties`.
    pub fn view<'a>(
        &'a self,
        user_properties: &'a [plugin_api::UserPropertyView<'a>],
    ) -> plugin_api::MessageView<'a> {
        let p = &self.properties;
        plugin_api::MessageView {
            topic: self.topic.as_str().into(),
            payload: self.payload.as_ref().into(),
            qos: self.qos as u8,
            retain: self.retain,
            publisher: self.publisher.as_deref().map(Into::into).into(),
            username: None.into(),
            is_will: false,
            // Rounded up: 0.9 s left is 1 s, not "0 = never" to a plugin storing it.
            message_expiry_interval: self
                .expires_at
                .map(|t| {
                    t.saturating_duration_since(Instant::now())
                        .as_millis()
                        .div_ceil(1000) as u32
                })
                .into(),
            payload_format_indicator: p.payload_format_indicator.into(),
            content_type: p.content_type.as_deref().map(Into::into).into(),
            response_topic: p.response_topic.as_deref().map(Into::into).into(),
            correlation_data: p.correlation_data.as_deref().map(Into::into).into(),
            user_properties: user_properties.into(),
            timestamp_ms: 0,
        }
    }
}

/// Why a message was dropped instead of delivered to a session: the `reason` of the
/// `message.dropped` / `delivery.dropped` hooks (and web_hook's `message_dropped`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// The session's queue was at `limits.max_queued_messages` or `max_queued_bytes`.
    QueueFull,
    /// Its Message Expiry Interval passed while it waited.
    Expired,
    /// Larger than the client's Maximum Packet Size.
    TooLarge,
}

impl DropReason {
    /// The name plugins and logs see (`queue_full`, `expired`, `too_large`).
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Expired => "expired",
            DropReason::TooLarge => "too_large",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use crate::router::TopicName;

    /// Queue bounds charge a message what it holds: a user property is 5 bytes on the wire
    /// at least, but its pair of strings takes a 48-byte slot, and the charge must say so
    /// (else a queue of such messages would hold several times its limit).
    #[test]
    fn user_properties_are_charged_what_they_hold() {
        let properties = crate::codec::PropertyValues {
            user_properties: vec![(String::new(), String::new()); 1000],
            ..Default::default()
        }
        .into();
        let topic = TopicName::new("t").expect("topic");
        let m = Message::new(
            topic,
            bytes::Bytes::new(),
            QoS::AtMostOnce,
            false,
            properties,
            None,
        );
        let slot = std::mem::size_of::<(String, String)>();
        assert!(m.content_size() >= 1000 * slot, "{}", m.content_size());
    }
}
