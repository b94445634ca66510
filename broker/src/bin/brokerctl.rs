//! `brokerctl`: the operator's command line for a running broker.
//!
//! It finds the admin API and its token from the broker's config (`--config`, default
//! `etc/broker.toml`): the address from `<data_dir>/listeners.json` (the address actually bound)
//! or `admin.bind`, the token from `admin.token_file` (default `<data_dir>/admin.token`).
//! `--url` and `--token-file` override them.
//!
//! ```text
//! brokerctl status
//! brokerctl plugins list | load <name> | unload <name> | reload <name>
//! brokerctl clients list | kick <client_id>
//! brokerctl acl-cache clean [client_id]
//! brokerctl <plugin command> …          (e.g. brokerctl retainer topics)
//! ```
//! Every command prints one short human line (or a table) and exits 0, or prints one error line
//! and exits 1 (2 for usage errors, 3 when the broker cannot be reached). `--json` prints the
//! API's JSON instead.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use broker::admin::{
    client, ClientSummary, CommandInfo, ErrorReply, MessageReply, SessionSummary, Status,
};
use broker::config::Config;
use broker::plugin::PluginList;

const USAGE: &str = "usage: brokerctl [--config <broker.toml>] [--url <host:port>] [--token-file <file>] [--json] <command>

commands:
  status                               broker status and counters
  plugins list                         every plugin found, loaded or not
  plugins load|unload|reload <name>    manage a plugin while the broker runs
  plugins new <name> [--dir D] [--api-path P | --api-git URL]
                                       write a new plugin crate (no broker needed)
  clients list                         connected clients
  clients kick <client_id>             disconnect a client
  sessions list [--offline]            sessions, online and offline
  sessions show <client_id>            one session: expiry, queue, subscriptions
  sessions drop <client_id>            end a session now (kicking its client), in the store too
  acl-cache clean [client_id]          forget cached ACL decisions
  metrics                              metrics in the Prometheus text format
  <plugin command> [args…]             a command registered by a loaded plugin";

struct Options {
    config: PathBuf,
    url: Option<SocketAddr>,
    token_file: Option<PathBuf>,
    json: bool,
    args: Vec<String>,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        config: PathBuf::from("etc/broker.toml"),
        url: None,
        token_file: None,
        json: false,
        args: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => o.config = it.next().ok_or("--config needs a path")?.into(),
            "--url" => {
                let v = it.next().ok_or("--url needs host:port")?;
                let v = v.trim_start_matches("http://").trim_end_matches('/');
                o.url = Some(v.parse().map_err(|e| format!("bad --url {v:?}: {e}"))?);
            }
            "--token-file" => {
                o.token_file = Some(it.next().ok_or("--token-file needs a path")?.into())
            }
            "--json" => o.json = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            _ => o.args.push(a),
        }
    }
    if o.args.is_empty() {
        return Err(USAGE.to_owned());
    }
    Ok(o)
}

/// The admin address actually bound, from listeners.json, else the configured one.
fn admin_addr(config: &Config) -> SocketAddr {
    let file = config.data_dir.join("listeners.json");
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| serde_json::from_str::<Vec<serde_json::Value>>(&t).ok())
        .and_then(|list| {
            list.iter()
                .find(|v| v["kind"] == "admin")
                .and_then(|v| v["addr"].as_str())
                .and_then(|a| a.parse().ok())
        })
        .unwrap_or(config.admin.bind)
}

