//! `auth_clientid`: Authentication by client id and password, as EMQ 2's emq_auth_clientid.
//!
//! The implementation is shared with the other password-file plugins
//! ([`auth_common::users`]); this crate only picks the mode. Configured by
//! `etc/plugins/auth_clientid.toml`.

/// The plugin type.
pub type Plugin = auth_common::users::UserStore<auth_common::users::ClientIdMode>;

plugin_api::export_plugin!(Plugin);
