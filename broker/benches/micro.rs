//! Micro-benchmarks of the hot paths: the codec, the subscription trie, and hook dispatch
//! through real plugin libraries loaded by the real loader.
//!
//! ```text
//! cargo build --release -p blocker && cargo bench -p broker --bench micro
//! ```
//! Each case runs in batches; the printed figure is the median ns per operation over the
//! batches (the machine is shared: read medians and ratios, not single runs).

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Instant;

use broker::codec::{self, Packet, ProtocolVersion, Publish, QoS};
use broker::hooks::{CallLimits, Hooks, PluginHandle};
use broker::plugin::host::{BrokerHost, Services};
use broker::plugin::{loader, BrokerServices};
use broker::router::{TopicFilter, Trie};
use bytes::{Bytes, BytesMut};
use plugin_api::HookPoint;

const BATCHES: usize = 15;

/// Runs `f` `iters` times per batch; prints and returns the median ns per call.
fn bench(name: &str, iters: u64, mut f: impl FnMut()) -> f64 {
    for _ in 0..iters / 10 {
        f();
    }
    let mut samples: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    let median = samples[BATCHES / 2];
    println!(
        "{name:<48} {median:>10.1} ns/op   (min {:.1}, max {:.1})",
        samples[0],
        samples[BATCHES - 1]
    );
    median
}

fn codec_benches() {
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "sensors/building-1/floor-2/temperature".into(),
        packet_id: std::num::NonZeroU16::new(7),
        properties: Default::default(),
        payload: Bytes::from(vec![b'x'; 64]),
    });
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut out = BytesMut::with_capacity(1 << 20);
        bench(
            &format!("codec encode PUBLISH 64 B {version:?}"),
            1_000_000,
            || {
                if out.len() > (1 << 19) {
                    out.clear();
                }
                codec::encode(black_box(&publish), version, &mut out);
            },
        );
        let mut one = BytesMut::new();
        codec::encode(&publish, version, &mut one);
        let frozen = one.freeze();
        bench(
            &format!("codec decode PUBLISH 64 B {version:?}"),
            1_000_000,
            || {
                let mut buf = BytesMut::from(&frozen[..]);
                black_box(codec::decode(&mut buf, Some(version), 1 << 20).ok());
            },
        );
    }
}

fn trie_benches() {
    let mut trie: Trie<u64, ()> = Trie::new();
    let mut id = 0;
    for b in 0..100 {
        for f in 0..100 {
            for filter in [
                format!("site/{b}/floor/{f}/temp"),
                format!("site/{b}/floor/+/temp"),
                format!("site/{b}/#"),
            ] {
                id += 1;
                let filter = TopicFilter::new(&filter).expect("valid filter");
                trie.insert(None, &filter, id, ());
            }
        }
    }
    println!("trie: {} subscriptions", trie.len());
    let mut n = 0u64;
    bench(
        "trie match site/42/floor/7/temp (3 matches)",
        1_000_000,
        || {
            trie.for_each_match(black_box("site/42/floor/7/temp"), |_| n += 1);
        },
    );
    bench("trie match other/topic (0 matches)", 1_000_000, || {
        trie.for_each_match(black_box("other/topic/x"), |_| n += 1);
    });
    black_box(n);
}

fn plugin_library() -> Option<PathBuf> {
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join(loader::library_file_name("blocker")))
        .find(|p| p.exists())
}

fn hook_benches() {
    let Some(lib) = plugin_library() else {
        println!(
            "hook dispatch: skipped, build the fixture first: cargo build --release -p blocker"
        );
        return;
    };
    let cache = tempfile_dir();
    let opened = loader::open("blocker", &lib, &cache).expect("blocker loads");
    println!("hook dispatch through {}", lib.display());
    let limits = CallLimits {
        timeout: std::time::Duration::from_secs(5),
        max_in_flight: 1024,
        fault_threshold: 5,
        fault_window: std::time::Duration::from_secs(60),
    };
    let payload = [b'x'; 64];
    let message = |topic: &str| broker::session::Message {
        topic: broker::router::TopicName::new(topic).expect("topic"),
        payload: bytes::Bytes::copy_from_slice(&payload),
        qos: broker::codec::QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
        publisher: None,
        expires_at: None,
    };
    for count in [0usize, 1, 5] {
        let hooks = Hooks::default();
        let handles: Vec<Arc<PluginHandle>> = (0..count)
            .map(|i| {
                let services = Services {
                    broker: Weak::<broker::broker::Broker>::new() as Weak<dyn BrokerServices>,
                    management: Arc::default(),
                    config_dir: PathBuf::new(),
                };
                let host = BrokerHost::new_ref(services, "blocker", false);
                let instance = match (opened.module.create())(host, "".into()) {
                    abi_stable::std_types::RResult::ROk(p) => p,
                    abi_stable::std_types::RResult::RErr(e) => panic!("create: {e}"),
                };
                Arc::new(
                    PluginHandle::new(
                        &format!("blocker{i}"),
                        "1".into(),
                        String::new(),
                        instance,
                        &limits,
                    )
                    .expect("registration"),
                )
            })
            .collect();
        hooks.install(&handles);
        let mut open = message("open/topic");
        bench(
            &format!("message.publish dispatch, {count} pass-through plugin(s)"),
            1_000_000,
            || {
                black_box(hooks.message_publish(black_box(&mut open), None, false));
            },
        );
        if count == 1 {
            // The fixture sets the user property tagged = yes on tag/# (an edit per message).
            let mut tagged = message("tag/topic");
            bench(
                "message.publish, 1 plugin adding a user property",
                1_000_000,
                || {
                    black_box(hooks.message_publish(black_box(&mut tagged), None, false));
                },
            );
        }
        bench(
            &format!("enabled() check, {count} plugin(s)"),
            10_000_000,
            || {
                black_box(hooks.enabled(black_box(HookPoint::MESSAGE_PUBLISH)));
            },
        );
        for h in handles {
            let _ = h.shutdown();
        }
    }
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("broker-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn main() {
    codec_benches();
    trie_benches();
    hook_benches();
}
