//! The TLS scenario's certificates, made at the start of a run with rcgen (as the integration
//! tests make theirs): a CA, a server certificate for `localhost` that the vault and the TLS
//! floor both serve from the same files, and the load client's certificate naming the bench
//! caller by its SPIFFE ID, as a mesh or cert-manager would issue it (docs/security.md). Every
//! key is rcgen's default, ECDSA P-256, so both servers sign their handshakes with the same
//! key type.
//!
//! Also what a handshake with each server negotiated, read by a probe connection, so that the
//! report can show (and the run check) that the vault and its floor agree on protocol version,
//! cipher suite, key exchange group and ALPN.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    ClientConfig, RootCertStore,
};
use time::OffsetDateTime;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The bench caller's identity in its client certificate, as configured in the vault.
pub const BENCH_SPIFFE_ID: &str = "spiffe://bench.local/ns/bench/sa/load";
/// The name the server certificate is issued for, and the name clients verify it against.
pub const SERVER_NAME: &str = "localhost";

/// The files a TLS server reads: its chain, its key, and the CA client certificates must
/// chain to.
#[derive(Clone)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

pub struct BenchPki {
    ca_pem: String,
    pub server: ServerFiles,
    client_cert: String,
    client_key: String,
}

impl BenchPki {
    /// A new CA and its certificates; the server's files are written to `dir`.
    pub fn new(dir: &Path) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "token-vault bench CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |dns: &[&str], uris: &[&str]| {
            let mut params = CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>()).unwrap();
            for uri in uris {
                params.subject_alt_names.push(SanType::URI((*uri).try_into().unwrap()));
            }
            let now = OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::hours(1);
            params.not_after = now + time::Duration::days(1);
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(&[SERVER_NAME], &[]);
        let (client_cert, client_key) = leaf(&[], &[BENCH_SPIFFE_ID]);
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let server = ServerFiles {
            cert: write("tls.crt", &server_cert),
            key: write("tls.key", &server_key),
            client_ca: write("ca.crt", &ca.pem()),
        };
        Self {
            ca_pem: ca.pem(),
            server,
            client_cert,
            client_key,
        }
    }

    /// The load client's TLS: trusts the bench CA, verifies the server as `localhost`, presents
    /// the bench caller's certificate. Each endpoint built from it gets a client configuration
    /// (and session cache) of its own.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(SERVER_NAME)
            .identity(Identity::from_pem(&self.client_cert, &self.client_key))
    }

    /// The rustls client configuration tonic builds from [`Self::client`] (ring, rustls' safe
    /// default versions, the CA as the only root, the client certificate, ALPN h2), for the
    /// probe that reads what a handshake negotiated.
    fn probe_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(ca.unwrap()).unwrap();
        }
        let chain = CertificateDer::pem_slice_iter(self.client_cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(self.client_key.as_bytes()).unwrap();
        let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    /// What a full handshake with the server at `addr` negotiates, e.g.
    /// `TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519 h2`.
    pub async fn negotiated(&self, addr: SocketAddr) -> String {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        let tls = tokio_rustls::TlsConnector::from(self.probe_config())
            .connect(name, tcp)
            .await
            .expect("the probe's handshake succeeds");
        let (_, session) = tls.get_ref();
        format!(
            "{:?} {:?} {} {}",
            session.protocol_version().unwrap(),
            session.negotiated_cipher_suite().unwrap().suite(),
            session
                .negotiated_key_exchange_group()
                .map_or("-".to_owned(), |g| format!("{:?}", g.name())),
            String::from_utf8_lossy(session.alpn_protocol().unwrap_or(b"-")),
        )
    }
}
