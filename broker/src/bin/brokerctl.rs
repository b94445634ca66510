//! `brokerctl`: the operator's command line for a running broker, over its management API.
//!
//! It finds the API and its credentials from the broker's config (`--config`, default
//! `etc/broker.toml`): the address from `<data_dir>/listeners.json` (the address actually bound)
//! or `admin.bind`, the token from `admin.token_file` (default `<data_dir>/admin.token`).
//! `--url` with `--token-file` or `--api-key` need no config file at all.
//!
//! Every command prints one short human line (or a table) and exits 0, or prints one error line
//! and exits 1 (2 for usage errors, 3 when the broker cannot be reached). `--json` prints the
//! API's JSON instead. `brokerctl --help` lists the commands, including those registered by
//! the running broker's plugins.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use broker::admin::client::{segment, ApiClient};
use broker::admin::{
    ApiError, ApiKeyCreated, ApiKeyInfo, Client, CommandInfo, DelayedMessage, MessageReply, Page,
    PluginDetail, PublishReply, Retained, Session, Status, Subscription,
};
use broker::config::Config;
use broker::plugin::PluginList;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde_json::json;

/// The operator's command line for a running broker.
#[derive(Parser, Debug)]
#[command(name = "brokerctl", version, about, max_term_width = 100)]
struct Cli {
    /// The broker's config file (to find the API's address and token).
    #[arg(short, long, global = true, default_value = "etc/broker.toml")]
    config: PathBuf,
    /// The management API: host:port, http://host:port or https://host:port.
    #[arg(long, global = true, env = "BROKERCTL_URL")]
    url: Option<String>,
    /// File holding the admin token.
    #[arg(long, global = true, env = "BROKERCTL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// An API key instead of the admin token, as <key>:<secret>.
    #[arg(long, global = true, env = "BROKERCTL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// CA certificates (PEM) for an https management API.
    #[arg(long, global = true)]
    cacert: Option<PathBuf>,
    /// Print the API's JSON answer instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Broker status and counters.
    Status,
    /// Metrics in the Prometheus text format.
    Metrics,
    /// Plugins: list, load, unload, reload, show, or write a new plugin crate.
    #[command(subcommand)]
    Plugins(PluginsCmd),
    /// Connected clients and offline sessions.
    #[command(subcommand)]
    Clients(ClientsCmd),
    /// Sessions, online and offline.
    #[command(subcommand)]
    Sessions(SessionsCmd),
    /// Subscriptions of every session.
    #[command(subcommand)]
    Subscriptions(SubscriptionsCmd),
    /// Publish a message as the broker.
    Publish(PublishArgs),
    /// Retained messages (kept by the retainer plugin).
    #[command(subcommand)]
    Retained(RetainedCmd),
    /// Delayed publishes (`$delayed/<seconds>/<topic>`) waiting for their time.
    #[command(subcommand)]
    Delayed(DelayedCmd),
    /// API keys for scripts and the dashboard (admin token only).
    #[command(subcommand)]
    Apikey(ApikeyCmd),
    /// Cached ACL decisions.
    #[command(subcommand, name = "acl-cache")]
    AclCache(AclCacheCmd),
    /// Commands registered by loaded plugins.
    Commands,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// A command registered by a loaded plugin (e.g. `brokerctl retainer topics`).
    #[command(external_subcommand)]
    Plugin(Vec<String>),
}

