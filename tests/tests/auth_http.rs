//! The auth_http plugin against a real HTTP server started by each test.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_tests::rumqttc;
use broker_tests::rumqttc::QoS;
use broker_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request the test server received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    body: String,
    headers: String,
}

type Handler = Arc<dyn Fn(&Seen) -> (u16, String, u64) + Send + Sync>;

/// A small HTTP/1.1 server (keep-alive, Content-Length bodies) answering with `handler`:
/// (status, body, delay in ms).
struct HttpServer {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl HttpServer {
    async fn start(
        handler: impl Fn(&Seen) -> (u16, String, u64) + Send + Sync + 'static,
    ) -> HttpServer {
        HttpServer::start_tls(None, handler).await
    }

    async fn start_tls(
        tls: Option<tokio_rustls::TlsAcceptor>,
        handler: impl Fn(&Seen) -> (u16, String, u64) + Send + Sync + 'static,
    ) -> HttpServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let handler = handler.clone();
                let log = log.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(tcp).await {
                                serve_http(s, handler, log).await
                            }
                        }
                        None => serve_http(tcp, handler, log).await,
                    }
                });
            }
        });
        HttpServer { port, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("log").clone()
    }
}

async fn serve_http<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    handler: Handler,
    log: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < end + 4 + len {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
        buf.drain(..end + 4 + len);
        let mut first = head.lines().next().unwrap_or("").split(' ');
        let req = Seen {
            method: first.next().unwrap_or("").to_owned(),
            target: first.next().unwrap_or("").to_owned(),
            body,
            headers: head.clone(),
        };
        log.lock().expect("log").push(req.clone());
        let (status, reply, delay) = handler(&req);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn connect_with_password(id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = mqtt_string("MQTT");
    body.extend([4, 0xC2, 0, 60]);
    body.extend(mqtt_string(id));
    body.extend(mqtt_string(user));
    body.extend(mqtt_string(password));
    packet(0x10, &body)
}

async fn connack(port: u16, id: &str, user: &str, password: &str) -> u8 {
    let mut w = Wire::open(port).await;
    w.send(&connect_with_password(id, user, password)).await;
    w.recv().await.expect("CONNACK").body[1]
}

fn auth_config(port: u16, extra: &str) -> String {
    let timeout = if extra.contains("timeout_ms") {
        ""
    } else {
        "timeout_ms = 1000\n"
    };
    format!(
        "{timeout}{extra}\n[auth_req]\nurl = \"http://127.0.0.1:{port}/auth\"\nmethod = \"post\"\nparams = {{ clientid = \"%c\", username = \"%u\", password = \"%P\", ipaddr = \"%a\", port = \"%p\", proto = \"%r\" }}\n"
    )
}

fn broker_with(config: &str) -> Broker {
    let b = Broker::start();
    b.plugin_config("auth_http", config);
    b.ctl_ok(&["plugins", "load", "auth_http"]);
    b
}

#[tokio::test]
async fn form_post_with_placeholders_and_status_answers() {
    let http = HttpServer::start(|r| match () {
        _ if r.body.contains("password=right") => (200, String::new(), 0),
        _ if r.body.contains("password=forbidden") => (403, String::new(), 0),
        _ if r.body.contains("password=shrug") => (200, "ignore".into(), 0),
        _ => (401, String::new(), 0),
    })
    .await;
    let b = broker_with(&auth_config(http.port, ""));
    assert_eq!(connack(b.port(), "dev1", "alice", "right").await, 0);
    assert_eq!(
        connack(b.port(), "dev2", "alice", "wrong").await,
        4,
        "401 → bad user name or password"
    );
    assert_eq!(
        connack(b.port(), "dev3", "alice", "forbidden").await,
        5,
        "403 → not authorized"
    );
    assert_eq!(
        connack(b.port(), "dev4", "alice", "shrug").await,
        5,
        "ignore → auth.no_match (deny)"
    );
    let first = &http.seen()[0];
    assert_eq!(
        (first.method.as_str(), first.target.as_str()),
        ("POST", "/auth")
    );
    assert!(first
        .headers
        .to_ascii_lowercase()
        .contains("content-type: application/x-www-form-urlencoded"));
    for part in [
        "clientid=dev1",
        "username=alice",
        "password=right",
        "ipaddr=127.0.0.1",
        &format!("port={}", b.port()),
        "proto=mqtt",
    ] {
        assert!(first.body.contains(part), "{part} in {}", first.body);
    }
}

#[tokio::test]
async fn get_query_string_and_json_bodies() {
    let http = HttpServer::start(|_| (200, String::new(), 0)).await;
    let config = format!(
        "[auth_req]\nurl = \"http://127.0.0.1:{}/auth/%c\"\nmethod = \"get\"\nparams = {{ u = \"%u\", p = \"%P\" }}\n",
        http.port
    );
    let b = broker_with(&config);
    assert_eq!(connack(b.port(), "dev/1", "bob smith", "p&w").await, 0);
    let r = &http.seen()[0];
    assert_eq!(
        (r.method.as_str(), r.target.as_str()),
        ("GET", "/auth/dev%2F1?p=p%26w&u=bob%20smith")
    );

    let http = HttpServer::start(|_| (200, r#"{"result":"allow"}"#.into(), 0)).await;
    let config = format!(
        "[auth_req]\nurl = \"http://127.0.0.1:{}/auth\"\nmethod = \"post\"\ncontent_type = \"json\"\nheaders = {{ \"X-Api-Key\" = \"k1\" }}\nparams = {{ username = \"%u\" }}\n",
        http.port
    );
    let b = broker_with(&config);
    assert_eq!(connack(b.port(), "j", "carol", "x").await, 0);
    let r = &http.seen()[0];
    let json: serde_json::Value = serde_json::from_str(&r.body).expect("JSON body");
    assert_eq!(json["username"], "carol");
    assert!(r.headers.to_ascii_lowercase().contains("x-api-key: k1"));
}

#[tokio::test]
async fn superuser_and_acl_requests() {
    let http = HttpServer::start(|r| match r.target.as_str() {
        "/auth" => (200, String::new(), 0),
        "/super" if r.body.contains("username=root") => (200, String::new(), 0),
        "/super" => (403, String::new(), 0),
        // ACL: subscribe (1) to secret/… denied, the rest allowed.
        "/acl" if r.body.contains("access=1") && r.body.contains("topic=secret") => {
            (403, String::new(), 0)
        }
        _ => (200, String::new(), 0),
    })
    .await;
    let config = format!(
        "{}[super_req]\nurl = \"http://127.0.0.1:{p}/super\"\nparams = {{ username = \"%u\" }}\n[acl_req]\nurl = \"http://127.0.0.1:{p}/acl\"\nparams = {{ access = \"%A\", topic = \"%t\", username = \"%u\" }}\n",
        auth_config(http.port, ""),
        p = http.port
    );
    let b = broker_with(&config);
    let mut o = v4_options(b.port(), "user");
    o.set_credentials("dave", "pw");
    let (mut user, _) = V4Client::connect_with(o).await;
    assert_eq!(
        user.subscribe("secret/x", QoS::AtLeastOnce).await,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );
    assert_eq!(
        user.subscribe("open/x", QoS::AtLeastOnce).await,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let mut o = v4_options(b.port(), "admin");
    o.set_credentials("root", "pw");
    let (mut root, _) = V4Client::connect_with(o).await;
    let acl_before = http.seen().iter().filter(|r| r.target == "/acl").count();
    assert_eq!(
        root.subscribe("secret/x", QoS::AtLeastOnce).await,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)],
        "superusers skip ACL"
    );
    assert_eq!(
        http.seen().iter().filter(|r| r.target == "/acl").count(),
        acl_before,
        "no ACL request for a superuser"
    );
}

#[tokio::test]
async fn json_answer_pre_authorises_topics() {
    let http = HttpServer::start(|r| match r.target.as_str() {
        "/auth" => (200, r##"{"result":"allow","acl":[{"permission":"deny","action":"subscribe","topic":"private/#"},{"permission":"allow","action":"all","topic":"#"}]}"##.into(), 0),
        _ => (500, String::new(), 0),
    })
    .await;
    let b = broker_with(&auth_config(http.port, ""));
    let mut o = v4_options(b.port(), "pre");
    o.set_credentials("erin", "pw");
    let (mut c, _) = V4Client::connect_with(o).await;
    assert_eq!(
        c.subscribe("private/a", QoS::AtMostOnce).await,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );
    assert_eq!(
        c.subscribe("public/a", QoS::AtMostOnce).await,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::AtMostOnce)]
    );
    assert_eq!(
        http.seen().len(),
        1,
        "only the auth request: the ACL came with its answer"
    );
}

#[tokio::test]
async fn slow_or_dead_service_follows_on_error() {
    let http = HttpServer::start(|_| (200, String::new(), 3000)).await;
    let b = broker_with(&auth_config(http.port, "timeout_ms = 300"));
    let started = Instant::now();
    assert_eq!(
        connack(b.port(), "slow", "u", "p").await,
        3,
        "timeout + on_error deny → server unavailable"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // Nothing listens on this port: refused connections are backend errors too.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let b = broker_with(&auth_config(dead, ""));
    assert_eq!(connack(b.port(), "dead", "u", "p").await, 3);
    let b = broker_with(&auth_config(dead, "on_error = \"ignore\""));
    assert_eq!(
        connack(b.port(), "dead2", "u", "p").await,
        5,
        "ignore → next plugin → none → auth.no_match deny"
    );
}

#[tokio::test]
async fn reload_uses_the_new_url_and_unload_takes_effect_at_once() {
    let a = HttpServer::start(|_| (401, String::new(), 0)).await;
    let ok = HttpServer::start(|_| (200, String::new(), 0)).await;
    let b = broker_with(&auth_config(a.port, ""));
    assert_eq!(connack(b.port(), "r1", "u", "p").await, 4);
    b.plugin_config("auth_http", &auth_config(ok.port, ""));
    b.ctl_ok(&["plugins", "reload", "auth_http"]);
    assert_eq!(connack(b.port(), "r2", "u", "p").await, 0);
    assert_eq!(ok.seen().len(), 1, "the edited URL is used");
    b.plugin_config("auth_http", &auth_config(a.port, ""));
    b.ctl_ok(&["plugins", "reload", "auth_http"]);
    assert_eq!(connack(b.port(), "r3", "u", "p").await, 4);
    b.ctl_ok(&["plugins", "unload", "auth_http"]);
    assert_eq!(
        connack(b.port(), "r4", "u", "p").await,
        0,
        "no auth plugin: allow_anonymous decides"
    );
}

#[tokio::test]
async fn auth_result_cache_when_enabled() {
    let http = HttpServer::start(|_| (200, String::new(), 0)).await;
    let b = broker_with(&auth_config(http.port, "cache_ttl_secs = 60"));
    assert_eq!(connack(b.port(), "c", "u", "p").await, 0);
    assert_eq!(connack(b.port(), "c", "u", "p").await, 0);
    assert_eq!(http.seen().len(), 1, "second login answered from the cache");
    assert_eq!(connack(b.port(), "c", "u", "other").await, 0);
    assert_eq!(http.seen().len(), 2, "another password is another key");
}

#[tokio::test]
async fn https_with_a_configured_ca() {
    use rustls::pki_types::pem::PemObject;
    let dir = tempfile::tempdir().expect("tmp");
    let pki = TestPki::generate(dir.path(), "unused");
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(&pki.server_cert)
        .expect("chain")
        .map(|c| c.expect("cert"))
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&pki.server_key).expect("key");
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server config");
    let http = HttpServer::start_tls(
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(server))),
        |_| (200, String::new(), 0),
    )
    .await;
    let config = format!(
        "ca_file = {:?}\n[auth_req]\nurl = \"https://localhost:{}/auth\"\nparams = {{ username = \"%u\" }}\n",
        pki.ca.display().to_string(),
        http.port
    );
    let b = broker_with(&config);
    assert_eq!(connack(b.port(), "tls-auth", "u", "p").await, 0);
    assert_eq!(http.seen().len(), 1);
    // Without the CA the service cannot be trusted: backend error, fail closed.
    let b2 = broker_with(&format!(
        "[auth_req]\nurl = \"https://localhost:{}/auth\"\n",
        http.port
    ));
    assert_eq!(connack(b2.port(), "untrusted", "u", "p").await, 3);
}
