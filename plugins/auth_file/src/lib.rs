//! `auth_file`: Authentication from a Mosquitto password file (files made by mosquitto_passwd work unchanged).
//!
//! The implementation is shared with the other password-file plugins
//! ([`auth_common::users`]); this crate only picks the mode. Configured by
//! `etc/plugins/auth_file.toml`.

/// The plugin type.
pub type Plugin = auth_common::users::UserStore<auth_common::users::FileMode>;

plugin_api::export_plugin!(Plugin);
