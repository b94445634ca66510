//! TLS for tls / wss listeners, with rustls (ring provider; no OpenSSL).
//!
//! [`acceptor`] loads the PEM certificate chain and key (and the client CA for mTLS) at start-up;
//! a missing or invalid file stops start-up with a message naming the file. `verify` chooses
//! whether client certificates are not asked for, optional (checked when sent) or required.
//! [`client_identity`] extracts the client certificate's common name and subject for plugins
//! (auth_http's `%C` / `%d`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio_rustls::TlsAcceptor;

use crate::config::{TlsConfig, Verify};

/// Why TLS could not be set up; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{what} {}: {detail}", path.display())]
    File {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// rustls refused the combination.
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |detail: String| TlsError::File {
        what,
        path: path.to_owned(),
        detail,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(err("contains no PEM certificate".into()));
    }
    Ok(certs)
}

/// Builds the acceptor for a listener's TLS settings.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let chain = certs("certificate file", &config.cert_file)?;
    let key_bytes = std::fs::read(&config.key_file).map_err(|e| TlsError::File {
        what: "key file",
        path: config.key_file.clone(),
        detail: e.to_string(),
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| TlsError::File {
        what: "key file",
        path: config.key_file.clone(),
        detail: format!("no PEM private key ({e})"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match (config.verify, &config.ca_file) {
        (Verify::None, _) | (_, None) => builder.with_no_client_auth(),
        (verify, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for c in certs("CA file", ca)? {
                roots.add(c).map_err(|e| TlsError::File {
                    what: "CA file",
                    path: ca.clone(),
                    detail: e.to_string(),
                })?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if verify == Verify::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder
                .with_client_cert_verifier(v.build().map_err(|e| TlsError::Setup(e.to_string()))?)
        }
    };
    let server = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::File {
            what: "certificate/key pair",
            path: config.cert_file.clone(),
            detail: e.to_string(),
        })?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// The verified client certificate's common name and subject, if the client sent one.
pub fn client_identity(conn: &rustls::ServerConnection) -> (Option<String>, Option<String>) {
    let Some(cert) = conn.peer_certificates().and_then(|c| c.first()) else {
        return (None, None);
    };
    match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, parsed)) => {
            let subject = parsed.subject();
            let cn = subject
                .iter_common_name()
                .next()
                .and_then(|a| a.as_str().ok())
                .map(str::to_owned);
            (cn, Some(subject.to_string()))
        }
        Err(_) => (None, None),
    }
}

/// TLS records are decrypted by the stream: it cannot tell whether application data waits, and
/// reads into a buffer.
impl<S> crate::connection::Transport for tokio_rustls::server::TlsStream<S> where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send
{
}
