//! ListConnections: pages of connections in (provider, tenant) order, narrowed by provider,
//! status and tenant prefix, and filtered by the caller's policy.
//!
//! The policy is applied after the query (it is a list of patterns, not SQL), so one page may
//! need several batches from the table. The work per call is bounded: at most
//! [`MAX_BATCHES`] batches of a page's size are read; if the page is still not full then, it is
//! returned short, with a position to go on from. A short page with a next position is
//! therefore not the end; only a page without one is.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};

use super::{ConnectionInfo, ConnectionKey, ConnectionStatus, Vault, VaultError};
use crate::{
    crypto::{Aad, SharedKeyring},
    store::ConnectionFilter,
};

/// The page token format's version, bound into its associated data.
const PAGE_TOKEN_VERSION: &str = "v1";
/// Longer than any token this vault issues (a provider name of at most 64 bytes and a tenant id
/// of at most 255, sealed and base64url-encoded); anything longer is refused unread.
const MAX_PAGE_TOKEN_LEN: usize = 1024;

/// The largest page; a larger request gets pages of this size.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Batches read for one page at most, however few connections the caller's policy allows.
pub const MAX_BATCHES: usize = 10;

/// ListConnections' request, validated at the edge (the provider still to be checked here).
#[derive(Debug, Clone, Default)]
pub struct ListConnections {
    pub provider: Option<String>,
    pub status: Option<ConnectionStatus>,
    pub tenant_prefix: Option<String>,
    /// 1..=MAX_PAGE_SIZE.
    pub page_size: usize,
    /// The previous page's `next_page_token`, as the caller sent it back.
    pub page_token: Option<String>,
}

#[derive(Debug)]
pub struct ConnectionPage {
    pub connections: Vec<ConnectionInfo>,
    /// Where the next page starts, sealed; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// A page token: the (provider, tenant) a page ended after, sealed with the keyring and
/// base64url-encoded. Sealed, not merely encoded, because the position may be a connection the
/// caller's policy hides (a page that ran out of batches ends on one), and a caller must learn
/// no tenant id that way; nor can it forge a position. A token sealed with a key since removed
/// from the keyring is refused like garbage: the caller starts again from the first page.
fn seal_page_token(keyring: &SharedKeyring, (provider, tenant): (String, String)) -> Result<String, VaultError> {
    let sealed = keyring.seal(
        &Aad::for_page_token(PAGE_TOKEN_VERSION),
        format!("{provider}\0{tenant}").as_bytes(),
    )?;
    Ok(URL_SAFE_NO_PAD.encode(sealed))
}

fn open_page_token(keyring: &SharedKeyring, token: &str) -> Option<(String, String)> {
    if token.len() > MAX_PAGE_TOKEN_LEN {
        return None;
    }
    let sealed = URL_SAFE_NO_PAD.decode(token).ok()?;
    let opened = keyring.open(&Aad::for_page_token(PAGE_TOKEN_VERSION), &sealed).ok()?;
    let text = std::str::from_utf8(&opened).ok()?;
    let (provider, tenant) = text.split_once('\0')?;
    (!provider.is_empty() && !tenant.is_empty()).then(|| (provider.to_owned(), tenant.to_owned()))
}

impl Vault {
    /// One page of the connections `allows` lets the caller see.
    pub async fn list_connections(
        &self,
        req: ListConnections,
        allows: impl Fn(&ConnectionKey) -> bool,
    ) -> Result<ConnectionPage, VaultError> {
        if let Some(provider) = &req.provider {
            self.provider_named(provider)?;
        }
        let page_size = req.page_size.clamp(1, MAX_PAGE_SIZE);
        // One row more than a page: a full page then knows whether anything follows it.
        let batch = page_size + 1;
        let keyring = &self.inner.keyring;
        let after = match &req.page_token {
            None => None,
            Some(token) => Some(
                open_page_token(keyring, token)
                    .ok_or_else(|| VaultError::invalid("page_token", "is not a page token of this vault"))?,
            ),
        };
        let mut filter = ConnectionFilter {
            provider: req.provider,
            status: req.status.map(|s| s.as_str().to_owned()),
            tenant_prefix: req.tenant_prefix,
            after,
        };
        let mut connections = Vec::new();
        for _ in 0..MAX_BATCHES {
            let rows = self.inner.store.connections().list(&filter, batch as i64).await?;
            let exhausted = rows.len() < batch;
            for row in rows {
                if connections.len() == page_size {
                    // A row follows the full page.
                    return Ok(ConnectionPage {
                        connections,
                        next_page_token: filter.after.map(|at| seal_page_token(keyring, at)).transpose()?,
                    });
                }
                filter.after = Some((row.provider.clone(), row.tenant_id.clone()));
                if allows(&ConnectionKey::from_stored(&row.tenant_id, &row.provider)) {
                    connections.push(row.into());
                }
            }
            if exhausted {
                return Ok(ConnectionPage {
                    connections,
                    next_page_token: None,
                });
            }
        }
        Ok(ConnectionPage {
            connections,
            next_page_token: filter.after.map(|at| seal_page_token(keyring, at)).transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keyring;

    #[test]
    fn page_tokens_are_sealed_round_trip_and_garbage_or_another_keyring_is_refused() {
        let keyring = SharedKeyring::new(Keyring::generate("a").0);
        let token = seal_page_token(&keyring, ("understory".into(), "team-b-secret-tenant".into())).unwrap();
        assert!(!token.contains("team"));
        assert!(!String::from_utf8_lossy(&URL_SAFE_NO_PAD.decode(&token).unwrap()).contains("team-b"));
        assert!(token.len() < MAX_PAGE_TOKEN_LEN);
        assert_eq!(
            open_page_token(&keyring, &token),
            Some(("understory".into(), "team-b-secret-tenant".into()))
        );
        let other = SharedKeyring::new(Keyring::generate("b").0);
        assert_eq!(open_page_token(&other, &token), None);
        for bad in ["", "!!!", "bm90IGEgdG9rZW4", &"A".repeat(10_000)] {
            assert_eq!(open_page_token(&keyring, bad), None, "{bad}");
        }
    }
}
