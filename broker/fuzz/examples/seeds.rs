//! Writes the seed corpus of every fuzz target (`seeds/<target>/`): valid packets of every
//! type a client sends, in every protocol version, encoded by the broker's own encoder.
//! Run from `broker/fuzz`: `cargo run --example seeds`. The output is checked in.

use std::num::NonZeroU16;
use std::path::Path;

use broker::codec::reason::ReasonCode;
use broker::codec::{
    self, Auth, Connect, Disconnect, LastWill, Packet, Properties, PropertyValues, ProtocolVersion,
    PubResp, Publish, QoS, RetainHandling, Subscribe, SubscriptionOptions, Unsubscribe,
};
use bytes::{Bytes, BytesMut};

fn id(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).expect("non-zero")
}

fn v5_properties() -> Properties {
    PropertyValues {
        payload_format_indicator: Some(1),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/to".into()),
        correlation_data: Some(Bytes::from_static(b"corr")),
        user_properties: vec![("k".into(), "v".into())],
        message_expiry_interval: Some(60),
        ..PropertyValues::default()
    }
    .into()
}

fn connect(version: ProtocolVersion, will: bool) -> Packet {
    let v5 = version.is_v5();
    Packet::Connect(Box::new(Connect {
        protocol: version,
        clean_start: !will,
        keep_alive: 30,
        client_id: "seed-client".into(),
        will: will.then(|| LastWill {
            topic: "will/topic".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: if v5 {
                PropertyValues {
                    will_delay_interval: Some(5),
                    ..PropertyValues::default()
                }
                .into()
            } else {
                Properties::default()
            },
        }),
        username: will.then(|| "user".into()),
        password: will.then(|| Bytes::from_static(b"secret")),
        properties: if v5 {
            PropertyValues {
                session_expiry_interval: Some(300),
                receive_maximum: Some(10),
                topic_alias_maximum: Some(5),
                maximum_packet_size: Some(65536),
                ..PropertyValues::default()
            }
            .into()
        } else {
            Properties::default()
        },
    }))
}

/// Every packet a client may send after CONNECT, for `version`.
fn session_packets(version: ProtocolVersion) -> Vec<Packet> {
    let v5 = version.is_v5();
    let props = |p: Properties| if v5 { p } else { Properties::default() };
    let publish = |qos: QoS, retain: bool, topic: &str, p: Properties| {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id: (qos != QoS::AtMostOnce).then(|| id(7)),
            properties: props(p),
            payload: Bytes::from_static(b"payload"),
        })
    };
    let options = |qos: QoS| SubscriptionOptions {
        qos,
        no_local: v5,
        retain_as_published: v5,
        retain_handling: if v5 {
            RetainHandling::SendIfNew
        } else {
            RetainHandling::SendAtSubscribe
        },
    };
    let mut out = vec![
        Packet::Subscribe(Subscribe {
            packet_id: id(1),
            properties: props(
                PropertyValues {
                    subscription_identifiers: vec![3],
                    ..PropertyValues::default()
                }
                .into(),
            ),
            filters: vec![
                ("sensors/+/temp".into(), options(QoS::AtLeastOnce)),
                ("a/#".into(), options(QoS::ExactlyOnce)),
                ("$share/g/jobs/#".into(), SubscriptionOptions::default()),
            ],
        }),
        publish(QoS::AtMostOnce, false, "sensors/1/temp", v5_properties()),
        publish(QoS::AtLeastOnce, true, "a/b", Properties::default()),
        publish(QoS::ExactlyOnce, false, "a/b/c", v5_properties()),
        Packet::PubAck(PubResp::new(id(1))),
        Packet::PubRec(PubResp::new(id(2))),
        Packet::PubRel(PubResp::new(id(7))),
        Packet::PubComp(PubResp::new(id(2))),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: id(3),
            properties: Properties::default(),
            filters: vec!["a/#".into(), "sensors/+/temp".into()],
        }),
        Packet::PingReq,
    ];
    if v5 {
        let aliased = |topic: &str| {
            publish(
                QoS::AtLeastOnce,
                false,
                topic,
                PropertyValues {
                    topic_alias: Some(1),
                    ..PropertyValues::default()
                }
                .into(),
            )
        };
        out.push(aliased("aliased"));
        out.push(aliased(""));
        out.push(Packet::Auth(Auth {
            reason_code: ReasonCode::ContinueAuthentication,
            properties: PropertyValues {
                authentication_method: Some("SCRAM-SHA-256".into()),
                authentication_data: Some(Bytes::from_static(b"n,,n=user")),
                ..PropertyValues::default()
            }
            .into(),
        }));
    }
    out.push(Packet::Disconnect(Disconnect {
        reason_code: if v5 {
            ReasonCode::DisconnectWithWill
        } else {
            ReasonCode::Success
        },
        properties: props(
            PropertyValues {
                session_expiry_interval: Some(0),
                ..PropertyValues::default()
            }
            .into(),
        ),
    }));
    out
}

