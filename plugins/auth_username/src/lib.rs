//! `auth_username`: Authentication by user name and password, as EMQ 2's emq_auth_username.
//!
//! The implementation is shared with the other password-file plugins
//! ([`auth_common::users`]); this crate only picks the mode. Configured by
//! `etc/plugins/auth_username.toml`.

/// The plugin type.
pub type Plugin = auth_common::users::UserStore<auth_common::users::UsernameMode>;

plugin_api::export_plugin!(Plugin);
