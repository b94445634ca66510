//! Serving the management API: HTTP/1.1 with keep-alive (hyper), over TLS when configured,
//! with request limits and timeouts as tower layers and a graceful stop with the broker.
//!
//! Plain HTTP is only served on a loopback address (config validation refuses anything else);
//! off loopback the API must be served over TLS (`[admin.tls]`).

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context as _;
use axum::http::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt as _;

use super::api::{router, ApiState};
use super::auth::{ensure_token, Caller, Credentials};
use crate::broker::Broker;
use crate::plugin::{ManagementApi, ManagementFuture, ManagementResponse};

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;
/// Time a client has to send a request's headers (and to finish a TLS handshake).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A running management API.
pub struct Server {
    /// The address bound (the real port when the config asked for port 0).
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Stops accepting, lets requests in flight finish (at most `deadline`), then returns.
    pub async fn stop(self, deadline: Duration) {
        self.stop.send_replace(true);
        if tokio::time::timeout(deadline, self.task).await.is_err() {
            tracing::warn!("management API requests still running after {deadline:?}: dropped");
        }
    }
}

/// Sets up the credentials (creating the admin token at first start), binds the API's
/// address and starts serving.
pub async fn start(broker: Arc<Broker>) -> anyhow::Result<Server> {
    let config = &broker.config.admin;
    let token_file = broker.config.admin_token_file();
    let token = ensure_token(&token_file)
        .with_context(|| format!("cannot use the admin token file {}", token_file.display()))?;
    let keys_file = broker.config.admin_api_keys_file();
    let credentials = Credentials::load(token, keys_file.clone())
        .with_context(|| format!("cannot read the API key file {}", keys_file.display()))?;
    let credentials = Arc::new(credentials);
    serve_plugins(&broker, Some(credentials.clone()));
    let tls = match &config.tls {
        Some(t) => Some(crate::listener::tls::acceptor(t).context("admin.tls")?),
        None => None,
    };
    let listener = TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot bind the management API on {}", config.bind))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, tls = tls.is_some(), token_file = %token_file.display(), "management API listening");
    let app = router(ApiState {
        broker: broker.clone(),
        credentials: Some(credentials),
    })
    .layer(axum::extract::DefaultBodyLimit::max(config.max_body_bytes))
    .layer(tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        Duration::from_secs(config.request_timeout_secs),
    ));
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(accept_loop(listener, tls, app, stopped));
    Ok(Server { addr, stop, task })
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    mut stopped: watch::Receiver<bool>,
) {
    let service = TowerToHyperService::new(app);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let accepted = tokio::select! {
            _ = stopped.wait_for(|s| *s) => break,
            a = listener.accept() => a,
        };
        let Ok((tcp, _peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let service = service.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let result = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let conn = http.serve_connection(TokioIo::new(stream), service);
                            watcher.watch(conn).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "management API TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
                None => {
                    let conn = http.serve_connection(TokioIo::new(tcp), service);
                    watcher.watch(conn).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "management API connection ended");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Makes the API available to plugins in this process (the `management_request` host
/// service). `credentials` are those of the HTTP API when it runs: without them a request
/// that carries its own authorization is refused as the API being disabled, and one without
/// acts with the plugin's authority either way.
pub fn serve_plugins(broker: &Arc<Broker>, credentials: Option<Arc<Credentials>>) {
    broker.plugins.set_management(Arc::new(InProcess {
        broker: Arc::downgrade(broker),
        credentials,
    }));
}

/// The API run in this process for plugins.
struct InProcess {
    broker: Weak<Broker>,
    credentials: Option<Arc<Credentials>>,
}

impl ManagementApi for InProcess {
    fn request(
        &self,
        plugin: &str,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: Vec<u8>,
    ) -> ManagementFuture {
        let Some(broker) = self.broker.upgrade() else {
            let answer = failure(503, "the broker is shutting down".into());
            return Box::pin(async move { answer });
        };
        let state = ApiState {
            broker,
            credentials: self.credentials.clone(),
        };
        let request = build_request(plugin, method, path, authorization, body);
        Box::pin(async move {
            match request {
                Ok(r) => in_process(state, r).await,
                Err(e) => failure(400, format!("bad request: {e}")),
            }
        })
    }
}

/// An answer with a JSON error body.
fn failure(status: u16, message: String) -> ManagementResponse {
    ManagementResponse {
        status,
        content_type: "application/json".into(),
        body: serde_json::json!({"code": "BAD_REQUEST", "message": message})
            .to_string()
            .into_bytes(),
    }
}

/// The HTTP request a plugin's call stands for, marked as coming from plugin `plugin`.
fn build_request(
    plugin: &str,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: Vec<u8>,
) -> Result<axum::http::Request<axum::body::Body>, axum::http::Error> {
    let mut builder = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header(axum::http::header::CONTENT_TYPE, "application/json");
    if let Some(a) = authorization {
        builder = builder.header(axum::http::header::AUTHORIZATION, a);
    }
    let mut request = builder.body(axum::body::Body::from(body))?;
    request
        .extensions_mut()
        .insert(Caller::Plugin(plugin.to_owned()));
    Ok(request)
}

/// Runs one request through the API in this process.
async fn in_process(
    state: ApiState,
    request: axum::http::Request<axum::body::Body>,
) -> ManagementResponse {
    let app = router(state);
    let response = match app.oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    match axum::body::to_bytes(response.into_body(), usize::MAX).await {
        Ok(bytes) => ManagementResponse {
            status,
            content_type,
            body: bytes.to_vec(),
        },
        Err(e) => failure(500, format!("cannot read the answer: {e}")),
    }
}
