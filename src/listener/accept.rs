//! The accept loop: a cap on connections, TCP options, the TLS handshake, and a deadline by
//! which a connection must have finished its handshakes. Everything here happens before a
//! caller can be identified, so each step is bounded in count and in time.
//!
//! A connection holds a slot of the listener's semaphore from accept until it closes. While it
//! handshakes, it also runs against `server.handshake_timeout`, counted from accept: the TLS
//! handshake must end within it ([`tokio::time::timeout_at`]), and the connection handed to
//! the HTTP/2 server ([`Accepted`]) fails its reads once the deadline passes without the
//! 24-byte HTTP/2 client preface having arrived. hyper then closes it. Past the preface, HTTP/2
//! keepalive pings take over (dead peers are dropped) and the deadline is gone.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::{Stream, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
    time::{Instant, Sleep},
};
use tonic::transport::server::{Connected, TcpIncoming};

use crate::auth::PeerConnection;

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`: what every HTTP/2 client sends first.
const HTTP2_PREFACE_LEN: usize = 24;
/// How long the loop pauses after a failed accept. Out of file descriptors, accept fails at once
/// for as long as it lasts; retrying without a pause would spin a core.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// At most one warning this often while connections are being turned away at the cap.
const CAP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The listener's bounds, from `server.*`.
#[derive(Debug, Clone, Copy)]
pub struct AcceptLimits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub tcp_keepalive: Duration,
}

/// Turns an accepted TCP stream into what the HTTP/2 server reads: itself (plaintext) or a TLS
/// session, and describes the result once for every request on it ([`PeerConnection`], the
/// verified client certificate's names included).
pub trait Handshake: Clone + Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = io::Result<Self::Io>> + Send;
    fn peer(io: &Self::Io) -> PeerConnection;
}

/// No TLS: the TCP stream is served as it is.
#[derive(Debug, Clone, Copy)]
pub struct Plaintext;

impl Handshake for Plaintext {
    type Io = TcpStream;

    async fn handshake(&self, tcp: TcpStream) -> io::Result<TcpStream> {
        Ok(tcp)
    }

    fn peer(io: &TcpStream) -> PeerConnection {
        PeerConnection::of_tcp(io)
    }
}

impl Handshake for tokio_rustls::TlsAcceptor {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;

    async fn handshake(&self, tcp: TcpStream) -> io::Result<Self::Io> {
        self.accept(tcp).await
    }

    fn peer(io: &Self::Io) -> PeerConnection {
        PeerConnection::of_tls(io)
    }
}

/// TLS with the listener's configuration as it is when the connection is accepted: a reloaded
/// certificate or CA applies to new connections, and established ones keep their session.
impl Handshake for crate::auth::tls::ServerTls {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;

    async fn handshake(&self, tcp: TcpStream) -> io::Result<Self::Io> {
        tokio_rustls::TlsAcceptor::from(self.current()).accept(tcp).await
    }

    fn peer(io: &Self::Io) -> PeerConnection {
        PeerConnection::of_tls(io)
    }
}

/// The connections of `listener` that completed their handshake in time, each holding its slot
/// until it is dropped. Handshakes run in tasks owned by the stream: dropping it (the server
/// stopped accepting) closes the listener and aborts them.
pub fn incoming<H: Handshake>(
    listener: TcpListener,
    limits: AcceptLimits,
    handshake: H,
) -> impl Stream<Item = io::Result<Accepted<H::Io>>> + Send {
    let tcp = TcpIncoming::from(listener)
        // Without TCP_NODELAY every small answer waits on Nagle's algorithm and the peer's
        // delayed ACK (~40 ms).
        .with_nodelay(Some(true))
        .with_keepalive(Some(limits.tcp_keepalive));
    let doorway = Doorway {
        tcp,
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        limits,
        handshake,
        handshakes: JoinSet::new(),
        turned_away: 0,
        last_warning: None,
    };
    futures::stream::unfold(doorway, |mut doorway| async move {
        let next = doorway.next().await;
        Some((Ok(next), doorway))
    })
}

struct Doorway<H: Handshake> {
    tcp: TcpIncoming,
    slots: Arc<Semaphore>,
    limits: AcceptLimits,
    handshake: H,
    handshakes: JoinSet<Option<Accepted<H::Io>>>,
    /// Connections closed at the cap since the last warning.
    turned_away: u64,
    last_warning: Option<Instant>,
}

impl<H: Handshake> Doorway<H> {
    /// The next connection ready for HTTP/2; accepts and starts handshakes meanwhile.
    async fn next(&mut self) -> Accepted<H::Io> {
        loop {
            tokio::select! {
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(ready)) = done {
                        return ready;
                    }
                }
                accepted = self.tcp.next() => match accepted {
                    Some(Ok(stream)) => self.admit(stream),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                    // A TcpListener never runs out of connections.
                    None => std::future::pending::<()>().await,
                },
            }
        }
    }

    /// Gives the connection a slot and starts its handshake, or closes it at once when every
    /// slot is taken. Closing (rather than leaving it in the kernel's backlog) tells a client
    /// at once to try another replica.
    fn admit(&mut self, stream: TcpStream) {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            drop(stream);
            self.turned_away += 1;
            let now = Instant::now();
            if self
                .last_warning
                .is_none_or(|at| now.duration_since(at) >= CAP_WARNING_INTERVAL)
            {
                tracing::warn!(
                    max_connections = self.limits.max_connections,
                    turned_away = self.turned_away,
                    "connection cap reached (server.max_connections): closing new connections"
                );
                self.turned_away = 0;
                self.last_warning = Some(now);
            }
            return;
        };
        let deadline = Instant::now() + self.limits.handshake_timeout;
        let handshake = self.handshake.clone();
        self.handshakes.spawn(async move {
            let peer = stream.peer_addr().ok();
            match tokio::time::timeout_at(deadline, handshake.handshake(stream)).await {
                Ok(Ok(io)) => {
                    // Here, in the connection's own task, so that a certificate's parse never
                    // holds up the accept loop.
                    let peer = H::peer(&io);
                    Some(Accepted::new(io, peer, slot, deadline))
                }
                Ok(Err(e)) => {
                    tracing::debug!(?peer, error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(?peer, "TLS handshake not done within server.handshake_timeout: closed");
                    None
                }
            }
        });
    }
}

/// A connection handed to the HTTP/2 server: its slot, what its requests are told about it,
/// and until the HTTP/2 preface has been read, the handshake deadline.
pub struct Accepted<IO> {
    io: IO,
    peer: PeerConnection,
    _slot: OwnedSemaphorePermit,
    preface: Option<Preface>,
}

struct Preface {
    missing: usize,
    deadline: Pin<Box<Sleep>>,
}

impl<IO> Accepted<IO> {
    fn new(io: IO, peer: PeerConnection, slot: OwnedSemaphorePermit, deadline: Instant) -> Self {
        Self {
            io,
            peer,
            _slot: slot,
            preface: Some(Preface {
                missing: HTTP2_PREFACE_LEN,
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
            }),
        }
    }
}

impl<IO> Connected for Accepted<IO> {
    type ConnectInfo = PeerConnection;

    fn connect_info(&self) -> PeerConnection {
        self.peer.clone()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Accepted<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(preface) = &mut this.preface {
            match polled {
                Poll::Ready(Ok(())) => {
                    preface.missing = preface.missing.saturating_sub(buf.filled().len() - before);
                    if preface.missing == 0 {
                        this.preface = None;
                    }
                }
                // Polling the timer registers the waker, so that hyper, waiting on this read,
                // is woken when the deadline passes and closes the connection on the error.
                Poll::Pending if preface.deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no HTTP/2 preface within server.handshake_timeout",
                    )));
                }
                _ => {}
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Accepted<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn limits(max_connections: usize, handshake_timeout: Duration) -> AcceptLimits {
        AcceptLimits {
            max_connections,
            handshake_timeout,
            tcp_keepalive: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn a_connection_without_a_preface_fails_its_reads_at_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(incoming(listener, limits(4, Duration::from_millis(200)), Plaintext));
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut accepted = incoming.next().await.unwrap().unwrap();
        client.write_all(b"PRI * HTTP/2.0").await.unwrap();
        let mut buf = [0u8; 64];
        let n = accepted.read(&mut buf).await.unwrap();
        assert_eq!(n, 14);
        let started = Instant::now();
        let err = accepted.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn past_the_preface_the_deadline_is_gone() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(incoming(listener, limits(4, Duration::from_millis(100)), Plaintext));
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut accepted = incoming.next().await.unwrap().unwrap();
        client.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let mut read = 0;
        while read < HTTP2_PREFACE_LEN {
            read += accepted.read(&mut buf).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        client.write_all(b"more").await.unwrap();
        assert_eq!(accepted.read(&mut buf).await.unwrap(), 4);
    }

    #[tokio::test]
    async fn over_the_cap_a_connection_is_closed_at_once_and_a_freed_slot_is_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(incoming(listener, limits(1, Duration::from_secs(10)), Plaintext));
        let _first_client = TcpStream::connect(addr).await.unwrap();
        let first = incoming.next().await.unwrap().unwrap();
        // The stream must be polled for the loop to accept (and turn away) the second one.
        let mut second = TcpStream::connect(addr).await.unwrap();
        let poll_more = tokio::time::timeout(Duration::from_millis(300), incoming.next()).await;
        assert!(poll_more.is_err(), "no second connection is handed over");
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(2), second.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");

        drop(first);
        let _third_client = TcpStream::connect(addr).await.unwrap();
        let third = tokio::time::timeout(Duration::from_secs(2), incoming.next()).await;
        assert!(
            matches!(third, Ok(Some(Ok(_)))),
            "a freed slot takes the next connection"
        );
    }
}
