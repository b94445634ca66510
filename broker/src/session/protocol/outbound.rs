//! Messages this broker sends to the client at QoS 1 and 2, until the client has acknowledged
//! them (section 4.3): packet identifiers, the inflight window and the acknowledgement
//! transitions.
//!
//! The window is the client's Receive Maximum capped by `limits.max_inflight` ([MQTT-3.3.4-7]:
//! the broker never has more QoS 1/2 PUBLISH unacknowledged than the client allows). Packet ids
//! are allocated in order, wrapping, and never one still in use ([MQTT-2.2.1-3]). An
//! acknowledgement for an id that is not in flight, or of the wrong kind, changes nothing.

use std::collections::VecDeque;

use crate::codec::{reason::ReasonCode, PacketId, QoS};
use crate::session::{Delivery, Outgoing};

/// What a PUBREC leads to.
#[derive(Debug)]
pub enum PubRecOutcome {
    /// The message is now released: send PUBREL and wait for PUBCOMP. `seq` is its key in the
    /// session store (0 when it is not stored).
    Release {
        /// The store key of the delivery.
        seq: u64,
    },
    /// The client refused the message (a reason code ≥ 0x80 ends the exchange, section
    /// 4.3.3): it is no longer in flight.
    Refused(Delivery),
    /// No QoS 2 message with this id is waiting for PUBREC: answer PUBREL 0x92.
    Unknown,
}

/// The outgoing half of a session's QoS state.
#[derive(Debug)]
pub struct Outbound {
    inflight: VecDeque<Outgoing>,
    last_packet_id: u16,
    window: usize,
}

impl Outbound {
    /// Empty, with room for `window` unacknowledged messages (at least 1).
    pub fn new(window: usize) -> Outbound {
        Outbound {
            inflight: VecDeque::new(),
            last_packet_id: 0,
            window: window.max(1),
        }
    }

    /// Takes over what a previous connection left unacknowledged ([MQTT-4.4.0-1]).
    pub fn resume(&mut self, inflight: VecDeque<Outgoing>, last_packet_id: u16) {
        self.inflight = inflight;
        self.last_packet_id = last_packet_id;
    }

    /// Hands the state back to the session when the connection ends.
    pub fn park(&mut self) -> (VecDeque<Outgoing>, u16) {
        (std::mem::take(&mut self.inflight), self.last_packet_id)
    }

    /// Messages that may still be sent before the window is full.
    pub fn room(&self) -> usize {
        self.window.saturating_sub(self.inflight.len())
    }

    /// Messages waiting for an acknowledgement.
    pub fn len(&self) -> usize {
        self.inflight.len()
    }

    /// True when nothing waits for an acknowledgement.
    pub fn is_empty(&self) -> bool {
        self.inflight.is_empty()
    }

    /// The messages in flight, in the order they were first sent.
    pub fn iter(&self) -> impl Iterator<Item = &Outgoing> {
        self.inflight.iter()
    }

    /// The next free packet id ([MQTT-2.2.1-3]: not one in use).
    pub fn next_packet_id(&mut self) -> PacketId {
        loop {
            self.last_packet_id = self.last_packet_id.wrapping_add(1);
            if let Some(id) = PacketId::new(self.last_packet_id) {
                if !self.inflight.iter().any(|o| o.packet_id == id) {
                    return id;
                }
            }
        }
    }

    /// Records a QoS 1 / 2 PUBLISH that was just written with `packet_id`.
    pub fn sent(&mut self, packet_id: PacketId, delivery: Delivery) {
        self.inflight.push_back(Outgoing {
            packet_id,
            delivery,
            released: false,
        });
    }

    fn remove(&mut self, pos: usize) -> Option<Delivery> {
        self.inflight.remove(pos).map(|o| o.delivery)
    }

    /// A PUBACK: the QoS 1 message with this id is delivered ([MQTT-4.3.2-5]).
    pub fn on_puback(&mut self, id: PacketId) -> Option<Delivery> {
        let pos = self
            .inflight
            .iter()
            .position(|o| o.packet_id == id && o.delivery.qos == QoS::AtLeastOnce)?;
        self.remove(pos)
    }

    /// A PUBREC for a QoS 2 message ([MQTT-4.3.3-4]).
    pub fn on_pubrec(&mut self, id: PacketId, code: ReasonCode) -> PubRecOutcome {
        let pos = self
            .inflight
            .iter()
            .position(|o| o.packet_id == id && o.delivery.qos == QoS::ExactlyOnce);
        match pos {
            None => PubRecOutcome::Unknown,
            Some(pos) if code.is_error() => match self.remove(pos) {
                Some(d) => PubRecOutcome::Refused(d),
                None => PubRecOutcome::Unknown,
            },
            Some(pos) => {
                let o = &mut self.inflight[pos];
                o.released = true;
                PubRecOutcome::Release {
                    seq: o.delivery.seq,
                }
            }
        }
    }

