//! The management API's routes and handlers (axum).
//!
//! Paths and shapes follow EMQX 5's REST API where it has the same endpoint; the rest (plugin
//! load/unload/reload, plugin commands, sessions) are this broker's own and documented in
//! `docs/management-api.md` and the OpenAPI description (`GET /api/v5/openapi.json`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine as _;
use utoipa::OpenApi as _;

use super::auth::Caller;
use super::types::*;
use crate::broker::{now_ms, unix_ms, Broker};
use crate::plugin::PluginOpError;
use crate::session::Session as BrokerSession;

/// What every handler gets.
#[derive(Clone)]
pub struct ApiState {
    /// The broker it manages.
    pub broker: Arc<Broker>,
    /// Who may use the API over HTTP (`None` when only plugins in this process use it).
    pub credentials: Option<Arc<super::auth::Credentials>>,
}

/// A failed request: status, code and message, answered as [`ApiError`].
#[derive(Debug)]
pub struct Failure(StatusCode, &'static str, String);

impl Failure {
    fn bad_request(m: impl Into<String>) -> Failure {
        Failure(StatusCode::BAD_REQUEST, "BAD_REQUEST", m.into())
    }

    fn not_found(m: impl Into<String>) -> Failure {
        Failure(StatusCode::NOT_FOUND, "NOT_FOUND", m.into())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = ApiError {
            code: self.1.to_owned(),
            message: self.2,
        };
        (self.0, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, Failure>;

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The whole API: authenticated routes behind [`authenticate`], plus `GET /health` and the
/// OpenAPI description, which need no credentials.
pub fn router(state: ApiState) -> Router {
    let v5 = Router::new()
        .route("/api/v5/status", get(status))
        .route("/api/v5/nodes", get(nodes))
        .route("/api/v5/nodes/{node}", get(node))
        .route("/api/v5/stats", get(stats))
        .route("/api/v5/metrics", get(metrics))
        .route("/api/v5/clients", get(clients))
        .route("/api/v5/clients/{clientid}", get(client).delete(kick))
        .route(
            "/api/v5/clients/{clientid}/subscriptions",
            get(client_subscriptions),
        )
        .route("/api/v5/clients/{clientid}/subscribe", post(subscribe))
        .route(
            "/api/v5/clients/{clientid}/subscribe/bulk",
            post(subscribe_bulk),
        )
        .route("/api/v5/clients/{clientid}/unsubscribe", post(unsubscribe))
        .route(
            "/api/v5/clients/{clientid}/unsubscribe/bulk",
            post(unsubscribe_bulk),
        )
        .route(
            "/api/v5/clients/{clientid}/authorization/cache",
            delete(clean_client_acl_cache),
        )
        .route("/api/v5/authorization/cache", delete(clean_acl_cache))
        .route("/api/v5/sessions", get(sessions))
        .route(
            "/api/v5/sessions/{clientid}",
            get(session).delete(drop_session),
        )
        .route("/api/v5/subscriptions", get(subscriptions))
        .route("/api/v5/publish", post(publish))
        .route("/api/v5/publish/bulk", post(publish_bulk))
        .route("/api/v5/mqtt/retainer/messages", get(retained_list))
        .route(
            "/api/v5/mqtt/retainer/message/{*topic}",
            get(retained_get).delete(retained_delete),
        )
        .route("/api/v5/mqtt/delayed/messages", get(delayed_list))
        .route(
            "/api/v5/mqtt/delayed/messages/{id}",
            get(delayed_get).delete(delayed_delete),
        )
        .route("/api/v5/plugins", get(plugins))
        .route("/api/v5/plugins/{name}", get(plugin))
        .route(
            "/api/v5/plugins/{name}/{action}",
            post(plugin_action).put(plugin_action),
        )
        .route("/api/v5/commands", get(commands).post(run_command))
        .route("/api/v5/listeners", get(listeners))
        .route("/api/v5/api_key", get(api_keys).post(create_api_key))
        .route("/api/v5/api_key/{name}", delete(delete_api_key))
        .route("/metrics", get(prometheus))
        .route("/api/v5/prometheus/stats", get(prometheus))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/api/v5/openapi.json", get(openapi))
        .merge(v5)
        .fallback(|method: Method, uri: axum::http::Uri| async move {
            Failure::not_found(format!("no such endpoint: {method} {}", uri.path()))
        })
        .with_state(state)
}

/// Checks the credentials of every request but `/health` and the OpenAPI description, and
/// logs every change (any method but GET) with who made it.
async fn authenticate(State(s): State<ApiState>, mut request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let caller = match (header, s.credentials.as_deref()) {
        (Some(h), Some(credentials)) => credentials.check(h, now_ms()),
        (Some(_), None) => {
            return Failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the management API is disabled (admin.enabled = false)".into(),
            )
            .into_response()
        }
        // In-process requests from plugins carry their caller; HTTP requests cannot.
        (None, _) => request.extensions().get::<Caller>().cloned(),
    };
    let Some(caller) = caller else {
        let mut r = Failure(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "missing or wrong credentials: send `Authorization: Bearer <admin token>` or `Authorization: Basic <base64 of api_key:api_secret>`".into(),
        )
        .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"broker\""),
        );
        return r;
    };
    if request.method() != Method::GET {
        let who = match &caller {
            Caller::Admin => "admin token".to_owned(),
            Caller::ApiKey(n) => format!("api key {n}"),
            Caller::Plugin(n) => format!("plugin {n}"),
        };
        tracing::info!(method = %request.method(), path = %request.uri().path(), by = %who, "management API change");
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

fn paged<T>(items: Vec<T>, p: Paging) -> ApiResult<Page<T>> {
    let page = p.page.unwrap_or(1);
    let limit = p.limit.unwrap_or(100);
    if page == 0 {
        return Err(Failure::bad_request("page starts at 1"));
    }
    if !(1..=10_000).contains(&limit) {
        return Err(Failure::bad_request("limit must be 1 to 10000"));
    }
    let count = items.len();
    let start = (page - 1).saturating_mul(limit);
    let data: Vec<T> = items.into_iter().skip(start).take(limit).collect();
    let hasnext = start.saturating_add(data.len()) < count;
    Ok(Page {
        data,
        meta: Meta {
            page,
            limit,
            count,
            hasnext,
        },
    })
}

/// `GET /health`: 200 while the broker accepts clients, 503 while starting or stopping.
#[utoipa::path(get, path = "/health", tag = "node", security(()),
    responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn health(State(s): State<ApiState>) -> Response {
    let (code, status) = if s.broker.is_accepting() {
        (StatusCode::OK, "ok")
    } else if s.broker.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    };
    let body = Health {
        status: status.to_owned(),
        node: s.broker.config.node_name.clone(),
    };
    (code, Json(body)).into_response()
}

/// `GET /api/v5/openapi.json`: this API's OpenAPI 3.1 description.
#[utoipa::path(get, path = "/api/v5/openapi.json", tag = "node", security(()),
    responses((status = 200, description = "OpenAPI 3.1 document")))]
