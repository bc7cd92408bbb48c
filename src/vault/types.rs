//! The flows' inputs and outputs, free of any wire format.

use std::{sync::Arc, time::Duration};

use secrecy::SecretString;
use time::OffsetDateTime;

/// The most scopes one request may name.
pub const MAX_SCOPES: usize = 50;

pub use crate::connection_key::{ConnectionKey, ProviderName, TenantId, MAX_TENANT_ID_LEN};

/// The connection a request names, as asked: a tenant, and a provider name that may be empty
/// for the default provider. `Vault::connection_key` turns it into a [`ConnectionKey`].
#[derive(Debug, Clone)]
pub struct ConnectionRequest {
    pub tenant_id: TenantId,
    pub provider: String,
}

/// BeginAuthorization's options, beside its [`ConnectionRequest`].
pub struct BeginAuthorization {
    pub scopes: Vec<String>,
    pub redirect_uri: String,
}

#[derive(Debug)]
pub struct AuthorizationStarted {
    pub authorization_url: String,
    pub state: String,
    pub expires_at: OffsetDateTime,
    pub provider: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
}

#[derive(Debug)]
pub struct AuthorizationCompleted {
    pub tenant_id: String,
    pub provider: String,
    pub scopes: Vec<String>,
    pub access_token_expires_at: OffsetDateTime,
    pub refresh_token_issued: bool,
}

/// GetAccessToken's options, beside its [`ConnectionRequest`].
pub struct AccessTokenRequest {
    pub min_valid_for: Option<Duration>,
    /// The access token the provider rejected, if the caller reports one: never the token
    /// itself, only its digest, made at the API boundary.
    pub rejected: Option<TokenDigest>,
}

/// The SHA-256 of an access token a caller reports rejected. Compared in constant time, and
/// never printed: a digest of a live token is not a secret one can use, but it identifies one.
#[derive(Clone, Copy)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest of a token given in plaintext; the plaintext is not kept.
    pub fn of(token: &str) -> Self {
        use sha2::{Digest, Sha256};
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// A digest given as bytes; `None` unless it is 32 bytes long.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// Whether `token` is the token this digest was made from.
    pub fn matches(&self, token: &SecretString) -> bool {
        use secrecy::ExposeSecret;
        use subtle::ConstantTimeEq;
        Self::of(token.expose_secret()).0.ct_eq(&self.0).into()
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest([redacted])")
    }
}

/// ImportConnection's options, beside its [`ConnectionRequest`]: tokens another system holds.
pub struct ImportConnection {
    pub refresh_token: SecretString,
    /// An access token to serve until it expires, with its expiry.
    pub access_token: Option<(SecretString, OffsetDateTime)>,
    /// The scopes the grant carries; empty means the provider's default scopes.
    pub scopes: Vec<String>,
    /// Refresh once with the imported refresh token before answering.
    pub validate: bool,
    /// Overwrite an active connection instead of answering CONNECTION_EXISTS.
    pub replace_existing: bool,
}

/// What ImportConnection did.
#[derive(Debug)]
pub struct ImportedConnection {
    pub connection: ConnectionInfo,
    /// A refresh with the imported refresh token succeeded.
    pub validated: bool,
    /// The generation stored by the import (1 for a new connection).
    pub generation: i64,
    /// The generation the import replaced, if the tenant had a connection.
    pub replaced: Option<i64>,
}

/// An access token handed to a caller.
#[derive(Clone, Debug)]
pub struct AccessToken {
    /// Shared: the cache and every caller it is handed to hold one copy of the plaintext,
    /// zeroized when the last of them lets go. A cache hit or put is then a reference count,
    /// not a ~900-byte allocation, copy and zeroization (docs/performance.md, the cold cache).
    pub token: Arc<SecretString>,
    pub token_type: String,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub scopes: Arc<[String]>,
    /// The connection generation the token belongs to.
    pub generation: i64,
}

