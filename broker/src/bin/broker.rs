//! `broker`: the MQTT broker daemon.
//!
//! `broker [--config <path>]` reads the configuration (default `etc/broker.toml`), binds every
//! listener, and serves until SIGINT or SIGTERM; then it stops accepting, closes every
//! connection (v5 clients get DISCONNECT 0x8B, wills are published per the spec) and exits 0.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use broker::broker::{BoundListener, Broker};
use broker::config::{Config, Durability, ListenerKind, LogFormat};
use broker::session::store::{self, Store};
use broker::{admin, listener};
use tracing_subscriber::EnvFilter;

const USAGE: &str = "usage: broker [--config <path>]   (default: etc/broker.toml)";

fn parse_args() -> Result<PathBuf, String> {
    let mut config = PathBuf::from("etc/broker.toml");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-c" | "--config" => {
                config = args
                    .next()
                    .ok_or_else(|| format!("{arg} needs a path\n{USAGE}"))?
                    .into();
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            "-V" | "--version" => {
                return Err(format!("broker {}", env!("CARGO_PKG_VERSION")));
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(config)
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// mimalloc instead of glibc malloc: in an A/B on a 2-core machine, 7–13 % more throughput on
/// fan-out, 11–38 % on QoS 0 fan-in, QoS 1 fan-in unchanged within noise, and about 20 % less
/// peak memory. Plugins keep their own allocator: abi_stable types that
/// cross the boundary are freed by the library that allocated them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often a worker that runs out of work may hand its freed memory back (see
/// [`collect_when_idle`]).
const COLLECT_EVERY: Duration = Duration::from_secs(1);

/// How long an idle thread of the blocking pool stays. The pool runs rare, heavy work (loading
/// and checking plugins, their key-value writes); mimalloc gives back what such a thread freed
/// only once the thread ends, so tokio's default of 10 s kept ~0.4 MiB at start for that long.
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(1);

thread_local! {
    /// When this worker last handed its freed memory back.
    static LAST_COLLECT: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
}

/// Called by each runtime worker when it runs out of work, before it sleeps.
fn on_park() {
    // A publisher still waiting for its deliveries to go first goes on (their connections
    // wake it as they write; this is for when none did).
    broker::connection::let_answers_go();
    collect_when_idle();
}

/// At most once per [`COLLECT_EVERY`], hands the memory that this thread freed back to
/// mimalloc's arena, and purges what has lain unused there for mimalloc's purge delay (1 s)
/// back to the system. mimalloc otherwise does
/// both only while a thread goes on allocating, so a broker that 10 000 clients had just left
/// held ~12 MiB more than at start for as long as it stayed idle. (A purge delay of 0 returned
/// memory sooner but tripled the page faults of fan-in QoS 1: memory given back and taken
/// again at once.)
fn collect_when_idle() {
    // The precise clock, not `clock::coarse_monotonic_ms`: a park costs a system call anyway,
    // and the coarse clock's 4 ms steps made a worker skip every other wake-up of the 1 s
    // overload guard, holding ~0.2 MiB more at idle.
    let now = std::time::Instant::now();
    let due = LAST_COLLECT.with(|last| {
        let due = last
            .get()
            .is_none_or(|t| now.duration_since(t) >= COLLECT_EVERY);
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        // SAFETY: `mi_collect` only walks mimalloc's own structures for the calling thread.
        unsafe { libmimalloc_sys::mi_collect(false) }
    }
}

fn main() -> ExitCode {
    let path = match parse_args() {
        Ok(p) => p,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("broker: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    // Everything the broker and its plugins create (sessions, retained messages, the admin
    // token, plugin copies) is for the broker's user only.
    broker::platform::restrict_new_files();
    if let Some(n) = broker::platform::raise_fd_limit() {
        tracing::debug!(open_files = n, "file descriptor limit");
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .enable_all()
        .thread_name("broker")
        .on_thread_park(on_park)
        .thread_keep_alive(BLOCKING_KEEP_ALIVE);
    // tokio's LIFO slot stays on: the delivery a PUBLISH wakes runs next on the same worker,
    // without waking the other (a cross-CPU wake-up is most of the end-to-end latency at light
    // load). The arrival order of clients' input is kept by the connections instead: a read
    // that starts with a PUBLISH lets the input woken with it go first (`connection`, `act`).
    // Its workers wake a publisher waiting for its deliveries when they park (`on_park`).
    broker::connection::wait_for_deliveries_on_this_runtime();
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("broker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("broker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, path: PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let bound = listener::bind_all(&config.listeners).await?;
    if config.auth.allow_anonymous && bound.iter().any(|b| !b.addr.ip().is_loopback()) {
        tracing::warn!("auth.allow_anonymous is true and a listener is reachable beyond loopback: anyone can connect unless an authentication plugin is loaded");
    }
    tracing::info!(config = %path.display(), node = %config.node_name, "broker starting");
    let data_dir = config.data_dir.clone();
    let enabled = config.plugins.enabled.clone();
    let plugin_config_dir = config.plugin_config_dir(&path);
    let broker = Broker::new(config, plugin_config_dir);

    let admin = if broker.config.admin.enabled {
        Some(admin::server::start(broker.clone()).await?)
    } else {
        admin::server::serve_plugins(&broker, None);
        None
    };

    // Plugins first, so authentication is in place before the first client is accepted.
    broker.plugins.restore(&enabled).await;

    // Sessions from the store, before the first client.
    let durability = broker.config.session.durability;
    if durability != Durability::None {
        let path = data_dir.join(store::FILE);
        let store = Store::open(&path)?;
        broker.attach_store(store.clone());
        broker.restore_sessions(&store);
        let delayed = broker.restore_delayed(&store);
        if delayed > 0 {
            tracing::info!(delayed, "delayed publishes restored");
        }
        if durability == Durability::Graceful {
            // What was read is in memory now; a crash must not bring this state back later.
            store.replace_all(Vec::new(), Vec::new())?;
        }
    }
    let legacy = data_dir.join("sessions.jsonl");
    if legacy.exists() {
        tracing::warn!(file = %legacy.display(), "sessions saved by an older version are not read (the session store replaced this file); remove it");
    }

    tokio::spawn(broker.clone().run_delayed());
    tokio::spawn(broker.clone().run_overload_guard());

    // $SYS values exist (and are retained, with the retainer loaded) before the first client.
    if broker.config.sys.interval_secs > 0 {
        broker::sys::publish_sys(&broker);
        let every = Duration::from_secs(broker.config.sys.interval_secs);
        tokio::spawn(broker::sys::run(broker.clone(), every));
    }

    let mut accept_loops = Vec::new();
    let addresses = listener::Addresses::of(&bound);
    let bound_listeners = bound
        .iter()
        .map(|b| BoundListener {
            name: b.config.name.clone(),
            kind: b.config.kind.name(),
            addr: b.addr,
            ws_path: matches!(b.config.kind, ListenerKind::Ws | ListenerKind::Wss)
                .then(|| b.config.ws_path.clone()),
        })
        .collect();
    for b in bound {
        accept_loops.push(tokio::spawn(listener::run(broker.clone(), b)));
    }
    broker.set_accepting(bound_listeners);
    broker.notify_broker_event(plugin_api::HookPoint::BROKER_STARTED);
    listener::write_address_file(&data_dir, &addresses, admin.as_ref().map(|a| a.addr))
        .with_context(|| format!("cannot write {}/listeners.json", data_dir.display()))?;

    wait_for_signal().await?;
    tracing::info!("shutting down: closing listeners and connections");
    broker.notify_broker_event(plugin_api::HookPoint::BROKER_STOPPING);
    broker.begin_shutdown();
    for l in accept_loops {
        let _ = l.await;
    }
    if !broker
        .wait_connections_closed(Duration::from_secs(10))
        .await
    {
        tracing::warn!("some connections did not close within 10 s");
    }
    if let Some(store) = broker.store.get() {
        let snapshot = broker.session_snapshot();
        let delayed = broker.delayed_snapshot();
        let (n, d) = (snapshot.len(), delayed.len());
        match store.replace_all(snapshot, delayed) {
            Ok(()) => {
                tracing::info!(sessions = n, delayed = d, file = %store.path().display(), "sessions saved")
            }
            Err(e) => tracing::error!(error = %e, "cannot save sessions"),
        }
        store.close();
    }
    broker.plugins.shutdown_all().await;
    if let Some(admin) = admin {
        admin.stop(Duration::from_secs(5)).await;
    }
    tracing::info!("broker stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let how = broker::platform::shutdown_requested()
        .await
        .context("cannot install the shutdown signal handlers")?;
    tracing::info!(signal = how, "stop requested");
    Ok(())
}
