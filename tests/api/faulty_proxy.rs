//! A TCP proxy in front of the scripted provider that can reset connections: the next
//! request bytes that arrive while it is armed are answered with a TCP reset (SO_LINGER 0)
//! instead of being forwarded, so the provider never sees that request.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

#[derive(Clone)]
pub struct FaultyProxy {
    pub addr: std::net::SocketAddr,
    resets_left: Arc<AtomicUsize>,
    pub resets_done: Arc<AtomicUsize>,
}

impl FaultyProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Self {
            addr: listener.local_addr().unwrap(),
            resets_left: Arc::new(AtomicUsize::new(0)),
            resets_done: Arc::new(AtomicUsize::new(0)),
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(p.clone().pipe(client, upstream));
            }
        });
        proxy
    }

    /// Resets the connection carrying each of the next `n` requests.
    pub fn reset_next(&self, n: usize) {
        self.resets_left.store(n, Ordering::SeqCst);
    }

    fn take_reset(&self) -> bool {
        self.resets_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    async fn pipe(self, mut client: TcpStream, upstream: std::net::SocketAddr) {
        let Ok(mut server) = TcpStream::connect(upstream).await else {
            return;
        };
        let mut from_client = vec![0u8; 16 * 1024];
        let mut from_server = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                read = client.read(&mut from_client) => {
                    let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                    if self.take_reset() {
                        // SO_LINGER 0: closing sends RST, not FIN.
                        let _ = client.set_zero_linger();
                        self.resets_done.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    if server.write_all(&from_client[..n]).await.is_err() {
                        return;
                    }
                }
                read = server.read(&mut from_server) => {
                    let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                    if client.write_all(&from_server[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