impl AccessToken {
    /// Whether the token stays valid for `margin` from `now`, with the margin capped at
    /// `max_fraction` of the token's lifetime, so a fresh token is never deemed expired.
    pub fn is_valid_for(&self, margin: Duration, max_fraction: f64, now: OffsetDateTime) -> bool {
        let lifetime = (self.expires_at - self.issued_at).max(time::Duration::ZERO);
        let cap = lifetime * max_fraction;
        let margin = time::Duration::try_from(margin).unwrap_or(time::Duration::MAX).min(cap);
        self.expires_at - now >= margin && self.expires_at > now
    }
}

/// Where GetAccessToken found the token it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// This replica's memory.
    Cache,
    /// The database, still valid.
    Database,
    /// A refresh (this replica's, or another's it waited for).
    Refresh,
}

impl TokenSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenSource::Cache => "cache",
            TokenSource::Database => "database",
            TokenSource::Refresh => "refresh",
        }
    }
}

#[derive(Debug)]
pub struct ConnectionInfo {
    pub tenant_id: String,
    pub provider: String,
    pub status: ConnectionStatus,
    pub status_reason: Option<String>,
    pub status_changed_at: OffsetDateTime,
    pub scopes: Vec<String>,
    pub access_token_expires_at: OffsetDateTime,
    pub has_refresh_token: bool,
    pub authorized_at: OffsetDateTime,
    pub refreshed_at: Option<OffsetDateTime>,
    pub refresh_token_expires_at: Option<OffsetDateTime>,
    pub keepalive_due_at: Option<OffsetDateTime>,
    pub last_error: Option<String>,
    pub last_error_at: Option<OffsetDateTime>,
    pub disconnected_at: Option<OffsetDateTime>,
}

/// A connection's status, as stored (`connections.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionStatus {
    Active,
    ReauthorizationRequired,
    Disconnected,
}

impl ConnectionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionStatus::Active => "active",
            ConnectionStatus::ReauthorizationRequired => "reauthorization_required",
            ConnectionStatus::Disconnected => "disconnected",
        }
    }

    /// The stored name; anything unknown (a newer version's status) reads as needing a person.
    pub fn from_stored(status: &str) -> Self {
        match status {
            "active" => ConnectionStatus::Active,
            "disconnected" => ConnectionStatus::Disconnected,
            _ => ConnectionStatus::ReauthorizationRequired,
        }
    }
}

impl From<crate::store::ConnectionSummary> for ConnectionInfo {
    fn from(c: crate::store::ConnectionSummary) -> Self {
        Self {
            status: ConnectionStatus::from_stored(&c.status),
            tenant_id: c.tenant_id,
            provider: c.provider,
            status_reason: c.status_reason,
            status_changed_at: c.status_changed_at,
            scopes: c.scopes,
            access_token_expires_at: c.access_token_expires_at,
            has_refresh_token: c.has_refresh_token,
            authorized_at: c.authorized_at,
            refreshed_at: c.refreshed_at,
            refresh_token_expires_at: c.refresh_token_expires_at,
            keepalive_due_at: c.keepalive_due_at,
            last_error: c.last_error,
            last_error_at: c.last_error_at,
            disconnected_at: c.disconnected_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(lifetime_secs: i64) -> AccessToken {
        let issued_at = OffsetDateTime::UNIX_EPOCH;
        AccessToken {
            token: Arc::new(SecretString::from("t")),
            token_type: "bearer".into(),
            issued_at,
            expires_at: issued_at + time::Duration::seconds(lifetime_secs),
            scopes: Vec::new().into(),
            generation: 1,
        }
    }

    #[test]
    fn the_margin_never_makes_a_fresh_token_look_expired() {
        let t = token(10);
        let at = |s: i64| OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(s);
        // A 60 s margin on a 10 s token is capped at half its life.
        assert!(t.is_valid_for(Duration::from_secs(60), 0.5, at(0)));
        assert!(t.is_valid_for(Duration::from_secs(60), 0.5, at(5)));
        assert!(!t.is_valid_for(Duration::from_secs(60), 0.5, at(6)));
        let hour = token(3599);
        assert!(hour.is_valid_for(Duration::from_secs(60), 0.5, at(3539)));
        assert!(!hour.is_valid_for(Duration::from_secs(60), 0.5, at(3540)));
        assert!(!hour.is_valid_for(Duration::ZERO, 0.5, at(3599)));
    }
}
