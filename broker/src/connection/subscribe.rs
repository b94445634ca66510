//! SUBSCRIBE and UNSUBSCRIBE: per filter, the machine's checks (syntax, levels, what `[mqtt]`
//! allows, the session's limit), the ACL, the plugins' `client.subscribe` /
//! `client.unsubscribe` decisions, then the session's subscriptions and the router; the
//! machine answers.

use crate::codec::{
    reason::{self, ReasonCode},
    QoS, RetainHandling, Subscribe, SubscriptionOptions, Unsubscribe,
};
use crate::hooks::SubscribeOutcome;
use crate::router::{SubscriptionKey, TopicFilter};
use crate::session::sub_options;
use plugin_api::{Access, HookPoint, SubOptions, SubscribeView, SubscriptionView};

use super::{event, Connection, Exit};

/// A subscription SUBSCRIBE added (or replaced), for `session.subscribed`.
struct Added {
    key: SubscriptionKey,
    options: SubscriptionOptions,
    is_new: bool,
    id: Option<u32>,
}

/// The SUBACK code granting `qos`.
fn granted(qos: QoS) -> ReasonCode {
    match qos {
        QoS::AtMostOnce => ReasonCode::Success,
        QoS::AtLeastOnce => ReasonCode::GrantedQos1,
        QoS::ExactlyOnce => ReasonCode::GrantedQos2,
    }
}

/// Options as a plugin's `client.subscribe` decision changed them.
fn decided_options(mut options: SubscriptionOptions, d: &SubscribeOutcome) -> SubscriptionOptions {
    options.qos = QoS::from_u8(d.options.qos).unwrap_or(options.qos);
    options.no_local = d.options.no_local;
    options.retain_as_published = d.options.retain_as_published;
    options.retain_handling = match d.options.retain_handling {
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => RetainHandling::SendAtSubscribe,
    };
    options
}

impl Connection {
    /// Runs the `client.subscribe` / `client.unsubscribe` fold for one filter: the
    /// subscription to use (a plugin may rewrite the filter; the share group stays) and what
    /// plugins decided.
    fn decide_filter(
        &self,
        point: HookPoint,
        key: SubscriptionKey,
        options: SubOptions,
    ) -> (SubscriptionKey, Option<SubscribeOutcome>) {
        if !self.broker.hooks.enabled(point) {
            return (key, None);
        }
        let view = SubscribeView {
            client: self.identity.view(),
            filter: key.filter.as_str().into(),
            share_group: key.group.as_deref().map(Into::into).into(),
            options,
        };
        let Some(outcome) = self.broker.hooks.subscribe_decision(point, &view) else {
            return (key, None);
        };
        let key = match outcome.filter.as_deref().map(TopicFilter::new) {
            None => key,
            Some(Ok(filter)) => SubscriptionKey {
                group: key.group,
                filter,
            },
            Some(Err(e)) => {
                tracing::warn!(client_id = %self.identity.client_id, filter = ?outcome.filter, error = %e, "a plugin's filter decision is not a valid filter; keeping the original");
                key
            }
        };
        (key, Some(outcome))
    }

    /// A SUBSCRIBE: one reason code per filter in SUBACK ([MQTT-3.8.4-6]).
    pub(super) async fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Exit> {
        let id = s.properties.subscription_identifiers.first().copied();
        if id.is_some() && !self.broker.config.mqtt.subscription_identifiers_available {
            return Err(Exit::protocol(
                ReasonCode::SubscriptionIdentifiersNotSupported,
                "SUBSCRIBE with a Subscription Identifier, and mqtt.subscription_identifiers_available = false",
            ));
        }
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut added = Vec::new();
        let mut refused: Option<(String, ReasonCode)> = None;
        for (raw, options) in s.filters {
            match self.subscribe_one(&raw, options, id).await? {
                Ok(a) => {
                    codes.push(granted(a.options.qos));
                    added.push(a);
                }
                Err(code) => {
                    codes.push(code);
                    refused.get_or_insert((raw, code));
                }
            }
        }
        if let Some((filter, code)) = refused {
            // One line per SUBSCRIBE, not per filter: a packet may carry thousands.
            let count = codes.len() - added.len();
            tracing::info!(client_id = %self.identity.client_id, refused = count, first = %filter, reason_code = code.get(), "SUBSCRIBE: filters refused");
        }
        if !added.is_empty() && self.machine.session.live_store().is_some() {
            self.broker.store_session(&self.machine.session);
            self.needs_commit = true;
        }
        self.machine.suback(s.packet_id, codes);
        if self.broker.hooks.enabled(HookPoint::SESSION_SUBSCRIBED) {
            for a in &added {
                let sub = SubscriptionView {
                    filter: a.key.filter.as_str().into(),
                    share_group: a.key.group.as_deref().map(Into::into).into(),
                    options: sub_options(&a.options),
                    is_new: a.is_new,
                    subscription_id: a.id.unwrap_or(0),
                };
                let mut ev = event(self.identity.view(), "", 0);
                ev.subscription = Some(sub).into();
                self.broker.hooks.notify(HookPoint::SESSION_SUBSCRIBED, &ev);
            }
        }
        Ok(())
    }

