//! `dashboard`: a web UI for operating the broker, served by a plugin on its own port.
//!
//! The page (HTML, CSS and JavaScript embedded in this library, no build step and no files to
//! install) talks only to this plugin. The plugin forwards every `/api/v5/…` request of the
//! page, with the logged-in user's `Authorization` header, to the broker's management API
//! through the `management_request` host service — so the dashboard can do exactly what the
//! user's credentials allow, and a third-party plugin could build the same thing. A request
//! without credentials is refused here and never forwarded (a forwarded request without them
//! would act with the plugin's own authority).
//!
//! Besides forwarding, the plugin samples the broker's counters every `sample_interval_secs`
//! (with its own authority) and keeps `history_minutes` of message rates, so the overview's
//! charts show the last minutes as soon as the page opens.
//!
//! Routes: `/` and the assets; `/dashboard/session` (checks credentials, tells the page its
//! node and the WebSocket URL for the live topic viewer); `/dashboard/rates`; `/api/v5/*`
//! (forwarded).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use plugin_api::*;
use serde::{Deserialize, Serialize};

/// `etc/plugins/dashboard.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Address of the web UI (loopback only).
    bind: SocketAddr,
    /// Seconds between two rate samples.
    sample_interval_secs: u64,
    /// Minutes of rate history kept.
    history_minutes: u64,
    /// WebSocket URL for the topic viewer (empty = derived from the broker's ws listener).
    ws_url: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 18084)),
            sample_interval_secs: 5,
            history_minutes: 15,
            ws_url: String::new(),
        }
    }
}

/// One point of the rate charts.
#[derive(Debug, Clone, Copy, Serialize)]
struct Sample {
    /// When, epoch ms.
    ts_ms: u64,
    /// PUBLISH packets received per second since the previous sample.
    received_per_sec: f64,
    /// PUBLISH packets sent per second.
    sent_per_sec: f64,
    /// Messages dropped per second.
    dropped_per_sec: f64,
    /// Connections at the time.
    connections: u64,
}

/// The counters a sample is computed from.
#[derive(Debug, Clone, Copy)]
struct Counters {
    at_ms: u64,
    received: u64,
    sent: u64,
    dropped: u64,
    connections: u64,
}

struct Shared {
    host: HostRef,
    config: Config,
    history: Mutex<VecDeque<Sample>>,
}

/// The plugin.
pub struct Dashboard {
    shared: Arc<Shared>,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    stopped: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    sampler: tokio::task::JoinHandle<()>,
}

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const MQTT_JS: &str = include_str!("../assets/mqtt.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// What the page may load and connect to: only this origin, plus WebSockets for the viewer.
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"code": code, "message": message})),
    )
        .into_response()
}

/// The user's `Authorization` header, if any.
fn credentials(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
        .map(str::to_owned)
}

/// The answer to a request without credentials (never forwarded).
fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "log in with the admin token or an API key",
    )
}

/// Runs one management API request; `authorization` None = the plugin's own authority.
async fn api(
    host: &HostRef,
    method: &str,
    path: &str,
    authorization: Option<String>,
    body: Vec<u8>,
) -> ApiResponse {
    host.management_request(ApiRequest {
        method: method.into(),
        path: path.into(),
        authorization: authorization.map(RString::from).into(),
        body: body.into(),
    })
    .await
}

fn into_response(r: ApiResponse) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = HeaderValue::from_str(r.content_type.as_str())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let mut response = (status, r.body.into_vec()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    response
}

/// Forwards the page's API requests with the user's credentials.
async fn forward(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(auth) = credentials(&headers) else {
        return unauthorized();
    };
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    into_response(api(&s.host, method.as_str(), path, Some(auth), body.to_vec()).await)
}

/// Checks the user's credentials against the API; answers the node name and viewer URL.
async fn session(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Some(auth) = credentials(&headers) else {
        return unauthorized();
    };
    let answer = api(&s.host, "GET", "/api/v5/listeners", Some(auth), Vec::new()).await;
    if answer.status != 200 {
        return into_response(answer);
    }
    let listeners: Vec<serde_json::Value> =
        serde_json::from_slice(answer.body.as_slice()).unwrap_or_default();
    // The viewer connects to the first WebSocket listener, on the page's own host name.
    let ws = listeners
        .iter()
        .find(|l| l["type"] == "ws" || l["type"] == "wss");
    let ws = ws.map(|l| {
        let port = l["bind"]
            .as_str()
            .and_then(|b| b.rsplit(':').next())
            .unwrap_or("")
            .to_owned();
        serde_json::json!({
            "scheme": if l["type"] == "wss" { "wss" } else { "ws" },
            "port": port,
            "path": l["ws_path"].as_str().unwrap_or("/mqtt"),
        })
    });
    Json(serde_json::json!({
        "node": s.host.node_name().as_str(),
        "ws_url": s.config.ws_url,
        "ws": ws,
        "sample_interval_secs": s.config.sample_interval_secs,
        "history_minutes": s.config.history_minutes,
    }))
    .into_response()
}

