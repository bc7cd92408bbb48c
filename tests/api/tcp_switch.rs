//! A TCP forwarder whose target can be changed or taken away, cutting every connection it
//! carries: the database address a vault uses while the test fails the database over, and the
//! replication link a test holds back.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

#[derive(Clone)]
pub struct TcpSwitch {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

struct State {
    target: Option<SocketAddr>,
    carried: Vec<JoinHandle<()>>,
}

impl TcpSwitch {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let switch = Self {
            addr: listener.local_addr().unwrap(),
            state: Arc::new(Mutex::new(State {
                target: Some(target),
                carried: Vec::new(),
            })),
        };
        let state = switch.state.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut state = state.lock().unwrap();
                let Some(target) = state.target else {
                    // Refused: dropped at once.
                    continue;
                };
                state.carried.retain(|task| !task.is_finished());
                state.carried.push(tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                }));
            }
        });
        switch
    }

    /// Cuts every connection carried so far and sends new ones to `target` (`None`: refuses
    /// them).
    pub fn switch(&self, target: Option<SocketAddr>) {
        let mut state = self.state.lock().unwrap();
        state.target = target;
        for task in state.carried.drain(..) {
            task.abort();
        }
    }
}
