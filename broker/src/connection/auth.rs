//! Authentication of a connection: the authentication chain of plugins for a plain CONNECT,
//! MQTT 5 enhanced authentication (section 4.12) at CONNECT, and re-authentication with AUTH
//! while connected (section 4.12.1).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::broker::Broker;
use crate::codec::{self, reason::ReasonCode, Connect, Packet, PropertyValues, ProtocolVersion};
use crate::config::Decision;
use crate::hooks::{AuthDecision, PluginHandle};
use crate::metrics;
use crate::session::protocol::connect::Refusal;
use crate::session::Identity;
use plugin_api::{
    AuthRequest, DenyReason, EnhancedAuthOutcome, EnhancedAuthRequest, EnhancedAuthResult,
    HookPoint,
};

use super::{Connection, Exit};

/// The enhanced authentication a connection was accepted with.
pub(super) struct EnhancedAuth {
    /// The Authentication Method.
    pub(super) method: String,
    /// The plugin that answered it.
    pub(super) handler: Arc<PluginHandle>,
    /// The next step of a re-authentication in progress.
    pub(super) step: Option<u32>,
}

/// An AUTH packet with `method` and `data`.
pub(super) fn auth_packet(code: ReasonCode, method: &str, data: &[u8]) -> Packet {
    let properties = PropertyValues {
        authentication_method: Some(method.to_owned()),
        authentication_data: (!data.is_empty()).then(|| data.to_vec().into()),
        ..PropertyValues::default()
    }
    .into();
    Packet::Auth(codec::Auth {
        reason_code: code,
        properties,
    })
}

fn no_handler(method: &str) -> Refusal {
    Refusal::new(
        ReasonCode::BadAuthenticationMethod,
        format!("no loaded plugin handles authentication method {method:?}"),
    )
}

/// A plugin's failure code, or 0x87 when it gave none that is a failure.
fn failure_code(code: u8) -> ReasonCode {
    ReasonCode::from_u8(code)
        .filter(|c| c.is_error() && *c != ReasonCode::UnspecifiedError)
        .unwrap_or(ReasonCode::NotAuthorized)
}

/// Runs the authentication chain for a CONNECT. `Ok(superuser)` lets the client in.
pub(super) async fn authenticate(
    broker: &Broker,
    identity: &Identity,
    connect: &Connect,
) -> Result<bool, Refusal> {
    let auth = &broker.config.auth;
    let decision = if broker.hooks.enabled(HookPoint::CLIENT_AUTHENTICATE) {
        let request = AuthRequest {
            client: identity.to_client_info(),
            password: connect.password.as_ref().map(|p| p.to_vec().into()).into(),
        };
        broker.hooks.authenticate(&request).await
    } else {
        AuthDecision::NoPlugin
    };
    let (code, why) = match decision {
        AuthDecision::Allow { superuser } => return Ok(superuser),
        AuthDecision::NoPlugin if auth.allow_anonymous => return Ok(false),
        AuthDecision::NoMatch if auth.no_match == Decision::Allow => return Ok(false),
        AuthDecision::NoPlugin => (
            ReasonCode::NotAuthorized,
            "auth.allow_anonymous is false and no authentication plugin is loaded",
        ),
        AuthDecision::NoMatch => (
            ReasonCode::NotAuthorized,
            "no authentication plugin accepted the client (auth.no_match = deny)",
        ),
        AuthDecision::Deny(DenyReason::BadCredentials) => (
            ReasonCode::BadUserNameOrPassword,
            "bad user name or password",
        ),
        AuthDecision::Deny(DenyReason::NotAuthorized) => {
            (ReasonCode::NotAuthorized, "not authorized")
        }
        AuthDecision::Deny(DenyReason::ServerUnavailable) => (
            ReasonCode::ServerUnavailable,
            "authentication backend unavailable",
        ),
    };
    Err(Refusal::new(code, why))
}

/// Runs the CONNECT / AUTH exchange of enhanced authentication until a plugin decides, within
/// `limits.connect_timeout`. Returns the plugin and its final answer, or the refusal.
pub(super) async fn enhanced_exchange<S>(
    broker: &Broker,
    stream: &mut S,
    rbuf: &mut BytesMut,
    identity: &Identity,
    method: &str,
    first: Vec<u8>,
) -> Result<(Arc<PluginHandle>, EnhancedAuthResult), Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(broker.config.limits.connect_timeout);
    let mut handler: Option<Arc<PluginHandle>> = None;
    let mut data = first;
    let mut step = 0u32;
    loop {
        let request = EnhancedAuthRequest {
            client: identity.to_client_info(),
            method: method.into(),
            data: std::mem::take(&mut data).into(),
            step,
            reauthenticate: false,
        };
        let answer = broker.hooks.enhanced_auth(&request, handler.as_ref()).await;
        let Some((plugin, result)) = answer else {
            return Err(no_handler(method));
        };
        match result.outcome {
            EnhancedAuthOutcome::SUCCESS => return Ok((plugin, result)),
            EnhancedAuthOutcome::CONTINUE => {}
            EnhancedAuthOutcome::FAILURE => {
                return Err(Refusal::new(
                    failure_code(result.reason_code),
                    format!("{method} authentication failed"),
                ))
            }
            _ => return Err(no_handler(method)),
        }
        handler = Some(plugin);
        let challenge = auth_packet(ReasonCode::ContinueAuthentication, method, &result.data);
        data = exchange_step(broker, stream, rbuf, &challenge, method, deadline).await?;
        step += 1;
    }
}

