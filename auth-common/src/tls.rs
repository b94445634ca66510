//! TLS to a backend (database, directory, cache) for the auth plugins: rustls with the ring
//! provider, trusting the CA certificates of one PEM file, or the public web roots when none is
//! named (a managed cloud database).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Trusted roots: the certificates in `ca_file` (PEM), or the public web roots when it is "".
pub fn roots(ca_file: &str) -> Result<rustls::RootCertStore, String> {
    if ca_file.is_empty() {
        return Ok(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
    }
    let mut roots = rustls::RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(ca_file).map_err(|e| format!("ca_file {ca_file}: {e}"))?;
    for c in certs {
        let c = c.map_err(|e| format!("ca_file {ca_file}: {e}"))?;
        roots
            .add(c)
            .map_err(|e| format!("ca_file {ca_file}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("ca_file {ca_file}: no certificate in it"));
    }
    Ok(roots)
}

/// A client configuration trusting [`roots`]`(ca_file)`, presenting the certificate chain in
/// `cert_file` with the key in `key_file` when both are given (PEM).
pub fn client_config(
    ca_file: &str,
    cert_file: &str,
    key_file: &str,
) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots(ca_file)?);
    if cert_file.is_empty() || key_file.is_empty() {
        return Ok(builder.with_no_client_auth());
    }
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cert_file {cert_file}: {e}"))?;
    let key =
        PrivateKeyDer::from_pem_file(key_file).map_err(|e| format!("key_file {key_file}: {e}"))?;
    builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("cert_file / key_file: {e}"))
}
