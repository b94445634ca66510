//! Closing a connection: tell a v5 client why, hand the session state back, publish or
//! schedule the will, and end the session or schedule its expiry.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::codec::{Disconnect, Packet, Properties};
use crate::metrics;
use crate::router::TopicName;
use crate::session::protocol::{will_timing, WillTiming};
use crate::session::{KickReason, Message};
use plugin_api::HookPoint;

use super::publish::own_bytes;
use super::{event, Connection, Exit, Transport, CLOSE_FLUSH_TIMEOUT};

impl Connection {
    /// Closes the connection: tells a v5 client why, parks the session, handles the will.
    pub(super) async fn finish<S: Transport>(&mut self, stream: &mut S, exit: Exit) {
        self.say_goodbye(stream, &exit).await;
        self.log_exit(&exit);
        let still_ours = self.park();
        let machine = &self.machine;
        let expiry = machine.session_expiry;
        machine
            .session
            .expiry_interval
            .store(expiry, Ordering::Relaxed);
        let publish_will = !matches!(exit, Exit::Disconnect { with_will: false });
        if let Some(will) = self.will.take().filter(|_| publish_will) {
            self.publish_will(*will, still_ours);
        }
        if still_ours {
            self.end_or_keep_session();
        }
        if let Exit::Kicked { done, .. } = exit {
            let _ = done.send(());
        }
    }

    /// DISCONNECT with the reason for a v5 client, then the last bytes, best effort: a peer
    /// that stopped reading must not hold the task. The stream ends when it is dropped, after
    /// the session is parked (or earlier, where its transport must say goodbye first).
    async fn say_goodbye<S: Transport>(&mut self, stream: &mut S, exit: &Exit) {
        let v5 = self.machine.version.is_v5();
        if let (true, Some(reason_code)) = (v5, exit.disconnect_reason()) {
            let mut properties = Properties::default();
            if let (true, Exit::Protocol(v)) = (self.machine.problem_information, exit) {
                properties.make_mut().reason_string = Some(v.message.to_string());
            }
            self.machine.push(&Packet::Disconnect(Disconnect {
                reason_code,
                properties,
            }));
        }
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, async {
            let _ = self.flush_all(stream).await;
            if !S::ENDS_ON_CLOSE {
                let _ = stream.shutdown().await;
            }
        })
        .await;
    }

    /// Metrics, the log line and the plugins' `client.disconnected` (and
    /// `session.takenover`).
    fn log_exit(&self, exit: &Exit) {
        let (client_id, peer) = (&self.identity.client_id, &self.peer);
        match exit {
            Exit::Protocol(v) => {
                metrics::add(&self.broker.metrics.protocol_errors, 1);
                tracing::info!(%client_id, %peer, reason = %v.message, "protocol error, connection closed")
            }
            Exit::SlowConsumer
            | Exit::Kicked {
                reason: KickReason::Overload,
                ..
            } => metrics::add(&self.broker.metrics.slow_consumers_disconnected, 1),
            Exit::Io(e) => tracing::info!(%client_id, %peer, error = %e, "connection error"),
            Exit::StoreFailed(e) => {
                tracing::error!(%client_id, %peer, error = %e, "session store failed: connection closed without acknowledging")
            }
            _ => {}
        }
        tracing::info!(%client_id, %peer, reason = exit.label().as_str(), "client disconnected");
        let hooks = &self.broker.hooks;
        let view = self.identity.view();
        if let Exit::Kicked {
            reason: KickReason::TakenOver,
            ..
        } = exit
        {
            hooks.notify(HookPoint::SESSION_TAKENOVER, &event(view, "", 0));
        }
        let disconnected = event(view, exit.label().as_str(), 0);
        hooks.notify(HookPoint::CLIENT_DISCONNECTED, &disconnected);
    }

    /// Hands the state back to the session, unless a newer connection already holds it
    /// (possible only when this one was too slow to answer a takeover). True when it did.
    fn park(&mut self) -> bool {
        let session = self.machine.session.clone();
        let mut control = session.control.lock();
        let ours = session.generation.load(Ordering::Acquire) == self.generation;
        if ours {
            *control = None;
            session.set_online(false);
            *session.info.lock() = None;
            let mut parked = session.parked.lock();
            self.machine.park(parked.get_or_insert_with(Box::default));
        }
        ours
    }

    /// Publishes the will now, or after its delay when the session outlives the connection
    /// ([MQTT-3.1.3-9]: the will is sent at the earlier of the delay and the session's end).
    fn publish_will(&self, will: crate::codec::LastWill, still_ours: bool) {
        let delay = will.properties.will_delay_interval.unwrap_or(0);
        let topic = match TopicName::new(&will.topic) {
            Ok(topic) => topic,
            Err(e) => {
                tracing::warn!(client_id = %self.identity.client_id, error = %e, "will topic invalid; will dropped");
                return;
            }
        };
        let publisher = Some(self.identity.client_id.clone());
        let payload = own_bytes(will.payload);
        let message = Message::new(
            topic,
            payload,
            will.qos,
            will.retain,
            will.properties,
            publisher,
        );
        match will_timing(delay, self.machine.session_expiry, still_ours) {
            WillTiming::After(delay) => {
                let session = self.machine.session.clone();
                self.broker
                    .schedule_will(session, message, self.generation, delay);
            }
            WillTiming::Now => {
                let username = self.identity.username.as_deref();
                self.broker.publish(message, username, true);
            }
            WillTiming::Cancelled => {
                tracing::debug!(client_id = %self.identity.client_id, "session resumed elsewhere: delayed will cancelled");
            }
        }
    }

    /// Ends the session now (expiry 0), keeps it for ever, or schedules its expiry.
    fn end_or_keep_session(&self) {
        let session = &self.machine.session;
        if self.machine.session_expiry > 0 {
            self.broker.store_session(session);
            self.broker.note_offline(session, self.generation);
        }
        match self.machine.session_expiry {
            0 => self.broker.end_session(session, self.generation),
            u32::MAX => {}
            secs => self.broker.schedule_expiry(
                session.clone(),
                self.generation,
                Duration::from_secs(secs as u64),
            ),
        }
    }
}
