//! Applying a `message.publish` plugin's [`EditOp`]s to the message being routed.
//!
//! Each operation is checked as the client's own PUBLISH would be: an invalid topic or
//! response topic, a QoS above 2 or a user property that is not UTF-8 is refused (logged with
//! the plugin's name) and the message keeps that field. An operation kind this broker does not
//! know (from a newer plugin-api) is skipped and logged.

use bytes::Bytes;
use plugin_api::{EditKind, EditOp};

use crate::codec::QoS;
use crate::message::Message;
use crate::router::TopicName;

/// Applies `ops` in order; returns false when one of them drops the message.
pub fn apply(
    message: &mut Message,
    ops: abi_stable::std_types::RVec<EditOp>,
    plugin: &str,
) -> bool {
    for op in ops {
        let refused = |why: &str| {
            tracing::warn!(
                plugin,
                kind = op.kind.0,
                "message.publish edit refused: {why}"
            );
        };
        match op.kind {
            EditKind::SET_TOPIC => match TopicName::new(op.key.as_str()) {
                Ok(t) => message.topic = t,
                Err(e) => refused(&format!("invalid topic {:?}: {e}", op.key.as_str())),
            },
            EditKind::SET_PAYLOAD => message.payload = Bytes::from(op.value.into_vec()),
            EditKind::SET_QOS => match u8::try_from(op.number).ok().and_then(QoS::from_u8) {
                Some(q) => message.qos = q,
                None => refused(&format!("QoS {} is not 0, 1 or 2", op.number)),
            },
            EditKind::SET_RETAIN => message.retain = op.number != 0,
            EditKind::ADD_USER_PROPERTY
            | EditKind::SET_USER_PROPERTY
            | EditKind::REMOVE_USER_PROPERTY => {
                let key = op.key.as_str();
                let value = if op.kind == EditKind::REMOVE_USER_PROPERTY {
                    None
                } else {
                    match String::from_utf8(op.value.into_vec()) {
                        Ok(v) => Some(v),
                        Err(_) => {
                            refused("a user property value must be UTF-8");
                            continue;
                        }
                    }
                };
                let props = message.properties.make_mut();
                if op.kind != EditKind::ADD_USER_PROPERTY {
                    props.user_properties.retain(|(k, _)| k != key);
                }
                if let Some(v) = value {
                    props.user_properties.push((key.to_owned(), v));
                }
            }
            EditKind::SET_MESSAGE_EXPIRY => {
                message.expires_at = (op.number != u64::MAX).then(|| {
                    tokio::time::Instant::now() + std::time::Duration::from_secs(op.number)
                });
            }
            EditKind::SET_CONTENT_TYPE => {
                message.properties.make_mut().content_type =
                    (!op.key.is_empty()).then(|| op.key.to_string());
            }
            EditKind::SET_PAYLOAD_FORMAT => match op.number {
                u64::MAX => message.properties.make_mut().payload_format_indicator = None,
                n @ (0 | 1) => {
                    message.properties.make_mut().payload_format_indicator = Some(n as u8)
                }
                n => refused(&format!("payload format {n} is not 0 or 1")),
            },
            EditKind::SET_RESPONSE_TOPIC => {
                if op.key.is_empty() {
                    message.properties.make_mut().response_topic = None;
                } else if TopicName::new(op.key.as_str()).is_ok() {
                    message.properties.make_mut().response_topic = Some(op.key.to_string());
                } else {
                    refused(&format!("invalid response topic {:?}", op.key.as_str()));
                }
            }
            EditKind::SET_CORRELATION_DATA => {
                message.properties.make_mut().correlation_data =
                    (!op.value.is_empty()).then(|| Bytes::from(op.value.into_vec()));
            }
            EditKind::DROP => {
                tracing::debug!(
                    plugin,
                    reason = op.key.as_str(),
                    topic = message.topic.as_str(),
                    "message dropped by a plugin"
                );
                return false;
            }
            _ => refused("unknown edit kind (a newer plugin-api than this broker's)"),
        }
    }
    message.properties.shrink();
    true
}
