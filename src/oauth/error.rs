//! What can go wrong at the token endpoint, sorted by what the vault must do about it.

use std::time::Duration;

/// An RFC 6749 §5.2 error body. The description is the provider's text, trimmed; providers do
/// not put tokens in it, and it is cut short anyway before it reaches a log or a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub http_status: u16,
    pub error: String,
    pub description: Option<String>,
}

/// Why a failure is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransientCause {
    /// No answer within the request timeout.
    Timeout,
    /// The connection could not be made, or broke before an answer.
    Connection,
    /// The provider answered 5xx.
    ServerError,
    /// The provider answered 429.
    RateLimited,
}

/// Why an answer leaves open whether the presented grant was consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmbiguousCause {
    /// `invalid_request` about concurrent requests with the same token. Hydra (fosite) answers
    /// it both when its own transaction failed and when another presenter already consumed the
    /// token: presenting the token again may be reuse, which revokes the grant.
    ConcurrentPresenter,
    /// A 2xx whose body was lost or unusable: the provider consumed the grant and the new
    /// tokens are gone.
    AnswerLost,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The provider refused the grant itself: the code or refresh token is dead.
    #[error("the provider rejected the grant: {}", .0.error)]
    InvalidGrant(OAuthError),
    /// The provider refused the vault's own credentials; only an operator can fix this.
    #[error("the provider rejected the client credentials: {}", .0.error)]
    ClientRejected(OAuthError),
    /// Worth retrying later; the grant is intact.
    #[error("the provider is unavailable ({cause:?})")]
    Transient {
        cause: TransientCause,
        retry_after: Option<Duration>,
        http_status: Option<u16>,
    },
    /// The grant may have been consumed: never present it again blindly.
    #[error("the provider's answer leaves open whether the grant was consumed ({cause:?})")]
    Ambiguous {
        cause: AmbiguousCause,
        http_status: Option<u16>,
    },
    /// Any other error code, or an answer that breaks the protocol.
    #[error("the provider answered something unusable: {0}")]
    Protocol(String),
}

impl TokenError {
    pub fn is_transient(&self) -> bool {
        matches!(self, TokenError::Transient { .. })
    }

    /// Sorts an HTTP error answer. `body` is at most a few KiB (see the client).
    pub(crate) fn from_error_response(status: u16, body: &[u8], retry_after: Option<Duration>) -> Self {
        let parsed = serde_json::from_slice::<ErrorBody>(body).ok().map(|b| OAuthError {
            http_status: status,
            error: truncate(&b.error, 64),
            description: b.error_description.map(|d| truncate(&d, 256)),
        });
        if status >= 500 {
            return TokenError::Transient {
                cause: TransientCause::ServerError,
                retry_after,
                http_status: Some(status),
            };
        }
        if status == 429 {
            return TokenError::Transient {
                cause: TransientCause::RateLimited,
                retry_after,
                http_status: Some(status),
            };
        }
        let Some(err) = parsed else {
            return TokenError::Protocol(format!("HTTP {status} without an RFC 6749 error body"));
        };
        match err.error.as_str() {
            "invalid_grant" => TokenError::InvalidGrant(err),
            "invalid_client" | "unauthorized_client" => TokenError::ClientRejected(err),
            "invalid_request" if mentions_concurrency(err.description.as_deref()) => TokenError::Ambiguous {
                cause: AmbiguousCause::ConcurrentPresenter,
                http_status: Some(status),
            },
            // 401 without a known code is still the provider saying our credentials are wrong.
            _ if status == 401 => TokenError::ClientRejected(err),
            _ => TokenError::Protocol(format!(
                "HTTP {status} error {:?}{}",
                err.error,
                err.description.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
            )),
        }
    }
}

/// Hydra words the loser of a concurrent refresh as "…multiple concurrent requests…" or
/// "…please retry…"; other servers say similar things.
fn mentions_concurrency(description: Option<&str>) -> bool {
    let Some(d) = description else { return false };
    let d = d.to_ascii_lowercase();
    ["concurrent", "retry", "try again"].iter().any(|w| d.contains(w))
}

fn truncate(s: &str, max: usize) -> String {
    let cleaned: String = s.chars().filter(|c| !c.is_control()).take(max).collect();
    cleaned
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    error: String,
    error_description: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sort(status: u16, body: &str) -> TokenError {
        TokenError::from_error_response(status, body.as_bytes(), None)
    }

    #[test]
    fn errors_are_sorted_by_what_to_do() {
        assert!(matches!(
            sort(400, r#"{"error":"invalid_grant"}"#),
            TokenError::InvalidGrant(_)
        ));
        assert!(matches!(
            sort(401, r#"{"error":"invalid_client"}"#),
            TokenError::ClientRejected(_)
        ));
        assert!(matches!(
            sort(400, r#"{"error":"unauthorized_client"}"#),
            TokenError::ClientRejected(_)
        ));
        assert!(matches!(
            sort(
                400,
                r#"{"error":"invalid_request","error_description":"Multiple concurrent requests, please retry"}"#
            ),
            TokenError::Ambiguous {
                cause: AmbiguousCause::ConcurrentPresenter,
                ..
            }
        ));
        assert!(matches!(
            sort(400, r#"{"error":"invalid_request"}"#),
            TokenError::Protocol(_)
        ));
        assert!(matches!(
            sort(503, "<html>"),
            TokenError::Transient {
                cause: TransientCause::ServerError,
                ..
            }
        ));
        assert!(matches!(
            sort(429, ""),
            TokenError::Transient {
                cause: TransientCause::RateLimited,
                ..
            }
        ));
        assert!(matches!(sort(400, "not json"), TokenError::Protocol(_)));
    }
}
