//! The management API's routes and handlers (axum).
//!
//! Paths and shapes follow EMQX 5's REST API where it has the same endpoint; the rest (plugin
//! load/unload/reload, plugin commands, sessions) are this broker's own and documented in
//! `docs/management-api.md` and the OpenAPI description (`GET /api/v5/openapi.json`).
//!
//! This module holds what every endpoint shares (the state, the error answer, paging, the
//! authentication layer) and the routes; the handlers are grouped by what they manage:
//! `node`, `clients` (with sessions and subscriptions), `messages` (publish, retained,
//! delayed), `plugins` (with their commands) and `keys`.

mod clients;
mod keys;
mod messages;
mod node;
mod plugins;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};

use super::auth::Caller;
use super::types::*;
use crate::broker::{now_ms, Broker};
use clients::*;
use keys::*;
use messages::*;
use node::*;
use plugins::*;

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
