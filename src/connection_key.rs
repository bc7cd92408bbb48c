//! What names one connection: a tenant at a provider. Built once at the API boundary, after
//! the default provider is resolved, and used as it is everywhere below: as the cache key, by
//! the store, by the caller policy and in the associated data of sealed values. Two newtypes,
//! so that a tenant can never be passed where a provider is meant.

use std::{fmt, sync::Arc};

/// The longest tenant id accepted (bytes).
pub const MAX_TENANT_ID_LEN: usize = 255;

/// A request field that failed validation: which one and why, for `INVALID_ARGUMENT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    pub field: &'static str,
    pub description: String,
}

/// The caller's identifier for a customer: 1 to 255 bytes, no control characters. Opaque to
/// the vault. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// Validates a tenant id from a request; `field` names it in the error.
    pub fn parse(id: &str, field: &'static str) -> Result<Self, InvalidField> {
        let invalid = |description: String| InvalidField { field, description };
        if id.is_empty() {
            return Err(invalid("is required".into()));
        }
        if id.len() > MAX_TENANT_ID_LEN {
            return Err(invalid(format!("is longer than {MAX_TENANT_ID_LEN} bytes")));
        }
        if id.chars().any(char::is_control) {
            return Err(invalid("contains control characters".into()));
        }
        Ok(Self(id.into()))
    }

    /// A tenant id the vault stored itself (a row, a pending authorization): it was validated
    /// when it came in.
    pub fn from_stored(id: &str) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id's one allocation, shared: a reference count, not a copy.
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A provider's configured name (`providers.<name>`). Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProviderName(Arc<str>);

impl ProviderName {
    pub fn new(name: &str) -> Self {
        Self(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name's one allocation, shared: a reference count, not a copy.
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl fmt::Debug for ProviderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ProviderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One connection: a tenant at a provider.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ConnectionKey {
    tenant: TenantId,
    provider: ProviderName,
}

impl ConnectionKey {
    pub fn new(tenant: TenantId, provider: ProviderName) -> Self {
        Self { tenant, provider }
    }

    /// The key of a row the vault stored.
    pub fn from_stored(tenant: &str, provider: &str) -> Self {
        Self::new(TenantId::from_stored(tenant), ProviderName::new(provider))
    }

    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    pub fn provider(&self) -> &ProviderName {
        &self.provider
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_validated() {
        assert!(TenantId::parse("acme-42", "tenant_id").is_ok());
        for bad in ["", &"x".repeat(256), "a\u{0}b"] {
            let err = TenantId::parse(bad, "tenant_id").unwrap_err();
            assert_eq!(err.field, "tenant_id");
        }
    }

    #[test]
    fn a_key_is_equal_only_for_the_same_tenant_at_the_same_provider() {
        let key = |t: &str, p: &str| ConnectionKey::new(TenantId::from_stored(t), ProviderName::new(p));
        assert_eq!(key("acme", "understory"), key("acme", "understory"));
        assert_ne!(key("acme", "understory"), key("understory", "acme"));
        assert_ne!(key("acme", "understory"), key("acme", "other"));
    }
}
