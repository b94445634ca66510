//! SUBSCRIBE and UNSUBSCRIBE: the checks of each filter that need nothing beyond the
//! connection, and the answers once the driver made or removed the subscriptions.

use crate::codec::{
    reason::ReasonCode, Packet, PacketId, Properties, SubAck, SubscriptionOptions, UnsubAck,
    Unsubscribe,
};
use crate::config::Config;
use crate::router::SubscriptionKey;
use crate::session::key_bytes;

use super::super::{within_levels, Violation};
use super::Machine;

/// [MQTT-4.7.3-1]: an UNSUBSCRIBE may not carry an empty filter.
pub(super) fn check_unsubscribe(u: &Unsubscribe) -> Result<(), Violation> {
    if u.filters.iter().any(|f| f.is_empty()) {
        return Err(Violation::new(
            ReasonCode::ProtocolError,
            "[MQTT-4.7.3-1] empty topic filter in UNSUBSCRIBE",
        ));
    }
    Ok(())
}

impl Machine {
    /// The checks of one SUBSCRIBE filter that need no plugin: levels, syntax, and what
    /// `[mqtt]` allows. The inner `Err` is the SUBACK failure code; the outer one closes the
    /// connection.
    pub fn check_filter(
        &self,
        raw: &str,
        options: &SubscriptionOptions,
        config: &Config,
    ) -> Result<Result<SubscriptionKey, ReasonCode>, Violation> {
        if raw.is_empty() {
            return Err(Violation::new(
                ReasonCode::ProtocolError,
                "[MQTT-4.7.3-1] empty topic filter in SUBSCRIBE",
            ));
        }
        let max_levels = config.limits.max_topic_levels;
        if !within_levels(raw, max_levels) {
            tracing::debug!(client_id = %self.client_id, max_levels, "topic filter refused: more than limits.max_topic_levels levels");
            return Ok(Err(ReasonCode::TopicFilterInvalid));
        }
        let key = match SubscriptionKey::parse(raw) {
            Ok(key) => key,
            Err(e) => {
                tracing::debug!(client_id = %self.client_id, filter = %raw, error = %e, "invalid topic filter");
                return Ok(Err(ReasonCode::TopicFilterInvalid));
            }
        };
        let mqtt = &config.mqtt;
        if key.is_shared() && !mqtt.shared_subscription_available {
            return Ok(Err(ReasonCode::SharedSubscriptionsNotSupported));
        }
        if key.filter.has_wildcard() && !mqtt.wildcard_subscription_available {
            return Ok(Err(ReasonCode::WildcardSubscriptionsNotSupported));
        }
        if self.version.is_v5() && key.is_shared() && options.no_local {
            return Err(Violation::new(
                ReasonCode::ProtocolError,
                "[MQTT-3.8.3-4] No Local on a shared subscription",
            ));
        }
        Ok(Ok(key))
    }

    /// Whether adding `key` would take the session past `max` subscriptions or `max_bytes`
    /// bytes of filters ([`key_bytes`]; 0: no limit). Replacing a subscription it holds never
    /// does.
    pub fn over_subscription_limit(
        &self,
        key: &SubscriptionKey,
        max: usize,
        max_bytes: usize,
    ) -> bool {
        if max == 0 && max_bytes == 0 {
            return false;
        }
        let subscriptions = self.session.subscriptions.lock();
        let too_many = max > 0 && subscriptions.len() >= max;
        let too_big = max_bytes > 0 && subscriptions.bytes() + key_bytes(key) > max_bytes;
        (too_many || too_big) && !subscriptions.contains(key)
    }

    /// SUBACK with one code per filter, in order ([MQTT-3.8.4-6]).
    pub fn suback(&mut self, packet_id: PacketId, reason_codes: Vec<ReasonCode>) {
        self.push(&Packet::SubAck(SubAck {
            packet_id,
            properties: Properties::default(),
            reason_codes,
        }));
    }

    /// UNSUBACK with one code per filter, in order ([MQTT-3.10.4-5]).
    pub fn unsuback(&mut self, packet_id: PacketId, reason_codes: Vec<ReasonCode>) {
        self.push(&Packet::UnsubAck(UnsubAck {
            packet_id,
            properties: Properties::default(),
            reason_codes,
        }));
    }
}
