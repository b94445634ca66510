//! Clients, their subscriptions (added and removed by the operator), ACL caches, sessions,
//! and the subscription list across sessions.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;

use super::{paged, ApiResult, ApiState, Failure};
use crate::admin::types::*;
use crate::broker::{unix_ms, Broker};
use crate::session::Session as BrokerSession;

fn client_of(node: &str, s: &BrokerSession) -> Client {
    let info = s.info.lock().clone();
    let offline_since = s.offline_since();
    let connected = s.is_online() && info.is_some();
    Client {
        clientid: s.client_id.to_string(),
        username: info
            .as_ref()
            .and_then(|i| i.username.as_deref().map(String::from)),
        connected,
        node: node.to_owned(),
        ip_address: info.as_ref().map(|i| i.peer_ip.to_string()),
        port: info.as_ref().map(|i| i.peer_port),
        listener: info.as_ref().map(|i| i.listener.to_string()),
        transport: info.as_ref().map(|i| i.transport().to_owned()),
        proto_ver: info.as_ref().map(|i| i.proto_ver),
        proto_name: info.as_ref().map(|i| i.proto_name().to_owned()),
        keepalive: info.as_ref().map(|i| i.keep_alive),
        clean_start: info.as_ref().map(|i| i.clean_start),
        expiry_interval: u64::from(s.expiry_interval.load(Ordering::Relaxed)),
        connected_at: info.as_ref().map(|i| rfc3339(i.connected_at_ms)),
        disconnected_at: offline_since.map(|t| rfc3339(unix_ms(t))),
        subscriptions_cnt: s.subscriptions.lock().len(),
        mqueue_len: s.queued_len(),
        mqueue_bytes: s.queued_bytes(),
        inflight_cnt: s.parked_inflight(),
        is_superuser: info.as_ref().map(|i| i.is_superuser),
        cn: info
            .as_ref()
            .and_then(|i| i.cert.as_ref().and_then(|c| c.0.clone())),
    }
}

fn sorted_sessions(b: &Broker) -> Vec<Arc<BrokerSession>> {
    let mut all = b.all_sessions();
    all.sort_by(|x, y| x.client_id.cmp(&y.client_id));
    all
}

fn session_of(b: &Broker, id: &str) -> ApiResult<Arc<BrokerSession>> {
    b.session(id)
        .ok_or_else(|| Failure::not_found(format!("no session for client {id:?}")))
}

/// Clients: connected ones, and offline sessions waiting for theirs.
#[utoipa::path(get, path = "/api/v5/clients", tag = "clients", params(Paging, ClientQuery),
    responses((status = 200, body = Page<Client>), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub(super) async fn clients(
    State(s): State<ApiState>,
    Query(p): Query<Paging>,
    Query(q): Query<ClientQuery>,
) -> ApiResult<Json<Page<Client>>> {
    let want_connected = match q.conn_state.as_deref() {
        None => None,
        Some("connected") => Some(true),
        Some("disconnected") => Some(false),
        Some(other) => {
            return Err(Failure::bad_request(format!(
                "conn_state must be connected or disconnected, not {other:?}"
            )))
        }
    };
    let node = &s.broker.config.node_name;
    let list: Vec<Client> = sorted_sessions(&s.broker)
        .iter()
        .map(|x| client_of(node, x))
        .filter(|c| {
            q.clientid.as_ref().is_none_or(|id| &c.clientid == id)
                && q.username
                    .as_ref()
                    .is_none_or(|u| c.username.as_ref() == Some(u))
                && q.like_clientid
                    .as_ref()
                    .is_none_or(|l| c.clientid.contains(l.as_str()))
                && q.like_username
                    .as_ref()
                    .is_none_or(|l| c.username.as_ref().is_some_and(|u| u.contains(l.as_str())))
                && want_connected.is_none_or(|w| c.connected == w)
                && q.ip_address
                    .as_ref()
                    .is_none_or(|ip| c.ip_address.as_ref() == Some(ip))
                && q.proto_ver.is_none_or(|v| c.proto_ver == Some(v))
        })
        .collect();
    Ok(Json(paged(list, p)?))
}

/// One client (connected, or an offline session).
#[utoipa::path(get, path = "/api/v5/clients/{clientid}", tag = "clients",
    params(("clientid" = String, Path, description = "Client id, percent-encoded")),
    responses((status = 200, body = Client), (status = 404, body = ApiError)))]
pub(super) async fn client(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Client>> {
    let session = session_of(&s.broker, &id)?;
    Ok(Json(client_of(&s.broker.config.node_name, &session)))
}

/// Disconnects a connected client (MQTT 5: DISCONNECT 0x98). A persistent session stays;
/// `DELETE /api/v5/sessions/{clientid}` ends it.
#[utoipa::path(delete, path = "/api/v5/clients/{clientid}", tag = "clients",
    params(("clientid" = String, Path, description = "Client id, percent-encoded")),
    responses((status = 204), (status = 404, body = ApiError)))]
pub(super) async fn kick(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if s.broker.kick(&id).await {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Failure::not_found(format!(
            "client {id:?} is not connected"
        )))
    }
}

