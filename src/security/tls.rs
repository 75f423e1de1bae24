//! The TLS acceptor: certificate chain and key from PEM files, ALPN `h2` then `http/1.1`.

use std::sync::Arc;

use super::{SecurityError, TlsFiles};

/// Builds the acceptor; every failure names the file and what is wrong with it.
pub(super) fn acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, SecurityError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;

    let cert_error = |reason: String| SecurityError::Tls { what: "certificate", path: files.cert.clone(), reason };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_error("no certificate found in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| SecurityError::Tls {
        what: "private key",
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| cert_error(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| cert_error(format!("the certificate and key do not fit together: {e}")))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's TLS 1.3 streams keep only their record keys after the handshake
    // (`server::tls13`): rustls hands them over, as it would to kernel TLS.
    server.enable_secret_extraction = true;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}
