//! Why a call is refused before it reaches a flow: auth's own errors. The API maps each to a
//! status and a stable reason in the one place that maps errors (`api::status`).

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No credentials, or none of a configured caller.
    #[error("the caller is not authenticated: present the client certificate or bearer token of a configured caller")]
    Unknown,
    /// A known caller reaching outside its policy (RPC, provider or tenant).
    #[error("caller {caller} is not allowed to do this")]
    NotAllowed { caller: String },
    /// A known caller over its concurrency or rate limit.
    #[error("caller {caller} is over its limit of calls")]
    RateLimited {
        caller: String,
        retry_after: Option<Duration>,
    },
}

impl Denied {
    /// The stable reason code (`google.rpc.ErrorInfo.reason`), documented in the proto.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::Unknown => "CALLER_UNKNOWN",
            Denied::NotAllowed { .. } => "CALLER_NOT_ALLOWED",
            Denied::RateLimited { .. } => "CALLER_RATE_LIMITED",
        }
    }
}
