//! How a session's attached connection is told to close, and why connections end: the control
//! line (a request queue with a wake-up, about a hundred bytes where a channel would cost a
//! kilobyte per idle connection), [`KickReason`] and [`DisconnectReason`].

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

/// Why a connection is being told to close by someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickReason {
    /// Another connection with the same client id.
    TakenOver,
    /// An administrator's request.
    Kicked,
    /// A plugin's request, with the MQTT 5 DISCONNECT reason code to send (e.g. 0xA0 when a
    /// token expired).
    Plugin(crate::codec::reason::ReasonCode),
    /// Its queue was among the largest while the broker stayed over
    /// `limits.memory_high_watermark` for `limits.slow_consumer_timeout` (a slow consumer).
    Overload,
}

/// Why a client's connection ended, as operators see it in logs and plugins in the `reason` of
/// `client.disconnected` (presence, web_hook). Serialised as those names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    /// The client sent DISCONNECT.
    Normal,
    /// The peer closed the socket without DISCONNECT.
    TcpClosed,
    /// No packet within 1.5 × keep alive.
    KeepaliveTimeout,
    /// The client left the broker's output unread for `limits.slow_consumer_timeout`.
    SlowConsumer,
    /// The session store failed.
    StoreFailed,
    /// The client broke the protocol.
    ProtocolError,
    /// Another connection with the same client id took the session.
    #[serde(rename = "takenover")]
    TakenOver,
    /// An administrator kicked the client.
    Kicked,
    /// A plugin closed the connection.
    ClosedByPlugin,
    /// The broker is shutting down.
    ServerShutdown,
    /// Reading or writing the socket failed.
    IoError,
}

impl DisconnectReason {
    /// The name (`normal`, `tcp_closed`, `keepalive_timeout`, …, `takenover`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::Normal => "normal",
            DisconnectReason::TcpClosed => "tcp_closed",
            DisconnectReason::KeepaliveTimeout => "keepalive_timeout",
            DisconnectReason::SlowConsumer => "slow_consumer",
            DisconnectReason::StoreFailed => "store_failed",
            DisconnectReason::ProtocolError => "protocol_error",
            DisconnectReason::TakenOver => "takenover",
            DisconnectReason::Kicked => "kicked",
            DisconnectReason::ClosedByPlugin => "closed_by_plugin",
            DisconnectReason::ServerShutdown => "server_shutdown",
            DisconnectReason::IoError => "io_error",
        }
    }
}

impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The control line of one attached connection: requests waiting for it, and its wake-up.
/// About a hundred bytes, where a channel would cost a kilobyte per idle connection.
#[derive(Debug)]
pub struct ControlLine {
    /// `None` once the receiving end is gone (80 bytes with the `Arc`, where a separate flag
    /// took 88: one line per connection).
    waiting: Mutex<Option<Vec<Control>>>,
    wake: Notify,
}

/// The sending end, kept in the session while a connection is attached.
#[derive(Debug, Clone)]
pub struct ControlSender(Arc<ControlLine>);

/// The receiving end, owned by the connection. Dropping it closes the line: requests sent
/// later are refused, and those still waiting are dropped (their `done` senders with them).
#[derive(Debug)]
pub struct ControlReceiver(Arc<ControlLine>);

/// A new control line.
pub fn control_line() -> (ControlSender, ControlReceiver) {
    let line = Arc::new(ControlLine {
        waiting: Mutex::new(Some(Vec::new())),
        wake: Notify::new(),
    });
    (ControlSender(line.clone()), ControlReceiver(line))
}

impl ControlSender {
    /// True when both are the sending end of one line (one connection's).
    pub fn same_line(&self, other: &ControlSender) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Hands `control` to the connection; `Err` with it when the connection is gone.
    pub fn send(&self, control: Control) -> Result<(), Control> {
        let mut waiting = self.0.waiting.lock();
        let Some(queue) = waiting.as_mut() else {
            return Err(control);
        };
        queue.push(control);
        drop(waiting);
        self.0.wake.notify_one();
        Ok(())
    }
}

impl ControlReceiver {
    /// The next request, waiting for one.
    pub async fn recv(&self) -> Control {
        loop {
            let notified = self.notified();
            if let Some(control) = self.try_recv() {
                return control;
            }
            notified.await;
        }
    }

    /// The oldest waiting request, if any.
    pub fn try_recv(&self) -> Option<Control> {
        let mut waiting = self.0.waiting.lock();
        let queue = waiting.as_mut()?;
        (!queue.is_empty()).then(|| queue.remove(0))
    }

    /// Completes once a request may be waiting (see [`ControlReceiver::try_recv`]): the
    /// connection loop waits on this alone, 64 bytes where [`ControlReceiver::recv`]'s state
    /// is 88. A request sent before it is created still completes it (the wake-up is kept).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.0.wake.notified()
    }
}

impl Drop for ControlReceiver {
    fn drop(&mut self) {
        let dropped = self.0.waiting.lock().take();
        drop(dropped);
    }
}

/// A request to the connection attached to a session.
#[derive(Debug)]
pub enum Control {
    /// Close the connection; send `()` on `done` once the session state is handed back.
    Kick {
        /// Why.
        reason: KickReason,
        /// Acknowledges that the connection has parked its state.
        done: oneshot::Sender<()>,
    },
    /// The broker is shutting down: close (v5: DISCONNECT 0x8B). Sent to every attached
    /// connection by [`crate::broker::Broker::begin_shutdown`] and to one attaching after it,
    /// so a connection needs no shutdown watch of its own (an idle connection's task is
    /// smaller by its 160 bytes).
    Shutdown,
}

#[cfg(test)]
mod names {
    use super::DisconnectReason;
    use crate::hooks::PluginState;
    use crate::message::DropReason;

    /// What serde writes for `value`, without the quotes.
    fn serialised<T: serde::Serialize>(value: T) -> String {
        serde_json::to_string(&value)
            .expect("serialises")
            .trim_matches('"')
            .to_owned()
    }

    #[test]
    fn reasons_and_states_serialise_as_the_names_logs_and_plugins_see() {
        use DisconnectReason::*;
        for r in [
            Normal,
            TcpClosed,
            KeepaliveTimeout,
            SlowConsumer,
            StoreFailed,
            ProtocolError,
            TakenOver,
            Kicked,
            ClosedByPlugin,
            ServerShutdown,
            IoError,
        ] {
            assert_eq!(serialised(r), r.as_str());
            let back: DisconnectReason =
                serde_json::from_str(&format!("\"{r}\"")).expect("parses back");
            assert_eq!(back, r);
        }
        for r in [
            DropReason::QueueFull,
            DropReason::Expired,
            DropReason::TooLarge,
        ] {
            assert_eq!(serialised(r), r.as_str());
        }
        for s in [
            PluginState::Active,
            PluginState::Draining,
            PluginState::Stopped,
            PluginState::Faulted,
            PluginState::NotLoaded,
        ] {
            assert_eq!(serialised(s), s.as_str());
        }
        assert_eq!(TakenOver.as_str(), "takenover", "EMQX's name");
    }
}
