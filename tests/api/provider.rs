//! A scripted authorization server that behaves like Ory Hydra at the token endpoint: it
//! rotates the refresh token on every refresh, answers a reused refresh token with
//! `invalid_grant` and revokes the whole chain, checks client authentication and PKCE, counts
//! every request, and can be made slow or failing on demand. Its RFC 7009 revocation endpoint
//! (`/oauth2/revoke`) checks client authentication too, records every revocation, and revokes
//! the whole chain of a refresh token, as Hydra does.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD, engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use sha2::{Digest, Sha256};
use wiremock::{matchers::method, matchers::path, Mock, Request, Respond, ResponseTemplate};

use crate::mock_http;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    Post,
    Basic,
}

/// What the next token request gets instead of the normal answer.
#[derive(Clone, Debug)]
pub enum Fault {
    /// An HTTP status with a JSON body.
    Answer(u16, &'static str),
    /// The normal answer, processed at once (tokens rotate) but sent after a delay.
    Slow(Duration),
    /// A hung server: nothing is processed, and a 503 comes only after the delay.
    Hang(Duration),
    /// An HTTP status with a JSON body, sent after a delay; nothing is processed (the verdict
    /// on a request that raced another, arriving late).
    AnswerAfter(Duration, u16, &'static str),
    /// An HTTP status with an empty JSON body and this `Retry-After` header value.
    RetryAfter(u16, &'static str),
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub token_requests: usize,
    pub code_exchanges: usize,
    pub refresh_requests: usize,
    /// Refresh requests that presented an already used refresh token.
    pub reuse_detected: usize,
    pub refreshes_ok: usize,
    /// Refresh requests that presented a refresh token past its `refresh_ttl`.
    pub expired_presented: usize,
    /// Requests to the revocation endpoint, whatever their answer.
    pub revocation_requests: usize,
}

#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub form: HashMap<String, String>,
    pub authorization: Option<String>,
    pub user_agent: Option<String>,
    pub received_at: std::time::Instant,
}

struct CodeGrant {
    redirect_uri: String,
    challenge: Option<String>,
    used: bool,
    chain: u64,
}

struct RefreshState {
    chain: u64,
    used: bool,
    /// When the refresh token dies unused (`refresh_ttl`), like Hydra's `ttl.refresh_token`.
    expires_at: Option<std::time::Instant>,
}

pub struct ProviderState {
    pub client_id: String,
    pub client_secret: String,
    pub auth: ClientAuth,
    /// `expires_in` of issued access tokens.
    pub access_ttl: u64,
    pub issue_refresh_tokens: bool,
    /// How long issued refresh tokens live (sent as `refresh_token_expires_in`); `None`:
    /// forever, and not sent.
    pub refresh_ttl: Option<Duration>,
    pub faults: VecDeque<Fault>,
    pub stats: Stats,
    pub requests: Vec<RecordedRequest>,
    pub issued_access_tokens: Vec<String>,
    pub issued_refresh_tokens: Vec<String>,
    /// Requests to the revocation endpoint, in order.
    pub revocations: Vec<RecordedRequest>,
    /// What the next revocation requests get instead of the normal answer.
    pub revocation_faults: VecDeque<Fault>,
    codes: HashMap<String, CodeGrant>,
    refresh_tokens: HashMap<String, RefreshState>,
    revoked_chains: HashSet<u64>,
    next_chain: u64,
    /// The refresh token each chain handed out last.
    chain_latest: HashMap<u64, String>,
}

#[derive(Clone)]
pub struct ScriptedProvider {
    pub server: Arc<mock_http::Server>,
    pub state: Arc<Mutex<ProviderState>>,
}

struct Responder(Arc<Mutex<ProviderState>>);

/// The revocation endpoint.
struct Revoker(Arc<Mutex<ProviderState>>);

fn json(status: u16, body: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.as_bytes().to_vec(), "application/json")
}

fn oauth_error(status: u16, error: &str, description: &str) -> ResponseTemplate {
    json(
        status,
        &serde_json::json!({"error": error, "error_description": description}).to_string(),
    )
}

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut st = self.0.lock().unwrap();
        st.respond(request)
    }
}

