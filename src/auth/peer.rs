//! What the listener (`crate::listener`) learns about a connection once, when its handshake
//! ends, and hands to every request on it as tonic's connect info ([`PeerConnection`]): its
//! addresses and, over mutual TLS, the names of the client certificate rustls verified. Here in
//! `auth` because the authentication layer is what reads it, and both the listener and the API
//! sit above `auth` in the layer map (`crate::layers`). [`PeerConnection::of_tls`] parses the
//! certificate once per connection rather than on every call: its chain cannot change while the
//! connection lives (TLS 1.3 has no renegotiation), and a caller's calls are many where its
//! connections are few.

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::CertificateNames;

/// A request's connection: each request gets a clone (two addresses and an `Arc`).
#[derive(Debug, Clone)]
pub struct PeerConnection {
    pub local_addr: Option<SocketAddr>,
    pub remote_addr: Option<SocketAddr>,
    /// The verified client certificate's names; `None` without TLS or when the client
    /// presented no certificate (bearer callers over TLS).
    pub certificate: Option<Arc<CertificateNames>>,
}

impl PeerConnection {
    pub fn of_tcp(tcp: &TcpStream) -> Self {
        Self {
            local_addr: tcp.local_addr().ok(),
            remote_addr: tcp.peer_addr().ok(),
            certificate: None,
        }
    }

    pub fn of_tls(tls: &TlsStream<TcpStream>) -> Self {
        let (tcp, session) = tls.get_ref();
        Self {
            certificate: session
                .peer_certificates()
                .map(|chain| Arc::new(CertificateNames::read(chain))),
            ..Self::of_tcp(tcp)
        }
    }
}
