//! [`Client`] and its [`ClientBuilder`]: a connection to the vault with credentials, a deadline
//! per call and retries.

use std::{
    fmt,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Channel, ClientTlsConfig, Endpoint},
    Code, Request, Response, Status, Streaming,
};

use crate::{
    proto::{self, token_vault_client::TokenVaultClient},
    AccessToken, Error, RetryPolicy,
};

/// The generated stub with the client's credentials, for calls [`Client`] does not wrap.
pub type Stub = TokenVaultClient<InterceptedService<Channel, Credentials>>;

/// The caller's credentials on every call: `authorization: Bearer …` when the client has a
/// bearer token (a client certificate is presented by TLS instead).
///
/// Its `Debug` output never shows the token.
#[derive(Clone, Default)]
pub struct Credentials {
    authorization: Option<MetadataValue<Ascii>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bearer = if self.authorization.is_some() {
            "[redacted]"
        } else {
            "none"
        };
        f.debug_struct("Credentials").field("bearer", &bearer).finish()
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.authorization {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Settings for a [`Client`]: where the vault is, how to prove who is calling, how long a call
/// may take and when to retry it.
///
/// ```no_run
/// # async fn run() -> Result<(), token_vault_client::Error> {
/// use std::time::Duration;
/// use token_vault_client::{Certificate, Client, ClientTlsConfig, Identity};
///
/// let ca = std::fs::read_to_string("/var/run/secrets/vault/ca.crt").unwrap();
/// let cert = std::fs::read_to_string("/var/run/secrets/vault/tls.crt").unwrap();
/// let key = std::fs::read_to_string("/var/run/secrets/vault/tls.key").unwrap();
/// let vault = Client::builder("https://token-vault.vault.svc:50051")
///     .tls(
///         ClientTlsConfig::new()
///             .ca_certificate(Certificate::from_pem(ca))
///             .identity(Identity::from_pem(cert, key)),
///     )
///     .provider("understory")
///     .timeout(Duration::from_secs(3))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientBuilder {
    endpoint: String,
    tls: Option<ClientTlsConfig>,
    credentials: Result<Credentials, String>,
    provider: String,
    timeout: Duration,
    connect_timeout: Duration,
    retry: RetryPolicy,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("endpoint", &self.endpoint)
            .field("tls", &self.tls.is_some())
            .field("credentials", &self.credentials)
            .field("provider", &self.provider)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

impl ClientBuilder {
    /// Settings for the vault at `endpoint`: `http://host:port` for plaintext,
    /// `https://host:port` for TLS (which needs [`tls`](Self::tls)).
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            tls: None,
            credentials: Ok(Credentials::default()),
            provider: String::new(),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
        }
    }

    /// TLS to the vault: the CA that signed its certificate, and for mutual TLS the caller's
    /// certificate and key ([`ClientTlsConfig::identity`]). The vault identifies a caller by its
    /// certificate's SPIFFE URI or DNS names (`auth.callers[].mtls_uris` / `mtls_dns`).
    pub fn tls(mut self, tls: ClientTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// A bearer token sent as `authorization: Bearer <token>` on every call; the vault knows
    /// it by its SHA-256 (`auth.callers[].bearer_token_sha256`). Use it with TLS: the vault
    /// refuses bearer tokens in plaintext unless `auth.allow_bearer_without_tls` is set.
    pub fn bearer_token(mut self, token: impl AsRef<str>) -> Self {
        self.credentials = format!("Bearer {}", token.as_ref())
            .parse::<MetadataValue<Ascii>>()
            .map(|mut value| {
                // Keeps the value out of HPACK's dynamic table and of header dumps.
                value.set_sensitive(true);
                Credentials {
                    authorization: Some(value),
                }
            })
            .map_err(|_| "the bearer token is not printable ASCII".to_owned());
        self
    }

    /// The provider named in calls that name none (`[providers.<name>]` in the vault's
    /// settings); by default the vault's default provider.
    pub fn provider(mut self, provider: impl Into<String>) -> Self {
        self.provider = provider.into();
        self
    }

    /// The deadline of each call, retries and their waits included (10 s by default). It is
    /// sent to the vault as `grpc-timeout`, so the vault stops working for a caller that has
    /// given up.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long establishing a connection may take (5 s by default).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// When failed calls are retried ([`RetryPolicy::default`] unless set).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Connects now: fails if the vault cannot be reached.
    pub async fn connect(self) -> Result<Client, Error> {
        let endpoint = self.endpoint()?;
        let channel = endpoint.connect().await.map_err(Error::Connect)?;
        self.client(channel)
    }

    /// Connects on the first call (and reconnects after a failure): a service can start
    /// before the vault is up; calls fail with `UNAVAILABLE` (retried) until it is.
    pub fn connect_lazy(self) -> Result<Client, Error> {
        let channel = self.endpoint()?.connect_lazy();
        self.client(channel)
    }

    fn endpoint(&self) -> Result<Endpoint, Error> {
        let endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| Error::Settings(format!("endpoint {:?}: {e}", self.endpoint)))?
            .connect_timeout(self.connect_timeout)
            // Notices a vault that went away without closing the connection.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let https = endpoint.uri().scheme_str() == Some("https");
        match (&self.tls, https) {
            (Some(tls), true) => endpoint
                .tls_config(tls.clone())
                .map_err(|e| Error::Settings(format!("TLS: {e}"))),
            (None, false) => Ok(endpoint),
            (Some(_), false) => Err(Error::Settings(
                "TLS settings with an http:// endpoint: use https://".into(),
            )),
            (None, true) => Err(Error::Settings(
                "an https:// endpoint needs TLS settings (ClientBuilder::tls)".into(),
            )),
        }
    }