fn encode(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    codec::encode(packet, version, &mut out);
    out.to_vec()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn properties_of(p: &Packet) -> Option<(u8, &Properties)> {
    match p {
        Packet::Publish(p) => Some((3, &p.properties)),
        Packet::Subscribe(s) => Some((8, &s.properties)),
        Packet::Disconnect(d) => Some((14, &d.properties)),
        Packet::Auth(a) => Some((15, &a.properties)),
        _ => None,
    }
}

const MARK: [u8; 3] = [0xFF, 0xFF, 0xFF];

fn main() {
    let corpus = Path::new("seeds");
    let versions = [
        (1u8, ProtocolVersion::V3_1),
        (2, ProtocolVersion::V3_1_1),
        (3, ProtocolVersion::V5),
    ];
    for (selector, version) in versions {
        let level = version.level();
        for will in [false, true] {
            let mut seed = vec![0u8];
            seed.extend(encode(&connect(version, will), version));
            write(
                &corpus.join("decode"),
                &format!("connect-v{level}-will-{will}"),
                &seed,
            );
        }
        let mut whole = encode(&connect(version, false), version);
        for (i, p) in session_packets(version).iter().enumerate() {
            let bytes = encode(p, version);
            let name = format!("v{level}-{i:02}-{}", p.name());
            let mut seed = vec![selector];
            seed.extend(&bytes);
            write(&corpus.join("decode"), &name, &seed);
            // The connection target: CONNECT, then this packet in a write of its own.
            let mut conn = encode(&connect(version, i % 2 == 1), version);
            conn.extend(MARK);
            conn.extend(&bytes);
            write(&corpus.join("connection"), &name, &conn);
            whole.extend(MARK);
            whole.extend(&bytes);
            if let Some((kind, block)) = properties_of(p) {
                let mut out = BytesMut::new();
                block.encode_block(&mut out);
                let mut seed = vec![kind];
                seed.extend(out.to_vec());
                write(&corpus.join("properties"), &name, &seed);
            }
        }
        write(
            &corpus.join("connection"),
            &format!("v{level}-whole-session"),
            &whole,
        );
    }
    // Topics: operations over the small alphabet (subscribe, match, unsubscribe; 255 = deep).
    let ops: [&[u8]; 4] = [
        &[0, 1, 3, 0, 4, 1, 2, 1, 3, 0, 1, 1, 1, 1, 3, 0, 4, 1],
        &[0, 3, 2, 0, 5, 2, 5, 2, 0, 1, 2, 2, 0, 0, 2, 3, 0, 1],
        &[0, 2, 1, 5, 0, 4, 2, 4, 0, 2, 2, 2, 0, 1, 0, 2, 1, 5],
        &[0, 1, 255, 4, 5, 2, 1, 255, 1, 1, 0, 1, 1, 255, 4, 5],
    ];
    for (i, op) in ops.iter().enumerate() {
        write(&corpus.join("topics"), &format!("ops-{i}"), op);
    }
    println!("seed corpus written to {}", corpus.display());
}
