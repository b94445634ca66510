//! The HTTP client of the auth plugins that call web services (auth_http, auth_jwt's JWKS
//! URL): reqwest over rustls with the ring provider, trusting only the CA file given (no
//! system roots: an operator names what a plugin may trust).

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;

/// A client trusting the certificates in `ca_file` (PEM; empty = none, plain HTTP only),
/// with a `timeout` per request and `pool_max_idle` kept-alive connections per host.
pub fn client(
    ca_file: &str,
    timeout: Duration,
    pool_max_idle: usize,
) -> Result<reqwest::Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    if !ca_file.is_empty() {
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| format!("ca_file {ca_file}: {e}"))?;
        for c in certs {
            let c = c.map_err(|e| format!("ca_file {ca_file}: {e}"))?;
            roots
                .add(c)
                .map_err(|e| format!("ca_file {ca_file}: {e}"))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .pool_max_idle_per_host(pool_max_idle)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())
}