async fn openapi() -> Response {
    match ApiDoc::openapi().to_json() {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => {
            Failure(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()).into_response()
        }
    }
}

/// The node's status and counters (what `brokerctl status` prints).
#[utoipa::path(get, path = "/api/v5/status", tag = "node",
    responses((status = 200, body = Status), (status = 401, body = ApiError)))]
async fn status(State(s): State<ApiState>) -> Json<Status> {
    let b = &s.broker;
    Json(Status {
        node: b.config.node_name.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_secs: b.started.elapsed().as_secs(),
        sessions: b.session_count(),
        subscriptions: b.subscription_count(),
        metrics: b.metrics_snapshot(),
    })
}

fn node_of(b: &Broker) -> Node {
    Node {
        node: b.config.node_name.clone(),
        node_status: if b.is_shutting_down() {
            "stopping"
        } else {
            "running"
        }
        .to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime: b.started.elapsed().as_millis() as u64,
        connections: b.metrics_snapshot().connections,
        sessions: b.session_count(),
        subscriptions: b.subscription_count(),
        memory_used: resident_bytes(),
        pid: std::process::id(),
    }
}

/// Resident set size of this process (Linux `/proc`), 0 elsewhere.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// The nodes: this one (a list, as EMQX answers for a cluster).
#[utoipa::path(get, path = "/api/v5/nodes", tag = "node",
    responses((status = 200, body = Vec<Node>), (status = 401, body = ApiError)))]
async fn nodes(State(s): State<ApiState>) -> Json<Vec<Node>> {
    Json(vec![node_of(&s.broker)])
}

