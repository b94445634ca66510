//! Every way a connection ends, with the DISCONNECT reason a v5 client is told and the label
//! operators see in logs and plugins in `client.disconnected`.

use tokio::sync::oneshot;

use crate::codec::{reason::ReasonCode, DecodeError};
use crate::session::protocol::machine::Close;
use crate::session::protocol::Violation;
use crate::session::{Control, DisconnectReason, KickReason};

/// Why the connection loop ended.
#[derive(Debug)]
pub(super) enum Exit {
    /// The client sent DISCONNECT; `with_will` for v5 reason 0x04.
    Disconnect { with_will: bool },
    /// The peer closed the socket without DISCONNECT.
    Closed,
    /// No packet within 1.5 × keep alive.
    KeepAliveTimeout,
    /// The client left the broker's output unread for `limits.slow_consumer_timeout`.
    SlowConsumer,
    /// The session store failed: what this connection was about to acknowledge is not durable.
    StoreFailed(String),
    /// The client broke the protocol.
    Protocol(Violation),
    /// Another connection or an administrator took the session.
    Kicked {
        reason: KickReason,
        done: oneshot::Sender<()>,
    },
    /// The broker is shutting down.
    Shutdown,
    /// Reading or writing the socket failed.
    Io(std::io::Error),
}

impl Exit {
    /// A protocol violation with `code`.
    pub(super) fn protocol(
        code: ReasonCode,
        message: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Exit {
        Exit::Protocol(Violation::new(code, message))
    }

    /// What a request on the session's control line means.
    pub(super) fn from_control(control: Control) -> Exit {
        match control {
            Control::Kick { reason, done } => Exit::Kicked { reason, done },
            Control::Shutdown => Exit::Shutdown,
        }
    }

    /// The reason code of the DISCONNECT a v5 client is sent, if any.
    pub(super) fn disconnect_reason(&self) -> Option<ReasonCode> {
        let code = match self {
            Exit::KeepAliveTimeout => ReasonCode::KeepAliveTimeout,
            Exit::Protocol(v) => v.code,
            Exit::Kicked { reason, .. } => match reason {
                KickReason::TakenOver => ReasonCode::SessionTakenOver,
                KickReason::Kicked => ReasonCode::AdministrativeAction,
                // A plugin's code is passed on as it chose it.
                KickReason::Plugin(code) => *code,
                KickReason::Overload => ReasonCode::QuotaExceeded,
            },
            Exit::Shutdown => ReasonCode::ServerShuttingDown,
            Exit::StoreFailed(_) => ReasonCode::UnspecifiedError,
            _ => return None,
        };
        Some(code)
    }

    /// Whether closing should linger ([`super::io::linger`]): when the broker ends the
    /// connection while the client may still be sending. Not when the client ended it, nor
    /// when it stopped reading, nor at shutdown (the process is about to exit).
    pub(super) fn lingers(&self) -> bool {
        match self {
            Exit::Protocol(_)
            | Exit::Kicked { .. }
            | Exit::KeepAliveTimeout
            | Exit::StoreFailed(_) => true,
            Exit::Disconnect { .. }
            | Exit::Closed
            | Exit::SlowConsumer
            | Exit::Shutdown
            | Exit::Io(_) => false,
        }
    }

    /// The disconnect reason as operators see it in logs (and presence events).
    pub(super) fn label(&self) -> DisconnectReason {
        match self {
            Exit::Disconnect { .. } => DisconnectReason::Normal,
            Exit::Closed => DisconnectReason::TcpClosed,
            Exit::KeepAliveTimeout => DisconnectReason::KeepaliveTimeout,
            Exit::SlowConsumer => DisconnectReason::SlowConsumer,
            Exit::StoreFailed(_) => DisconnectReason::StoreFailed,
            Exit::Protocol(_) => DisconnectReason::ProtocolError,
            Exit::Kicked { reason, .. } => match reason {
                KickReason::TakenOver => DisconnectReason::TakenOver,
                KickReason::Kicked => DisconnectReason::Kicked,
                KickReason::Plugin(_) => DisconnectReason::ClosedByPlugin,
                KickReason::Overload => DisconnectReason::SlowConsumer,
            },
            Exit::Shutdown => DisconnectReason::ServerShutdown,
            Exit::Io(_) => DisconnectReason::IoError,
        }
    }
}

impl From<Violation> for Exit {
    fn from(v: Violation) -> Exit {
        Exit::Protocol(v)
    }
}

impl From<Close> for Exit {
    fn from(c: Close) -> Exit {
        match c {
            Close::Disconnect { with_will } => Exit::Disconnect { with_will },
            Close::Violation(v) => Exit::Protocol(v),
        }
    }
}

impl From<DecodeError> for Exit {
    fn from(e: DecodeError) -> Exit {
        let code = e.reason_code();
        Exit::protocol(code, e.to_string())
    }
}
