//! The cluster plugin's foundations: brokers joined through NATS (docs/cluster.md).
//!
//! * [`subject`]: the lossless mapping between MQTT topics and filters and NATS subjects, on
//!   which routing by NATS interest rests;
//! * `examples/sim.rs`: the scale model of docs/cluster.md ("what it costs at 10 nodes, 1 M
//!   clients, 10 M subscriptions and 1 M messages/s"): `cargo run --release -p cluster
//!   --example sim`.
//!
//! The plugin itself (the NATS link, client-id ownership, retained messages, membership) is
//! not built yet; this crate is a library until it is.

pub mod subject;