#[derive(Subcommand, Debug)]
enum PluginsCmd {
    /// Every plugin found, loaded or not, with hooks and counters.
    List,
    /// Load a plugin from plugin_dir while the broker runs.
    Load {
        /// Plugin name.
        name: String,
    },
    /// Unload a plugin (hooks drained first).
    Unload {
        /// Plugin name.
        name: String,
    },
    /// Reload a plugin (new library and config; the old instance keeps running on failure).
    Reload {
        /// Plugin name.
        name: String,
    },
    /// One plugin and its configuration file.
    Show {
        /// Plugin name.
        name: String,
    },
    /// Write a new plugin crate (needs no broker).
    New {
        /// Plugin name.
        name: String,
        /// Directory to create (default: the name).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Path of the plugin-api crate to depend on.
        #[arg(long, conflicts_with = "api_git")]
        api_path: Option<PathBuf>,
        /// Git URL of the plugin-api crate to depend on.
        #[arg(long)]
        api_git: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ClientsCmd {
    /// List clients.
    List {
        /// Only this user name.
        #[arg(long)]
        username: Option<String>,
        /// Only client ids containing this text.
        #[arg(long)]
        like: Option<String>,
        /// Only connected clients.
        #[arg(long, conflicts_with = "disconnected")]
        connected: bool,
        /// Only offline sessions.
        #[arg(long)]
        disconnected: bool,
    },
    /// One client with its subscriptions.
    Show {
        /// Client id.
        client_id: String,
    },
    /// Disconnect a client (a persistent session stays).
    Kick {
        /// Client id.
        client_id: String,
    },
}

#[derive(Subcommand, Debug)]
enum SessionsCmd {
    /// List sessions.
    List {
        /// Only offline sessions.
        #[arg(long, conflicts_with = "online")]
        offline: bool,
        /// Only online sessions.
        #[arg(long)]
        online: bool,
    },
    /// One session: expiry, queue, subscriptions.
    Show {
        /// Client id.
        client_id: String,
    },
    /// End a session now (kicking its client), in the store too.
    Drop {
        /// Client id.
        client_id: String,
    },
}

#[derive(Subcommand, Debug)]
enum SubscriptionsCmd {
    /// List subscriptions.
    List {
        /// Only this client's.
        #[arg(long)]
        client: Option<String>,
        /// Only this exact filter.
        #[arg(long)]
        topic: Option<String>,
        /// Only filters matching this topic name.
        #[arg(long = "match")]
        match_topic: Option<String>,
    },
    /// Subscribe a session as if its client had sent SUBSCRIBE.
    Add {
        /// Client id.
        client_id: String,
        /// Topic filter.
        filter: String,
        /// Maximum QoS.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
        qos: u8,
        /// No local.
        #[arg(long)]
        nl: bool,
        /// Retain as published.
        #[arg(long)]
        rap: bool,
        /// Retain handling (0, 1, 2).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
        rh: u8,
    },
    /// Remove a subscription of a session.
    Del {
        /// Client id.
        client_id: String,
        /// The filter as subscribed.
        filter: String,
    },
}

#[derive(Args, Debug)]
struct PublishArgs {
    /// Topic name.
    topic: String,
    /// Payload (text; with --base64, base64).
    payload: String,
    /// QoS.
    #[arg(short, long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Retain flag.
    #[arg(short, long)]
    retain: bool,
    /// The payload is base64.
    #[arg(long)]
    base64: bool,
    /// A user property, key=value (repeatable).
    #[arg(long = "user-property", value_name = "KEY=VALUE")]
    user_properties: Vec<String>,
    /// Content type.
    #[arg(long)]
    content_type: Option<String>,
    /// Response topic.
    #[arg(long)]
    response_topic: Option<String>,
    /// Correlation data (text).
    #[arg(long)]
    correlation_data: Option<String>,
    /// Message expiry interval, seconds.
    #[arg(long)]
    message_expiry: Option<u32>,
}

#[derive(Subcommand, Debug)]
enum RetainedCmd {
    /// List retained messages.
    List {
        /// Only topics matching this filter.
        #[arg(long)]
        filter: Option<String>,
    },
    /// One retained message with its payload.
    Show {
        /// Topic name.
        topic: String,
    },
    /// Delete one retained message.
    Delete {
        /// Topic name.
        topic: String,
    },
}

#[derive(Subcommand, Debug)]
enum DelayedCmd {
    /// List the delayed publishes waiting, earliest first.
    List,
    /// One delayed publish with its payload.
    Show {
        /// Message id (from `delayed list`).
        id: String,
    },
    /// Cancel a delayed publish: it is never published.
    #[command(alias = "delete")]
    Del {
        /// Message id (from `delayed list`).
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum ApikeyCmd {
    /// Create a key; its secret is printed once.
    Create {
        /// Unique name.
        name: String,
        /// Free text.
        #[arg(long, default_value = "")]
        desc: String,
        /// Lifetime in seconds (default: never expires).
        #[arg(long)]
        expires_in: Option<u64>,
    },
    /// List keys (without secrets).
    List,
    /// Delete a key.
    Delete {
        /// Key name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum AclCacheCmd {
    /// Forget cached ACL decisions of one client, or of all.
    Clean {
        /// Client id (default: every client).
        client_id: Option<String>,
    },
}

/// What went wrong, with the exit code.
struct Fail(u8, String);

type CtlResult = Result<(), Fail>;

/// Where the API is and how to authenticate. The config file is read only when `--url` or a
/// credential (`--token-file`, `--api-key`) is missing.
fn connect(cli: &Cli) -> Result<ApiClient, Fail> {
    let need_config = cli.url.is_none() || (cli.token_file.is_none() && cli.api_key.is_none());
    let config = if need_config {
        Some(Config::load(&cli.config).map_err(|e| {
            Fail(
                2,
                format!("brokerctl: {e} (or pass --url with --token-file or --api-key)"),
            )
        })?)
    } else {
        None
    };
    let mut url = cli
        .url
        .clone()
        .or_else(|| config.as_ref().map(api_address))
        .unwrap_or_default();
    if cli.url.is_none() && config.as_ref().is_some_and(|c| c.admin.tls.is_some()) {
        url = format!("https://{url}");
    }
    let authorization = match &cli.api_key {
        Some(key) if !key.contains(':') => {
            return Err(Fail(2, "--api-key must be <key>:<secret>".into()))
        }
        Some(key) => format!("Bearer {key}"),
        None => {
            let file = cli
                .token_file
                .clone()
                .or_else(|| config.as_ref().map(Config::admin_token_file))
                .unwrap_or_default();
            let token = std::fs::read_to_string(&file).map_err(|e| {
                Fail(3, format!("brokerctl: cannot read the admin token {}: {e} (has the broker been started with this config?)", file.display()))
            })?;
            format!("Bearer {}", token.trim())
        }
    };
    ApiClient::new(
        &url,
        authorization,
        cli.cacert.as_deref(),
        Duration::from_secs(60),
    )
    .map_err(|e| Fail(2, format!("brokerctl: {e}")))
}

/// The API address actually bound, from listeners.json, else the configured one. An API bound
/// on every interface is reached through `localhost`.
fn api_address(config: &Config) -> String {
    let file = config.data_dir.join("listeners.json");
    let addr = std::fs::read_to_string(file)
        .ok()
        .and_then(|t| serde_json::from_str::<Vec<serde_json::Value>>(&t).ok())
        .and_then(|list| {
            list.iter()
                .find(|v| v["kind"] == "admin")
                .and_then(|v| v["addr"].as_str())
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        })
        .unwrap_or(config.admin.bind);
    if addr.ip().is_unspecified() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    }
}

/// Calls the API; a non-2xx answer becomes a `Fail` with the API's message.
fn call(
    api: &ApiClient,
    json_out: bool,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<String, Fail> {
    let (status, reply) = api
        .request(method, path, body.as_ref())
        .map_err(|e| Fail(3, format!("brokerctl: {e}")))?;
    if (200..300).contains(&status) {
        return Ok(reply);
    }
    if json_out {
        println!("{reply}");
        return Err(Fail(1, String::new()));
    }
    let line = serde_json::from_str::<ApiError>(&reply)
        .map(|e| e.message)
        .unwrap_or_else(|_| format!("HTTP {status}: {}", reply.trim()));
    Err(Fail(1, line))
}

fn parse<T: DeserializeOwned>(reply: &str) -> Result<T, Fail> {
    serde_json::from_str(reply).map_err(|e| Fail(1, format!("brokerctl: unexpected answer: {e}")))
}

/// Every item of a paged list.
fn all_pages<T: DeserializeOwned>(api: &ApiClient, path: &str) -> Result<Vec<T>, Fail> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut out = Vec::new();
    for page in 1.. {
        let reply = call(
            api,
            false,
            "GET",
            &format!("{path}{sep}page={page}&limit=10000"),
            None,
        )?;
        let p: Page<T> = parse(&reply)?;
        out.extend(p.data);
        if !p.meta.hasnext {
            break;
        }
    }
    Ok(out)
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", segment(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn message(reply: &str) -> CtlResult {
    let m: MessageReply = parse(reply)?;
    println!("{}", m.message.trim_end());
    Ok(())
}

fn print_session(s: &Session) {
    let expiry = match s.expiry_interval {
        4_294_967_295 => "never".to_owned(),
        secs => format!("{secs}s"),
    };
    println!(
        "Session({}, {}, expiry={}, subscriptions={}, queued={} ({} bytes), inflight={})",
        s.client_id,
        if s.online { "online" } else { "offline" },
        expiry,
        s.subscriptions.len(),
        s.queued,
        s.queued_bytes,
        s.inflight
    );
}

fn print_client(c: &Client) {
    let peer = match (&c.ip_address, c.port) {
        (Some(ip), Some(port)) => format!("{ip}:{port}"),
        _ => "-".to_owned(),
    };
    println!(
        "Client({}, {}, username={}, peer={}, proto={}, subscriptions={}, queued={})",
        c.clientid,
        if c.connected {
            "connected"
        } else {
            "disconnected"
        },
        c.username.as_deref().unwrap_or("-"),
        peer,
        c.proto_ver.map_or("-".to_owned(), |v| v.to_string()),
        c.subscriptions_cnt,
        c.mqueue_len
    );
}

fn print_subscription(s: &Subscription) {
    println!(
        "Subscription({}, {}, qos={}, nl={}, rap={}, rh={})",
        s.clientid, s.topic, s.qos, s.nl, s.rap, s.rh
    );
}

fn print_plugins(l: &PluginList) {
    for p in &l.plugins {
        let mut line = format!(
            "Plugin({}, version={}, api={}, state={}",
            p.name,
            p.version.as_deref().unwrap_or("-"),
            p.api_version.map_or("-".to_owned(), |v| v.to_string()),
            p.state
        );
        if !p.hooks.is_empty() {
            let hooks: Vec<String> = p
                .hooks
                .iter()
                .map(|(h, prio)| format!("{h}@{prio}"))
                .collect();
            line.push_str(&format!(", hooks=[{}]", hooks.join(" ")));
        }
        if let Some(s) = &p.stats {
            line.push_str(&format!(
                ", calls={}, errors={}, panics={}, timeouts={}, mean={:.1}us, p99={:.1}us",
                s.calls, s.errors, s.panics, s.timeouts, s.mean_us, s.p99_us
            ));
        }
        line.push(')');
        println!("{line}");
        if let Some(r) = &p.fault_reason {
            println!("  faulted: {r}");
        }
    }
    println!("stale libraries mapped: {}", l.stale_libraries);
}

fn print_status(s: &Status) {
    println!(
        "Node {} (broker {}) is running, up {} s",
        s.node, s.version, s.uptime_secs
    );
    println!(
        "connections {}  sessions {}  subscriptions {}  received {}  sent {}  dropped {}",
        s.metrics.connections,
        s.sessions,
        s.subscriptions,
        s.metrics.messages_received,
        s.metrics.messages_sent,
        s.metrics.messages_dropped
    );
    if s.metrics.store_bytes > 0 {
        println!(
            "session store {} bytes  commits {}  pending {}",
            s.metrics.store_bytes, s.metrics.store_commits, s.metrics.store_pending
        );
    }
}

/// Prints `reply` as JSON (with `--json`) or with `human`.
fn show<T: DeserializeOwned>(json_out: bool, reply: &str, human: impl FnOnce(T)) -> CtlResult {
    if json_out {
        println!("{reply}");
    } else {
        human(parse(reply)?);
    }
    Ok(())
}

fn run(cli: &Cli) -> CtlResult {
    if let Cmd::Plugins(PluginsCmd::New {
        name,
        dir,
        api_path,
        api_git,
    }) = &cli.command
    {
        return new_plugin(name, dir.clone(), api_path.clone(), api_git.clone());
    }
    if let Cmd::Completions { shell } = &cli.command {
        clap_complete::generate(
            *shell,
            &mut Cli::command(),
            "brokerctl",
            &mut std::io::stdout(),
        );
        return Ok(());
    }
    let api = connect(cli)?;
    let j = cli.json;
    let c = |method: &str, path: &str, body: Option<serde_json::Value>| {
        call(&api, j, method, path, body)
    };
    match &cli.command {
        Cmd::Status => show(j, &c("GET", "/api/v5/status", None)?, |s: Status| {
            print_status(&s)
        }),
        Cmd::Metrics => {
            print!("{}", c("GET", "/metrics", None)?);
            Ok(())
        }
        Cmd::Plugins(p) => match p {
            PluginsCmd::List => show(j, &c("GET", "/api/v5/plugins", None)?, |l: PluginList| {
                print_plugins(&l)
            }),
            PluginsCmd::Load { name }
            | PluginsCmd::Unload { name }
            | PluginsCmd::Reload { name } => {
                if !broker::config::valid_plugin_name(name) {
                    return Err(Fail(
                        1,
                        format!("invalid plugin name {name:?}: use a-z, 0-9 and '_'"),
                    ));
                }
                let action = match p {
                    PluginsCmd::Load { .. } => "load",
                    PluginsCmd::Unload { .. } => "unload",
                    _ => "reload",
                };
                let reply = c("POST", &format!("/api/v5/plugins/{name}/{action}"), None)?;
                if j {
                    println!("{reply}");
                    return Ok(());
                }
                message(&reply)
            }
            PluginsCmd::Show { name } => show(
                j,
                &c("GET", &format!("/api/v5/plugins/{}", segment(name)), None)?,
                |d: PluginDetail| {
                    print_plugins(&PluginList {
                        plugins: vec![d.plugin],
                        stale_libraries: 0,
                    });
                    println!("config file: {}", d.config_file);
                    print!("{}", d.config);
                },
            ),
            PluginsCmd::New { .. } => Ok(()),
        },
        Cmd::Clients(cc) => match cc {
            ClientsCmd::List {
                username,
                like,
                connected,
                disconnected,
            } => {
                let state = match (connected, disconnected) {
                    (true, _) => Some("connected".to_owned()),
                    (_, true) => Some("disconnected".to_owned()),
                    _ => None,
                };
                let q = query(&[
                    ("username", username.clone()),
                    ("like_clientid", like.clone()),
                    ("conn_state", state),
                ]);
                let list: Vec<Client> = all_pages(&api, &format!("/api/v5/clients{q}"))?;
                if j {
                    println!("{}", json!(list));
                    return Ok(());
                }
                for x in &list {
                    print_client(x);
                }
                println!("{} client(s)", list.len());
                Ok(())
            }
            ClientsCmd::Show { client_id } => {
                let id = segment(client_id);
                let client = c("GET", &format!("/api/v5/clients/{id}"), None)?;
                let subs = c("GET", &format!("/api/v5/clients/{id}/subscriptions"), None)?;
                let client: Client = parse(&client)?;
                let subs: Vec<Subscription> = parse(&subs)?;
                if j {
                    println!("{}", json!({"client": client, "subscriptions": subs}));
                    return Ok(());
                }
                print_client(&client);
                if let Some(at) = &client.connected_at {
                    println!("  connected at {at}");
                }
                if let Some(at) = &client.disconnected_at {
                    println!("  disconnected at {at}");
                }
                for s in &subs {
                    println!("  subscription {} qos {}", s.topic, s.qos);
                }
                Ok(())
            }
            ClientsCmd::Kick { client_id } => {
                c(
                    "DELETE",
                    &format!("/api/v5/clients/{}", segment(client_id)),
                    None,
                )?;
                println!("Client {client_id} kicked.");
                Ok(())
            }
        },
        Cmd::Sessions(sc) => match sc {
            SessionsCmd::List { offline, online } => {
                let q = match (offline, online) {
                    (true, _) => "?online=false",
                    (_, true) => "?online=true",
                    _ => "",
                };
                let list: Vec<Session> = all_pages(&api, &format!("/api/v5/sessions{q}"))?;
                if j {
                    println!("{}", json!(list));
                    return Ok(());
                }
                for s in &list {
                    print_session(s);
                }
                println!("{} session(s)", list.len());
                Ok(())
            }
            SessionsCmd::Show { client_id } => show(
                j,
                &c(
                    "GET",
                    &format!("/api/v5/sessions/{}", segment(client_id)),
                    None,
                )?,
                |s: Session| {
                    print_session(&s);
                    for (filter, qos) in &s.subscriptions {
                        println!("  subscription {filter} qos {qos}");
                    }
                },
            ),
            SessionsCmd::Drop { client_id } => message(&c(
                "DELETE",
                &format!("/api/v5/sessions/{}", segment(client_id)),
                None,
            )?),
        },
        Cmd::Subscriptions(sc) => match sc {
            SubscriptionsCmd::List {
                client,
                topic,
                match_topic,
            } => {
                let q = query(&[
                    ("clientid", client.clone()),
                    ("topic", topic.clone()),
                    ("match_topic", match_topic.clone()),
                ]);
                let list: Vec<Subscription> =
                    all_pages(&api, &format!("/api/v5/subscriptions{q}"))?;
                if j {
                    println!("{}", json!(list));
                    return Ok(());
                }
                for s in &list {
                    print_subscription(s);
                }
                println!("{} subscription(s)", list.len());
                Ok(())
            }
            SubscriptionsCmd::Add {
                client_id,
                filter,
                qos,
                nl,
                rap,
                rh,
            } => {
                let body = json!({"topic": filter, "qos": qos, "nl": u8::from(*nl), "rap": u8::from(*rap), "rh": rh});
                show(
                    j,
                    &c(
                        "POST",
                        &format!("/api/v5/clients/{}/subscribe", segment(client_id)),
                        Some(body),
                    )?,
                    |s: Subscription| {
                        println!("Subscribed {} to {} (qos {}).", s.clientid, s.topic, s.qos)
                    },
                )
            }
            SubscriptionsCmd::Del { client_id, filter } => {
                c(
                    "POST",
                    &format!("/api/v5/clients/{}/unsubscribe", segment(client_id)),
                    Some(json!({ "topic": filter })),
                )?;
                println!("Unsubscribed {client_id} from {filter}.");
                Ok(())
            }
        },
        Cmd::Publish(p) => {
            let mut user_properties = serde_json::Map::new();
            for kv in &p.user_properties {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| Fail(2, format!("--user-property {kv:?}: use KEY=VALUE")))?;
                user_properties.insert(k.to_owned(), v.into());
            }
            let body = json!({
                "topic": p.topic,
                "payload": p.payload,
                "payload_encoding": if p.base64 { "base64" } else { "plain" },
                "qos": p.qos,
                "retain": p.retain,
                "properties": {
                    "content_type": p.content_type,
                    "response_topic": p.response_topic,
                    "correlation_data": p.correlation_data,
                    "message_expiry_interval": p.message_expiry,
                    "user_properties": user_properties,
                },
            });
            show(
                j,
                &c("POST", "/api/v5/publish", Some(body))?,
                |r: PublishReply| {
                    println!(
                        "Published to {} (id {}): queued for {} session(s).",
                        p.topic, r.id, r.delivered
                    )
                },
            )
        }
        Cmd::Retained(rc) => match rc {
            RetainedCmd::List { filter } => {
                let q = query(&[("topic", filter.clone())]);
                let list: Vec<Retained> =
                    all_pages(&api, &format!("/api/v5/mqtt/retainer/messages{q}"))?;
                if j {
                    println!("{}", json!(list));
                    return Ok(());
                }
                for r in &list {
                    println!(
                        "Retained({}, qos={}, bytes={}, at={})",
                        r.topic, r.qos, r.payload_size, r.publish_at
                    );
                }
                println!("{} retained message(s)", list.len());
                Ok(())
            }
            RetainedCmd::Show { topic } => show(
                j,
                &c(
                    "GET",
                    &format!("/api/v5/mqtt/retainer/message/{}", segment(topic)),
                    None,
                )?,
                |r: Retained| {
                    println!(
                        "Retained({}, qos={}, bytes={}, at={})",
                        r.topic, r.qos, r.payload_size, r.publish_at
                    );
                    if let Some(p) = r.payload {
                        println!("payload (base64): {p}");
                    }
                },
            ),
            RetainedCmd::Delete { topic } => {
                c(
                    "DELETE",
                    &format!("/api/v5/mqtt/retainer/message/{}", segment(topic)),
                    None,
                )?;
                println!("Retained message on {topic} deleted.");
                Ok(())
            }
        },
        Cmd::Delayed(dc) => match dc {
            DelayedCmd::List => {
                let list: Vec<DelayedMessage> = all_pages(&api, "/api/v5/mqtt/delayed/messages")?;
                if j {
                    println!("{}", json!(list));
                    return Ok(());
                }
                for d in &list {
                    print_delayed(d);
                }
                println!("{} delayed message(s)", list.len());
                Ok(())
            }
            DelayedCmd::Show { id } => show(
                j,
                &c(
                    "GET",
                    &format!("/api/v5/mqtt/delayed/messages/{}", segment(id)),
                    None,
                )?,
                |d: DelayedMessage| {
                    print_delayed(&d);
                    if let Some(p) = d.payload {
                        println!("payload (base64): {p}");
                    }
                },
            ),
            DelayedCmd::Del { id } => {
                c(
                    "DELETE",
                    &format!("/api/v5/mqtt/delayed/messages/{}", segment(id)),
                    None,
                )?;
                println!("Delayed message {id} deleted.");
                Ok(())
            }
        },
        Cmd::Apikey(ac) => match ac {
            ApikeyCmd::Create {
                name,
                desc,
                expires_in,
            } => show(
                j,
                &c(
                    "POST",
                    "/api/v5/api_key",
                    Some(json!({"name": name, "desc": desc, "expires_in_secs": expires_in})),
                )?,
                |k: ApiKeyCreated| {
                    println!(
                        "API key {} created. Its secret is shown only now:",
                        k.info.name
                    );
                    println!("api_key    {}", k.info.api_key);
                    println!("api_secret {}", k.api_secret);
                    println!("Use it as `Authorization: Basic base64(api_key:api_secret)` or `brokerctl --api-key {}:<api_secret>`.", k.info.api_key);
                },
            ),
            ApikeyCmd::List => show(
                j,
                &c("GET", "/api/v5/api_key", None)?,
                |l: Vec<ApiKeyInfo>| {
                    for k in &l {
                        println!(
                            "ApiKey({}, key={}, enabled={}, created={}, expires={}, desc={:?})",
                            k.name,
                            k.api_key,
                            k.enable,
                            k.created_at,
                            k.expired_at.as_deref().unwrap_or("never"),
                            k.desc
                        );
                    }
                    println!("{} key(s)", l.len());
                },
            ),
            ApikeyCmd::Delete { name } => {
                c(
                    "DELETE",
                    &format!("/api/v5/api_key/{}", segment(name)),
                    None,
                )?;
                println!("API key {name} deleted.");
                Ok(())
            }
        },
        Cmd::AclCache(AclCacheCmd::Clean { client_id }) => match client_id {
            Some(id) => {
                c(
                    "DELETE",
                    &format!("/api/v5/clients/{}/authorization/cache", segment(id)),
                    None,
                )?;
                println!("ACL cache cleaned for 1 client(s).");
                Ok(())
            }
            None => message(&c("DELETE", "/api/v5/authorization/cache", None)?),
        },
        Cmd::Commands => show(
            j,
            &c("GET", "/api/v5/commands", None)?,
            |l: Vec<CommandInfo>| {
                for x in &l {
                    println!("{:<20} {}  (plugin {})", x.name, x.usage, x.plugin);
                }
            },
        ),
        Cmd::Completions { .. } => Ok(()),
        Cmd::Plugin(args) => {
            let args = with_password(args)?;
            let reply = c("POST", "/api/v5/commands", Some(json!(args)))?;
            if j {
                println!("{reply}");
                return Ok(());
            }
            message(&reply)
        }
    }
}

/// `users add|passwd <name>` (and `clientid …`) without `--password`: asks for it (twice, without
/// echo, on a terminal; one line from standard input otherwise) rather than taking it from the
/// command line, where other users could see it in the process list.
fn with_password(args: &[String]) -> Result<Vec<String>, Fail> {
    let mut args = args.to_vec();
    let store = matches!(args.first().map(String::as_str), Some("users" | "clientid"));
    let sets = matches!(args.get(1).map(String::as_str), Some("add" | "passwd"));
    if !store || !sets || args.len() != 3 || args.iter().any(|a| a == "--password") {
        return Ok(args);
    }
    use std::io::IsTerminal as _;
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("Password for {}: ", args[2]))
            .map_err(|e| Fail(1, format!("brokerctl: cannot read the password: {e}")))?;
        let again = rpassword::prompt_password("Again: ")
            .map_err(|e| Fail(1, format!("brokerctl: cannot read the password: {e}")))?;
        if first != again {
            return Err(Fail(1, "the two passwords differ".into()));
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| Fail(1, format!("brokerctl: cannot read the password: {e}")))?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if password.is_empty() {
        return Err(Fail(1, "empty password".into()));
    }
    args.extend(["--password".to_owned(), password]);
    Ok(args)
}

/// `brokerctl plugins new <name> [--dir D] [--api-path P | --api-git URL]`.
fn new_plugin(
    name: &str,
    dir: Option<PathBuf>,
    api_path: Option<PathBuf>,
    api_git: Option<String>,
) -> CtlResult {
    use broker::plugin::template::{default_api_path, generate, ApiSource};
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let api = api_path
        .map(ApiSource::Path)
        .or(api_git.map(ApiSource::Git))
        .or_else(|| default_api_path().map(ApiSource::Path))
        .ok_or_else(|| Fail(2, "cannot find the plugin-api crate this brokerctl was built from: pass --api-path <dir> or --api-git <url>".into()))?;
    let files = generate(name, &dir, &api).map_err(|e| Fail(1, e.to_string()))?;
    println!("Plugin crate {name} created in {}:", dir.display());
    for f in files {
        println!("  {}", f.display());
    }
    let library = broker::plugin::loader::library_file_name(name);
    println!("Build it with `cargo build --release` there, copy target/release/{library} to the broker's plugin_dir and {name}.toml to etc/plugins/, then `brokerctl plugins load {name}`.");
    Ok(())
}

/// Whether `args` ask for the top-level help (`--help` with no command, or `help` alone):
/// the global options' values are skipped.
fn top_level_help(args: &[String]) -> bool {
    let mut it = args.iter();
    let mut help = false;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" | "--url" | "--token-file" | "--api-key" | "--cacert" => {
                it.next();
            }
            "--help" | "-h" => help = true,
            "help" => return it.next().is_none(),
            other if other.starts_with('-') => {}
            _ => return false,
        }
    }
    help
}

