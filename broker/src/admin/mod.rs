//! The management API: an HTTP JSON API (axum on hyper) used by `brokerctl`, the dashboard
//! plugin and operators' scripts.
//!
//! * [`types`] — the JSON shapes (EMQX 5's field names where EMQX has the same endpoint).
//! * [`api`] — routes and handlers, and the OpenAPI description served at
//!   `GET /api/v5/openapi.json`.
//! * [`auth`] — the admin token and API keys.
//! * [`server`] — serving it (keep-alive, TLS off loopback, limits, graceful stop), and the
//!   in-process entry plugins use.
//! * [`client`] — the blocking client `brokerctl` uses.
//!
//! Security: plain HTTP binds a loopback address only; off loopback the API is served over
//! TLS only. Every request but `GET /health` and the OpenAPI description must carry the admin
//! token or an API key. The endpoints are listed in `docs/management-api.md`.

pub mod api;
pub mod auth;
pub mod client;
pub mod server;
pub mod types;

pub use auth::{check_private, ensure_token};
pub use types::*;
