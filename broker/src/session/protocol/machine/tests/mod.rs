//! The machine fed packets and deliveries, its output decoded and its requests and outputs
//! recorded: no socket, no task, no broker. Each test names the normative statement of the
//! specification it checks: `qos` the QoS exchanges both ways, deliveries and resuming,
//! `packets` the other packets and the checks of what the client sends, and `model` random
//! sequences of both against a reference.

mod model;
mod packets;
mod qos;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::*;
use crate::codec::{
    Connect, PacketId, Properties, ProtocolVersion, Publish, QoS, SubscriptionOptions,
};
use crate::message::Message;
use crate::router::TopicName;
use crate::session::{Parked, QueueLimits};

/// What the machine emitted, owned.
#[derive(Debug, Default)]
struct Recorded {
    /// `(event, topic)` of every message event.
    events: Vec<(MessageEvent, String)>,
    stored: Vec<Op>,
    refused: usize,
}

impl Outputs for Recorded {
    fn wants(&self, _: MessageEvent) -> bool {
        true
    }
    fn emit(&mut self, output: Output<'_>) {
        match output {
            Output::Store(op) => self.stored.push(op),
            Output::Message(event, d) => self.events.push((event, d.message.topic.to_string())),
            Output::Refused => self.refused += 1,
        }
    }
}

/// One connection's machine and what it emitted.
struct Rig {
    m: Machine,
    out: Recorded,
    config: Config,
    now: Instant,
}

/// What a client negotiated: `window` in flight to it, `max_packet` bytes at most, and
/// `aliases` outgoing topic aliases.
fn negotiated(window: usize, max_packet: usize, aliases: u16, expiry: u32) -> Negotiated {
    Negotiated {
        client_id: Arc::from("c"),
        assigned_client_id: None,
        requested_expiry: expiry,
        session_expiry: expiry,
        keep_alive: 60,
        server_keep_alive: None,
        window,
        client_max_packet: max_packet,
        inbound_aliases: 8,
        outbound_aliases: aliases,
        problem_information: true,
    }
}

impl Rig {
    fn new(version: ProtocolVersion, n: Negotiated) -> Rig {
        let mut config = Config::default();
        config.limits.receive_maximum = 2;
        let limits = Arc::new(QueueLimits::new(1000, 1 << 20, false));
        let session = Arc::new(Session::new(1, n.client_id.clone(), limits));
        session.set_online(true);
        let now = Instant::now();
        let m = Machine::new(session, version, &n, &config, now);
        Rig {
            m,
            out: Recorded::default(),
            config,
            now,
        }
    }

    fn v5() -> Rig {
        Rig::new(ProtocolVersion::V5, negotiated(2, 1 << 20, 0, 0))
    }

    /// Feeds one packet.
    fn feed(&mut self, packet: Packet) -> Result<Option<Request>, Close> {
        let now = self.now;
        self.m
            .handle(packet, move || now, &self.config, &mut self.out)
    }

    /// Feeds a packet that must be answered without a request.
    fn answer(&mut self, packet: Packet) {
        let request = self.feed(packet).expect("no close");
        assert!(request.is_none(), "unexpected request {request:?}");
    }

    /// The packets written since the last call.
    fn sent(&mut self) -> Vec<Packet> {
        let version = self.m.version;
        let buf = self.m.output();
        let mut packets = Vec::new();
        while let Some(p) = codec::decode(buf, Some(version), usize::MAX).expect("valid output") {
            packets.push(p);
        }
        assert!(buf.is_empty(), "a partial packet in the output");
        packets
    }

    /// Queues a message for the client.
    fn queue(&self, topic: &str, qos: QoS, payload: usize, properties: Properties) {
        let message = Message::new(
            TopicName::new(topic).expect("topic"),
            Bytes::from(vec![b'x'; payload]),
            qos,
            false,
            properties,
            None,
        );
        let d = Delivery {
            message: Arc::new(message),
            qos,
            retain: false,
            subscription_ids: Vec::new(),
            seq: 0,
        };
        self.m.session.enqueue(d);
    }

    /// Acknowledges the client's QoS 2 PUBLISH `id` with `code`, as the driver does once it
    /// routed (or refused) it.
    fn ack_qos2(&mut self, id: u16, code: ReasonCode) {
        self.m
            .acknowledge(QoS::ExactlyOnce, Some(pid(id)), code, &mut self.out);
    }

    /// Feeds a QoS 2 PUBLISH `id` that must be routed (`what` if not), then acknowledges it
    /// with `code`.
    fn qos2_in(&mut self, id: u16, code: ReasonCode, what: &str) {
        self.feed(Packet::Publish(publish("in", QoS::ExactlyOnce, Some(id))))
            .expect(what);
        self.ack_qos2(id, code);
    }

    fn drain(&mut self) -> u64 {
        self.m.drain_queue(self.now, &mut self.out)
    }
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero")
}

fn publish(topic: &str, qos: QoS, id: Option<u16>) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: id.map(pid),
        properties: Properties::default(),
        payload: Bytes::from_static(b"p"),
    }
}

fn resp(id: u16) -> PubResp {
    PubResp::new(pid(id))
}

/// The packet ids and DUP flags of the PUBLISHes in `packets`.
fn publishes(packets: &[Packet]) -> Vec<(Option<u16>, bool)> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((p.packet_id.map(|id| id.get()), p.dup)),
            _ => None,
        })
        .collect()
}

fn violation(close: Close) -> ReasonCode {
    match close {
        Close::Violation(v) => v.code,
        other => panic!("expected a violation, got {other:?}"),
    }
}
