//! MQTT control packets: the one packet model, its decoder and its encoder.
//!
//! The model is MQTT 5.0's: every packet carries the fields v5 defines, and MQTT 3.1 (protocol
//! name `MQIsdp`, level 3) and 3.1.1 (level 4) are the subset in which properties are empty and
//! reason codes collapse to the v3 return codes. The session decides which protocol version a
//! connection speaks (from its CONNECT) and hands that version to [`decode`] and [`encode`].
//!
//! Invariants:
//! * [`decode`] never allocates for a packet before its fixed header has been read and its
//!   declared size checked against the configured maximum ([`DecodeError::PacketTooLarge`]).
//! * Incomplete input is not an error: [`decode`] returns `Ok(None)` and leaves the buffer intact.
//! * Every protocol violation is a typed [`DecodeError`] naming the normative statement of the
//!   specification it breaks, and maps to the v5 reason code a DISCONNECT carries.
//! * Payloads are never copied on decode: they are slices ([`bytes::Bytes`]) of the read buffer.
//!
//! Decoded packets go to the session (`crate::session`), which validates them against the
//! connection's state; encoded bytes go straight into the connection's write buffer.

mod decode;
mod encode;
mod error;
mod packet;
mod properties;
pub mod reason;

pub use decode::{decode, read_fixed_header, FixedHeader};
pub use encode::{encode, encode_publish, encoded_len, publish_len, PublishHeader};
pub use error::DecodeError;
pub use packet::*;
pub use properties::{Properties, PropertyValues};

#[cfg(test)]
mod tests;
