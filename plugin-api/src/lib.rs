//! The interface a broker plugin is written against.
//!
//! This crate is deliberately empty until the plugin host lands (issue #3): it holds the hook
//! point names and named priorities that the broker and plugins share.