impl Respond for Revoker {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut st = self.0.lock().unwrap();
        st.revoke(request)
    }
}

impl RecordedRequest {
    /// A form-encoded request as received, with the headers the tests look at.
    fn of(request: &Request) -> Self {
        let header = |name: &str| {
            request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Self {
            form: url::form_urlencoded::parse(&request.body).into_owned().collect(),
            authorization: header("authorization"),
            user_agent: header("user-agent"),
            received_at: std::time::Instant::now(),
        }
    }
}

impl ProviderState {
    /// RFC 7009: client authentication as at the token endpoint; 200 for any token, known or
    /// not (§2.2); a known refresh token's whole chain is revoked (Hydra).
    fn revoke(&mut self, request: &Request) -> ResponseTemplate {
        let recorded = RecordedRequest::of(request);
        let (form, authorization) = (recorded.form.clone(), recorded.authorization.clone());
        self.revocations.push(recorded);
        self.stats.revocation_requests += 1;
        match self.revocation_faults.pop_front() {
            Some(Fault::Answer(status, body)) => return json(status, body),
            Some(Fault::Hang(d)) => return json(503, "{}").set_delay(d),
            Some(other) => panic!("no such revocation fault: {other:?}"),
            None => {}
        }
        if let Some(rejection) = self.check_client(&form, authorization) {
            return rejection;
        }
        let Some(token) = form.get("token") else {
            return oauth_error(400, "invalid_request", "The token parameter is missing.");
        };
        if let Some(rt) = self.refresh_tokens.get(token) {
            let chain = rt.chain;
            self.revoked_chains.insert(chain);
        }
        ResponseTemplate::new(200)
    }

    fn respond(&mut self, request: &Request) -> ResponseTemplate {
        let recorded = RecordedRequest::of(request);
        let (form, authorization) = (recorded.form.clone(), recorded.authorization.clone());
        self.requests.push(recorded);
        self.stats.token_requests += 1;
        let grant_type = form.get("grant_type").cloned().unwrap_or_default();
        match grant_type.as_str() {
            "authorization_code" => self.stats.code_exchanges += 1,
            "refresh_token" => self.stats.refresh_requests += 1,
            _ => {}
        }
        let mut delay = None;
        match self.faults.pop_front() {
            Some(Fault::Answer(status, body)) => return json(status, body),
            Some(Fault::Slow(d)) => delay = Some(d),
            Some(Fault::Hang(d)) => return json(503, "{}").set_delay(d),
            Some(Fault::AnswerAfter(d, status, body)) => return json(status, body).set_delay(d),
            Some(Fault::RetryAfter(status, value)) => return json(status, "{}").insert_header("retry-after", value),
            None => {}
        }
        if let Some(rejection) = self.check_client(&form, authorization) {
            return rejection;
        }
        let answer = match grant_type.as_str() {
            "authorization_code" => self.exchange(&form),
            "refresh_token" => self.refresh(&form),
            _ => oauth_error(400, "unsupported_grant_type", "unknown grant type"),
        };
        match delay {
            Some(d) => answer.set_delay(d),
            None => answer,
        }
    }

    fn check_client(&self, form: &HashMap<String, String>, authorization: Option<String>) -> Option<ResponseTemplate> {
        let ok = match self.auth {
            ClientAuth::Post => {
                authorization.is_none()
                    && form.get("client_id") == Some(&self.client_id)
                    && form.get("client_secret") == Some(&self.client_secret)
            }
            ClientAuth::Basic => {
                let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let expected = format!(
                    "Basic {}",
                    STANDARD.encode(format!("{}:{}", enc(&self.client_id), enc(&self.client_secret)))
                );
                !form.contains_key("client_secret") && authorization.as_deref() == Some(expected.as_str())
            }
        };
        (!ok).then(|| oauth_error(401, "invalid_client", "Client authentication failed."))
    }

