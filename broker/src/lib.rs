//! The broker library: an MQTT 3.1 / 3.1.1 / 5.0 server on tokio.
//!
//! The modules follow one message's path, and dependencies point downstream only:
//! [`config`] → [`listener`] → [`session`] (which uses [`codec`] on the wire side and
//! [`router`] for fan-out) → subscribers' sessions. [`broker`] ties them together and owns the
//! shared state; [`metrics`] counts what happens.

pub mod admin;
pub mod broker;
pub mod codec;
pub mod config;
pub mod hex;
pub mod hooks;
pub mod listener;
pub mod metrics;
pub mod plugin;
pub mod router;
pub mod session;
pub mod sys;
