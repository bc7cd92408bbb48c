//! Wire types to domain types and back. Bad input becomes `InvalidArgument` naming the field;
//! nothing past this module sees a proto type.

use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tonic::metadata::MetadataMap;

use crate::{
    oauth::CallbackParams,
    proto,
    vault::{
        AccessToken, AccessTokenRequest, AuthorizationCompleted, AuthorizationStarted, BeginAuthorization,
        ConnectionEvent, ConnectionEventKind, ConnectionInfo, ConnectionPage, ConnectionRequest, ConnectionStatus,
        Disconnected, EventCursor, ImportConnection, ImportedConnection, ListConnections, Revocation, TenantId,
        TokenDigest, VaultError, WatchEvents, MAX_TENANT_ID_LEN,
    },
};

/// Longest provider name and redirect URI accepted.
const MAX_PROVIDER_LEN: usize = 64;
const MAX_REDIRECT_URI_LEN: usize = 2048;
/// The largest `min_valid_for` that makes sense: a token is never valid for longer than a day.
const MAX_MIN_VALID_FOR: Duration = Duration::from_secs(24 * 3600);
/// The longest tokens ImportConnection accepts. Hydra's are well under 100 bytes; a JWT access
/// token from another provider may run to a few kilobytes.
const MAX_IMPORTED_REFRESH_TOKEN_LEN: usize = 8 * 1024;
const MAX_IMPORTED_ACCESS_TOKEN_LEN: usize = 16 * 1024;

/// The connection a request names, validated; the provider is resolved later, by the vault.
fn connection(tenant_id: &str, provider: String) -> Result<ConnectionRequest, VaultError> {
    if provider.len() > MAX_PROVIDER_LEN {
        return Err(VaultError::invalid("provider", "is too long"));
    }
    Ok(ConnectionRequest {
        tenant_id: TenantId::parse(tenant_id, "tenant_id")?,
        provider,
    })
}

fn timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    }
}

impl TryFrom<proto::BeginAuthorizationRequest> for (ConnectionRequest, BeginAuthorization) {
    type Error = VaultError;

    fn try_from(req: proto::BeginAuthorizationRequest) -> Result<Self, Self::Error> {
        let asked = connection(&req.tenant_id, req.provider)?;
        if req.redirect_uri.len() > MAX_REDIRECT_URI_LEN {
            return Err(VaultError::invalid("redirect_uri", "is too long"));
        }
        Ok((
            asked,
            BeginAuthorization {
                scopes: req.scopes,
                redirect_uri: req.redirect_uri,
            },
        ))
    }
}

impl From<AuthorizationStarted> for proto::BeginAuthorizationResponse {
    fn from(s: AuthorizationStarted) -> Self {
        Self {
            authorization_url: s.authorization_url,
            state: s.state,
            expires_at: Some(timestamp(s.expires_at)),
            provider: s.provider,
            redirect_uri: s.redirect_uri,
            scopes: s.scopes,
        }
    }
}

/// Either the callback's parameters one by one, or its whole URL; never both.
pub fn callback(req: proto::CompleteAuthorizationRequest) -> Result<CallbackParams, VaultError> {
    let parsed = if req.callback_url.is_empty() {
        CallbackParams::from_fields(&req.state, &req.code, &req.error, &req.error_description)
    } else {
        if !(req.state.is_empty() && req.code.is_empty() && req.error.is_empty() && req.error_description.is_empty()) {
            return Err(VaultError::invalid(
                "callback_url",
                "must not be combined with state, code, error or error_description",
            ));
        }
        CallbackParams::from_url(&req.callback_url)
    };
    parsed.map_err(|e| VaultError::invalid(e.field, e.problem))
}

impl From<AuthorizationCompleted> for proto::CompleteAuthorizationResponse {
    fn from(c: AuthorizationCompleted) -> Self {
        Self {
            tenant_id: c.tenant_id,
            provider: c.provider,
            scopes: c.scopes,
            access_token_expires_at: Some(timestamp(c.access_token_expires_at)),
            refresh_token_issued: c.refresh_token_issued,
        }
    }
}

impl TryFrom<proto::GetAccessTokenRequest> for (ConnectionRequest, AccessTokenRequest) {
    type Error = VaultError;

