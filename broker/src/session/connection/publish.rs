//! PUBLISH from the client: the protocol checks ([`Inbound`](crate::session::protocol::inbound)),
//! the ACL (through the per-session cache), routing, and the acknowledgement — which, with a
//! live session store, waits until what it promises is committed.

use std::time::Duration;

use bytes::Bytes;

use crate::codec::{reason::ReasonCode, Packet, PubResp, Publish, QoS};
use crate::config::{Decision, DenyAction};
use crate::hooks::AclDecision;
use crate::metrics;
use crate::router::TopicName;
use crate::session::protocol::inbound::{check_publish, Qos2Arrival};
use crate::session::protocol::{is_sys_topic, within_levels};
use crate::session::store::Op;
use crate::session::Message;
use plugin_api::{Access, AclRequest, HookPoint};

use super::{Connection, Exit};

/// `payload` in an allocation of exactly its size, not a slice of the read buffer it was
/// decoded from (see the module docs). One copy per PUBLISH, shared by every subscriber.
pub(super) fn own_bytes(payload: Bytes) -> Bytes {
    Bytes::copy_from_slice(&payload)
}

impl Connection {
    /// Runs the ACL chain (through the per-connection cache) for `topic`; true = allowed.
    /// Superusers and brokers without ACL plugins skip it. `client.check_authz_complete`
    /// reports every decision.
    pub(super) async fn acl_allows(&self, access: Access, topic: &str) -> bool {
        let (allowed, source) = self.acl_decide(access, topic).await;
        let hooks = &self.broker.hooks;
        if hooks.enabled(HookPoint::CLIENT_CHECK_AUTHZ_COMPLETE) {
            let request = AclRequest {
                client: self.identity.clone(),
                access,
                topic: topic.into(),
            };
            hooks.authz_complete(&request, allowed, source);
        }
        allowed
    }

    /// The ACL decision for `topic` and where it came from (`superuser`, `default`, `cache`,
    /// `plugin`).
    async fn acl_decide(&self, access: Access, topic: &str) -> (bool, &'static str) {
        let hooks = &self.broker.hooks;
        if self.identity.is_superuser {
            return (true, "superuser");
        }
        if !hooks.enabled(HookPoint::CLIENT_CHECK_ACL) {
            return (true, "default");
        }
        let acl = &self.broker.config.acl;
        let ttl = Duration::from_secs(acl.cache_ttl_secs);
        if let Some(hit) = self.session.acl_cache.lock().get(access, topic, ttl) {
            return (hit, "cache");
        }
        let request = AclRequest {
            client: self.identity.clone(),
            access,
            topic: topic.into(),
        };
        let (allowed, source) = match hooks.check_acl(&request).await {
            AclDecision::Allow => (true, "plugin"),
            AclDecision::Deny => (false, "plugin"),
            AclDecision::NoPlugin => (true, "default"),
            AclDecision::NoMatch => (acl.no_match == Decision::Allow, "default"),
        };
        self.session
            .acl_cache
            .lock()
            .put(access, topic, allowed, acl.cache_size);
        if !allowed {
            tracing::info!(client_id = %self.client_id, ?access, topic, "denied by ACL");
        }
        (allowed, source)
    }

    /// A PUBLISH from the client.
    pub(super) async fn on_publish(&mut self, p: Publish) -> Result<(), Exit> {
        metrics::add(&self.broker.metrics.messages_received, 1);
        let topic = self.inbound.resolve_topic(&p)?;
        let config = &self.broker.config;
        let max_levels = config.limits.max_topic_levels;
        if !within_levels(topic.as_str(), max_levels) {
            return Err(Exit::protocol(
                ReasonCode::TopicNameInvalid,
                format!("topic name has more than limits.max_topic_levels ({max_levels}) levels"),
            ));
        }
        check_publish(&p, config.mqtt.maximum_qos, config.mqtt.retain_available)?;
        if let (QoS::ExactlyOnce, Some(id)) = (p.qos, p.packet_id) {
            if self.inbound.qos2_arrival(id)? == Qos2Arrival::Duplicate {
                // A resend of a message already routed: acknowledge again, do not route twice.
                self.push(&Packet::PubRec(PubResp::new(id)));
                return Ok(());
            }
        }
        let (qos, packet_id) = (p.qos, p.packet_id);
        let code = match self.delayed_target(topic) {
            Ok((topic, delay)) => self.authorize_and_route(p, topic, delay).await?,
            Err(code) => code,
        };
        // With a live store, the answer waits for what routing submitted (see decode_all).
        self.needs_commit |=
            qos != QoS::AtMostOnce && self.broker.queue_limits.live_store.get().is_some();
        self.acknowledge(qos, packet_id, code);
        Ok(())
    }

