//! TLS for the listener from PEM files (Kubernetes secret mounts): the server's certificate
//! and key, and for mutual TLS the CA bundle client certificates must chain to. Read and
//! checked at start, so a bad file stops start-up naming the setting; then re-read while the
//! vault runs ([`TlsReloader`], driven by `auth::reload`), so that a renewed certificate
//! (cert-manager rewrites the Secret every 60-90 days) is served without a rollout.
//!
//! The result is a rustls configuration rather than tonic's `ServerTlsConfig`: the listener
//! (`crate::listener`) runs the handshake itself, so that it can bound how long one may take and
//! how many run at once. It takes [`ServerTls::current`] for each new connection: a reload
//! swaps the whole configuration, new connections get the new one, and established ones keep
//! the session they negotiated. The verified client chain's names are read once per connection
//! when its handshake ends (`crate::listener`), and reach the authentication layer with each
//! request on it.

use std::{
    fmt,
    path::Path,
    sync::{Arc, PoisonError, RwLock},
};

use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
    RootCertStore, ServerConfig,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::validity::{validity, Validity};
use crate::config::{invalid, ConfigError, TlsSettings};

/// The only application protocol served: gRPC is HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// The listener's TLS configuration, swapped whole on reload; cheap to clone (clones share the
/// slot). A `RwLock<Arc<_>>` for the same reason as `crypto::SharedKeyring`: the lock is held
/// only to clone the `Arc`, once per new connection.
#[derive(Clone)]
pub struct ServerTls {
    slot: Arc<RwLock<Arc<ServerConfig>>>,
}

impl ServerTls {
    /// The configuration a connection accepted now handshakes with.
    pub fn current(&self) -> Arc<ServerConfig> {
        // A poisoned lock only means a writer panicked around an `Arc` assignment, which cannot
        // leave the slot half-written.
        self.slot.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn replace(&self, config: Arc<ServerConfig>) {
        *self.slot.write().unwrap_or_else(PoisonError::into_inner) = config;
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerTls(..)")
    }
}

/// Which of the TLS files a reload concerns (the `what` of the reload metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPart {
    /// `tls.cert_file` with `tls.key_file`: they change together.
    ServerCertificate,
    ClientCa,
}

/// What a check found for one part that changed: taken (with a line for the log) or refused.
pub type PartReload = (TlsPart, Result<String, ConfigError>);

/// The listener's TLS with what it was built from, or None for plaintext (no `tls.cert_file`).
/// With `client_ca_file` set, client certificates are verified against it;
/// `client_cert_optional` lets callers without one (bearer-token callers) connect, to be
/// identified by their token instead.
pub fn load(tls: &TlsSettings, client_cert_optional: bool) -> Result<Option<TlsReloader>, ConfigError> {
    let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) else {
        return Ok(None);
    };
    let provider = provider();
    let (server_bytes, server_digest) = read_pair(cert_file, key_file)?;
    let server = server_key(&server_bytes, &provider, OffsetDateTime::now_utc())?;
    let (roots, ca_digest) = match &tls.client_ca_file {
        None => (None, None),
        Some(ca_file) => {
            let bytes = read(ca_file, "tls.client_ca_file")?;
            (Some(client_roots(&bytes)?), Some(digest(&[&bytes])))
        }
    };
    let config = assemble(&provider, &server.key, roots.as_ref(), client_cert_optional)?;
    Ok(Some(TlsReloader {
        settings: tls.clone(),
        client_cert_optional,
        shared: ServerTls {
            slot: Arc::new(RwLock::new(config)),
        },
        provider,
        server,
        server_digest,
        roots,
        ca_digest,
        expiry_reported: false,
    }))
}

/// Re-reads the TLS files and swaps a changed, usable configuration in; keeps the current one
/// when a new file is unusable.
pub struct TlsReloader {
    settings: TlsSettings,
    client_cert_optional: bool,
    shared: ServerTls,
    provider: Arc<CryptoProvider>,
    server: ServerKey,
    /// The certificate and key bytes last loaded or refused: the same bytes are not re-parsed
    /// (nor their refusal logged again) until they change.
    server_digest: [u8; 32],
    roots: Option<Arc<RootCertStore>>,
    ca_digest: Option<[u8; 32]>,
    /// Whether the served certificate's expiry has been logged (once).
    expiry_reported: bool,
}

impl TlsReloader {
    /// The configuration new connections take.
    pub fn shared(&self) -> ServerTls {
        self.shared.clone()
    }

    /// When the served certificate stops being valid.
    pub fn not_after(&self) -> OffsetDateTime {
        self.server.validity.not_after
    }

    /// Checks the files and swaps in what changed and is usable; says what it did for each
    /// part that changed (nothing when nothing did).
    pub fn check(&mut self) -> Vec<PartReload> {
        self.check_at(OffsetDateTime::now_utc())
    }

