//! The OAuth 2.0 provider side (RFC 6749, RFC 7636): authorization URLs, the callback's
//! parameters, the token endpoint's requests, answers and errors, token revocation (RFC 7009) and
//! the authorization server's metadata (RFC 8414, `discovery`).
//! Knows nothing of storage.

mod callback;
mod client;
pub mod discovery;
mod error;
mod pkce;
mod provider;
mod revoke;
mod secrets;

pub use callback::{
    CallbackOutcome, CallbackParams, CallbackUrlError, MAX_CALLBACK_URL_LEN, MAX_ERROR_DESCRIPTION_LEN, MAX_ERROR_LEN,
    MAX_PARAM_LEN,
};
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use client::parse_token_response;
pub use client::{ProviderClient, TokenResponse, MAX_EXPIRES_IN, MAX_RESPONSE_BYTES};
pub use error::{AmbiguousCause, OAuthError, TokenError, TransientCause};
pub use pkce::PkceVerifier;
pub use provider::{is_valid_scope, AuthMethod, AuthorizationRequest, ProviderConfig};
pub use revoke::RevocationError;