    fn try_from(req: proto::GetAccessTokenRequest) -> Result<Self, Self::Error> {
        let asked = connection(&req.tenant_id, req.provider)?;
        let min_valid_for = req
            .min_valid_for
            .map(|d| {
                Duration::try_from(d)
                    .ok()
                    .filter(|d| *d <= MAX_MIN_VALID_FOR)
                    .ok_or_else(|| VaultError::invalid("min_valid_for", "must be between 0 and 24 hours"))
            })
            .transpose()?;
        // Hashed at once: the plaintext goes no further than this function.
        let rejected = match (
            req.rejected_access_token.is_empty(),
            req.rejected_access_token_sha256.is_empty(),
        ) {
            (true, true) => None,
            (false, true) => Some(TokenDigest::of(&req.rejected_access_token)),
            (true, false) => Some(
                TokenDigest::from_bytes(&req.rejected_access_token_sha256).ok_or_else(|| {
                    VaultError::invalid("rejected_access_token_sha256", "must be 32 bytes (a SHA-256 digest)")
                })?,
            ),
            (false, false) => {
                return Err(VaultError::invalid(
                    "rejected_access_token_sha256",
                    "must not be combined with rejected_access_token",
                ))
            }
        };
        Ok((
            asked,
            AccessTokenRequest {
                min_valid_for,
                rejected,
            },
        ))
    }
}

impl TryFrom<proto::ImportConnectionRequest> for (ConnectionRequest, ImportConnection) {
    type Error = VaultError;

    fn try_from(req: proto::ImportConnectionRequest) -> Result<Self, Self::Error> {
        let asked = connection(&req.tenant_id, req.provider)?;
        if req.refresh_token.is_empty() {
            return Err(VaultError::invalid("refresh_token", "is required"));
        }
        if req.refresh_token.len() > MAX_IMPORTED_REFRESH_TOKEN_LEN {
            return Err(VaultError::invalid("refresh_token", "is too long"));
        }
        if req.refresh_token.chars().any(|c| c.is_control() || c == ' ') {
            return Err(VaultError::invalid(
                "refresh_token",
                "contains spaces or control characters",
            ));
        }
        let access_token = match (req.access_token.is_empty(), req.access_token_expires_at) {
            (true, None) => None,
            (true, Some(_)) => {
                return Err(VaultError::invalid(
                    "access_token_expires_at",
                    "must not be set without access_token",
                ))
            }
            (false, None) => {
                return Err(VaultError::invalid(
                    "access_token_expires_at",
                    "is required with access_token",
                ))
            }
            (false, Some(expires_at)) => {
                if req.access_token.len() > MAX_IMPORTED_ACCESS_TOKEN_LEN {
                    return Err(VaultError::invalid("access_token", "is too long"));
                }
                let expires_at = OffsetDateTime::from_unix_timestamp(expires_at.seconds)
                    .ok()
                    .and_then(|t| t.replace_nanosecond(u32::try_from(expires_at.nanos).ok()?).ok())
                    .ok_or_else(|| VaultError::invalid("access_token_expires_at", "is not a valid timestamp"))?;
                Some((req.access_token.into(), expires_at))
            }
        };
        Ok((
            asked,
            ImportConnection {
                refresh_token: req.refresh_token.into(),
                access_token,
                scopes: req.scopes,
                validate: !req.skip_validation,
                replace_existing: req.replace_existing,
            },
        ))
    }
}

impl From<ImportedConnection> for proto::ImportConnectionResponse {
    fn from(i: ImportedConnection) -> Self {
        Self {
            connection: Some(i.connection.into()),
            validated: i.validated,
        }
    }
}

impl From<AccessToken> for proto::GetAccessTokenResponse {
    fn from(t: AccessToken) -> Self {
        use secrecy::ExposeSecret;
        Self {
            access_token: t.token.expose_secret().to_owned(),
            token_type: t.token_type,
            expires_at: Some(timestamp(t.expires_at)),
            scopes: t.scopes.to_vec(),
        }
    }
}

pub fn connection_request(req: proto::GetConnectionRequest) -> Result<ConnectionRequest, VaultError> {
    connection(&req.tenant_id, req.provider)
}

fn status(s: ConnectionStatus) -> proto::ConnectionStatus {
    match s {
        ConnectionStatus::Active => proto::ConnectionStatus::Active,
        ConnectionStatus::ReauthorizationRequired => proto::ConnectionStatus::ReauthorizationRequired,
        ConnectionStatus::Disconnected => proto::ConnectionStatus::Disconnected,
    }
}