    fn check_at(&mut self, now: OffsetDateTime) -> Vec<PartReload> {
        let mut outcomes = Vec::new();
        let mut server = None;
        if let (Some(cert_file), Some(key_file)) = (&self.settings.cert_file, &self.settings.key_file) {
            match read_pair(cert_file, key_file) {
                Err(e) => outcomes.push((TlsPart::ServerCertificate, Err(e))),
                Ok((_, d)) if d == self.server_digest => {}
                Ok((bytes, d)) => {
                    self.server_digest = d;
                    match server_key(&bytes, &self.provider, now) {
                        Ok(key) => server = Some(key),
                        Err(e) => outcomes.push((TlsPart::ServerCertificate, Err(e))),
                    }
                }
            }
        }
        let mut roots = None;
        if let Some(ca_file) = &self.settings.client_ca_file {
            match read(ca_file, "tls.client_ca_file") {
                Err(e) => outcomes.push((TlsPart::ClientCa, Err(e))),
                Ok(bytes) => {
                    let d = digest(&[&bytes]);
                    if self.ca_digest != Some(d) {
                        self.ca_digest = Some(d);
                        match client_roots(&bytes) {
                            Ok(r) => roots = Some(r),
                            Err(e) => outcomes.push((TlsPart::ClientCa, Err(e))),
                        }
                    }
                }
            }
        }
        if server.is_some() || roots.is_some() {
            let key = server.as_ref().map_or(&self.server.key, |s| &s.key);
            let ca = roots.as_ref().or(self.roots.as_ref());
            match assemble(&self.provider, key, ca, self.client_cert_optional) {
                Ok(config) => {
                    self.shared.replace(config);
                    if let Some(new) = server {
                        let line = format!(
                            "serving the new certificate (valid until {}) to new connections",
                            new.validity.not_after
                        );
                        self.server = new;
                        self.expiry_reported = false;
                        outcomes.push((TlsPart::ServerCertificate, Ok(line)));
                    }
                    if let Some(new) = roots {
                        self.roots = Some(new);
                        outcomes.push((
                            TlsPart::ClientCa,
                            Ok("new connections' client certificates are verified against the new CA bundle".into()),
                        ));
                    }
                }
                Err(e) => {
                    let part = if server.is_some() {
                        TlsPart::ServerCertificate
                    } else {
                        TlsPart::ClientCa
                    };
                    outcomes.push((part, Err(e)));
                }
            }
        }
        if now > self.server.validity.not_after && !self.expiry_reported {
            self.expiry_reported = true;
            tracing::error!(
                not_after = %self.server.validity.not_after,
                "THE SERVED CERTIFICATE HAS EXPIRED and no valid replacement was found in tls.cert_file: \
                 clients refuse new connections until it is renewed"
            );
        }
        outcomes
    }

    /// Whether clients may connect without a certificate (bearer-token callers): follows the
    /// caller policy when a reload adds the first or removes the last bearer caller.
    pub fn set_client_cert_optional(&mut self, optional: bool) -> Result<(), ConfigError> {
        if optional == self.client_cert_optional {
            return Ok(());
        }
        let config = assemble(&self.provider, &self.server.key, self.roots.as_ref(), optional)?;
        self.client_cert_optional = optional;
        self.shared.replace(config);
        Ok(())
    }
}

/// The server's certificate chain and key, checked, with the leaf's validity.
struct ServerKey {
    key: Arc<CertifiedKey>,
    validity: Validity,
}

/// ring, as everywhere else in the process; never whatever provider happens to be installed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pair(cert_file: &Path, key_file: &Path) -> Result<(PairBytes, [u8; 32]), ConfigError> {
    let bytes = PairBytes {
        cert: read(cert_file, "tls.cert_file")?,
        key: Zeroizing::new(read(key_file, "tls.key_file")?),
    };
    let d = digest(&[&bytes.cert, &bytes.key]);
    Ok((bytes, d))
}

struct PairBytes {
    cert: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
}

/// A chain and key that go together, whose leaf is valid at `now`: a certificate not yet valid
/// or already expired is refused (clients would refuse it), as is a key of another certificate.
fn server_key(bytes: &PairBytes, provider: &CryptoProvider, now: OffsetDateTime) -> Result<ServerKey, ConfigError> {
    let chain = certificates(&bytes.cert, "tls.cert_file")?;
    let key = PrivateKeyDer::from_pem_slice(&bytes.key)
        .map_err(|e| invalid("tls.key_file", format!("holds no PEM private key: {e}")))?;
    let validity = validity(&chain[0]).map_err(|e| invalid("tls.cert_file", e))?;
    if now < validity.not_before || now > validity.not_after {
        return Err(invalid(
            "tls.cert_file",
            format!(
                "holds a certificate that is not valid now (valid from {} until {})",
                validity.not_before, validity.not_after
            ),
        ));
    }
    // Compares the key's public half with the certificate's (rustls' own check, as
    // `with_single_cert` made at start before reloads).
    let key = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| invalid("tls.key_file", format!("does not go with tls.cert_file: {e}")))?;
    Ok(ServerKey {
        key: Arc::new(key),
        validity,
    })
}

fn client_roots(pem: &[u8]) -> Result<Arc<RootCertStore>, ConfigError> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certificates(pem, "tls.client_ca_file")?);
    if added == 0 {
        return Err(invalid("tls.client_ca_file", "holds no usable CA certificate"));
    }
    Ok(Arc::new(roots))
}

fn assemble(
    provider: &Arc<CryptoProvider>,
    key: &Arc<CertifiedKey>,
    roots: Option<&Arc<RootCertStore>>,
    client_cert_optional: bool,
) -> Result<Arc<ServerConfig>, ConfigError> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls", format!("no usable TLS versions: {e}")))?;
    let builder = match roots {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
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
    let mut config = builder.with_cert_resolver(Arc::new(OneKey(key.clone())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The one certificate a configuration serves, whatever the client asks for.
#[derive(Debug)]
struct OneKey(Arc<CertifiedKey>);

impl ResolvesServerCert for OneKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in parts {
        // Length-prefixed: moving bytes from one file to the other is a change.
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
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
