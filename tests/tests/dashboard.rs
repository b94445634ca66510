//! The dashboard plugin in a real browser: headless Chromium driven through chromedriver
//! (WebDriver, fantoccini), against the real broker with the dashboard loaded as a `.so`,
//! real `mosquitto_sub` clients and a real WebSocket subscription from the page.
//! Screenshots of every page are saved to `target/test-artifacts/dashboard/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use broker_tests::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// A free TCP port on loopback (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A child process killed when dropped.
struct Reaped(Child);

impl Reaped {
    /// Everything it writes to stdout until it exits.
    fn stdout(&mut self) -> String {
        let mut out = String::new();
        if let Some(mut pipe) = self.0.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut out);
        }
        out
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts chromedriver and a headless Chromium session.
async fn browser() -> (Client, Reaped) {
    assert!(
        tool_available("chromedriver") && tool_available("chromium"),
        "chromium and chromium-driver are not installed: run tests/run.sh"
    );
    let port = free_port();
    let driver = Reaped(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver"),
    );
    let deadline = std::time::Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "chromedriver did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let profile = tempfile::tempdir().expect("profile").keep();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("WebDriver session with headless Chromium");
    (client, driver)
}

/// Waits until the text of `css` satisfies `ok`; returns it.
async fn wait_text(c: &Client, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if let Ok(t) = e.text().await {
                if ok(&t) {
                    return t;
                }
                last = t;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let flash = match c.find(Locator::Css("#flash")).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    if let Ok(png) = c.screenshot().await {
        let _ = std::fs::write(artefacts().join("failure.png"), png);
    }
    panic!("{what}: {css} never matched; last text {last:?}; flash {flash:?} (screenshot: target/test-artifacts/dashboard/failure.png)");
}

/// Clicks `css` once the page has rendered it.
async fn click(c: &Client, css: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match c.find(Locator::Css(css)).await {
            Ok(e) => {
                e.click()
                    .await
                    .unwrap_or_else(|e| panic!("click {css}: {e}"));
                return;
            }
            Err(e) if tokio::time::Instant::now() > deadline => panic!("{css}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn type_into(c: &Client, css: &str, text: &str) {
    let e = c
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    e.clear().await.expect("clear");
    e.send_keys(text).await.expect("type");
}

fn artefacts() -> PathBuf {
    let dir = workspace_root().join("target/test-artifacts/dashboard");
    std::fs::create_dir_all(&dir).expect("artefact dir");
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(artefacts().join(format!("{name}.png")), png).expect("save screenshot");
}

fn mosquitto_sub(port: u16, id: &str, topic: &str, count: Option<u32>) -> Reaped {
    let mut cmd = Command::new("mosquitto_sub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-i",
        id,
        "-t",
        topic,
        "-v",
    ]);
    if let Some(n) = count {
        cmd.args(["-C", &n.to_string(), "-W", "30"]);
    }
    Reaped(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub"),
    )
}

#[tokio::test]
async fn operate_the_broker_from_the_dashboard_in_chromium() {
    assert!(
        tool_available("mosquitto_sub"),
        "mosquitto-clients not installed: run tests/run.sh"
    );
    let dash_port = free_port();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir_all(dir.path().join("plugins")).expect("plugins dir");
    std::fs::write(
        dir.path().join("plugins/dashboard.toml"),
        format!("bind = \"127.0.0.1:{dash_port}\"\nsample_interval_secs = 1\n"),
    )
    .expect("dashboard config");
    let b = Broker::start_in(
        dir,
        &bin_dir(),
        "[[listener]]\nname = \"ws\"\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\nws_path = \"/mqtt\"\n\n[plugins]\nenabled = [\"retainer\", \"dashboard\"]\n",
    );
    let api = Api::of(&b);
    let url = format!("http://127.0.0.1:{dash_port}/");
    let (c, _driver) = browser().await;

    // Log in: a wrong token is refused, the admin token opens the overview.
    c.goto(&url).await.expect("open the dashboard");
    type_into(&c, "#token", "not-the-token").await;
    click(&c, "#login-btn").await;
    wait_text(&c, "#login-error", "refusal shown", |t| t.contains("wrong")).await;
    screenshot(&c, "login").await;
    type_into(&c, "#token", &api.token).await;
    click(&c, "#login-btn").await;
    wait_text(&c, "#ov-connections", "overview filled", |t| t != "-").await;
    wait_text(&c, "#ov-plugins", "plugin states", |t| {
        t.contains("dashboard: active") && t.contains("retainer: active")
    })
    .await;

    // The chart moves under load.
    let publisher = V4Client::connect(b.port(), "load").await;
    let load = tokio::spawn(async move {
        for i in 0..3000u32 {
            let _ = publisher
                .client
                .publish("load/x", rumqttc::QoS::AtMostOnce, false, i.to_string())
                .await;
            if i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        publisher
    });
    wait_text(&c, "#rate-peak", "message-rate chart moved", |t| {
        t.parse::<u64>().is_ok_and(|n| n > 50)
    })
    .await;
    // The peak can come from the first sample alone (a line of one point): the
    // next sample, one second later, makes it a line.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let points = c
            .find(Locator::Css("#rate-in"))
            .await
            .expect("chart line")
            .attr("points")
            .await
            .expect("points")
            .unwrap_or_default();
        if points.split(' ').count() >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the chart never drew a line: points {points:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    screenshot(&c, "overview").await;
    let publisher = load.await.expect("load");

    // Clients: a real mosquitto_sub shows up and is kicked from the page.
    let _watcher = mosquitto_sub(b.port(), "watcher", "w/#", None);
    wait_until("mosquitto_sub connected", || {
        b.ctl_ok(&["clients", "list", "--connected"])
            .contains("Client(watcher,")
    })
    .await;
    let before = api.get("/api/v5/clients/watcher").await.json["connected_at"].clone();
    c.goto(&format!("{url}#clients")).await.expect("clients");
    type_into(&c, "#client-search", "watch").await;
    wait_text(&c, "#clients-table tbody", "watcher listed", |t| {
        t.contains("watcher") && !t.contains("load")
    })
    .await;
    screenshot(&c, "clients").await;
    click(&c, "tr[data-clientid=\"watcher\"] button.kick").await;
    wait_text(&c, "#flash", "kick confirmed", |t| {
        t.contains("Client watcher kicked.")
    })
    .await;
    // mosquitto_sub reconnects by itself: the kick shows as a new connection.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = api.get("/api/v5/clients/watcher").await.json;
        if now["connected"] != true || now["connected_at"] != before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "watcher was not kicked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b.log().contains("watcher"), "the kick is logged");

    // Plugins: unload and load the retainer from the page.
    c.goto(&format!("{url}#plugins")).await.expect("plugins");
    click(&c, "tr[data-plugin=\"retainer\"] button.plugin-unload").await;
    wait_text(
        &c,
        "tr[data-plugin=\"retainer\"]",
        "retainer unloaded",
        |t| t.contains("not loaded"),
    )
    .await;
    assert!(b
        .ctl_ok(&["plugins", "list"])
        .contains("Plugin(retainer, version=-, api=-, state=not loaded"));
    click(&c, "tr[data-plugin=\"retainer\"] button.plugin-load").await;
    wait_text(&c, "tr[data-plugin=\"retainer\"]", "retainer loaded", |t| {
        t.contains("active")
    })
    .await;
    screenshot(&c, "plugins").await;

    // Publish from the form to a real subscriber; retained, so it shows on the retained page.
    let mut receiver = mosquitto_sub(b.port(), "receiver", "dash/#", Some(1));
    wait_until("receiver subscribed", || {
        b.ctl_ok(&["subscriptions", "list", "--client", "receiver"])
            .contains("dash/#")
    })
    .await;
    c.goto(&format!("{url}#publish")).await.expect("publish");
    type_into(&c, "#pub-topic", "dash/hello").await;
    type_into(&c, "#pub-payload", "hi from the browser").await;
    click(&c, "#pub-retain").await;
    click(&c, "#pub-send").await;
    wait_text(&c, "#pub-result", "published", |t| {
        t.contains("queued for 1 session(s)")
    })
    .await;
    screenshot(&c, "publish").await;
    let out = receiver.stdout();
    assert!(
        out.contains("dash/hello hi from the browser"),
        "mosquitto_sub got: {out:?}"
    );

    // Subscriptions and retained messages.
    let mut listener = V4Client::connect(b.port(), "plant-listener").await;
    listener
        .subscribe("plant/+/w", rumqttc::QoS::AtLeastOnce)
        .await;
    c.goto(&format!("{url}#subscriptions")).await.expect("subs");
    type_into(&c, "#subs-match", "plant/7/w").await;
    wait_text(&c, "#subs-table tbody", "a matching filter listed", |t| {
        t.contains("plant-listener") && t.contains("plant/+/w") && !t.contains("dash/#")
    })
    .await;
    screenshot(&c, "subscriptions").await;
    c.goto(&format!("{url}#retained")).await.expect("retained");
    click(&c, "#retained-refresh").await;
    wait_text(&c, "#retained-table tbody", "retained listed", |t| {
        t.contains("dash/hello")
    })
    .await;
    screenshot(&c, "retained").await;
    click(&c, "tr[data-topic=\"dash/hello\"] button.delete").await;
    wait_text(&c, "#flash", "retained deleted", |t| t.contains("deleted")).await;
    assert_eq!(
        api.get("/api/v5/mqtt/retainer/message/dash%2Fhello")
            .await
            .status,
        404
    );

    // The live topic viewer subscribes over the broker's WebSocket listener.
    c.goto(&format!("{url}#viewer")).await.expect("viewer");
    type_into(&c, "#viewer-filter", "live/#").await;
    click(&c, "#viewer-connect").await;
    wait_text(&c, "#viewer-status", "viewer subscribed", |t| {
        t.contains("subscribed to live/#")
    })
    .await;
    publisher
        .client
        .publish("live/temp", rumqttc::QoS::AtLeastOnce, false, "21.5")
        .await
        .expect("publish");
    wait_text(&c, "#viewer-messages", "message in the viewer", |t| {
        t.contains("live/temp") && t.contains("21.5")
    })
    .await;
    screenshot(&c, "viewer").await;

    // Logging out forgets the credentials.
    click(&c, "#logout").await;
    c.refresh().await.expect("reload");
    let login = c.find(Locator::Css("#login")).await.expect("login");
    assert!(login.is_displayed().await.expect("displayed"));
    let _ = c.close().await;
}

/// The dashboard forwards no request without credentials, and refuses a non-loopback bind.
#[tokio::test]
async fn dashboard_requires_credentials_and_loopback() {
    let dash_port = free_port();
    let b = Broker::start();
    b.plugin_config("dashboard", &format!("bind = \"127.0.0.1:{dash_port}\"\n"));
    b.ctl_ok(&["plugins", "load", "dashboard"]);
    let dash = Api::new(&format!("http://127.0.0.1:{dash_port}"), "", None);
    let page = dash.send("GET", "/", None, None).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("Broker dashboard"));
    let anonymous = dash.send("GET", "/api/v5/clients", None, None).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.text);
    let token = format!("Bearer {}", Api::of(&b).token);
    let ok = dash
        .send("GET", "/api/v5/clients", Some(&token), None)
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let wrong = dash
        .send("GET", "/api/v5/clients", Some("Bearer wrong"), None)
        .await;
    assert_eq!(wrong.status, 401);
    // An API key logs in too (as the login form sends it: Bearer <key>:<secret>).
    let (api_key, secret) = b.create_api_key("viewer");
    let key = format!("Bearer {api_key}:{secret}");
    let session = dash
        .send("GET", "/dashboard/session", Some(&key), None)
        .await;
    assert_eq!(session.status, 200, "{}", session.text);
    let rates = dash.send("GET", "/dashboard/rates", None, None).await;
    assert_eq!(rates.status, 401);
    // Reload serves on the same port again (a new client: the old server closed its
    // keep-alive connections).
    b.ctl_ok(&["plugins", "reload", "dashboard"]);
    let dash = Api::new(&format!("http://127.0.0.1:{dash_port}"), "", None);
    assert_eq!(dash.send("GET", "/", None, None).await.status, 200);

    b.ctl_ok(&["plugins", "unload", "dashboard"]);
    b.plugin_config("dashboard", "bind = \"0.0.0.0:18999\"\n");
    let refused = b.ctl(&["plugins", "load", "dashboard"]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("loopback"),
        "clear refusal: {refused:?}"
    );
}
