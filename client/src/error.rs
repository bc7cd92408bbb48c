//! [`Error`]: what a call to the vault can end with, and the vault's machine-readable reason.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::proto::ErrorReason;

/// The `google.rpc.ErrorInfo` domain of the vault's errors.
pub const ERROR_DOMAIN: &str = "tokenvault";

/// A failed call to the vault, or a client that could not be built.
///
/// A call that reached the vault fails with [`Error::Status`]: its gRPC code, and the vault's
/// stable reason ([`Error::reason`], from `google.rpc.ErrorInfo`) to branch on. The status
/// message is for people; the reason is for code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The endpoint or the TLS settings given to the [`ClientBuilder`](crate::ClientBuilder)
    /// are not usable.
    #[error("invalid client settings: {0}")]
    Settings(String),
    /// The client could not connect to the vault (`ClientBuilder::connect` only; a lazily
    /// connected client reports this as an `UNAVAILABLE` status).
    #[error("could not connect to the vault: {0}")]
    Connect(#[source] tonic::transport::Error),
    /// The call failed with this status, after the retries the policy allowed.
    #[error("the call failed with {:?}: {}", .0.code(), .0.message())]
    Status(Box<Status>),
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        Error::Status(Box::new(status))
    }
}

impl Error {
    /// The gRPC status, if the call got one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::Status(status) => Some(status),
            _ => None,
        }
    }

    /// The gRPC code: [`Code::Unavailable`] when the client could not connect, [`Code::InvalidArgument`]
    /// for unusable settings.
    pub fn code(&self) -> Code {
        match self {
            Error::Settings(_) => Code::InvalidArgument,
            Error::Connect(_) => Code::Unavailable,
            Error::Status(status) => status.code(),
        }
    }

    /// The vault's stable reason (`google.rpc.ErrorInfo.reason` in the `tokenvault` domain),
    /// if the vault gave one. A status from the transport (no connection, a deadline passed
    /// on the client's side) has none.
    pub fn reason(&self) -> Option<ErrorReason> {
        let info = self.status()?.get_error_details().error_info()?.clone();
        if info.domain != ERROR_DOMAIN {
            return None;
        }
        ErrorReason::from_str_name(&info.reason)
    }

    /// The `google.rpc.ErrorInfo` metadata: the field of a bad request (`field`), the
    /// provider's error (`error`), the id of an internal error in the vault's log (`error_id`),
    /// the caller (`caller`), … Empty when the vault gave no `ErrorInfo`.
    pub fn metadata(&self) -> HashMap<String, String> {
        self.status()
            .and_then(|s| s.get_error_details().error_info().map(|i| i.metadata.clone()))
            .unwrap_or_default()
    }

    /// How long the vault asked the caller to wait before trying again
    /// (`google.rpc.RetryInfo`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        self.status().and_then(retry_delay)
    }
}

/// The delay in a status's `google.rpc.RetryInfo`, if any.
pub(crate) fn retry_delay(status: &Status) -> Option<Duration> {
    status.get_error_details().retry_info()?.retry_delay
}
