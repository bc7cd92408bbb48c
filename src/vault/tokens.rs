//! Sealing and opening a connection's tokens with the associated data of their row.

use std::sync::Arc;

use secrecy::SecretString;
use time::OffsetDateTime;

use super::{lifetime, AccessToken, ConnectionKey, VaultError};
use crate::{
    crypto::{Aad, Purpose, SharedKeyring},
    oauth::{ProviderConfig, TokenResponse},
    store::{NewTokens, StoredAccessToken},
};

/// Opens the access token of `key`'s row, taking the row's fields rather than copying them.
pub(super) fn open_access_token(
    keyring: &SharedKeyring,
    key: &ConnectionKey,
    row: impl Into<StoredAccessToken>,
) -> Result<AccessToken, VaultError> {
    let row = row.into();
    let aad = Aad::for_connection(Purpose::AccessToken, key, row.generation);
    Ok(AccessToken {
        token: Arc::new(keyring.open_str(&aad, &row.access_token)?),
        token_type: row.token_type,
        issued_at: row.access_token_issued_at,
        expires_at: row.access_token_expires_at,
        scopes: row.scopes.into(),
        generation: row.generation,
    })
}

pub(super) fn open_refresh_token(
    keyring: &SharedKeyring,
    key: &ConnectionKey,
    generation: i64,
    sealed: &[u8],
) -> Result<SecretString, VaultError> {
    let aad = Aad::for_connection(Purpose::RefreshToken, key, generation);
    Ok(keyring.open_str(&aad, sealed)?)
}

/// Seals a token response for writing at `generation`. `sent_at` is when the request left, so
/// the computed expiry errs early, never late. `fallback_scopes` stand in when the provider
/// does not say which scopes it granted (RFC 6749 §5.1: it then granted those requested).
pub(super) fn seal_token_response(
    keyring: &SharedKeyring,
    provider: &ProviderConfig,
    key: &ConnectionKey,
    generation: i64,
    response: &TokenResponse,
    sent_at: OffsetDateTime,
    fallback_scopes: &[String],
) -> Result<(NewTokens, AccessToken), VaultError> {
    let lifetime = response.expires_in.unwrap_or(provider.assumed_token_lifetime);
    let expires_at = sent_at + lifetime;
    let aad = |purpose| Aad::for_connection(purpose, key, generation);
    let access_token = keyring.seal_str(&aad(Purpose::AccessToken), &response.access_token)?;
    let refresh_token = response
        .refresh_token
        .as_ref()
        .map(|rt| keyring.seal_str(&aad(Purpose::RefreshToken), rt))
        .transpose()?;
    let scopes = response.scope.clone().unwrap_or_else(|| fallback_scopes.to_vec());
    let refresh_token_expires_at = response
        .refresh_token
        .as_ref()
        .and_then(|_| lifetime::refresh_token_expires_at(provider, sent_at, response.refresh_token_expires_in));
    let token = AccessToken {
        token: Arc::new(response.access_token.clone()),
        token_type: response.token_type.clone(),
        issued_at: sent_at,
        expires_at,
        scopes: scopes.clone().into(),
        generation,
    };
    let new = NewTokens {
        generation,
        scopes,
        token_type: response.token_type.clone(),
        access_token,
        access_token_issued_at: sent_at,
        access_token_expires_at: expires_at,
        refresh_token,
        refresh_token_expires_at,
        keepalive_due_at: refresh_token_expires_at
            .map(|rt_expires| lifetime::keepalive_due_at(provider, sent_at, expires_at, rt_expires)),
    };
    Ok((new, token))
}
