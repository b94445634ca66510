//! PUBLISH from the client: the protocol checks before it may be authorised and routed, and
//! its acknowledgement once it was.

use crate::codec::{reason::ReasonCode, Packet, PacketId, PubResp, Publish, QoS};
use crate::config::Config;
use crate::router::TopicName;
use crate::session::store::Op;

use super::super::inbound::{check_publish, Qos2Arrival};
use super::super::{within_levels, Violation};
use super::{Machine, Output, Outputs};

/// A PUBLISH that passed the protocol checks, for the driver to authorise and route.
#[derive(Debug)]
pub struct Checked {
    /// The packet (its topic may be empty when it used an alias: see `topic`).
    pub publish: Publish,
    /// The topic to route to: the alias resolved and, for `$delayed/<s>/<topic>`, the topic
    /// after the interval.
    pub topic: TopicName,
    /// Seconds to hold the message first (`$delayed/…`).
    pub delay: Option<u32>,
}

/// Where a PUBLISH that passed the checks goes.
#[derive(Debug)]
pub struct Target {
    /// The topic to route to (see [`Checked::topic`]).
    pub topic: TopicName,
    /// Seconds to hold the message first (`$delayed/…`).
    pub delay: Option<u32>,
}

impl Machine {
    /// A PUBLISH from the client, as a [`Request`](super::Request) to route it.
    pub(super) fn on_publish(
        &mut self,
        p: Publish,
        config: &Config,
        out: &mut impl Outputs,
    ) -> Result<Option<Checked>, Violation> {
        let target = self.check_publish(&p, config, out)?;
        Ok(target.map(|Target { topic, delay }| Checked {
            publish: p,
            topic,
            delay,
        }))
    }

    /// Checks a PUBLISH from the client: the topic alias resolved, the levels, Maximum QoS and
    /// Retain Available, a QoS 2 resend answered at once ([MQTT-4.3.3-10]), and a malformed
    /// `$delayed/…` topic refused (0x90, or dropped for v3). `None` when it is answered
    /// already; else where to route it. Borrows the packet, so that a driver keeps it where
    /// it is (what [`Machine::handle`](super::Machine::handle) does with a PUBLISH, without
    /// moving it).
    pub fn check_publish(
        &mut self,
        p: &Publish,
        config: &Config,
        out: &mut impl Outputs,
    ) -> Result<Option<Target>, Violation> {
        let topic = self.inbound.resolve_topic(p)?;
        let max_levels = config.limits.max_topic_levels;
        if !within_levels(topic.as_str(), max_levels) {
            return Err(Violation::new(
                ReasonCode::TopicNameInvalid,
                format!("topic name has more than limits.max_topic_levels ({max_levels}) levels"),
            ));
        }
        check_publish(p, config.mqtt.maximum_qos, config.mqtt.retain_available)?;
        if let (QoS::ExactlyOnce, Some(id)) = (p.qos, p.packet_id) {
            if self.inbound.qos2_arrival(id)? == Qos2Arrival::Duplicate {
                // A resend of a message already routed: acknowledge again, do not route twice.
                self.push(&Packet::PubRec(PubResp::new(id)));
                return Ok(None);
            }
        }
        let delayed_on = config.limits.max_delayed_messages > 0;
        match self.delayed_target(topic, delayed_on) {
            Ok((topic, delay)) => Ok(Some(Target { topic, delay })),
            Err(code) => {
                // Acknowledged with the refusal, never routed.
                out.emit(Output::Refused);
                self.acknowledge(p.qos, p.packet_id, code, out);
                Ok(None)
            }
        }
    }

    /// For `$delayed/<seconds>/<topic>` (when delayed publish is on): the real topic and the
    /// delay. A malformed one is answered 0x90 (v5) or dropped (v3), not routed.
    fn delayed_target(
        &self,
        topic: TopicName,
        delayed_on: bool,
    ) -> Result<(TopicName, Option<u32>), ReasonCode> {
        if !delayed_on {
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
            self.v5_or_success(ReasonCode::TopicNameInvalid)
        })
    }

    /// PUBACK or PUBREC with `code` for a PUBLISH the driver routed or refused; a QoS 2
    /// message accepted is held until its PUBREL ([MQTT-4.3.3-9]). QoS 0 gets no answer.
    pub fn acknowledge(
        &mut self,
        qos: QoS,
        packet_id: Option<PacketId>,
        code: ReasonCode,
        out: &mut impl Outputs,
    ) {
        match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => {
                let mut ack = PubResp::new(id);
                ack.reason_code = code;
                self.push(&Packet::PubAck(ack));
            }
            (QoS::ExactlyOnce, Some(id)) => {
                if !code.is_error() {
                    self.inbound.accepted_qos2(id);
                    let op = Op::PutQos2 {
                        client_id: self.client_id.clone(),
                        packet_id: id.get(),
                    };
                    self.store(out, op);
                }
                let mut rec = PubResp::new(id);
                rec.reason_code = code;
                self.push(&Packet::PubRec(rec));
            }
            _ => {}
        }
    }
}