/// The running broker's plugin commands for `--help`, if it answers within a second.
fn plugin_commands_help() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let cli = Cli {
        config: value("--config")
            .or_else(|| value("-c"))
            .map_or_else(|| PathBuf::from("etc/broker.toml"), PathBuf::from),
        url: value("--url").or_else(|| std::env::var("BROKERCTL_URL").ok()),
        token_file: value("--token-file")
            .or_else(|| std::env::var("BROKERCTL_TOKEN_FILE").ok())
            .map(PathBuf::from),
        api_key: value("--api-key").or_else(|| std::env::var("BROKERCTL_API_KEY").ok()),
        cacert: value("--cacert").map(PathBuf::from),
        json: false,
        command: Cmd::Commands,
    };
    let api = connect(&cli).ok()?;
    let (status, reply) = api.request("GET", "/api/v5/commands", None).ok()?;
    if status != 200 {
        return None;
    }
    let list: Vec<CommandInfo> = serde_json::from_str(&reply).ok()?;
    if list.is_empty() {
        return None;
    }
    let mut text = String::from("Plugin commands (from the running broker):\n");
    for c in &list {
        text.push_str(&format!("  {:<18} {}\n", c.name, c.usage));
    }
    Some(text)
}

fn main() -> ExitCode {
    // `brokerctl … | head`: a closed pipe ends brokerctl quietly, as it ends `cat`, instead of
    // a panic in println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let wants_help = top_level_help(&std::env::args().skip(1).collect::<Vec<_>>());
    let mut command = Cli::command();
    if wants_help {
        if let Some(extra) = plugin_commands_help() {
            command = command.after_help(extra);
        }
    }
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, line)) => {
            if !line.is_empty() {
                eprintln!("{line}");
            }
            ExitCode::from(code)
        }
    }
}

/// One line per delayed publish.
fn print_delayed(d: &DelayedMessage) {
    println!(
        "Delayed({}, topic={}, qos={}, bytes={}, at={}, in={}s, from={})",
        d.msgid,
        d.topic,
        d.qos,
        d.payload_size,
        d.expected_at,
        d.delayed_remaining,
        d.from_clientid.as_deref().unwrap_or("-")
    );
}
