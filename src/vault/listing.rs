//! ListConnections: pages of connections in (provider, tenant) order, narrowed by provider,
//! status and tenant prefix, and filtered by the caller's policy.
//!
//! The policy is applied after the query (it is a list of patterns, not SQL), so one page may
//! need several batches from the table. The work per call is bounded: at most
//! [`MAX_BATCHES`] batches of a page's size are read; if the page is still not full then, it is
//! returned short, with a position to go on from. A short page with a next position is
//! therefore not the end; only a page without one is.

use super::{ConnectionInfo, ConnectionKey, ConnectionStatus, Vault, VaultError};
use crate::store::ConnectionFilter;

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
    /// The (provider, tenant) the previous page ended after.
    pub after: Option<(String, String)>,
}

#[derive(Debug)]
pub struct ConnectionPage {
    pub connections: Vec<ConnectionInfo>,
    /// Where the next page starts; `None` on the last page.
    pub next_after: Option<(String, String)>,
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
        let mut filter = ConnectionFilter {
            provider: req.provider,
            status: req.status.map(|s| s.as_str().to_owned()),
            tenant_prefix: req.tenant_prefix,
            after: req.after,
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
                        next_after: filter.after,
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
                    next_after: None,
                });
            }
        }
        Ok(ConnectionPage {
            connections,
            next_after: filter.after,
        })
    }
}