/// `brokerctl plugins new <name> [--dir D] [--api-path P | --api-git URL]`.
fn new_plugin(args: &[String]) -> ExitCode {
    use broker::plugin::template::{default_api_path, generate, ApiSource};
    let mut name = None;
    let mut dir = None;
    let mut api = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = it.next().map(PathBuf::from),
            "--api-path" => api = it.next().map(|p| ApiSource::Path(PathBuf::from(p))),
            "--api-git" => api = it.next().map(|u| ApiSource::Git(u.clone())),
            other if name.is_none() && !other.starts_with('-') => name = Some(other.to_owned()),
            other => {
                eprintln!("unexpected argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(name) = name else {
        eprintln!("plugins new needs a name\n{USAGE}");
        return ExitCode::from(2);
    };
    let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
    let Some(api) = api.or_else(|| default_api_path().map(ApiSource::Path)) else {
        eprintln!("cannot find the plugin-api crate this brokerctl was built from: pass --api-path <dir> or --api-git <url>");
        return ExitCode::from(2);
    };
    match generate(&name, &dir, &api) {
        Ok(files) => {
            println!("Plugin crate {name} created in {}:", dir.display());
            for f in files {
                println!("  {}", f.display());
            }
            println!("Build it with `cargo build --release` there, copy target/release/lib{name}.so to the broker's plugin_dir and {name}.toml to etc/plugins/, then `brokerctl plugins load {name}`.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    // `brokerctl … | head`: a closed pipe ends brokerctl quietly, as it ends `cat`, instead of
    // a panic in println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let o = match parse_args() {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    if o.args.len() >= 2 && o.args[0] == "plugins" && o.args[1] == "new" {
        return new_plugin(&o.args[2..]);
    }
    let config = match Config::load(&o.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("brokerctl: {e}");
            return ExitCode::from(2);
        }
    };
    let addr = o.url.unwrap_or_else(|| admin_addr(&config));
    let token_file = o
        .token_file
        .clone()
        .unwrap_or_else(|| config.admin_token_file());
    let token = match std::fs::read_to_string(&token_file) {
        Ok(t) => t.trim().to_owned(),
        Err(e) => {
            eprintln!("brokerctl: cannot read the admin token {}: {e} (has the broker been started with this config?)", token_file.display());
            return ExitCode::from(3);
        }
    };
    let args: Vec<&str> = o.args.iter().map(String::as_str).collect();
    let (method, path, body) = match args.as_slice() {
        ["status"] => ("GET", "/api/v1/status".to_owned(), String::new()),
        ["plugins", "list"] | ["plugins"] => ("GET", "/api/v1/plugins".to_owned(), String::new()),
        ["plugins", action @ ("load" | "unload" | "reload"), name] => {
            if !broker::config::valid_plugin_name(name) {
                eprintln!("invalid plugin name {name:?}: use a-z, 0-9, '_' and '-'");
                return ExitCode::from(1);
            }
            (
                "POST",
                format!("/api/v1/plugins/{name}/{action}"),
                String::new(),
            )
        }
        ["clients", "list"] | ["clients"] => ("GET", "/api/v1/clients".to_owned(), String::new()),
        ["clients", "kick", id] => ("POST", format!("/api/v1/clients/{id}/kick"), String::new()),
        ["sessions", "list"] | ["sessions"] | ["sessions", "list", "--offline"] => {
            ("GET", "/api/v1/sessions".to_owned(), String::new())
        }
        ["sessions", "show", id] => ("GET", format!("/api/v1/sessions/{id}"), String::new()),
        ["sessions", "drop", id] => ("DELETE", format!("/api/v1/sessions/{id}"), String::new()),
        ["acl-cache", "clean"] => ("POST", "/api/v1/acl-cache/clean".to_owned(), String::new()),
        ["acl-cache", "clean", id] => {
            ("POST", "/api/v1/acl-cache/clean".to_owned(), id.to_string())
        }
        ["commands"] => ("GET", "/api/v1/commands".to_owned(), String::new()),
        ["metrics"] => ("GET", "/metrics".to_owned(), String::new()),
        ["plugins", ..] | ["clients", ..] | ["sessions", ..] | ["acl-cache", ..] => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
        _ => (
            "POST",
            "/api/v1/command".to_owned(),
            serde_json::to_string(&o.args).unwrap_or_default(),
        ),
    };
    let (status, reply) =
        match client::request(addr, &token, method, &path, &body, Duration::from_secs(60)) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("brokerctl: {e}");
                return ExitCode::from(3);
            }
        };
    if !(200..300).contains(&status) {
        let line = serde_json::from_str::<ErrorReply>(&reply)
            .map(|e| e.error)
            .unwrap_or(reply.clone());
        if o.json {
            println!("{reply}");
        } else {
            eprintln!("{line}");
        }
        return ExitCode::from(1);
    }
    if args == ["metrics"] {
        // Prometheus text, with or without --json.
        print!("{reply}");
        return ExitCode::SUCCESS;
    }
    if o.json {
        println!("{reply}");
        return ExitCode::SUCCESS;
    }
    match print_human(&args, &reply) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("brokerctl: unexpected answer: {e}");
            ExitCode::from(1)
        }
    }
}

fn print_session(s: &SessionSummary) {
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

fn print_human(args: &[&str], reply: &str) -> Result<(), serde_json::Error> {
    match args {
        ["status"] => {
            let s: Status = serde_json::from_str(reply)?;
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
        ["plugins", "list"] | ["plugins"] => {
            let l: PluginList = serde_json::from_str(reply)?;
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
        ["clients", ..] if args.get(1) != Some(&"kick") => {
            let list: Vec<ClientSummary> = serde_json::from_str(reply)?;
            for c in &list {
                println!(
                    "Client({}, username={}, peer={}, proto={}, subscriptions={}, queued={})",
                    c.client_id,
                    c.username.as_deref().unwrap_or("-"),
                    c.peer,
                    c.proto_ver,
                    c.subscriptions,
                    c.queued
                );
            }
            println!("{} client(s)", list.len());
        }
        ["sessions", "show", _] => {
            let s: SessionSummary = serde_json::from_str(reply)?;
            print_session(&s);
            for (filter, qos) in &s.subscriptions {
                println!("  subscription {filter} qos {qos}");
            }
        }
        ["sessions", ..] if args.get(1) != Some(&"drop") => {
            let offline_only = args.contains(&"--offline");
            let list: Vec<SessionSummary> = serde_json::from_str(reply)?;
            let shown: Vec<_> = list.iter().filter(|s| !offline_only || !s.online).collect();
            for s in &shown {
                print_session(s);
            }
            println!("{} session(s)", shown.len());
        }
        ["commands"] => {
            let list: Vec<CommandInfo> = serde_json::from_str(reply)?;
            for c in &list {
                println!("{:<20} {}  (plugin {})", c.name, c.usage, c.plugin);
            }
        }
        _ => {
            let m: MessageReply = serde_json::from_str(reply)?;
            println!("{}", m.message.trim_end());
        }
    }
    Ok(())
}