fn subscriptions_of(node: &str, s: &BrokerSession) -> Vec<Subscription> {
    let mut list: Vec<Subscription> = s
        .subscriptions
        .lock()
        .iter()
        .map(|(key, sub)| Subscription {
            clientid: s.client_id.to_string(),
            topic: key.to_string(),
            qos: sub.options.qos as u8,
            nl: sub.options.no_local.into(),
            rap: sub.options.retain_as_published.into(),
            rh: sub.options.retain_handling as u8,
            sub_id: sub.id,
            node: node.to_owned(),
        })
        .collect();
    list.sort_by(|a, b| a.topic.cmp(&b.topic));
    list
}

/// A client's subscriptions.
#[utoipa::path(get, path = "/api/v5/clients/{clientid}/subscriptions", tag = "subscriptions",
    params(("clientid" = String, Path, description = "Client id, percent-encoded")),
    responses((status = 200, body = Vec<Subscription>), (status = 404, body = ApiError)))]
pub(super) async fn client_subscriptions(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<Subscription>>> {
    let session = session_of(&s.broker, &id)?;
    Ok(Json(subscriptions_of(&s.broker.config.node_name, &session)))
}

fn add_subscription(b: &Broker, id: &str, r: &SubscribeRequest) -> ApiResult<Subscription> {
    if r.qos > 2 || r.nl > 1 || r.rap > 1 || r.rh > 2 {
        return Err(Failure::bad_request(
            "qos and rh must be 0 to 2, nl and rap 0 or 1",
        ));
    }
    let options = crate::codec::SubscriptionOptions {
        qos: crate::codec::QoS::from_u8(r.qos)
            .ok_or_else(|| Failure::bad_request("qos must be 0 to 2"))?,
        no_local: r.nl == 1,
        retain_as_published: r.rap == 1,
        retain_handling: match r.rh {
            0 => crate::codec::RetainHandling::SendAtSubscribe,
            1 => crate::codec::RetainHandling::SendIfNew,
            _ => crate::codec::RetainHandling::DoNotSend,
        },
    };
    session_of(b, id)?;
    let qos = b
        .subscribe_client(id, &r.topic, options)
        .map_err(|e| Failure::bad_request(format!("cannot subscribe to {:?}: {e}", r.topic)))?;
    Ok(Subscription {
        clientid: id.to_owned(),
        topic: r.topic.clone(),
        qos: qos as u8,
        nl: r.nl,
        rap: r.rap,
        rh: r.rh,
        sub_id: None,
        node: b.config.node_name.clone(),
    })
}

/// Subscribes a session (online or offline) as if its client had sent SUBSCRIBE.
#[utoipa::path(post, path = "/api/v5/clients/{clientid}/subscribe", tag = "subscriptions",
    params(("clientid" = String, Path, description = "Client id, percent-encoded")),
    request_body = SubscribeRequest,
    responses((status = 200, body = Subscription), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn subscribe(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Json(r): Json<SubscribeRequest>,
) -> ApiResult<Json<Subscription>> {
    Ok(Json(add_subscription(&s.broker, &id, &r)?))
}

/// Several subscriptions at once.
#[utoipa::path(post, path = "/api/v5/clients/{clientid}/subscribe/bulk", tag = "subscriptions",
    params(("clientid" = String, Path, description = "Client id, percent-encoded")),
    request_body = Vec<SubscribeRequest>,
    responses((status = 200, body = Vec<Subscription>), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn subscribe_bulk(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Json(list): Json<Vec<SubscribeRequest>>,
) -> ApiResult<Json<Vec<Subscription>>> {
    let mut out = Vec::with_capacity(list.len());
    for r in &list {
        out.push(add_subscription(&s.broker, &id, r)?);
    }
    Ok(Json(out))
}

fn remove_subscription(b: &Broker, id: &str, topic: &str) -> ApiResult<()> {
    match b.unsubscribe_client(id, topic) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Failure::not_found(format!(
            "client {id:?} has no subscription {topic:?}"
        ))),
        Err(e) => Err(Failure::not_found(e)),
    }
}

/// Removes one subscription of a session.
#[utoipa::path(post, path = "/api/v5/clients/{clientid}/unsubscribe", tag = "subscriptions",
    params(("clientid" = String, Path, description = "Client id, percent-encoded")),
    request_body = UnsubscribeRequest,
    responses((status = 204), (status = 404, body = ApiError)))]
pub(super) async fn unsubscribe(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Json(r): Json<UnsubscribeRequest>,
) -> ApiResult<StatusCode> {
    remove_subscription(&s.broker, &id, &r.topic)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes several subscriptions of a session.
#[utoipa::path(post, path = "/api/v5/clients/{clientid}/unsubscribe/bulk", tag = "subscriptions",
    params(("clientid" = String, Path, description = "Client id, percent-encoded")),
    request_body = Vec<UnsubscribeRequest>,
    responses((status = 204), (status = 404, body = ApiError)))]
