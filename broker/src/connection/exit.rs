//! Every way a connection ends, with the DISCONNECT reason a v5 client is told and the label
//! operators see in logs and plugins in `client.disconnected`.

use tokio::sync::oneshot;

use crate::codec::{reason::ReasonCode, DecodeError};
use crate::session::protocol::Violation;
use crate::session::{Control, KickReason};

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
        }
    }

    /// The reason code of the DISCONNECT a v5 client is sent, if any.
    pub(super) fn disconnect_reason(&self) -> Option<u8> {
        let code = match self {
            Exit::KeepAliveTimeout => ReasonCode::KeepAliveTimeout,
            Exit::Protocol(v) => v.code,
            Exit::Kicked { reason, .. } => match reason {
                KickReason::TakenOver => ReasonCode::SessionTakenOver,
                KickReason::Kicked => ReasonCode::AdministrativeAction,
                // A plugin's code is passed on as it chose it.
                KickReason::Plugin(code) => *code,
            },
            Exit::Shutdown => ReasonCode::ServerShuttingDown,
            Exit::StoreFailed(_) => ReasonCode::UnspecifiedError,
            _ => return None,
        };
        Some(code.get())
    }

    /// The disconnect reason as operators see it in logs (and presence events).
    pub(super) fn label(&self) -> &'static str {
        match self {
            Exit::Disconnect { .. } => "normal",
            Exit::Closed => "tcp_closed",
            Exit::KeepAliveTimeout => "keepalive_timeout",
            Exit::SlowConsumer => "slow_consumer",
            Exit::StoreFailed(_) => "store_failed",
            Exit::Protocol(_) => "protocol_error",
            Exit::Kicked { reason, .. } => match reason {
                KickReason::TakenOver => "takenover",
                KickReason::Kicked => "kicked",
                KickReason::Plugin(_) => "closed_by_plugin",
            },
            Exit::Shutdown => "server_shutdown",
            Exit::Io(_) => "io_error",
        }
    }
}

impl From<Violation> for Exit {
    fn from(v: Violation) -> Exit {
        Exit::Protocol(v)
    }
}

impl From<DecodeError> for Exit {
    fn from(e: DecodeError) -> Exit {
        let code = ReasonCode::from_u8(e.reason_code()).unwrap_or(ReasonCode::MalformedPacket);
        Exit::protocol(code, e.to_string())
    }
}
