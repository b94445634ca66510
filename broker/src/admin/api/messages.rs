//! Messages: publishing from the API, and the retained and delayed messages the retainer
//! plugin and the delayed list hold.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;

use super::{paged, ApiResult, ApiState, Failure};
use crate::admin::types::*;
use crate::broker::{now_ms, Broker};

static PUBLISH_IDS: AtomicU64 = AtomicU64::new(0);

fn publish_one(b: &Broker, r: PublishRequest) -> ApiResult<(StatusCode, PublishReply)> {
    let payload = match r.payload_encoding.as_deref() {
        None | Some("plain") => r.payload.into_bytes(),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(r.payload.as_bytes())
            .map_err(|e| Failure::bad_request(format!("payload is not base64: {e}")))?,
        Some(other) => {
            return Err(Failure::bad_request(format!(
                "payload_encoding must be plain or base64, not {other:?}"
            )))
        }
    };
    if r.qos > 2 {
        return Err(Failure::bad_request("qos must be 0, 1 or 2"));
    }
    let p = r.properties;
    let message = plugin_api::OutgoingMessage {
        topic: r.topic.as_str().into(),
        payload: payload.into(),
        qos: r.qos,
        retain: r.retain,
        payload_format_indicator: p.payload_format_indicator.into(),
        message_expiry_interval: p.message_expiry_interval.into(),
        content_type: p.content_type.map(Into::into).into(),
        response_topic: p.response_topic.map(Into::into).into(),
        correlation_data: p.correlation_data.map(|c| c.into_bytes().into()).into(),
        user_properties: p
            .user_properties
            .into_iter()
            .map(|(k, v)| abi_stable::std_types::Tuple2(k.into(), v.into()))
            .collect(),
    };
    let delivered = crate::plugin::host::message_from_plugin(message)
        .map(|m| b.publish(m, None, false).unwrap_or(0))
        .map_err(|e| Failure::bad_request(format!("cannot publish to {:?}: {e}", r.topic)))?;
    let id = format!(
        "{:x}-{:x}",
        b.started.elapsed().as_nanos() as u64,
        PUBLISH_IDS.fetch_add(1, Ordering::Relaxed)
    );
    if delivered == 0 {
        return Ok((
            StatusCode::ACCEPTED,
            PublishReply {
                id,
                delivered: 0,
                message: Some("no_matching_subscribers".into()),
                reason_code: Some(16),
            },
        ));
    }
    Ok((
        StatusCode::OK,
        PublishReply {
            id,
            delivered: delivered as u32,
            message: None,
            reason_code: None,
        },
    ))
}

/// Publishes a message as the broker. It goes through the plugins' publish chain (a
/// retainer keeps it if `retain` is set). 202 with `no_matching_subscribers` when nobody
/// subscribed.
#[utoipa::path(post, path = "/api/v5/publish", tag = "publish", request_body = PublishRequest,
    responses((status = 200, body = PublishReply), (status = 202, body = PublishReply), (status = 400, body = ApiError)))]
pub(super) async fn publish(State(s): State<ApiState>, Json(r): Json<PublishRequest>) -> Response {
    match publish_one(&s.broker, r) {
        Ok((code, reply)) => (code, Json(reply)).into_response(),
        Err(f) => f.into_response(),
    }
}

/// Publishes several messages, in order; stops at the first invalid one.
#[utoipa::path(post, path = "/api/v5/publish/bulk", tag = "publish", request_body = Vec<PublishRequest>,
    responses((status = 200, body = Vec<PublishReply>), (status = 400, body = ApiError)))]
pub(super) async fn publish_bulk(
    State(s): State<ApiState>,
    Json(list): Json<Vec<PublishRequest>>,
) -> ApiResult<Json<Vec<PublishReply>>> {
    let mut out = Vec::with_capacity(list.len());
    for r in list {
        out.push(publish_one(&s.broker, r)?.1);
    }
    Ok(Json(out))
}

/// Runs a retainer command, or says the retainer is not loaded.
pub(super) async fn retainer(b: &Broker, args: &[&str]) -> ApiResult<String> {
    let owner = b.plugins.command_owner("retainer").ok_or_else(|| {
        Failure::not_found(
            "retained messages are kept by the retainer plugin, which is not loaded (brokerctl plugins load retainer)",
        )
    })?;
    let mut all = vec!["retainer".to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    b.hooks
        .command(&owner, all)
        .await
        .map_err(|e| Failure(StatusCode::UNPROCESSABLE_ENTITY, "RETAINER", e))
}

/// The retainer's JSON answer for one message.
#[derive(serde::Deserialize)]
struct RetainerMessage {
    topic: String,
    qos: u8,
    stored_at_ms: u64,
    payload_size: usize,
    #[serde(default)]
    payload: Option<String>,
}

impl From<RetainerMessage> for Retained {
    fn from(m: RetainerMessage) -> Retained {
        Retained {
            topic: m.topic,
            qos: m.qos,
            publish_at: rfc3339(m.stored_at_ms),
            payload_size: m.payload_size,
            payload: m.payload,
        }
    }
}

fn bad_retainer_answer(e: serde_json::Error) -> Failure {
    Failure(
        StatusCode::BAD_GATEWAY,
        "RETAINER",
        format!("the retainer plugin answered something unexpected: {e}"),
    )
}

/// Retained messages (kept by the retainer plugin), by topic.
#[utoipa::path(get, path = "/api/v5/mqtt/retainer/messages", tag = "retainer",
    params(Paging, RetainedQuery),
    responses((status = 200, body = Page<Retained>), (status = 404, body = ApiError)))]
