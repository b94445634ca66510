//! A small HTTP/1.1 server for tests of plugins that call HTTP services (auth_http): each
//! test starts its own on a free port and answers per request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request the test server received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// GET, POST, …
    pub method: String,
    /// Path and query string.
    pub target: String,
    /// Body (Content-Length framed).
    pub body: String,
    /// The request line and headers, as received.
    pub headers: String,
}

type Handler = Arc<dyn Fn(&Seen) -> (u16, String, u64) + Send + Sync>;

/// A small HTTP/1.1 server (keep-alive, Content-Length bodies) answering with `handler`:
/// (status, body, delay in ms).
pub struct HttpServer {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Whether requests are recorded.
    keep: Arc<AtomicBool>,
}

impl HttpServer {
    /// Starts a plain HTTP server answering with `handler`: (status, body, delay in ms).
    pub async fn start(
        handler: impl Fn(&Seen) -> (u16, String, u64) + Send + Sync + 'static,
    ) -> HttpServer {
        HttpServer::start_tls(None, handler).await
    }

    /// Like [`HttpServer::start`], keeping no record of the requests and not decoding their
    /// bodies (the handler sees an empty body): a benchmark's sink.
    pub async fn start_discarding(
        handler: impl Fn(&Seen) -> (u16, String, u64) + Send + Sync + 'static,
    ) -> HttpServer {
        let server = HttpServer::start_tls(None, handler).await;
        server.keep.store(false, Ordering::Relaxed);
        server
    }

    /// Starts an https server with the certificate chain and key of `pki` (PEM files).
    pub async fn start_https(
        pki: &crate::TestPki,
        handler: impl Fn(&Seen) -> (u16, String, u64) + Send + Sync + 'static,
    ) -> HttpServer {
        use rustls::pki_types::pem::PemObject;
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
        HttpServer::start_tls(
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(server))),
            handler,
        )
        .await
    }

    /// Starts a server, over TLS when `tls` is given.
    pub async fn start_tls(
        tls: Option<tokio_rustls::TlsAcceptor>,
        handler: impl Fn(&Seen) -> (u16, String, u64) + Send + Sync + 'static,
    ) -> HttpServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::new(AtomicBool::new(true));
        let handler: Handler = Arc::new(handler);
        let log = seen.clone();
        let keeping = keep.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let handler = handler.clone();
                let log = log.clone();
                let keeping = keeping.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(tcp).await {
                                serve_http(s, handler, log, keeping).await
                            }
                        }
                        None => serve_http(tcp, handler, log, keeping).await,
                    }
                });
            }
        });
        HttpServer { port, seen, keep }
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("log").clone()
    }
}

async fn serve_http<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    handler: Handler,
    log: Arc<Mutex<Vec<Seen>>>,
    keep: Arc<AtomicBool>,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        // Reads straight into the buffer, and looks for the end of the head only in what is new.
        let mut searched = 0;
        let end = loop {
            if let Some(i) = buf[searched..].windows(4).position(|w| w == b"\r\n\r\n") {
                break searched + i;
            }
            searched = buf.len().saturating_sub(3);
            buf.reserve(64 * 1024);
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
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
            buf.reserve(end + 4 + len - buf.len());
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        // A benchmark's sink does not look at bodies: not decoding them keeps it fast.
        let keeping = keep.load(Ordering::Relaxed);
        let body = if keeping {
            String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned()
        } else {
            String::new()
        };
        buf.drain(..end + 4 + len);
        let mut first = head.lines().next().unwrap_or("").split(' ');
        let req = Seen {
            method: first.next().unwrap_or("").to_owned(),
            target: first.next().unwrap_or("").to_owned(),
            body,
            headers: head.clone(),
        };
        if keeping {
            log.lock().expect("log").push(req.clone());
        }
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