    fn exchange(&mut self, form: &HashMap<String, String>) -> ResponseTemplate {
        let code = form.get("code").cloned().unwrap_or_default();
        let Some(grant) = self.codes.get_mut(&code) else {
            return oauth_error(
                400,
                "invalid_grant",
                "The authorization code is malformed or not valid.",
            );
        };
        if form.get("redirect_uri") != Some(&grant.redirect_uri) {
            return oauth_error(400, "invalid_grant", "The redirect_uri does not match.");
        }
        if grant.used {
            // Hydra: a reused code revokes what it issued.
            let chain = grant.chain;
            self.revoked_chains.insert(chain);
            return oauth_error(400, "invalid_grant", "The authorization code has already been used.");
        }
        if let Some(challenge) = &grant.challenge {
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
            if &computed != challenge {
                return oauth_error(400, "invalid_grant", "The PKCE code verifier does not match.");
            }
        }
        grant.used = true;
        let chain = grant.chain;
        self.issue(chain)
    }

    fn refresh(&mut self, form: &HashMap<String, String>) -> ResponseTemplate {
        let presented = form.get("refresh_token").cloned().unwrap_or_default();
        let Some(rt) = self.refresh_tokens.get_mut(&presented) else {
            return oauth_error(400, "invalid_grant", "The refresh token is malformed or not valid.");
        };
        let chain = rt.chain;
        if rt.used {
            self.stats.reuse_detected += 1;
            self.revoked_chains.insert(chain);
            return oauth_error(400, "invalid_grant", "The refresh token was already used.");
        }
        if self.revoked_chains.contains(&chain) {
            return oauth_error(400, "invalid_grant", "The refresh token is malformed or not valid.");
        }
        if rt.expires_at.is_some_and(|at| std::time::Instant::now() >= at) {
            self.stats.expired_presented += 1;
            return oauth_error(400, "invalid_grant", "Token expired. The refresh token expired.");
        }
        rt.used = true;
        self.stats.refreshes_ok += 1;
        self.issue(chain)
    }

    fn issue(&mut self, chain: u64) -> ResponseTemplate {
        let access = format!("at_{}", uuid::Uuid::new_v4().simple());
        self.issued_access_tokens.push(access.clone());
        let mut body = serde_json::json!({
            "access_token": access,
            "expires_in": self.access_ttl,
            "scope": "offline booking.read",
            "token_type": "bearer",
        });
        if self.issue_refresh_tokens {
            let refresh = format!("ory_rt_{}", uuid::Uuid::new_v4().simple());
            let expires_at = self.refresh_ttl.map(|ttl| std::time::Instant::now() + ttl);
            self.refresh_tokens.insert(
                refresh.clone(),
                RefreshState {
                    chain,
                    used: false,
                    expires_at,
                },
            );
            if let Some(ttl) = self.refresh_ttl {
                body["refresh_token_expires_in"] = ttl.as_secs().into();
            }
            self.issued_refresh_tokens.push(refresh.clone());
            self.chain_latest.insert(chain, refresh.clone());
            body["refresh_token"] = refresh.into();
        }
        json(200, &body.to_string())
    }
}

impl ScriptedProvider {
    pub async fn start(client_id: &str, client_secret: &str, auth: ClientAuth) -> Self {
        let server = mock_http::Server::start().await;
        let state = Arc::new(Mutex::new(ProviderState {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            auth,
            access_ttl: 3600,
            issue_refresh_tokens: true,
            refresh_ttl: None,
            faults: VecDeque::new(),
            stats: Stats::default(),
            requests: Vec::new(),
            issued_access_tokens: Vec::new(),
            issued_refresh_tokens: Vec::new(),
            revocations: Vec::new(),
            revocation_faults: VecDeque::new(),
            codes: HashMap::new(),
            refresh_tokens: HashMap::new(),
            revoked_chains: HashSet::new(),
            next_chain: 0,
            chain_latest: HashMap::new(),
        }));
        Mock::given(method("POST"))
            .and(path("/oauth2/token"))
            .respond_with(Responder(state.clone()))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/oauth2/revoke"))
            .respond_with(Revoker(state.clone()))
            .mount(&server)
            .await;
        Self {
            server: Arc::new(server),
            state,
        }
    }