impl From<ConnectionInfo> for proto::GetConnectionResponse {
    fn from(c: ConnectionInfo) -> Self {
        Self {
            tenant_id: c.tenant_id,
            provider: c.provider,
            status: status(c.status).into(),
            status_reason: c.status_reason.unwrap_or_default(),
            status_changed_at: Some(timestamp(c.status_changed_at)),
            scopes: c.scopes,
            access_token_expires_at: Some(timestamp(c.access_token_expires_at)),
            has_refresh_token: c.has_refresh_token,
            authorized_at: Some(timestamp(c.authorized_at)),
            refreshed_at: c.refreshed_at.map(timestamp),
            refresh_token_expires_at: c.refresh_token_expires_at.map(timestamp),
            keepalive_due_at: c.keepalive_due_at.map(timestamp),
            last_error: c.last_error.unwrap_or_default(),
            last_error_at: c.last_error_at.map(timestamp),
            disconnected_at: c.disconnected_at.map(timestamp),
        }
    }
}

pub fn delete_request(req: proto::DeleteConnectionRequest) -> Result<ConnectionRequest, VaultError> {
    connection(&req.tenant_id, req.provider)
}

impl From<Disconnected> for proto::DeleteConnectionResponse {
    fn from(d: Disconnected) -> Self {
        let (revocation, revocation_error) = match d.revocation {
            Revocation::Revoked => (proto::Revocation::Revoked, ""),
            Revocation::NotConfigured => (proto::Revocation::NotConfigured, ""),
            Revocation::Failed(reason) => (proto::Revocation::Failed, reason),
            Revocation::NoToken => (proto::Revocation::NoToken, ""),
            Revocation::AlreadyDisconnected => (proto::Revocation::AlreadyDisconnected, ""),
        };
        Self {
            tenant_id: d.tenant_id,
            provider: d.provider,
            revocation: revocation.into(),
            revocation_error: revocation_error.into(),
            disconnected_at: d.disconnected_at.map(timestamp),
        }
    }
}

/// ListConnections' page size when the request names none.
const DEFAULT_PAGE_SIZE: u32 = 100;

impl TryFrom<proto::ListConnectionsRequest> for ListConnections {
    type Error = VaultError;

    /// A page size over the maximum is cut to it (the answer's `next_page_token` goes on), not
    /// refused: a caller asking for "everything" still gets pages.
    fn try_from(req: proto::ListConnectionsRequest) -> Result<Self, Self::Error> {
        if req.provider.len() > MAX_PROVIDER_LEN {
            return Err(VaultError::invalid("provider", "is too long"));
        }
        if req.tenant_prefix.len() > MAX_TENANT_ID_LEN {
            return Err(VaultError::invalid(
                "tenant_prefix",
                format!("is longer than a tenant id ({MAX_TENANT_ID_LEN} bytes)"),
            ));
        }
        let status = match proto::ConnectionStatus::try_from(req.status) {
            Ok(proto::ConnectionStatus::Unspecified) => None,
            Ok(proto::ConnectionStatus::Active) => Some(ConnectionStatus::Active),
            Ok(proto::ConnectionStatus::ReauthorizationRequired) => Some(ConnectionStatus::ReauthorizationRequired),
            Ok(proto::ConnectionStatus::Disconnected) => Some(ConnectionStatus::Disconnected),
            Err(_) => return Err(VaultError::invalid("status", "is not a known connection status")),
        };
        let page_size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n,
        };
        // Opened by the vault, which holds the key that sealed it.
        let page_token = Some(req.page_token).filter(|t| !t.is_empty());
        Ok(Self {
            provider: Some(req.provider).filter(|p| !p.is_empty()),
            status,
            tenant_prefix: Some(req.tenant_prefix).filter(|p| !p.is_empty()),
            page_size: (page_size as usize).min(crate::vault::MAX_PAGE_SIZE),
            page_token,
        })
    }
}

impl From<ConnectionPage> for proto::ListConnectionsResponse {
    fn from(page: ConnectionPage) -> Self {
        Self {
            connections: page.connections.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }
    }
}

/// A watch as asked: a malformed cursor is EVENT_CURSOR_EXPIRED (as the proto says), a bad
/// provider or tenant prefix INVALID_ARGUMENT naming it. Empty fields mean "from now", "every
/// provider", "every tenant".
impl TryFrom<proto::WatchConnectionEventsRequest> for WatchEvents {
    type Error = VaultError;

