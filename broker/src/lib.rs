//! The broker library: an MQTT 3.1 / 3.1.1 / 5.0 server on tokio.
//!
//! The modules follow one message's path, and dependencies point downstream only:
//! [`config`] → [`listener`] → [`session`] (which uses [`codec`] on the wire side and
//! [`router`] for fan-out) → subscribers' sessions. [`broker`] ties them together and owns the
//! shared state; [`metrics`] counts what happens; [`delayed`] holds delayed publishes.
//!
//! Inside [`session`], [`session::protocol`] is the protocol rules without I/O (negotiation,
//! QoS state, aliases, time limits) and [`session::connection`] the task that drives them over a
//! socket.

pub mod admin;
pub mod broker;
pub mod clock;
pub mod codec;
pub mod config;
pub mod delayed;
pub mod hex;
pub mod hooks;
pub mod listener;
pub mod message;
pub mod metrics;
pub mod plugin;
pub mod router;
pub mod session;
pub mod sys;