pub(super) async fn retained_list(
    State(s): State<ApiState>,
    Query(p): Query<Paging>,
    Query(q): Query<RetainedQuery>,
) -> ApiResult<Json<Page<Retained>>> {
    let mut args = vec!["messages", "--json"];
    if let Some(f) = &q.topic {
        args.extend(["--filter", f.as_str()]);
    }
    let text = retainer(&s.broker, &args).await?;
    let list: Vec<RetainerMessage> = serde_json::from_str(&text).map_err(bad_retainer_answer)?;
    Ok(Json(paged(
        list.into_iter().map(Retained::from).collect(),
        p,
    )?))
}

/// One retained message with its payload (base64). `/` in the topic may be sent as is or
/// percent-encoded.
#[utoipa::path(get, path = "/api/v5/mqtt/retainer/message/{topic}", tag = "retainer",
    params(("topic" = String, Path, description = "Topic name")),
    responses((status = 200, body = Retained), (status = 404, body = ApiError)))]
pub(super) async fn retained_get(
    State(s): State<ApiState>,
    Path(topic): Path<String>,
) -> ApiResult<Json<Retained>> {
    let text = retainer(&s.broker, &["message", "--json", &topic]).await?;
    if text.trim() == "null" {
        return Err(Failure::not_found(format!(
            "no retained message on {topic:?}"
        )));
    }
    let m: RetainerMessage = serde_json::from_str(&text).map_err(bad_retainer_answer)?;
    Ok(Json(m.into()))
}

/// Deletes one retained message.
#[utoipa::path(delete, path = "/api/v5/mqtt/retainer/message/{topic}", tag = "retainer",
    params(("topic" = String, Path, description = "Topic name")),
    responses((status = 204), (status = 404, body = ApiError)))]
pub(super) async fn retained_delete(
    State(s): State<ApiState>,
    Path(topic): Path<String>,
) -> ApiResult<StatusCode> {
    let text = retainer(&s.broker, &["clean", &topic]).await?;
    if text.contains("Removed 0") {
        return Err(Failure::not_found(format!(
            "no retained message on {topic:?}"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The API's view of one delayed publish; with its payload when `payload`.
fn delayed_view(node: &str, m: &crate::delayed::DelayedMessage, payload: bool) -> DelayedMessage {
    let msg = &m.message;
    DelayedMessage {
        msgid: m.id.to_string(),
        node: node.to_owned(),
        topic: msg.topic.as_str().to_owned(),
        qos: msg.qos as u8,
        retain: msg.retain,
        publish_at: rfc3339(m.published_ms),
        expected_at: rfc3339(m.due_ms),
        delayed_interval: m.due_ms.saturating_sub(m.published_ms) / 1000,
        delayed_remaining: m.due_ms.saturating_sub(now_ms()).div_ceil(1000),
        from_clientid: msg.publisher.as_deref().map(str::to_owned),
        from_username: m.username.clone(),
        payload_size: msg.payload.len(),
        payload: payload.then(|| base64::engine::general_purpose::STANDARD.encode(&msg.payload)),
    }
}

/// Delayed publishes (`$delayed/<seconds>/<topic>`) waiting, earliest first.
#[utoipa::path(get, path = "/api/v5/mqtt/delayed/messages", tag = "delayed",
    params(Paging),
    responses((status = 200, body = Page<DelayedMessage>), (status = 400, body = ApiError)))]
pub(super) async fn delayed_list(
    State(s): State<ApiState>,
    Query(p): Query<Paging>,
) -> ApiResult<Json<Page<DelayedMessage>>> {
    let node = &s.broker.config.node_name;
    let mut list = Vec::new();
    s.broker
        .delayed
        .for_each(|m| list.push(delayed_view(node, m, false)));
    Ok(Json(paged(list, p)?))
}

fn delayed_id(id: &str) -> ApiResult<u64> {
    id.parse()
        .map_err(|_| Failure::bad_request(format!("{id:?} is not a delayed message id")))
}

/// One delayed publish with its payload (base64).
#[utoipa::path(get, path = "/api/v5/mqtt/delayed/messages/{id}", tag = "delayed",
    params(("id" = String, Path, description = "Message id")),
    responses((status = 200, body = DelayedMessage), (status = 404, body = ApiError)))]
pub(super) async fn delayed_get(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<DelayedMessage>> {
    let id = delayed_id(&id)?;
    let node = &s.broker.config.node_name;
    let mut found = None;
    s.broker.delayed.for_each(|m| {
        if m.id == id {
            found = Some(delayed_view(node, m, true));
        }
    });
    found
        .map(Json)
        .ok_or_else(|| Failure::not_found(format!("no delayed message {id}")))
}

/// Cancels a delayed publish: it is never published.
#[utoipa::path(delete, path = "/api/v5/mqtt/delayed/messages/{id}", tag = "delayed",
    params(("id" = String, Path, description = "Message id")),
    responses((status = 204), (status = 404, body = ApiError)))]
pub(super) async fn delayed_delete(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = delayed_id(&id)?;
    if s.broker.cancel_delayed(id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Failure::not_found(format!("no delayed message {id}")))
    }
}
