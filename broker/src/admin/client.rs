//! The client side of the management API, for `brokerctl` (blocking reqwest over rustls).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;

/// Why a request failed before an HTTP answer arrived.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker's management API could not be reached.
    #[error(
        "cannot reach the broker's management API at {url}: {detail} (is the broker running?)"
    )]
    Connect {
        /// URL tried.
        url: String,
        /// What failed.
        detail: String,
    },
    /// The client could not be set up (bad URL, CA file).
    #[error("{0}")]
    Setup(String),
}

/// A connection to one broker's management API.
pub struct ApiClient {
    base: String,
    authorization: String,
    http: reqwest::blocking::Client,
}

/// Normalises `--url`: `host:port`, `http://host:port` or `https://host:port[/]`.
pub fn base_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.starts_with("http://") || url.starts_with("https://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// Percent-encodes one path segment (a client id may hold `/`, spaces or `%`).
pub fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl ApiClient {
    /// A client for `base` (see [`base_url`]) sending `authorization` as the `Authorization`
    /// header; `ca_file` holds the CA certificates an `https` API's certificate must chain to.
    pub fn new(
        base: &str,
        authorization: String,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<ApiClient, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(path) = ca_file {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    ClientError::Setup(format!("cannot read --cacert {}: {e}", path.display()))
                })?;
            for c in certs {
                roots.add(c).map_err(|e| {
                    ClientError::Setup(format!("bad certificate in {}: {e}", path.display()))
                })?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::blocking::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(ApiClient {
            base: base_url(base),
            authorization,
            http,
        })
    }

    /// Sends one request; returns the status code and body. `path` starts with `/`.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, String), ClientError> {
        let url = format!("{}{path}", self.base);
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        let mut request = self
            .http
            .request(method, &url)
            .header(reqwest::header::AUTHORIZATION, &self.authorization);
        if let Some(b) = body {
            request = request.json(b);
        }
        let response = request.send().map_err(|e| ClientError::Connect {
            url: self.base.clone(),
            detail: error_chain(&e),
        })?;
        let status = response.status().as_u16();
        let text = response.text().map_err(|e| ClientError::Connect {
            url: self.base.clone(),
            detail: error_chain(&e),
        })?;
        Ok((status, text))
    }
}

/// An error and its causes on one line (reqwest's top-level message alone is vague).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
