//! API keys: listed, created and deleted by the admin token (a key cannot manage keys).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::{ApiResult, ApiState, Failure};
use crate::admin::auth::Caller;
use crate::admin::types::*;
use crate::broker::now_ms;

/// The credentials store, if `caller` may manage API keys.
fn credentials<'a>(
    s: &'a ApiState,
    caller: &Caller,
) -> ApiResult<&'a Arc<crate::admin::auth::Credentials>> {
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
pub(super) async fn api_keys(
    State(s): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> ApiResult<Json<Vec<ApiKeyInfo>>> {
    Ok(Json(credentials(&s, &caller)?.list()))
}

/// Creates an API key (admin token only). The answer is the only place its secret appears.
#[utoipa::path(post, path = "/api/v5/api_key", tag = "api_key", request_body = ApiKeyRequest,
    responses((status = 200, body = ApiKeyCreated), (status = 400, body = ApiError),
              (status = 403, body = ApiError), (status = 409, body = ApiError)))]
pub(super) async fn create_api_key(
    State(s): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Json(r): Json<ApiKeyRequest>,
) -> ApiResult<Json<ApiKeyCreated>> {
    use crate::admin::auth::KeyError;
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
pub(super) async fn delete_api_key(
    State(s): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    use crate::admin::auth::KeyError;
    credentials(&s, &caller)?
        .delete(&name)
        .map(|()| StatusCode::NO_CONTENT)
        .map_err(|e| match e {
            KeyError::NotFound(_) => Failure::not_found(e.to_string()),
            _ => Failure(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()),
        })
}
