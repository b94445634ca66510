//! Shared pieces of the fuzz targets: the codec round-trip check and a whole connection served
//! in process.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use broker::broker::Broker;
use broker::codec::{self, Packet, ProtocolVersion};
use broker::config::Config;
use broker::connection::{serve, ConnInfo};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Encodes a packet a client may send and decodes it again: it must come back equal.
pub fn round_trip(packet: &Packet, version: Option<ProtocolVersion>) {
    let version = match packet {
        Packet::Connect(c) => c.protocol,
        _ => version.unwrap_or(ProtocolVersion::V5),
    };
    let client_sends = matches!(
        packet,
        Packet::Connect(_)
            | Packet::Publish(_)
            | Packet::PubAck(_)
            | Packet::PubRec(_)
            | Packet::PubRel(_)
            | Packet::PubComp(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq
            | Packet::Disconnect(_)
            | Packet::Auth(_)
    );
    if !client_sends {
        return;
    }
    let mut out = BytesMut::new();
    codec::encode(packet, version, &mut out);
    let decode_as = match packet {
        Packet::Connect(_) => None,
        _ => Some(version),
    };
    let again = codec::decode(&mut out, decode_as, usize::MAX)
        .expect("an encoded packet decodes")
        .expect("an encoded packet is complete");
    assert_eq!(&again, packet, "decode(encode(p)) == p");
    assert!(out.is_empty(), "encode wrote exactly one packet");
}

/// The broker configuration every connection input runs against: the shipped defaults, with
/// a data directory of its own and nothing persisted.
fn config() -> Config {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("broker-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&d);
        d
    });
    let text = format!(
        "data_dir = {:?}\n[session]\ndurability = \"none\"\n[admin]\nenabled = false\n[sys]\ninterval_secs = 0\n[limits]\nmax_packet_size = 65536\nmax_queued_messages = 100\nslow_consumer_timeout = 5\n",
        dir.display().to_string()
    );
    Config::parse(&text, std::path::Path::new("fuzz.toml")).expect("fuzz config")
}

/// Serves `input` as the bytes one client sends (split into writes at each 0xFF 0xFF 0xFF
/// marker, so that timing between packets varies), reading everything the broker answers,
/// then closes the client side. Panics if the broker panics, never closes the connection, or
/// leaves queued bytes behind after its sessions ended.
pub fn serve_bytes(input: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let broker = Broker::new(config(), std::env::temp_dir());
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let info = Box::new(ConnInfo {
            peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
            listener: Arc::from("fuzz"),
            local_port: 1883,
            transport: "mqtt",
            cert_common_name: None,
            cert_subject: None,
        });
        let served = tokio::spawn(serve(broker.clone(), server, info, ()));
        let (mut reader, mut writer) = tokio::io::split(&mut client);
        let feed = async {
            for chunk in split_chunks(input) {
                if writer.write_all(chunk).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = writer.shutdown().await;
        };
        let drain = async {
            let mut sink = vec![0u8; 16 * 1024];
            while let Ok(n) = reader.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        tokio::join!(feed, drain);
        match tokio::time::timeout(Duration::from_secs(3600), served).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => panic!("connection task failed: {e}"),
            Err(_) => panic!("the connection was never closed"),
        }
        // Sessions with an expiry outlive the connection; end them as their expiry would.
        for session in broker.all_sessions() {
            let generation = session
                .generation
                .load(std::sync::atomic::Ordering::Acquire);
            broker.end_session(&session, generation);
        }
        assert_eq!(broker.queue_limits.total(), 0, "queued bytes leaked");
    });
}

/// Splits the input at each `FF FF FF` marker.
fn split_chunks(input: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 3 <= input.len() {
        if input[i..i + 3] == [0xFF, 0xFF, 0xFF] {
            out.push(&input[start..i]);
            i += 3;
            start = i;
        } else {
            i += 1;
        }
    }
    out.push(&input[start..]);
    out
}