    fn client(self, channel: Channel) -> Result<Client, Error> {
        let credentials = self.credentials.map_err(Error::Settings)?;
        Ok(Client {
            stub: TokenVaultClient::with_interceptor(channel, credentials),
            endpoint: Arc::from(self.endpoint),
            provider: Arc::from(self.provider),
            timeout: self.timeout,
            retry: Arc::new(self.retry),
        })
    }
}

/// A connection to the vault. Cheap to clone: clones share one HTTP/2 connection, so make one
/// at start and hand out clones.
///
/// Every call has a deadline ([`ClientBuilder::timeout`]) and is retried by the
/// [`RetryPolicy`] if it is safe to repeat: GetAccessToken, GetConnection, ListConnections,
/// BeginAuthorization and DeleteConnection are; CompleteAuthorization (its `state` is used up)
/// and ImportConnection are tried once. WatchConnectionEvents is a stream: no deadline, no
/// retry; resume it from the last cursor.
#[derive(Clone)]
pub struct Client {
    stub: Stub,
    endpoint: Arc<str>,
    provider: Arc<str>,
    timeout: Duration,
    retry: Arc<RetryPolicy>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("provider", &self.provider)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Settings for a client of the vault at `endpoint` (`http://…` or `https://…`).
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(endpoint)
    }

    /// This client for `provider`: calls that name no provider name this one.
    pub fn with_provider(&self, provider: impl Into<String>) -> Client {
        Client {
            provider: Arc::from(provider.into()),
            ..self.clone()
        }
    }

    /// This client with another deadline per call.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            timeout,
            ..self.clone()
        }
    }

    /// This client with another retry policy.
    pub fn with_retry(&self, policy: RetryPolicy) -> Client {
        Client {
            retry: Arc::new(policy),
            ..self.clone()
        }
    }

    /// The provider calls name when they name none (empty: the vault's default provider).
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The generated stub with this client's credentials, for what the typed calls do not
    /// cover (no deadline or retries are added).
    pub fn stub(&self) -> Stub {
        self.stub.clone()
    }

    /// An access token for `tenant` at this client's provider, valid for at least a few
    /// seconds more: the vault refreshes it first if it is about to expire.
    ///
    /// Fails with `NOT_FOUND` ([`ErrorReason::ConnectionNotFound`](crate::proto::ErrorReason))
    /// when the tenant never connected, `FAILED_PRECONDITION`
    /// (`REAUTHORIZATION_REQUIRED`) when the provider revoked the grant.
    pub async fn access_token(&self, tenant: &str) -> Result<AccessToken, Error> {
        self.get_access_token(proto::GetAccessTokenRequest {
            tenant_id: tenant.to_owned(),
            ..Default::default()
        })
        .await
        .map(AccessToken::from)
    }

    /// Reports that the provider rejected `rejected` (a 401) and returns the token to use
    /// instead: the vault refreshes the connection once, however many callers report the same
    /// token, or answers with the newer token it already has. Only the token's SHA-256 is
    /// sent.
    pub async fn report_rejected(&self, tenant: &str, rejected: &AccessToken) -> Result<AccessToken, Error> {
        self.get_access_token(proto::GetAccessTokenRequest {
            tenant_id: tenant.to_owned(),
            rejected_access_token_sha256: Sha256::digest(rejected.secret().as_bytes()).to_vec(),
            ..Default::default()
        })
        .await
        .map(AccessToken::from)
    }

    /// GetAccessToken with every field of the request (an empty `provider` is this client's).
    pub async fn get_access_token(
        &self,
        mut request: proto::GetAccessTokenRequest,
    ) -> Result<proto::GetAccessTokenResponse, Error> {
        self.default_provider(&mut request.provider);
        self.unary(
            request,
            true,
            |mut stub, r| async move { stub.get_access_token(r).await },
        )
        .await
    }

    /// BeginAuthorization: the URL to send the user to, to connect `tenant_id`.
    pub async fn begin_authorization(
        &self,
        mut request: proto::BeginAuthorizationRequest,
    ) -> Result<proto::BeginAuthorizationResponse, Error> {
        self.default_provider(&mut request.provider);
        self.unary(
            request,
            true,
            |mut stub, r| async move { stub.begin_authorization(r).await },
        )
        .await
    }

    /// CompleteAuthorization: the provider's callback, exchanged for tokens. Tried once: its
    /// `state` is used up by the first attempt that reaches the vault.
    pub async fn complete_authorization(
        &self,
        request: proto::CompleteAuthorizationRequest,
    ) -> Result<proto::CompleteAuthorizationResponse, Error> {
        self.unary(request, false, |mut stub, r| async move {
            stub.complete_authorization(r).await
        })
        .await
    }

    /// GetConnection: a connection's status, scopes and times, never its tokens.
    pub async fn get_connection(
        &self,
        mut request: proto::GetConnectionRequest,
    ) -> Result<proto::GetConnectionResponse, Error> {
        self.default_provider(&mut request.provider);
        self.unary(request, true, |mut stub, r| async move { stub.get_connection(r).await })
            .await
    }

    /// ListConnections: one page of connections; pass `next_page_token` back for the next.
    pub async fn list_connections(
        &self,
        request: proto::ListConnectionsRequest,
    ) -> Result<proto::ListConnectionsResponse, Error> {
        self.unary(
            request,
            true,
            |mut stub, r| async move { stub.list_connections(r).await },
        )
        .await
    }

    /// DeleteConnection: revokes the grant at the provider (if it has a revocation endpoint)
    /// and forgets the tokens. Repeating it answers `REVOCATION_ALREADY_DISCONNECTED`.
    pub async fn delete_connection(
        &self,
        mut request: proto::DeleteConnectionRequest,
    ) -> Result<proto::DeleteConnectionResponse, Error> {
        self.default_provider(&mut request.provider);
        self.unary(
            request,
            true,
            |mut stub, r| async move { stub.delete_connection(r).await },
        )
        .await
    }

    /// ImportConnection: a grant obtained elsewhere. Tried once: a repeat of a call that
    /// succeeded would answer `ALREADY_EXISTS`.
    pub async fn import_connection(
        &self,
        mut request: proto::ImportConnectionRequest,
    ) -> Result<proto::ImportConnectionResponse, Error> {
        self.default_provider(&mut request.provider);
        self.unary(
            request,
            false,
            |mut stub, r| async move { stub.import_connection(r).await },
        )
        .await
    }

    /// WatchConnectionEvents: the stream of connection events from `cursor` on. No deadline
    /// and no retry: on an error, open it again from the last event's cursor.
    pub async fn watch_connection_events(
        &self,
        request: proto::WatchConnectionEventsRequest,
    ) -> Result<Streaming<proto::WatchConnectionEventsResponse>, Error> {
        Ok(self.stub().watch_connection_events(request).await?.into_inner())
    }

    fn default_provider(&self, provider: &mut String) {
        if provider.is_empty() {
            provider.push_str(&self.provider);
        }
    }

    /// One unary call: attempts within the deadline, retried as the policy says when
    /// `retryable`.
    async fn unary<Req, Resp, F, Fut>(&self, request: Req, retryable: bool, call: F) -> Result<Resp, Error>
    where
        Req: Clone,
        F: Fn(Stub, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut attempt = 1;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let mut message = Request::new(request.clone());
            message.set_timeout(remaining);
            let status = match tokio::time::timeout(remaining, call(self.stub(), message)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => status,
                Err(_) => deadline_passed(),
            };
            // The channel ends an attempt whose grpc-timeout passed as CANCELLED.
            let status = if status.code() == Code::Cancelled && Instant::now() >= deadline {
                deadline_passed()
            } else {
                status
            };
            let wait = if retryable {
                self.retry.delay(&status, attempt)
            } else {
                None
            };
            match wait {
                Some(wait) if Instant::now() + wait < deadline => {
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                _ => return Err(status.into()),
            }
        }
    }
}

fn deadline_passed() -> Status {
    Status::deadline_exceeded("the call's deadline passed before the vault answered")
}
