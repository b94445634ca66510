//! PUBLISH from the client, once the machine checked it: the ACL (through the per-session
//! cache), routing, and the acknowledgement — which, with a live session store, waits until
//! what it promises is committed.

use std::time::Duration;

use bytes::Bytes;

use crate::codec::{reason::ReasonCode, PacketId, Publish, QoS};
use crate::config::{Decision, DenyAction};
use crate::hooks::AclDecision;
use crate::metrics;
use crate::session::protocol::is_sys_topic;
use crate::session::protocol::machine::Target;
use crate::session::Message;
use plugin_api::{Access, AclRequest, HookPoint};

use super::{Connection, Exit};

/// A PUBLISH as a message, waiting for the ACL plugins' answer.
pub(super) struct PendingPublish {
    message: Message,
    packet_id: Option<PacketId>,
    delay: Option<u32>,
}

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
        if let Some(allowed) = self.acl_known_reported(access, topic) {
            return allowed;
        }
        let (allowed, source) = self.acl_ask_plugins(access, topic).await;
        self.acl_report(access, topic, allowed, source);
        allowed
    }

    /// The ACL decision when it needs no plugin call (reported to plugins), else `None`.
    fn acl_known_reported(&self, access: Access, topic: &str) -> Option<bool> {
        let (allowed, source) = self.acl_known(access, topic)?;
        self.acl_report(access, topic, allowed, source);
        Some(allowed)
    }

    /// Tells `client.check_authz_complete` listeners about a decision.
    fn acl_report(&self, access: Access, topic: &str, allowed: bool, source: &str) {
        let hooks = &self.broker.hooks;
        if hooks.enabled(HookPoint::CLIENT_CHECK_AUTHZ_COMPLETE) {
            let request = AclRequest {
                client: self.identity.to_client_info(),
                access,
                topic: topic.into(),
            };
            hooks.authz_complete(&request, allowed, source);
        }
    }

    /// The ACL decision for `topic` when it needs no plugin call, and where it came from
    /// (`superuser`, `default`, `cache`).
    fn acl_known(&self, access: Access, topic: &str) -> Option<(bool, &'static str)> {
        if self.identity.is_superuser {
            return Some((true, "superuser"));
        }
        if !self.broker.hooks.enabled(HookPoint::CLIENT_CHECK_ACL) {
            return Some((true, "default"));
        }
        let ttl = Duration::from_secs(self.broker.config.acl.cache_ttl_secs);
        let hit = self
            .machine
            .session
            .acl_cache
            .lock()
            .get(access, topic, ttl);
        hit.map(|allowed| (allowed, "cache"))
    }

    /// Asks the ACL plugins about `topic` and caches the answer.
    async fn acl_ask_plugins(&self, access: Access, topic: &str) -> (bool, &'static str) {
        let acl = &self.broker.config.acl;
        let request = AclRequest {
            client: self.identity.to_client_info(),
            access,
            topic: topic.into(),
        };
        let (allowed, source) = match self.broker.hooks.check_acl(&request).await {
            AclDecision::Allow => (true, "plugin"),
            AclDecision::Deny => (false, "plugin"),
            AclDecision::NoPlugin => (true, "default"),
            AclDecision::NoMatch => (acl.no_match == Decision::Allow, "default"),
        };
        self.machine
            .session
            .acl_cache
            .lock()
            .put(access, topic, allowed, acl.cache_size);
        match (allowed, access) {
            (true, _) => {}
            // Summed up per SUBSCRIBE (on_subscribe): one packet may carry thousands.
            (false, Access::Subscribe) => {
                tracing::debug!(client_id = %self.identity.client_id, ?access, topic, "denied by ACL")
            }
            (false, _) => {
                tracing::info!(client_id = %self.identity.client_id, ?access, topic, "denied by ACL")
            }
        }
        (allowed, source)
    }

    /// A PUBLISH the machine checked, routed at once unless the ACL plugins must be asked:
    /// then it is returned, for [`Connection::publish_after_acl`] (see `Deferred` in
    /// `packets`). The message is made from the packet first (its payload copied out of the
    /// read buffer, its properties taken), so that what is passed on is the message, not the
    /// packet.
    pub(super) fn on_publish(
        &mut self,
        p: &mut Publish,
        target: Target,
    ) -> Result<Option<PendingPublish>, Exit> {
        let Target { topic, delay } = target;
        let publisher = Some(self.identity.client_id.clone());
        let payload = own_bytes(std::mem::take(&mut p.payload));
        let (qos, retain, packet_id) = (p.qos, p.retain, p.packet_id);
        let message = Message::taking(topic, payload, qos, retain, &mut p.properties, publisher);
        let topic = message.topic.as_str();
        let reserved = is_sys_topic(topic) && !self.broker.config.acl.client_publish_sys;
        let allowed = if reserved {
            tracing::info!(client_id = %self.identity.client_id, topic, "publish to $SYS refused (acl.client_publish_sys = false)");
            Some(false)
        } else {
            self.acl_known_reported(Access::Publish, topic)
        };
        let pending = PendingPublish {
            message,
            packet_id,
            delay,
        };
        match allowed {
            Some(allowed) => self.publish_decided(pending, allowed).map(|()| None),
            None => Ok(Some(pending)),
        }
    }

    /// Finishes a PUBLISH once the ACL plugins have answered.
    pub(super) async fn publish_after_acl(&mut self, pending: PendingPublish) -> Result<(), Exit> {
        let topic = pending.message.topic.as_str();
        let (allowed, source) = self.acl_ask_plugins(Access::Publish, topic).await;
        self.acl_report(Access::Publish, topic, allowed, source);
        self.publish_decided(pending, allowed)
    }

    /// Routes (or delays) an authorised PUBLISH, or refuses it, and acknowledges it.
    fn publish_decided(&mut self, pending: PendingPublish, allowed: bool) -> Result<(), Exit> {
        let PendingPublish {
            message,
            packet_id,
            delay,
        } = pending;
        let qos = message.qos;
        let code = if allowed {
            self.route(message, delay)
        } else if self.broker.config.acl.deny_action == DenyAction::Disconnect {
            return Err(Exit::protocol(
                ReasonCode::NotAuthorized,
                format!("publish to {} denied by ACL", message.topic),
            ));
        } else {
            // v3 has no way to say so: the message is dropped and acknowledged as usual.
            self.machine.v5_or_success(ReasonCode::NotAuthorized)
        };
        // With a live store, the answer waits for what routing submitted (see decode_all).
        self.needs_commit |=
            qos != QoS::AtMostOnce && self.broker.queue_limits.live_store.get().is_some();
        let (machine, mut effects) = self.split();
        machine.acknowledge(qos, packet_id, code, &mut effects);
        Ok(())
    }

    /// Routes the message (or, with `delay`, hands it to the delayed list). Returns the reason
    /// code of the acknowledgement.
    fn route(&mut self, message: Message, delay: Option<u32>) -> ReasonCode {
        let username = self.identity.username.as_deref();
        if let Some(secs) = delay {
            return match self.broker.delay(message, username, secs) {
                Ok(_) => ReasonCode::Success,
                Err(full) => {
                    tracing::info!(client_id = %self.identity.client_id, error = %full, "delayed publish refused");
                    metrics::add(&self.broker.metrics.messages_dropped, 1);
                    self.machine.v5_or_success(ReasonCode::QuotaExceeded)
                }
            };
        }
        let matched = self.broker.publish(message, username, false).unwrap_or(0);
        self.published = true;
        if matched == 0 {
            self.machine
                .v5_or_success(ReasonCode::NoMatchingSubscribers)
        } else {
            ReasonCode::Success
        }
    }
}
