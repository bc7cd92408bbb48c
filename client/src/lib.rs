//! A client for token-vault, the gRPC credential vault for third-party OAuth 2.0: it holds
//! the OAuth client secret and every tenant's tokens, and refreshes each token exactly once
//! across replicas. Services ask it for a tenant's access token instead of handling refresh
//! tokens themselves.
//!
//! - [`Client`]: typed calls over the generated stubs ([`proto`]), with TLS, mutual TLS or
//!   bearer credentials, a deadline per call, and retries that wait as long as the vault's
//!   `google.rpc.RetryInfo` asks ([`RetryPolicy`]).
//! - [`AccessTokenMiddleware`]: for the caller's own HTTP client (reqwest with
//!   reqwest-middleware): `Authorization: Bearer <access token>` on every request, and on a
//!   401 from the provider, the rejected token reported to the vault and the request sent
//!   again once with the new token.
//! - [`Error`]: the gRPC status with the vault's stable reason ([`Error::reason`]) and
//!   retry delay ([`Error::retry_after`]).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use token_vault_client::{proto::ErrorReason, AccessTokenMiddleware, Client, Connection};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // One client per process; clones share its connection.
//! let vault = Client::builder("http://token-vault:50051")
//!     .bearer_token(std::env::var("TOKEN_VAULT_TOKEN")?)
//!     .provider("understory")
//!     .timeout(Duration::from_secs(3))
//!     .connect_lazy()?;
//!
//! // A tenant's access token, refreshed by the vault when it is about to expire.
//! match vault.access_token("acme").await {
//!     Ok(token) => println!("token expires at {:?}", token.expires_at()),
//!     Err(e) if e.reason() == Some(ErrorReason::ReauthorizationRequired) => {
//!         println!("acme must connect again (BeginAuthorization)");
//!     }
//!     Err(e) => return Err(e.into()),
//! }
//!
//! // Or let the middleware put it on the requests to the provider's API.
//! let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(AccessTokenMiddleware::new(vault.clone()))
//!     .build();
//! let response = http
//!     .get("https://api.understory.example/v1/bookings")
//!     .with_extension(Connection::new("acme"))
//!     .send()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Credentials
//!
//! The vault knows its callers by a client certificate (mutual TLS, `auth.callers[].mtls_uris`)
//! or a bearer token (`auth.callers[].bearer_token_sha256`): give the builder a
//! [`ClientTlsConfig`] with an [`Identity`], or [`ClientBuilder::bearer_token`] (with TLS;
//! the vault refuses bearer tokens in plaintext unless told otherwise).
//!
//! # Errors and retries
//!
//! A call is retried when the vault says it may succeed later (`UNAVAILABLE`, or
//! `RESOURCE_EXHAUSTED` with a `RetryInfo` delay), after the delay it asks for, within the
//! call's deadline and a bounded number of attempts, and only for calls that are safe to
//! repeat. Everything else comes back at once as an [`Error`]: branch on
//! [`Error::reason`] (for instance `CONNECTION_NOT_FOUND`, `REAUTHORIZATION_REQUIRED`), not on
//! the message.
//!
//! # Features
//!
//! - `reqwest-middleware` (default): [`AccessTokenMiddleware`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod error;
#[cfg(feature = "reqwest-middleware")]
mod middleware;
pub mod proto;
mod retry;
mod token;

pub use client::{Client, ClientBuilder, Credentials, Stub};
pub use error::{Error, ERROR_DOMAIN};
#[cfg(feature = "reqwest-middleware")]
pub use middleware::{AccessTokenMiddleware, Connection};
pub use retry::RetryPolicy;
pub use token::AccessToken;
/// TLS settings for [`ClientBuilder::tls`], re-exported from tonic.
pub use tonic::transport::{Certificate, ClientTlsConfig, Identity};
/// gRPC status codes, as in [`Error::code`].
pub use tonic::Code;
