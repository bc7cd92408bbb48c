//! The OAuth 2.0 provider side (RFC 6749, RFC 7636): authorization URLs, the callback's
//! parameters, and the token endpoint's requests, answers and errors. Knows nothing of storage.

mod callback;
mod client;
mod error;
mod pkce;
mod provider;

pub use callback::{CallbackOutcome, CallbackParams, CallbackUrlError, MAX_PARAM_LEN};
pub use client::{ProviderClient, TokenResponse};
pub use error::{OAuthError, TokenError, TransientCause};
pub use pkce::PkceVerifier;
pub use provider::{is_valid_scope, AuthMethod, AuthorizationRequest, ProviderConfig};