    /// For `$delayed/<seconds>/<topic>` (when delayed publish is on): the real topic and the
    /// delay. A malformed one is answered 0x90 (v5) or dropped (v3), not routed.
    fn delayed_target(&self, topic: TopicName) -> Result<(TopicName, Option<u32>), ReasonCode> {
        if self.broker.config.limits.max_delayed_messages == 0 {
            return Ok((topic, None));
        }
        let parsed = match crate::delayed::parse(topic.as_str()) {
            None => return Ok((topic, None)),
            Some(parsed) => parsed.and_then(|(secs, target)| {
                let target =
                    TopicName::new(target).map_err(|_| "invalid topic after the interval")?;
                Ok((target, Some(secs)))
            }),
        };
        parsed.map_err(|why| {
            tracing::info!(client_id = %self.client_id, topic = %topic, why, "delayed publish refused");
            metrics::add(&self.broker.metrics.messages_dropped, 1);
            self.v5_or_success(ReasonCode::TopicNameInvalid)
        })
    }

    /// `code` for a v5 client; MQTT 3 has no way to say so, and gets a plain acknowledgement.
    fn v5_or_success(&self, code: ReasonCode) -> ReasonCode {
        if self.version.is_v5() {
            code
        } else {
            ReasonCode::Success
        }
    }

    /// Checks that the client may publish to `topic` and routes the message (or, with `delay`,
    /// hands it to the delayed list). Returns the reason code of the acknowledgement.
    async fn authorize_and_route(
        &mut self,
        p: Publish,
        topic: TopicName,
        delay: Option<u32>,
    ) -> Result<ReasonCode, Exit> {
        let acl = &self.broker.config.acl;
        let reserved = is_sys_topic(topic.as_str()) && !acl.client_publish_sys;
        if reserved {
            tracing::info!(client_id = %self.client_id, topic = %topic, "publish to $SYS refused (acl.client_publish_sys = false)");
        }
        if reserved || !self.acl_allows(Access::Publish, topic.as_str()).await {
            if self.broker.config.acl.deny_action == DenyAction::Disconnect {
                return Err(Exit::protocol(
                    ReasonCode::NotAuthorized,
                    format!("publish to {topic} denied by ACL"),
                ));
            }
            // v3 has no way to say so: the message is dropped and acknowledged as usual.
            return Ok(self.v5_or_success(ReasonCode::NotAuthorized));
        }
        let publisher = Some(self.client_id.clone());
        let payload = own_bytes(p.payload);
        let message = Message::new(topic, payload, p.qos, p.retain, p.properties, publisher);
        let username = self.identity.username.as_ref().map(|u| u.as_str());
        if let Some(secs) = delay {
            return Ok(
                match self.broker.delay(message, username.into_option(), secs) {
                    Ok(_) => ReasonCode::Success,
                    Err(full) => {
                        tracing::info!(client_id = %self.client_id, error = %full, "delayed publish refused");
                        metrics::add(&self.broker.metrics.messages_dropped, 1);
                        self.v5_or_success(ReasonCode::QuotaExceeded)
                    }
                },
            );
        }
        let matched = self
            .broker
            .publish(message, username.into_option(), false)
            .unwrap_or(0);
        self.published = true;
        Ok(if matched == 0 {
            self.v5_or_success(ReasonCode::NoMatchingSubscribers)
        } else {
            ReasonCode::Success
        })
    }

    /// PUBACK or PUBREC with `code`; a QoS 2 message accepted is held until its PUBREL.
    fn acknowledge(
        &mut self,
        qos: QoS,
        packet_id: Option<crate::codec::PacketId>,
        code: ReasonCode,
    ) {
        match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => {
                let mut ack = PubResp::new(id);
                ack.reason_code = code.get();
                self.push(&Packet::PubAck(ack));
            }
            (QoS::ExactlyOnce, Some(id)) => {
                if !code.is_error() {
                    self.inbound.accepted_qos2(id);
                    self.store(Op::PutQos2 {
                        client_id: self.client_id.clone(),
                        packet_id: id.get(),
                    });
                }
                let mut rec = PubResp::new(id);
                rec.reason_code = code.get();
                self.push(&Packet::PubRec(rec));
            }
            _ => {}
        }
    }
}
