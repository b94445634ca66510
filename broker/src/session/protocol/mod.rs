//! The protocol rules of one MQTT session, without I/O.
//!
//! Everything here is fed values and returns decisions: packets in, acknowledgement
//! transitions and typed refusals out, with `now` passed in where time matters. Nothing opens
//! a socket, spawns a task or reads the clock, so each rule is a unit test of microseconds
//! (`cargo test -p broker session::protocol`), named after the normative statement of the
//! specification it checks, and a model test drives random packet sequences through the
//! [`machine`] against a simple reference. The connection task ([`crate::connection`]) owns the socket and drives the
//! [`machine`].
//!
//! * [`machine`]: one connection's session as a state machine — packets and deliveries in;
//!   bytes to send, requests for the rest of the broker, store changes, message events and a
//!   typed close out;
//! * [`connect`]: CONNECT negotiation — client id, session expiry, keep alive, windows,
//!   aliases, capabilities — as a pure function to [`connect::Negotiated`] or a
//!   [`connect::Refusal`];
//! * [`outbound`]: QoS 1/2 messages to the client (packet ids, inflight window, PUBACK /
//!   PUBREC / PUBCOMP);
//! * [`inbound`]: QoS 2 messages from the client (de-duplication until PUBREL, Receive
//!   Maximum) and the topic aliases it sets;
//! * [`alias`]: the topic aliases the broker sets towards the client;
//! * [`timers`]: keep-alive, slow-consumer and control-packet-rate limits;
//! * [`will_timing`] and [`session_expiry_at_disconnect`]: what a close does to the will and
//!   the session.

use std::time::Duration;

pub mod alias;
pub mod connect;
pub mod inbound;
pub mod machine;
pub mod outbound;
pub mod timers;

use std::borrow::Cow;

use crate::codec::reason::ReasonCode;

/// A protocol violation by the client: the connection closes, a v5 client told `code` in
/// DISCONNECT (with `message` as Reason String when it accepts them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The DISCONNECT reason code.
    pub code: ReasonCode,
    /// What the client did, naming the rule it broke.
    pub message: Cow<'static, str>,
}

impl Violation {
    /// A violation with `code`.
    pub fn new(code: ReasonCode, message: impl Into<Cow<'static, str>>) -> Violation {
        Violation {
            code,
            message: message.into(),
        }
    }
}

/// The session expiry in force after a DISCONNECT that may carry a new one (capped by `max`).
/// [MQTT-3.14.2-2]: a session that was to end at close (0 at CONNECT) may not be made
/// persistent at DISCONNECT.
pub fn session_expiry_at_disconnect(
    current: u32,
    requested: Option<u32>,
    max: u32,
) -> Result<u32, Violation> {
    match requested {
        None => Ok(current),
        Some(r) if current == 0 && r != 0 => Err(Violation::new(
            ReasonCode::ProtocolError,
            "[MQTT-3.14.2-2] DISCONNECT sets a session expiry after CONNECT set 0",
        )),
        Some(r) => Ok(r.min(max)),
    }
}

/// When a will is published after its connection closed without a DISCONNECT that discards it
/// ([MQTT-3.1.2-8]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WillTiming {
    /// At once.
    Now,
    /// Never: a newer connection resumed the session before the delay could pass.
    Cancelled,
    /// After this delay, unless a new connection resumes the session first.
    After(Duration),
}

/// [MQTT-3.1.3-9]: the will is published at the earlier of its Will Delay Interval and the
/// session's end; with no delay, or a session that ends with the connection (expiry 0), that is
/// now. When another connection has already resumed the session (`session_still_ours` false) a
/// delayed will is never published: a new connection opened before the delay passed
/// ([MQTT-3.1.2-8]).
pub fn will_timing(will_delay: u32, session_expiry: u32, session_still_ours: bool) -> WillTiming {
    if will_delay == 0 || session_expiry == 0 {
        return WillTiming::Now;
    }
    if !session_still_ours {
        return WillTiming::Cancelled;
    }
    WillTiming::After(Duration::from_secs(u64::from(
        will_delay.min(session_expiry),
    )))
}

/// True when `topic` (a name or a filter) has at most `max` levels. Counts separators, so
/// it costs one pass over the bytes and no allocation.
pub fn within_levels(topic: &str, max: usize) -> bool {
    topic.bytes().filter(|b| *b == b'/').count() < max
}

/// True for the broker's own topics, `$SYS` and `$SYS/…`.
pub fn is_sys_topic(topic: &str) -> bool {
    topic
        .strip_prefix("$SYS")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [MQTT-3.14.2-2] and section 3.14.2.2.2: DISCONNECT may change the session expiry, but
    /// not from 0; it is capped like the CONNECT's.
    #[test]
    fn mqtt_3_14_2_2_session_expiry_on_disconnect() {
        assert_eq!(session_expiry_at_disconnect(60, None, 3600), Ok(60));
        assert_eq!(session_expiry_at_disconnect(60, Some(0), 3600), Ok(0));
        assert_eq!(
            session_expiry_at_disconnect(60, Some(u32::MAX), 3600),
            Ok(3600)
        );
        assert_eq!(session_expiry_at_disconnect(0, Some(0), 3600), Ok(0));
        let err = session_expiry_at_disconnect(0, Some(10), 3600).expect_err("0 stays 0");
        assert_eq!(err.code, ReasonCode::ProtocolError);
    }

    /// [MQTT-3.1.3-9]: the will waits for the earlier of its delay and the session's end.
    #[test]
    fn mqtt_3_1_3_9_will_delay_versus_session_end() {
        let secs = |s| WillTiming::After(Duration::from_secs(s));
        assert_eq!(will_timing(30, 60, true), secs(30), "delay first");
        assert_eq!(will_timing(60, 30, true), secs(30), "session ends first");
        assert_eq!(
            will_timing(60, u32::MAX, true),
            secs(60),
            "session never ends"
        );
        assert_eq!(will_timing(0, 60, true), WillTiming::Now, "no delay");
        assert_eq!(
            will_timing(60, 0, true),
            WillTiming::Now,
            "session ends at close"
        );
        assert_eq!(
            will_timing(60, 60, false),
            WillTiming::Cancelled,
            "[MQTT-3.1.2-8] resumed by a newer connection before the delay"
        );
        assert_eq!(
            will_timing(0, 60, false),
            WillTiming::Now,
            "[MQTT-3.1.4-3] taken over, no delay"
        );
    }

    #[test]
    fn levels_and_sys_topics() {
        assert!(within_levels("a/b/c", 3));
        assert!(!within_levels("a/b/c/d", 3));
        assert!(is_sys_topic("$SYS"));
        assert!(is_sys_topic("$SYS/broker/uptime"));
        assert!(!is_sys_topic("$SYSTEM/x"));
        assert!(!is_sys_topic("a/$SYS"));
    }
}
