//! A scripted token endpoint for the benchmark: answers every grant with a fresh ~900-byte
//! access token and a rotated refresh token after a fixed delay, counts refreshes, and counts
//! refresh tokens presented more than once (reuse, which a rotating provider would punish).

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use wiremock::{matchers::method, Mock, MockServer, Request, Respond, ResponseTemplate};

#[derive(Clone)]
pub struct BenchProvider {
    pub server: Arc<MockServer>,
    pub refreshes: Arc<AtomicU64>,
    pub expires_in: Arc<AtomicU64>,
    pub reused: Arc<AtomicU64>,
}

struct Responder {
    refreshes: Arc<AtomicU64>,
    expires_in: Arc<AtomicU64>,
    /// Every refresh token presented so far (as sent, form-encoded).
    presented: Mutex<HashSet<String>>,
    reused: Arc<AtomicU64>,
    delay: Duration,
}

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body = String::from_utf8_lossy(&request.body);
        if body.contains("grant_type=refresh_token") {
            self.refreshes.fetch_add(1, Ordering::SeqCst);
            let presented = body
                .split('&')
                .find_map(|pair| pair.strip_prefix("refresh_token="))
                .unwrap_or_default()
                .to_string();
            if !self.presented.lock().unwrap().insert(presented) {
                self.reused.fetch_add(1, Ordering::SeqCst);
            }
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let body = serde_json::json!({
            "access_token": format!("{id}.{}", "a".repeat(860)),
            "refresh_token": format!("ory_rt_{id}"),
            "expires_in": self.expires_in.load(Ordering::SeqCst),
            "scope": "offline booking.read",
            "token_type": "bearer",
        });
        ResponseTemplate::new(200)
            .set_body_raw(body.to_string().into_bytes(), "application/json")
            .set_delay(self.delay)
    }
}

impl BenchProvider {
    pub async fn start(delay: Duration) -> Self {
        let server = MockServer::start().await;
        let refreshes = Arc::new(AtomicU64::new(0));
        let expires_in = Arc::new(AtomicU64::new(3600));
        let reused = Arc::new(AtomicU64::new(0));
        Mock::given(method("POST"))
            .respond_with(Responder {
                refreshes: refreshes.clone(),
                expires_in: expires_in.clone(),
                presented: Mutex::default(),
                reused: reused.clone(),
                delay,
            })
            .mount(&server)
            .await;
        Self {
            server: Arc::new(server),
            refreshes,
            expires_in,
            reused,
        }
    }

    pub fn set_expires_in(&self, secs: u64) {
        self.expires_in.store(secs, Ordering::SeqCst);
    }

    /// Latencies (µs, sorted) of token requests sent straight to the provider, as the vault
    /// sends them: the refresh scenario's floor.
    pub async fn direct_latencies(&self, n: usize) -> Vec<u32> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder().build().expect("an HTTP client");
        let url = format!("{}/oauth2/token", self.server.uri());
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let started = std::time::Instant::now();
            let answer = client
                .post(&url)
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", "direct"),
                    ("client_id", "bench"),
                ])
                .send()
                .await
                .expect("the provider answers");
            answer.bytes().await.expect("a body");
            out.push(started.elapsed().as_micros() as u32);
        }
        out.sort_unstable();
        out
    }

    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::SeqCst)
    }

    /// Refresh grants that presented a refresh token already presented before.
    pub fn reused(&self) -> u64 {
        self.reused.load(Ordering::SeqCst)
    }
}