/// The rate history, for a logged-in user.
async fn rates(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Some(auth) = credentials(&headers) else {
        return unauthorized();
    };
    let check = api(&s.host, "GET", "/api/v5/nodes", Some(auth), Vec::new()).await;
    if check.status != 200 {
        return into_response(check);
    }
    let history: Vec<Sample> = match s.history.lock() {
        Ok(h) => h.iter().copied().collect(),
        Err(_) => Vec::new(),
    };
    Json(history).into_response()
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/mqtt.js",
            get(|| async { asset("text/javascript; charset=utf-8", MQTT_JS) }),
        )
        .route(
            "/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route("/dashboard/session", get(session))
        .route("/dashboard/rates", get(rates))
        .route("/api/v5/{*rest}", axum::routing::any(forward))
        .with_state(shared)
}

/// Reads the counters through the API (the plugin's own authority).
async fn counters(host: &HostRef) -> Option<Counters> {
    let r = api(host, "GET", "/api/v5/metrics", None, Vec::new()).await;
    if r.status != 200 {
        return None;
    }
    let list: Vec<serde_json::Value> = serde_json::from_slice(r.body.as_slice()).ok()?;
    let m = list.first()?;
    let n = |k: &str| m[k].as_u64().unwrap_or(0);
    Some(Counters {
        at_ms: host.now_ms(),
        received: n("messages.received"),
        sent: n("messages.sent"),
        dropped: n("messages.dropped"),
        connections: n("connections"),
    })
}

/// Samples the counters forever, keeping `history_minutes` of rates.
async fn sample(shared: Arc<Shared>) {
    let every = Duration::from_secs(shared.config.sample_interval_secs);
    let keep =
        ((shared.config.history_minutes * 60) / shared.config.sample_interval_secs).max(2) as usize;
    let mut previous: Option<Counters> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(now) = counters(&shared.host).await else {
            continue;
        };
        if let Some(before) = previous {
            let secs = (now.at_ms.saturating_sub(before.at_ms) as f64 / 1000.0).max(0.001);
            let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
            let point = Sample {
                ts_ms: now.at_ms,
                received_per_sec: rate(now.received, before.received),
                sent_per_sec: rate(now.sent, before.sent),
                dropped_per_sec: rate(now.dropped, before.dropped),
                connections: now.connections,
            };
            if let Ok(mut h) = shared.history.lock() {
                h.push_back(point);
                while h.len() > keep {
                    h.pop_front();
                }
            }
        }
        previous = Some(now);
    }
}

impl Plugin for Dashboard {
    const NAME: &'static str = "dashboard";
    const DESCRIPTION: &'static str = "web dashboard on its own port (default 127.0.0.1:18084)";
    /// An HTTP server for one operator and a periodic sampler: light, never blocking.
    const RUNTIME_THREADS: usize = 1;

    fn create(ctx: Context, config: &str) -> Result<Self, PluginError> {
        let config: Config =
            toml::from_str(config).map_err(|e| PluginError::config(e.to_string()))?;
        if !config.bind.ip().is_loopback() {
            return Err(PluginError::config(format!(
                "bind = \"{}\": the dashboard serves plain HTTP and binds a loopback address only; reach it from elsewhere through a TLS reverse proxy or an SSH tunnel",
                config.bind
            )));
        }
        if config.sample_interval_secs == 0 || config.history_minutes == 0 {
            return Err(PluginError::config(
                "sample_interval_secs and history_minutes must be at least 1",
            ));
        }
        // Bind now, so a port in use fails the load with a clear message.
        let listener = std::net::TcpListener::bind(config.bind)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| PluginError::config(format!("cannot bind {}: {e}", config.bind)))?;
        let listener = {
            let _entered = ctx.runtime().enter();
            tokio::net::TcpListener::from_std(listener)
                .map_err(|e| PluginError::config(format!("cannot use {}: {e}", config.bind)))?
        };
        let shared = Arc::new(Shared {
            host: ctx.host().clone(),
            config,
            history: Mutex::new(VecDeque::new()),
        });
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (done, stopped) = std::sync::mpsc::channel();
        let app = router(shared.clone());
        let bind = shared.config.bind;
        ctx.spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "dashboard server failed");
            }
            let _ = done.send(());
        });
        let sampler = ctx.spawn(sample(shared.clone()));
        tracing::info!(%bind, "dashboard listening on http://{bind}");
        Ok(Dashboard {
            shared,
            stop: Mutex::new(Some(stop)),
            stopped: Mutex::new(Some(stopped)),
            sampler,
        })
    }

    fn registration(&self) -> Registration {
        Registration::default()
    }

    fn shutdown(&self) {
        self.sampler.abort();
        if let Some(stop) = self.stop.lock().ok().and_then(|mut s| s.take()) {
            let _ = stop.send(());
        }
        // The port must be free when this returns: a reload binds it again at once.
        if let Some(stopped) = self.stopped.lock().ok().and_then(|mut s| s.take()) {
            if stopped.recv_timeout(Duration::from_secs(5)).is_err() {
                tracing::warn!(
                    bind = %self.shared.config.bind,
                    "dashboard requests still open after 5 s; closing"
                );
            }
        }
    }
}

plugin_api::export_plugin!(Dashboard);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_is_valid_and_loopback() {
        let c: Config = toml::from_str(include_str!("../../../etc/plugins/dashboard.toml"))
            .expect("shipped etc/plugins/dashboard.toml parses");
        assert!(c.bind.ip().is_loopback());
        assert_eq!(c.bind.port(), 18084);
    }
}