pub(super) async fn unsubscribe_bulk(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Json(list): Json<Vec<UnsubscribeRequest>>,
) -> ApiResult<StatusCode> {
    for r in &list {
        remove_subscription(&s.broker, &id, &r.topic)?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Forgets one client's cached ACL decisions.
#[utoipa::path(delete, path = "/api/v5/clients/{clientid}/authorization/cache", tag = "clients",
    params(("clientid" = String, Path, description = "Client id, percent-encoded")),
    responses((status = 204), (status = 404, body = ApiError)))]
pub(super) async fn clean_client_acl_cache(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if s.broker.clean_acl_cache(Some(&id)) == 0 {
        return Err(Failure::not_found(format!("no session for client {id:?}")));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Forgets every client's cached ACL decisions.
#[utoipa::path(delete, path = "/api/v5/authorization/cache", tag = "clients",
    responses((status = 200, body = MessageReply)))]
pub(super) async fn clean_acl_cache(State(s): State<ApiState>) -> Json<MessageReply> {
    let n = s.broker.clean_acl_cache(None);
    Json(MessageReply {
        message: format!("ACL cache cleaned for {n} client(s)."),
    })
}

fn session_summary(s: &BrokerSession) -> Session {
    let mut subscriptions: Vec<(String, u8)> = s
        .subscriptions
        .lock()
        .iter()
        .map(|(key, sub)| (key.to_string(), sub.options.qos as u8))
        .collect();
    subscriptions.sort();
    Session {
        client_id: s.client_id.to_string(),
        online: s.is_online(),
        expiry_interval: u64::from(s.expiry_interval.load(Ordering::Relaxed)),
        offline_since_ms: s.offline_since().map(unix_ms),
        queued: s.queued_len(),
        queued_bytes: s.queued_bytes(),
        inflight: s.parked_inflight(),
        subscriptions,
    }
}

/// Sessions, online and offline.
#[utoipa::path(get, path = "/api/v5/sessions", tag = "sessions", params(Paging, SessionQuery),
    responses((status = 200, body = Page<Session>), (status = 400, body = ApiError)))]
pub(super) async fn sessions(
    State(s): State<ApiState>,
    Query(p): Query<Paging>,
    Query(q): Query<SessionQuery>,
) -> ApiResult<Json<Page<Session>>> {
    let list: Vec<Session> = sorted_sessions(&s.broker)
        .iter()
        .map(|x| session_summary(x))
        .filter(|x| q.online.is_none_or(|o| x.online == o))
        .collect();
    Ok(Json(paged(list, p)?))
}

/// One session.
#[utoipa::path(get, path = "/api/v5/sessions/{clientid}", tag = "sessions",
    params(("clientid" = String, Path, description = "Client id, percent-encoded")),
    responses((status = 200, body = Session), (status = 404, body = ApiError)))]
pub(super) async fn session(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Session>> {
    let found = session_of(&s.broker, &id)?;
    Ok(Json(session_summary(&found)))
}

/// Ends a session now (kicking its client), in the session store too.
#[utoipa::path(delete, path = "/api/v5/sessions/{clientid}", tag = "sessions",
    params(("clientid" = String, Path, description = "Client id, percent-encoded")),
    responses((status = 200, body = MessageReply), (status = 404, body = ApiError)))]
pub(super) async fn drop_session(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<MessageReply>> {
    if s.broker.drop_session(&id).await {
        Ok(Json(MessageReply {
            message: format!("Session {id} dropped."),
        }))
    } else {
        Err(Failure::not_found(format!("no session for client {id:?}")))
    }
}

/// Every subscription of every session.
#[utoipa::path(get, path = "/api/v5/subscriptions", tag = "subscriptions",
    params(Paging, SubscriptionQuery),
    responses((status = 200, body = Page<Subscription>), (status = 400, body = ApiError)))]
pub(super) async fn subscriptions(
    State(s): State<ApiState>,
    Query(p): Query<Paging>,
    Query(q): Query<SubscriptionQuery>,
) -> ApiResult<Json<Page<Subscription>>> {
    let node = &s.broker.config.node_name;
    let sessions: Vec<Arc<BrokerSession>> = match &q.clientid {
        Some(id) => s.broker.session(id).into_iter().collect(),
        None => sorted_sessions(&s.broker),
    };
    let list: Vec<Subscription> = sessions
        .iter()
        .flat_map(|x| subscriptions_of(node, x))
        .filter(|sub| {
            let (group, filter) = match sub.topic.strip_prefix("$share/") {
                Some(rest) => match rest.split_once('/') {
                    Some((g, f)) => (Some(g), f),
                    None => (None, sub.topic.as_str()),
                },
                None => (None, sub.topic.as_str()),
            };
            q.topic.as_ref().is_none_or(|t| &sub.topic == t)
                && q.qos.is_none_or(|x| sub.qos == x)
                && q.share_group.as_deref().is_none_or(|g| group == Some(g))
                && q.match_topic
                    .as_deref()
                    .is_none_or(|t| plugin_api::topic_matches(filter, t))
        })
        .collect();
    Ok(Json(paged(list, p)?))
}