    /// A PUBCOMP: the released QoS 2 message with this id is delivered ([MQTT-4.3.3-7]).
    pub fn on_pubcomp(&mut self, id: PacketId) -> Option<Delivery> {
        let pos = self
            .inflight
            .iter()
            .position(|o| o.packet_id == id && o.released)?;
        self.remove(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::test_delivery;

    fn id(n: u16) -> PacketId {
        PacketId::new(n).expect("non-zero")
    }

    /// [MQTT-2.2.1-3] a packet id in use is never allocated again; ids wrap past 65535 to 1.
    #[test]
    fn mqtt_2_2_1_3_ids_in_use_are_skipped_and_ids_wrap() {
        let mut o = Outbound::new(10);
        o.resume(VecDeque::new(), 65534);
        let a = o.next_packet_id();
        o.sent(a, test_delivery(QoS::AtLeastOnce));
        assert_eq!(a.get(), 65535);
        let b = o.next_packet_id();
        assert_eq!(b.get(), 1, "0 is not a packet id");
        o.sent(b, test_delivery(QoS::AtLeastOnce));
        o.resume(o.inflight.clone(), 65534);
        assert_eq!(o.next_packet_id().get(), 2, "65535 and 1 are in flight");
    }

    /// [MQTT-3.3.4-7] never more unacknowledged QoS 1/2 PUBLISH than the window.
    #[test]
    fn mqtt_3_3_4_7_the_window_bounds_what_is_in_flight() {
        let mut o = Outbound::new(2);
        assert_eq!(o.room(), 2);
        for _ in 0..2 {
            let p = o.next_packet_id();
            o.sent(p, test_delivery(QoS::AtLeastOnce));
        }
        assert_eq!(o.room(), 0);
        assert!(o.on_puback(id(1)).is_some());
        assert_eq!(o.room(), 1);
        assert_eq!(
            Outbound::new(0).room(),
            1,
            "a window of 0 would stall forever"
        );
    }

    /// [MQTT-4.3.2-5] PUBACK ends a QoS 1 delivery; a PUBACK for an unknown id, a second one,
    /// or one for a QoS 2 message changes nothing.
    #[test]
    fn mqtt_4_3_2_5_puback_ends_qos1_only() {
        let mut o = Outbound::new(10);
        o.sent(id(1), test_delivery(QoS::AtLeastOnce));
        o.sent(id(2), test_delivery(QoS::ExactlyOnce));
        assert!(o.on_puback(id(3)).is_none());
        assert!(o.on_puback(id(2)).is_none(), "QoS 2 is not ended by PUBACK");
        assert!(o.on_puback(id(1)).is_some());
        assert!(
            o.on_puback(id(1)).is_none(),
            "a duplicate PUBACK is ignored"
        );
        assert_eq!(o.len(), 1);
    }

    /// [MQTT-4.3.3-4] / [MQTT-4.3.3-7]: PUBREC releases, PUBCOMP ends; PUBCOMP before PUBREC
    /// does nothing; a PUBREC resent after the release answers PUBREL again.
    #[test]
    fn mqtt_4_3_3_qos2_release_then_complete() {
        let mut o = Outbound::new(10);
        o.sent(id(7), test_delivery(QoS::ExactlyOnce));
        assert!(o.on_pubcomp(id(7)).is_none(), "not released yet");
        assert!(matches!(
            o.on_pubrec(id(7), ReasonCode::Success),
            PubRecOutcome::Release { .. }
        ));
        assert!(
            matches!(
                o.on_pubrec(id(7), ReasonCode::Success),
                PubRecOutcome::Release { .. }
            ),
            "a lost PUBREL is sent again for a repeated PUBREC"
        );
        assert!(o.on_pubcomp(id(7)).is_some());
        assert!(o.is_empty());
        assert!(matches!(
            o.on_pubrec(id(7), ReasonCode::Success),
            PubRecOutcome::Unknown
        ));
    }

    /// Section 4.3.3: a PUBREC with a failure reason ends the exchange; no PUBREL is sent.
    #[test]
    fn pubrec_with_an_error_code_ends_the_exchange() {
        let mut o = Outbound::new(10);
        o.sent(id(3), test_delivery(QoS::ExactlyOnce));
        o.sent(id(4), test_delivery(QoS::AtLeastOnce));
        assert!(
            matches!(
                o.on_pubrec(id(4), ReasonCode::Success),
                PubRecOutcome::Unknown
            ),
            "QoS 1"
        );
        assert!(matches!(
            o.on_pubrec(id(3), ReasonCode::NotAuthorized),
            PubRecOutcome::Refused(_)
        ));
        assert_eq!(o.len(), 1);
    }

    /// [MQTT-4.4.0-1] what is parked comes back, in order, with the same ids.
    #[test]
    fn mqtt_4_4_0_1_parked_state_comes_back_in_order() {
        let mut o = Outbound::new(10);
        for _ in 0..3 {
            let p = o.next_packet_id();
            o.sent(p, test_delivery(QoS::AtLeastOnce));
        }
        let (inflight, last) = o.park();
        assert!(o.is_empty());
        let mut resumed = Outbound::new(10);
        resumed.resume(inflight, last);
        let ids: Vec<u16> = resumed.iter().map(|o| o.packet_id.get()).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(resumed.next_packet_id().get(), 4);
    }
}