    pub fn uri(&self) -> String {
        self.server.uri()
    }

    /// What the authorization endpoint would do after the customer consents: issue a code
    /// bound to the redirect URI and PKCE challenge of the authorization URL.
    pub fn consent(&self, authorization_url: &str) -> String {
        let url = url::Url::parse(authorization_url).unwrap();
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        let mut st = self.state.lock().unwrap();
        st.next_chain += 1;
        let chain = st.next_chain;
        let code = format!("code_{}", uuid::Uuid::new_v4().simple());
        st.codes.insert(
            code.clone(),
            CodeGrant {
                redirect_uri: q["redirect_uri"].clone(),
                challenge: q.get("code_challenge").cloned(),
                used: false,
                chain,
            },
        );
        code
    }

    pub fn stats(&self) -> Stats {
        self.state.lock().unwrap().stats.clone()
    }

    pub fn push_fault(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push_back(fault);
    }

    /// The client secret the provider accepts from now on, as when an operator changes it at
    /// Hydra: the previous one is rejected with `invalid_client` at once.
    pub fn set_client_secret(&self, secret: &str) {
        self.state.lock().unwrap().client_secret = secret.into();
    }

    pub fn set_access_ttl(&self, secs: u64) {
        self.state.lock().unwrap().access_ttl = secs;
    }

    /// A valid refresh token of a new grant, made outside any authorization the vault saw: what
    /// another system migrating to the vault would hold.
    pub fn mint_refresh_token(&self) -> String {
        let mut st = self.state.lock().unwrap();
        st.next_chain += 1;
        let chain = st.next_chain;
        let refresh = format!("ory_rt_{}", uuid::Uuid::new_v4().simple());
        let expires_at = st.refresh_ttl.map(|ttl| std::time::Instant::now() + ttl);
        st.refresh_tokens.insert(
            refresh.clone(),
            RefreshState {
                chain,
                used: false,
                expires_at,
            },
        );
        st.issued_refresh_tokens.push(refresh.clone());
        st.chain_latest.insert(chain, refresh.clone());
        refresh
    }

    /// Issued refresh tokens from now on live `ttl` (and say so in `refresh_token_expires_in`).
    pub fn set_refresh_ttl(&self, ttl: Duration) {
        self.state.lock().unwrap().refresh_ttl = Some(ttl);
    }

    /// Every refresh request as received: when, and the refresh token it presented.
    pub fn refresh_requests(&self) -> Vec<(std::time::Instant, String)> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.form.get("grant_type").map(String::as_str) == Some("refresh_token"))
            .map(|r| (r.received_at, r.form.get("refresh_token").cloned().unwrap_or_default()))
            .collect()
    }

    /// Revokes every token of every chain, as a customer revoking consent would.
    pub fn revoke_all(&self) {
        let mut st = self.state.lock().unwrap();
        let chains: Vec<u64> = (1..=st.next_chain).collect();
        st.revoked_chains.extend(chains);
    }

    /// The requests the revocation endpoint received.
    pub fn revocations(&self) -> Vec<RecordedRequest> {
        self.state.lock().unwrap().revocations.clone()
    }

    /// The refresh token issued last.
    pub fn newest_refresh_token(&self) -> String {
        let st = self.state.lock().unwrap();
        st.issued_refresh_tokens
            .last()
            .cloned()
            .expect("a refresh token was issued")
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The access token issued last.
    pub fn newest_access_token(&self) -> String {
        let st = self.state.lock().unwrap();
        st.issued_access_tokens
            .last()
            .cloned()
            .expect("an access token was issued")
    }

    /// Every token string the server ever issued, for scanning logs and tables.
    pub fn issued_secrets(&self) -> Vec<String> {
        let st = self.state.lock().unwrap();
        st.issued_access_tokens
            .iter()
            .chain(st.issued_refresh_tokens.iter())
            .chain(st.codes.keys())
            .cloned()
            .collect()
    }
}