    /// One filter of a SUBSCRIBE: checked, authorised, decided by plugins, then added.
    async fn subscribe_one(
        &mut self,
        raw: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> Result<Result<Added, ReasonCode>, Exit> {
        let config = &self.broker.config;
        let key = match self.machine.check_filter(raw, &options, config)? {
            Ok(key) => key,
            Err(code) => return Ok(Err(code)),
        };
        // A session at its limit is refused a new filter before any plugin is asked: a flood
        // of filters must not become a flood of ACL calls. A `client.subscribe` plugin may
        // rewrite the filter onto one the session holds, so then only its decision counts.
        if !self.broker.hooks.enabled(HookPoint::CLIENT_SUBSCRIBE)
            && self.over_subscription_limit(&key)
        {
            return Ok(Err(self.quota_exceeded(raw)));
        }
        // ACL sees the filter as the client sent it, before any rewrite.
        if !self.acl_allows(Access::Subscribe, raw).await {
            return Ok(Err(ReasonCode::NotAuthorized));
        }
        let point = HookPoint::CLIENT_SUBSCRIBE;
        let (key, decision) = self.decide_filter(point, key, sub_options(&options));
        let (mut options, mut sub_id) = (options, id);
        if let Some(d) = &decision {
            if let Some(code) = d.refused {
                return Ok(Err(reason::suback_failure(code)));
            }
            options = decided_options(options, d);
            if let Some(new_id) = d.subscription_id {
                sub_id = (new_id > 0).then_some(new_id);
            }
        }
        if self.over_subscription_limit(&key) {
            return Ok(Err(self.quota_exceeded(raw)));
        }
        // Granted at most the Maximum QoS.
        let maximum_qos = self.broker.config.mqtt.maximum_qos;
        if options.qos as u8 > maximum_qos {
            options.qos = QoS::from_u8(maximum_qos).unwrap_or(options.qos);
        }
        let is_new =
            self.broker
                .add_subscription(&self.machine.session, key.clone(), options, sub_id);
        Ok(Ok(Added {
            key,
            options,
            is_new,
            id: sub_id,
        }))
    }

    /// Whether adding `key` would take the session past `limits.max_subscriptions` or
    /// `limits.max_subscription_bytes`, or all sessions past
    /// `limits.max_total_subscription_bytes`.
    fn over_subscription_limit(&self, key: &SubscriptionKey) -> bool {
        let limits = &self.broker.config.limits;
        let (max, max_bytes) = (limits.max_subscriptions, limits.max_subscription_bytes);
        self.machine.over_subscription_limit(key, max, max_bytes)
            || self
                .broker
                .over_total_subscription_bytes(&self.machine.session, key)
    }

    /// The SUBACK code for a filter refused by a subscription limit.
    fn quota_exceeded(&self, raw: &str) -> ReasonCode {
        let limits = &self.broker.config.limits;
        tracing::debug!(client_id = %self.identity.client_id, filter = %raw, max = limits.max_subscriptions, max_bytes = limits.max_subscription_bytes, max_total_bytes = limits.max_total_subscription_bytes, "subscription refused: limits.max_subscriptions, max_subscription_bytes or max_total_subscription_bytes reached");
        ReasonCode::QuotaExceeded
    }

    /// The subscription an UNSUBSCRIBE filter names, after the plugins' `client.unsubscribe`
    /// decision (`$queue/x` is `$share/$queue/x`); `None` for an invalid filter.
    fn unsubscribe_key(&self, raw: &str) -> Option<SubscriptionKey> {
        let key = SubscriptionKey::parse(raw).ok()?;
        let point = HookPoint::CLIENT_UNSUBSCRIBE;
        Some(self.decide_filter(point, key, SubOptions::default()).0)
    }

    /// An UNSUBSCRIBE: one reason code per filter in UNSUBACK ([MQTT-3.10.4-5]).
    /// (The machine has refused an empty filter already.)
    pub(super) fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let mut codes = Vec::with_capacity(u.filters.len());
        for raw in &u.filters {
            let Some(key) = self.unsubscribe_key(raw) else {
                codes.push(ReasonCode::TopicFilterInvalid);
                continue;
            };
            let Some(sub) = self.broker.remove_subscription(&self.machine.session, &key) else {
                codes.push(ReasonCode::NoSubscriptionExisted);
                continue;
            };
            codes.push(ReasonCode::Success);
            if self.broker.hooks.enabled(HookPoint::SESSION_UNSUBSCRIBED) {
                let view = SubscriptionView {
                    filter: key.filter.as_str().into(),
                    share_group: key.group.as_deref().map(Into::into).into(),
                    options: sub_options(&sub.options),
                    is_new: false,
                    subscription_id: sub.id.unwrap_or(0),
                };
                let mut ev = event(self.identity.view(), "", 0);
                ev.subscription = Some(view).into();
                let hooks = &self.broker.hooks;
                hooks.notify(HookPoint::SESSION_UNSUBSCRIBED, &ev);
            }
        }
        if self.machine.session.live_store().is_some() {
            self.broker.store_session(&self.machine.session);
            self.needs_commit = true;
        }
        self.machine.unsuback(u.packet_id, codes);
    }
}
