//! TLS for the listener from PEM files (Kubernetes secret mounts): the server's certificate
//! and key, and for mutual TLS the CA bundle client certificates must chain to. Read and
//! checked once at start, so a bad file stops start-up naming the setting.

use std::path::Path;

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::{invalid, ConfigError, TlsSettings};

/// The listener's TLS configuration, or None for plaintext. With `client_ca_file` set, client
/// certificates are verified against it; `client_cert_optional` lets callers without one
/// (bearer-token callers) connect, to be identified by their token instead.
pub fn server_config(tls: &TlsSettings, client_cert_optional: bool) -> Result<Option<ServerTlsConfig>, ConfigError> {
    let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) else {
        return Ok(None);
    };
    let cert = read(cert_file, "tls.cert_file")?;
    certificates(&cert, "tls.cert_file")?;
    let key = read(key_file, "tls.key_file")?;
    PrivateKeyDer::from_pem_slice(&key)
        .map_err(|e| invalid("tls.key_file", format!("holds no PEM private key: {e}")))?;
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca_file) = &tls.client_ca_file {
        let ca = read(ca_file, "tls.client_ca_file")?;
        certificates(&ca, "tls.client_ca_file")?;
        config = config
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(client_cert_optional);
    }
    Ok(Some(config))
}

fn read(path: &Path, field: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| invalid(field, format!("cannot read {}: {e}", path.display())))
}

fn certificates(pem: &[u8], field: &str) -> Result<(), ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(field, format!("is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(field, "holds no certificate"));
    }
    Ok(())
}