    fn try_from(req: proto::WatchConnectionEventsRequest) -> Result<Self, Self::Error> {
        let cursor = match req.cursor.as_str() {
            "" => None,
            text => Some(EventCursor::parse(text)?),
        };
        if req.provider.len() > MAX_PROVIDER_LEN {
            return Err(VaultError::invalid("provider", "is too long"));
        }
        if req.tenant_prefix.len() > MAX_TENANT_ID_LEN {
            return Err(VaultError::invalid(
                "tenant_prefix",
                format!("is longer than {MAX_TENANT_ID_LEN} bytes"),
            ));
        }
        if req.tenant_prefix.chars().any(char::is_control) {
            return Err(VaultError::invalid("tenant_prefix", "contains control characters"));
        }
        Ok(Self {
            cursor,
            provider: Some(req.provider).filter(|p| !p.is_empty()),
            tenant_prefix: Some(req.tenant_prefix).filter(|p| !p.is_empty()),
        })
    }
}

impl From<ConnectionEvent> for proto::WatchConnectionEventsResponse {
    fn from(e: ConnectionEvent) -> Self {
        let kind = match e.kind {
            ConnectionEventKind::Authorized => proto::ConnectionEventKind::Authorized,
            ConnectionEventKind::RefreshedByKeepalive => proto::ConnectionEventKind::RefreshedByKeepalive,
            ConnectionEventKind::ReauthorizationRequired => proto::ConnectionEventKind::ReauthorizationRequired,
            ConnectionEventKind::Recovered => proto::ConnectionEventKind::Recovered,
            ConnectionEventKind::Disconnected => proto::ConnectionEventKind::Disconnected,
            ConnectionEventKind::Imported => proto::ConnectionEventKind::Imported,
        };
        Self {
            cursor: e.cursor.to_string(),
            occurred_at: Some(timestamp(e.occurred_at)),
            tenant_id: e.tenant_id,
            provider: e.provider,
            kind: kind.into(),
            status: status(e.status).into(),
            reason: e.reason.unwrap_or_default(),
        }
    }
}

/// The caller's deadline from the `grpc-timeout` header (gRPC over HTTP/2 spec: 1-8 digits and
/// a unit H, M, S, m, u or n), a little early so that our DEADLINE_EXCEEDED reaches the caller
/// before its own timer fires.
pub fn deadline(metadata: &MetadataMap, now: Instant) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    let slack = (timeout / 20).min(Duration::from_millis(50));
    now.checked_add(timeout - slack)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let now = Instant::now();
        let mut m = MetadataMap::new();
        assert_eq!(deadline(&m, now), None);
        m.insert("grpc-timeout", "200m".parse().unwrap());
        assert_eq!(deadline(&m, now), Some(now + Duration::from_millis(190)));
        m.insert("grpc-timeout", "2S".parse().unwrap());
        assert_eq!(deadline(&m, now), Some(now + Duration::from_millis(1950)));
        m.insert("grpc-timeout", "xS".parse().unwrap());
        assert_eq!(deadline(&m, now), None);
    }

    fn rejected(token: &str, digest: Vec<u8>) -> Result<Option<TokenDigest>, VaultError> {
        <(ConnectionRequest, AccessTokenRequest)>::try_from(proto::GetAccessTokenRequest {
            tenant_id: "acme".into(),
            rejected_access_token: token.into(),
            rejected_access_token_sha256: digest,
            ..Default::default()
        })
        .map(|(_, options)| options.rejected)
    }

    #[test]
    fn a_rejected_token_becomes_its_digest_in_either_form() {
        use sha2::{Digest, Sha256};
        let token = secrecy::SecretString::from("at_1");
        let plain = rejected("at_1", Vec::new()).unwrap().unwrap();
        let digest = rejected("", Sha256::digest(b"at_1").to_vec()).unwrap().unwrap();
        assert!(plain.matches(&token) && digest.matches(&token));
        assert!(!plain.matches(&secrecy::SecretString::from("at_2")));
        assert!(rejected("", Vec::new()).unwrap().is_none());
        for bad in [
            rejected("at_1", Sha256::digest(b"at_1").to_vec()),
            rejected("", vec![1; 31]),
        ] {
            assert!(matches!(
                bad,
                Err(VaultError::InvalidArgument {
                    field: "rejected_access_token_sha256",
                    ..
                })
            ));
        }
        assert!(!format!("{plain:?}").contains("at_1"));
    }

    #[test]
    fn page_sizes_are_clamped() {
        let clamped = ListConnections::try_from(proto::ListConnectionsRequest {
            page_size: 5000,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(clamped.page_size, crate::vault::MAX_PAGE_SIZE);
    }

    #[test]
    fn callback_fields_and_url_are_exclusive() {
        let err = callback(proto::CompleteAuthorizationRequest {
            state: "s".into(),
            callback_url: "https://x/cb?state=s&code=c".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(
            err,
            VaultError::InvalidArgument {
                field: "callback_url",
                ..
            }
        ));
    }
}
