//! The broker library: an MQTT 3.1 / 3.1.1 / 5.0 server on tokio.
//!
//! Modules depend on each other in one direction only (a unit test reads the sources and
//! fails on any cycle). From the bottom:
//!
//! * the leaves: [`codec`] (MQTT packets), [`router`] (topics and the subscription trie),
//!   [`message`], [`config`], [`metrics`], [`clock`], [`hex`], and [`platform`] (what differs
//!   between Unix and Windows);
//! * [`hooks`]: the hook table plugins are installed into, and its dispatch;
//! * [`delayed`]: delayed publishes waiting for their time;
//! * [`session`]: the state MQTT keeps per client across connections, its encoding on disc,
//!   and [`session::protocol`], the protocol rules without I/O (negotiation, QoS state, topic
//!   aliases, time limits) with [`session::protocol::machine`], one connection's session as a
//!   state machine fed packets and returning outputs (checked by a unit test to name only
//!   the leaves and the session);
//! * [`plugin`]: loading plugins and the host services they call, reaching the broker only
//!   through the [`plugin::BrokerServices`] and [`plugin::ManagementApi`] traits;
//! * [`broker`]: the shared state (session registry, router, hooks, plugin host) and the
//!   publish path; it implements [`plugin::BrokerServices`];
//! * [`connection`]: the task that serves one network connection: it owns the socket, drives
//!   the session's state machine and carries out what it asks of the broker;
//! * [`listener`] (accepting TCP, TLS and WebSocket connections), [`sys`] (`$SYS` topics) and
//!   [`admin`] (the management API, also offered to plugins as [`plugin::ManagementApi`]).

pub mod admin;
pub mod broker;
pub mod clock;
pub mod codec;
pub mod config;
pub mod connection;
pub mod delayed;
pub mod hex;
pub mod hooks;
#[cfg(test)]
mod layering;
pub mod listener;
pub mod message;
pub mod metrics;
pub mod platform;
pub mod plugin;
pub mod router;
pub mod session;
pub mod small_map;
pub mod sys;
