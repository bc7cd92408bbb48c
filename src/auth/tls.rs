//! TLS for the listener from PEM files (Kubernetes secret mounts): the server's certificate
//! and key, and for mutual TLS the CA bundle client certificates must chain to. Read and
//! checked once at start, so a bad file stops start-up naming the setting.
//!
//! The result is a rustls configuration rather than tonic's `ServerTlsConfig`: the listener
//! (`crate::listener`) runs the handshake itself, so that it can bound how long one may take and
//! how many run at once. The verified client chain reaches the authentication layer the same way
//! as before, through tonic's `TlsConnectInfo` on each request.

use std::{path::Path, sync::Arc};

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};

use crate::config::{invalid, ConfigError, TlsSettings};

/// The only application protocol served: gRPC is HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// The listener's TLS configuration, or None for plaintext. With `client_ca_file` set, client
/// certificates are verified against it; `client_cert_optional` lets callers without one
/// (bearer-token callers) connect, to be identified by their token instead.
pub fn server_config(tls: &TlsSettings, client_cert_optional: bool) -> Result<Option<Arc<ServerConfig>>, ConfigError> {
    let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) else {
        return Ok(None);
    };
    let chain = certificates(&read(cert_file, "tls.cert_file")?, "tls.cert_file")?;
    let key = PrivateKeyDer::from_pem_slice(&read(key_file, "tls.key_file")?)
        .map_err(|e| invalid("tls.key_file", format!("holds no PEM private key: {e}")))?;
    // ring, as everywhere else in the process; never whatever provider happens to be installed.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls", format!("no usable TLS versions: {e}")))?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certificates(
                &read(ca_file, "tls.client_ca_file")?,
                "tls.client_ca_file",
            )?);
            if added == 0 {
                return Err(invalid("tls.client_ca_file", "holds no usable CA certificate"));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if client_cert_optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| invalid("tls.client_ca_file", format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| invalid("tls.key_file", format!("does not go with tls.cert_file: {e}")))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Some(Arc::new(config)))
}

fn read(path: &Path, field: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| invalid(field, format!("cannot read {}: {e}", path.display())))
}

fn certificates(pem: &[u8], field: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(field, format!("is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(field, "holds no certificate"));
    }
    Ok(certs)
}