/// Sends one challenge and reads the client's answer: an AUTH continuing (0x18) with the same
/// method ([MQTT-4.12.0-4]). Returns its data.
async fn exchange_step<S>(
    broker: &Broker,
    stream: &mut S,
    rbuf: &mut BytesMut,
    challenge: &Packet,
    method: &str,
    deadline: tokio::time::Instant,
) -> Result<Vec<u8>, Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let closed = || Refusal::new(ReasonCode::UnspecifiedError, "closed during authentication");
    let mut out = BytesMut::new();
    codec::encode(challenge, ProtocolVersion::V5, &mut out);
    if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
        return Err(closed());
    }
    let max = broker.config.limits.max_packet_size;
    let answer = loop {
        match codec::decode(rbuf, Some(ProtocolVersion::V5), max) {
            Ok(Some(Packet::Auth(a))) => break a,
            Ok(Some(p)) => {
                return Err(Refusal::new(
                    ReasonCode::ProtocolError,
                    format!("{} during the authentication exchange", p.name()),
                ))
            }
            Ok(None) => {}
            Err(e) => return Err(Refusal::new(ReasonCode::MalformedPacket, e.to_string())),
        }
        if rbuf.len() == rbuf.capacity() {
            rbuf.reserve(super::io::READ_CHUNK);
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(rbuf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err(closed()),
            Ok(Ok(n)) => metrics::add(&broker.metrics.bytes_received, n as u64),
            Err(_) => {
                return Err(Refusal::new(
                    ReasonCode::NotAuthorized,
                    "authentication exchange not finished within limits.connect_timeout",
                ))
            }
        }
    };
    if answer.reason_code != ReasonCode::ContinueAuthentication
        || answer.properties.authentication_method.as_deref() != Some(method)
    {
        return Err(Refusal::new(
            ReasonCode::ProtocolError,
            "[MQTT-4.12.0-4] AUTH must continue (0x18) with the CONNECT's method",
        ));
    }
    Ok(answer
        .properties
        .authentication_data
        .as_ref()
        .map(|d| d.to_vec())
        .unwrap_or_default())
}

impl Connection {
    /// An AUTH from a connected client: re-authentication (section 4.12.1) with the method the
    /// connection was accepted with.
    pub(super) async fn on_auth(&mut self, a: codec::Auth) -> Result<(), Exit> {
        let Some(auth) = &mut self.enhanced else {
            return Err(Exit::protocol(
                ReasonCode::ProtocolError,
                "[MQTT-4.12.0-7] AUTH on a connection without enhanced authentication",
            ));
        };
        if a.properties.authentication_method.as_deref() != Some(auth.method.as_str()) {
            return Err(Exit::protocol(
                ReasonCode::ProtocolError,
                "[MQTT-4.12.1-1] re-authentication must use the CONNECT's method",
            ));
        }
        let step = match (a.reason_code, auth.step) {
            (ReasonCode::ReAuthenticate, None) => 0,
            (ReasonCode::ContinueAuthentication, Some(step)) => step,
            _ => {
                return Err(Exit::protocol(
                    ReasonCode::ProtocolError,
                    "AUTH reason code out of sequence",
                ))
            }
        };
        let request = EnhancedAuthRequest {
            client: self.identity.to_client_info(),
            method: auth.method.as_str().into(),
            data: a
                .properties
                .authentication_data
                .as_ref()
                .map(|d| d.to_vec())
                .unwrap_or_default()
                .into(),
            step,
            reauthenticate: true,
        };
        let handler = auth.handler.clone();
        let hooks = &self.broker.hooks;
        let answer = hooks.enhanced_auth(&request, Some(&handler)).await;
        self.reauthenticated(step, answer.map(|(_, r)| r))
    }

    /// Acts on a plugin's answer to one step of re-authentication.
    fn reauthenticated(
        &mut self,
        step: u32,
        answer: Option<EnhancedAuthResult>,
    ) -> Result<(), Exit> {
        let Some(auth) = &mut self.enhanced else {
            return Ok(());
        };
        let method = auth.method.clone();
        match answer {
            Some(r) if r.outcome == EnhancedAuthOutcome::CONTINUE => {
                auth.step = Some(step + 1);
                self.machine.push(&auth_packet(
                    ReasonCode::ContinueAuthentication,
                    &method,
                    &r.data,
                ));
                Ok(())
            }
            Some(r) if r.outcome == EnhancedAuthOutcome::SUCCESS => {
                auth.step = None;
                std::sync::Arc::make_mut(&mut self.identity).is_superuser = r.superuser;
                let session = &self.machine.session;
                session.acl_cache.lock().clear();
                *session.info.lock() = Some(self.identity.clone());
                self.machine
                    .push(&auth_packet(ReasonCode::Success, &method, &r.data));
                Ok(())
            }
            other => {
                let code = other
                    .and_then(|r| ReasonCode::from_u8(r.reason_code))
                    .filter(|c| c.is_error())
                    .unwrap_or(ReasonCode::NotAuthorized);
                Err(Exit::protocol(code, "re-authentication failed"))
            }
        }
    }
}