/// One node by name.
#[utoipa::path(get, path = "/api/v5/nodes/{node}", tag = "node",
    params(("node" = String, Path, description = "Node name")),
    responses((status = 200, body = Node), (status = 404, body = ApiError)))]
async fn node(State(s): State<ApiState>, Path(name): Path<String>) -> ApiResult<Json<Node>> {
    if name != s.broker.config.node_name {
        return Err(Failure::not_found(format!("no node named {name:?}")));
    }
    Ok(Json(node_of(&s.broker)))
}

/// The retainer's `info --json` answer, if it is loaded.
async fn retainer_info(b: &Broker) -> Option<serde_json::Value> {
    let owner = b.plugins.command_owner("retainer")?;
    let text = b
        .hooks
        .command(
            &owner,
            vec!["retainer".into(), "info".into(), "--json".into()],
        )
        .await
        .ok()?;
    serde_json::from_str(&text).ok()
}

/// Counts, with EMQX's names (`connections.count`, `subscriptions.count`, …).
#[utoipa::path(get, path = "/api/v5/stats", tag = "node",
    responses((status = 200, body = Object), (status = 401, body = ApiError)))]
async fn stats(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let b = &s.broker;
    let m = b.metrics_snapshot();
    let retained = retainer_info(b)
        .await
        .and_then(|v| v["messages"].as_u64())
        .unwrap_or(0);
    Json(serde_json::json!({
        "node": b.config.node_name,
        "connections.count": m.connections,
        "live_connections.count": m.connections,
        "sessions.count": b.session_count(),
        "subscriptions.count": b.subscription_count(),
        "retained.count": retained,
    }))
}

/// Every counter, named as in EMQX (`messages.received`): the first `_` becomes a `.`.
#[utoipa::path(get, path = "/api/v5/metrics", tag = "node",
    responses((status = 200, body = Vec<Object>), (status = 401, body = ApiError)))]
async fn metrics(State(s): State<ApiState>) -> Json<Vec<serde_json::Value>> {
    let b = &s.broker;
    let mut map = serde_json::Map::new();
    map.insert("node".into(), b.config.node_name.clone().into());
    for e in b.metrics_snapshot().entries() {
        map.insert(e.name.replacen('_', ".", 1), e.value.into());
    }
    Json(vec![serde_json::Value::Object(map)])
}

/// Metrics in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "node",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn prometheus(State(s): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        crate::sys::prometheus(&s.broker),
    )
        .into_response()
}

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
async fn clients(
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
async fn client(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult<Json<Client>> {
    let session = session_of(&s.broker, &id)?;
    Ok(Json(client_of(&s.broker.config.node_name, &session)))
}

/// Disconnects a connected client (MQTT 5: DISCONNECT 0x98). A persistent session stays;
/// `DELETE /api/v5/sessions/{clientid}` ends it.
#[utoipa::path(delete, path = "/api/v5/clients/{clientid}", tag = "clients",
    params(("clientid" = String, Path, description = "Client id, percent-encoded")),
    responses((status = 204), (status = 404, body = ApiError)))]
