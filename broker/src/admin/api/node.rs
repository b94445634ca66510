//! Node endpoints: health, the OpenAPI description, status, nodes, statistics, metrics (JSON
//! and Prometheus) and listeners.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa::OpenApi as _;

use super::{ApiResult, ApiState, Failure, PROMETHEUS_TEXT};
use crate::admin::types::*;
use crate::broker::Broker;

/// `GET /health`: 200 while the broker accepts clients, 503 while starting or stopping.
#[utoipa::path(get, path = "/health", tag = "node", security(()),
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub(super) async fn health(State(s): State<ApiState>) -> Response {
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
pub(super) async fn openapi() -> Response {
    match super::ApiDoc::openapi().to_json() {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => {
            Failure(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()).into_response()
        }
    }
}

/// The node's status and counters (what `brokerctl status` prints).
#[utoipa::path(get, path = "/api/v5/status", tag = "node",
    responses((status = 200, body = Status), (status = 401, body = ApiError)))]
pub(super) async fn status(State(s): State<ApiState>) -> Json<Status> {
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
pub(super) async fn nodes(State(s): State<ApiState>) -> Json<Vec<Node>> {
    Json(vec![node_of(&s.broker)])
}

/// One node by name.
#[utoipa::path(get, path = "/api/v5/nodes/{node}", tag = "node",
    params(("node" = String, Path, description = "Node name")),
    responses((status = 200, body = Node), (status = 404, body = ApiError)))]
pub(super) async fn node(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Node>> {
    if name != s.broker.config.node_name {
        return Err(Failure::not_found(format!("no node named {name:?}")));
    }
    Ok(Json(node_of(&s.broker)))
}

/// The retainer's `info --json` answer, if it is loaded.
async fn retainer_info(b: &Broker) -> Option<serde_json::Value> {
    let text = super::messages::retainer(b, &["info", "--json"])
        .await
        .ok()?;
    serde_json::from_str(&text).ok()
}

/// Counts, with EMQX's names (`connections.count`, `subscriptions.count`, …).
#[utoipa::path(get, path = "/api/v5/stats", tag = "node",
    responses((status = 200, body = Object), (status = 401, body = ApiError)))]
pub(super) async fn stats(State(s): State<ApiState>) -> Json<serde_json::Value> {
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
pub(super) async fn metrics(State(s): State<ApiState>) -> Json<Vec<serde_json::Value>> {
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
pub(super) async fn prometheus(State(s): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        crate::sys::prometheus(&s.broker),
    )
        .into_response()
}

/// The listeners clients connect to, with the addresses actually bound.
#[utoipa::path(get, path = "/api/v5/listeners", tag = "node",
    responses((status = 200, body = Vec<Listener>)))]
pub(super) async fn listeners(State(s): State<ApiState>) -> Json<Vec<Listener>> {
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
