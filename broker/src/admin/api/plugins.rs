//! Plugins (list, load, unload, reload) and the commands they register.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::{ApiResult, ApiState, Failure};
use crate::admin::types::*;
use crate::plugin::PluginOpError;

/// Every plugin found, loaded or not, with its hooks and counters.
#[utoipa::path(get, path = "/api/v5/plugins", tag = "plugins",
    responses((status = 200, body = Object)))]
pub(super) async fn plugins(State(s): State<ApiState>) -> Json<crate::plugin::PluginList> {
    Json(s.broker.plugins.list())
}

/// One plugin, with its configuration file.
#[utoipa::path(get, path = "/api/v5/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, body = PluginDetail), (status = 404, body = ApiError)))]
pub(super) async fn plugin(
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
pub(super) async fn plugin_action(
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
pub(super) async fn commands(State(s): State<ApiState>) -> Json<Vec<CommandInfo>> {
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
pub(super) async fn run_command(
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