async fn kick(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
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
async fn client_subscriptions(
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
async fn subscribe(
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
async fn subscribe_bulk(
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
async fn unsubscribe(
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
async fn unsubscribe_bulk(
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
async fn clean_client_acl_cache(
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
async fn clean_acl_cache(State(s): State<ApiState>) -> Json<MessageReply> {
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
async fn sessions(
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
async fn session(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult<Json<Session>> {
    let found = session_of(&s.broker, &id)?;
    Ok(Json(session_summary(&found)))
}

/// Ends a session now (kicking its client), in the session store too.
#[utoipa::path(delete, path = "/api/v5/sessions/{clientid}", tag = "sessions",
    params(("clientid" = String, Path, description = "Client id, percent-encoded")),
    responses((status = 200, body = MessageReply), (status = 404, body = ApiError)))]
async fn drop_session(
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
async fn subscriptions(
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
async fn publish(State(s): State<ApiState>, Json(r): Json<PublishRequest>) -> Response {
    match publish_one(&s.broker, r) {
        Ok((code, reply)) => (code, Json(reply)).into_response(),
        Err(f) => f.into_response(),
    }
}

/// Publishes several messages, in order; stops at the first invalid one.
#[utoipa::path(post, path = "/api/v5/publish/bulk", tag = "publish", request_body = Vec<PublishRequest>,
    responses((status = 200, body = Vec<PublishReply>), (status = 400, body = ApiError)))]
async fn publish_bulk(
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
async fn retainer(b: &Broker, args: &[&str]) -> ApiResult<String> {
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
async fn retained_list(
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
async fn retained_get(
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
async fn retained_delete(
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
async fn delayed_list(
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
async fn delayed_get(
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
async fn delayed_delete(
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

/// Every plugin found, loaded or not, with its hooks and counters.
#[utoipa::path(get, path = "/api/v5/plugins", tag = "plugins",
    responses((status = 200, body = Object)))]
async fn plugins(State(s): State<ApiState>) -> Json<crate::plugin::PluginList> {
    Json(s.broker.plugins.list())
}

/// One plugin, with its configuration file.
#[utoipa::path(get, path = "/api/v5/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, body = PluginDetail), (status = 404, body = ApiError)))]
async fn plugin(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<Json<PluginDetail>> {
    if !crate::config::valid_plugin_name(&name) {
        return Err(Failure::bad_request(format!(
            "invalid plugin name {name:?}"
        )));
    }
    let plugins = &s.broker.plugins;
    let info = plugins
        .list()
        .plugins
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| Failure::not_found(format!("no plugin named {name:?}")))?;
    let path = plugins.config_path(&name);
    Ok(Json(PluginDetail {
        plugin: info,
        config: std::fs::read_to_string(&path).unwrap_or_default(),
        config_file: path.display().to_string(),
    }))
}

fn op_failure(e: PluginOpError) -> Failure {
    let (status, code) = match e {
        PluginOpError::InvalidName(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
        PluginOpError::NotLoaded(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        PluginOpError::AlreadyLoaded(_) => (StatusCode::CONFLICT, "CONFLICT"),
        PluginOpError::Load(crate::plugin::LoadError::NotFound { .. }) => {
            (StatusCode::NOT_FOUND, "NOT_FOUND")
        }
        _ => (StatusCode::UNPROCESSABLE_ENTITY, "PLUGIN_ERROR"),
    };
    Failure(status, code, e.to_string())
}

/// Loads, unloads or reloads a plugin while the broker runs (`start` and `stop` are EMQX's
/// names for load and unload).
#[utoipa::path(post, path = "/api/v5/plugins/{name}/{action}", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name"),
           ("action" = String, Path, description = "load, unload, reload, start or stop")),
    responses((status = 200, body = MessageReply), (status = 404, body = ApiError),
              (status = 409, body = ApiError), (status = 422, body = ApiError)))]
async fn plugin_action(
    State(s): State<ApiState>,
    Path((name, action)): Path<(String, String)>,
) -> ApiResult<Json<MessageReply>> {
    let plugins = &s.broker.plugins;
    let done = match action.as_str() {
        "load" | "start" => plugins.load(&name).await.map(|_| "loaded"),
        "unload" | "stop" => plugins.unload(&name).await.map(|_| "unloaded"),
        "reload" => plugins.reload(&name).await.map(|_| "reloaded"),
        other => {
            return Err(Failure::not_found(format!(
                "unknown plugin action {other:?} (load, unload, reload, start, stop)"
            )))
        }
    }
    .map_err(op_failure)?;
    Ok(Json(MessageReply {
        message: format!("Plugin {name} {done} successfully."),
    }))
}

/// Commands registered by loaded plugins.
#[utoipa::path(get, path = "/api/v5/commands", tag = "plugins",
    responses((status = 200, body = Vec<CommandInfo>)))]
async fn commands(State(s): State<ApiState>) -> Json<Vec<CommandInfo>> {
    Json(
        s.broker
            .plugins
            .commands()
            .into_iter()
            .map(|(name, usage, plugin)| CommandInfo {
                name,
                usage,
                plugin,
            })
            .collect(),
    )
}

/// Runs a plugin command: the body is its arguments, the command name first.
#[utoipa::path(post, path = "/api/v5/commands", tag = "plugins", request_body = Vec<String>,
    responses((status = 200, body = MessageReply), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
async fn run_command(
    State(s): State<ApiState>,
    Json(args): Json<Vec<String>>,
) -> ApiResult<Json<MessageReply>> {
    let first = args
        .first()
        .ok_or_else(|| Failure::bad_request("no command given"))?;
    let owner = s.broker.plugins.command_owner(first).ok_or_else(|| {
        Failure::not_found(format!(
            "unknown command {first:?} (no loaded plugin registers it)"
        ))
    })?;
    match s.broker.hooks.command(&owner, args).await {
        Ok(message) => Ok(Json(MessageReply { message })),
        Err(e) => Err(Failure(
            StatusCode::UNPROCESSABLE_ENTITY,
            "COMMAND_FAILED",
            e,
        )),
    }
}

/// The listeners clients connect to, with the addresses actually bound.
#[utoipa::path(get, path = "/api/v5/listeners", tag = "node",
    responses((status = 200, body = Vec<Listener>)))]
async fn listeners(State(s): State<ApiState>) -> Json<Vec<Listener>> {
    let running = s.broker.is_accepting();
    Json(
        s.broker
            .listeners
            .get()
            .map(|l| {
                l.iter()
                    .map(|b| Listener {
                        name: b.name.clone(),
                        kind: b.kind.to_owned(),
                        bind: b.addr.to_string(),
                        ws_path: b.ws_path.clone(),
                        running,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// The credentials store, if `caller` may manage API keys.
fn credentials<'a>(
    s: &'a ApiState,
    caller: &Caller,
) -> ApiResult<&'a Arc<super::auth::Credentials>> {
    if !caller.may_manage_keys() {
        return Err(Failure(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "only the admin token may manage API keys".into(),
        ));
    }
    s.credentials.as_ref().ok_or(Failure(
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
        "the management API is disabled (admin.enabled = false)".into(),
    ))
}

/// API keys (admin token only; secrets are never shown again).
#[utoipa::path(get, path = "/api/v5/api_key", tag = "api_key",
    responses((status = 200, body = Vec<ApiKeyInfo>), (status = 403, body = ApiError)))]
async fn api_keys(
    State(s): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> ApiResult<Json<Vec<ApiKeyInfo>>> {
    Ok(Json(credentials(&s, &caller)?.list()))
}

/// Creates an API key (admin token only). The answer is the only place its secret appears.
#[utoipa::path(post, path = "/api/v5/api_key", tag = "api_key", request_body = ApiKeyRequest,
    responses((status = 200, body = ApiKeyCreated), (status = 400, body = ApiError),
              (status = 403, body = ApiError), (status = 409, body = ApiError)))]
async fn create_api_key(
    State(s): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Json(r): Json<ApiKeyRequest>,
) -> ApiResult<Json<ApiKeyCreated>> {
    use super::auth::KeyError;
    credentials(&s, &caller)?
        .create(&r.name, &r.desc, r.expires_in_secs, now_ms())
        .map(Json)
        .map_err(|e| match e {
            KeyError::InvalidName(_) => Failure::bad_request(e.to_string()),
            KeyError::Exists(_) => Failure(StatusCode::CONFLICT, "CONFLICT", e.to_string()),
            _ => Failure(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()),
        })
}

/// Deletes an API key (admin token only).
#[utoipa::path(delete, path = "/api/v5/api_key/{name}", tag = "api_key",
    params(("name" = String, Path, description = "Key name")),
    responses((status = 204), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn delete_api_key(
    State(s): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    use super::auth::KeyError;
    credentials(&s, &caller)?
        .delete(&name)
        .map(|()| StatusCode::NO_CONTENT)
        .map_err(|e| match e {
            KeyError::NotFound(_) => Failure::not_found(e.to_string()),
            _ => Failure(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()),
        })
}

/// The OpenAPI description of every endpoint above.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Broker management API", description = "Manage a running broker: clients, sessions, subscriptions, publish, retained messages, plugins, metrics. Paths and shapes follow EMQX 5's REST API where it has the same endpoint."),
    paths(health, openapi, status, nodes, node, stats, metrics, prometheus, clients, client, kick,
        client_subscriptions, subscribe, subscribe_bulk, unsubscribe, unsubscribe_bulk,
        clean_client_acl_cache, clean_acl_cache, sessions, session, drop_session, subscriptions,
        publish, publish_bulk, retained_list, retained_get, retained_delete, delayed_list,
        delayed_get, delayed_delete, plugins, plugin,
        plugin_action, commands, run_command, listeners, api_keys, create_api_key,
        delete_api_key),
    modifiers(&SecuritySchemes),
    security(("bearer" = []), ("basic" = []))
)]
pub struct ApiDoc;

/// Declares the two ways to authenticate: the admin token and API keys.
struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
    }
}
