//! What one caller may do: which RPCs, which providers, which tenants. Nothing is allowed that
//! the caller's entry does not list; `*` must be written out to mean "all". `*` among the RPCs
//! leaves out ImportConnection, which writes tokens no customer authorized here: it is granted
//! only by name, so that no existing policy gains it silently.

use std::collections::HashSet;

use crate::{
    config::{invalid, ConfigError},
    connection_key::ConnectionKey,
};

/// The vault's RPCs, as named in policies and in the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    BeginAuthorization,
    CompleteAuthorization,
    GetAccessToken,
    GetConnection,
    ListConnections,
    DeleteConnection,
    ImportConnection,
    WatchConnectionEvents,
}

/// The path prefix of every vault RPC (`/<package>.<Service>/`).
const SERVICE_PATH: &str = "/tokenvault.v1.TokenVault/";

impl Rpc {
    pub const ALL: [Rpc; 8] = [
        Rpc::BeginAuthorization,
        Rpc::CompleteAuthorization,
        Rpc::GetAccessToken,
        Rpc::GetConnection,
        Rpc::ListConnections,
        Rpc::DeleteConnection,
        Rpc::ImportConnection,
        Rpc::WatchConnectionEvents,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rpc::BeginAuthorization => "BeginAuthorization",
            Rpc::CompleteAuthorization => "CompleteAuthorization",
            Rpc::GetAccessToken => "GetAccessToken",
            Rpc::GetConnection => "GetConnection",
            Rpc::ListConnections => "ListConnections",
            Rpc::DeleteConnection => "DeleteConnection",
            Rpc::ImportConnection => "ImportConnection",
            Rpc::WatchConnectionEvents => "WatchConnectionEvents",
        }
    }

    /// The RPC an HTTP/2 request path calls, if it is one of the vault's.
    pub fn from_path(path: &str) -> Option<Rpc> {
        let method = path.strip_prefix(SERVICE_PATH)?;
        Rpc::ALL.into_iter().find(|rpc| rpc.name() == method)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    /// Whether `*` grants this RPC.
    fn in_wildcard(self) -> bool {
        self != Rpc::ImportConnection
    }
}

/// A set of names, or every name.
#[derive(Debug, Clone)]
enum Names {
    Any,
    Listed(HashSet<String>),
}

/// Tenant ids: every one, exact ids, and prefixes (`team-a-*`).
#[derive(Debug, Clone, Default)]
struct Tenants {
    any: bool,
    exact: HashSet<String>,
    prefixes: Vec<String>,
}

impl Tenants {
    fn allows(&self, tenant: &str) -> bool {
        self.any || self.exact.contains(tenant) || self.prefixes.iter().any(|p| tenant.starts_with(p.as_str()))
    }
}

/// One caller's permissions, checked on every call.
#[derive(Debug, Clone)]
pub struct Policy {
    rpcs: u16,
    providers: Names,
    tenants: Tenants,
}

impl Policy {
    /// Everything: only for `auth.mode = "insecure-dev"`.
    pub fn allow_all() -> Self {
        Self {
            rpcs: u16::MAX,
            providers: Names::Any,
            tenants: Tenants {
                any: true,
                ..Default::default()
            },
        }
    }

    /// Parses one caller's lists; `field` names the caller's entry in errors.
    pub fn parse(
        field: &str,
        rpcs: &[String],
        providers: &[String],
        tenants: &[String],
        known_providers: &[&str],
    ) -> Result<Self, ConfigError> {
        let mut rpc_bits = 0u16;
        for name in rpcs {
            if name == "*" {
                rpc_bits |= Rpc::ALL
                    .into_iter()
                    .filter(|r| r.in_wildcard())
                    .fold(0, |bits, r| bits | r.bit());
            } else {
                let rpc = Rpc::ALL.into_iter().find(|r| r.name() == name).ok_or_else(|| {
                    invalid(
                        format!("{field}.rpcs"),
                        format!("{name:?} is no RPC (known: {}, *)", Rpc::ALL.map(Rpc::name).join(", ")),
                    )
                })?;
                rpc_bits |= rpc.bit();
            }
        }
        let providers = if providers.iter().any(|p| p == "*") {
            Names::Any
        } else {
            for p in providers {
                if !known_providers.contains(&p.as_str()) {
                    return Err(invalid(
                        format!("{field}.providers"),
                        format!("{p:?} names no configured provider"),
                    ));
                }
            }
            Names::Listed(providers.iter().cloned().collect())
        };
        let mut parsed = Tenants::default();
        for t in tenants {
            match t.strip_suffix('*') {
                Some("") => parsed.any = true,
                Some(prefix) if !prefix.contains('*') => parsed.prefixes.push(prefix.to_owned()),
                None if !t.is_empty() && !t.contains('*') => {
                    parsed.exact.insert(t.clone());
                }
                _ => {
                    return Err(invalid(
                        format!("{field}.tenants"),
                        format!("{t:?}: use an exact id, a prefix ending in one `*` (team-a-*), or `*`"),
                    ))
                }
            }
        }
        Ok(Self {
            rpcs: rpc_bits,
            providers,
            tenants: parsed,
        })
    }

    pub fn allows_rpc(&self, rpc: Rpc) -> bool {
        self.rpcs & rpc.bit() != 0
    }

    /// Whether the caller may use any connection of `provider`.
    pub fn allows_provider(&self, provider: &str) -> bool {
        match &self.providers {
            Names::Any => true,
            Names::Listed(names) => names.contains(provider),
        }
    }

    /// Whether the caller may touch the connection. The key's provider is already resolved
    /// (an empty name in a request is the default provider), so a caller limited to some
    /// providers can't reach another one by leaving the field empty.
    pub fn allows(&self, key: &ConnectionKey) -> bool {
        self.allows_provider(key.provider().as_str()) && self.tenants.allows(key.tenant().as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn policy(rpcs: &[&str], providers: &[&str], tenants: &[&str]) -> Result<Policy, ConfigError> {
        Policy::parse(
            "auth.callers[0]",
            &strings(rpcs),
            &strings(providers),
            &strings(tenants),
            &["understory", "other"],
        )
    }

    fn key(provider: &str, tenant: &str) -> ConnectionKey {
        ConnectionKey::from_stored(tenant, provider)
    }

    #[test]
    fn tenants_match_exactly_or_by_prefix() {
        let p = policy(&["GetAccessToken"], &["*"], &["acme", "team-a-*"]).unwrap();
        assert!(p.allows(&key("understory", "acme")));
        assert!(p.allows(&key("understory", "team-a-42")));
        assert!(!p.allows(&key("understory", "acme-2")));
        assert!(!p.allows(&key("understory", "team-b-1")));
        assert!(p.allows_rpc(Rpc::GetAccessToken));
        assert!(!p.allows_rpc(Rpc::BeginAuthorization));
    }

    #[test]
    fn only_listed_providers_are_allowed() {
        let p = policy(&["*"], &["other"], &["*"]).unwrap();
        assert!(p.allows(&key("other", "x")));
        assert!(p.allows_provider("other"));
        assert!(!p.allows_provider("understory"));
        assert!(
            !p.allows(&key("understory", "x")),
            "the default provider is not in the list"
        );
    }

    #[test]
    fn nothing_listed_allows_nothing() {
        let p = policy(&[], &[], &[]).unwrap();
        assert!(Rpc::ALL.iter().all(|r| !p.allows_rpc(*r)));
        assert!(!p.allows(&key("understory", "acme")));
    }

    #[test]
    fn bad_entries_are_named() {
        let e = policy(&["GetToken"], &["*"], &["*"]).unwrap_err().to_string();
        assert!(e.contains("auth.callers[0].rpcs"), "{e}");
        let e = policy(&["*"], &["nope"], &["*"]).unwrap_err().to_string();
        assert!(e.contains("auth.callers[0].providers"), "{e}");
        let e = policy(&["*"], &["*"], &["a*b"]).unwrap_err().to_string();
        assert!(e.contains("auth.callers[0].tenants"), "{e}");
    }

    #[test]
    fn the_wildcard_does_not_grant_import() {
        let p = policy(&["*"], &["*"], &["*"]).unwrap();
        assert!(p.allows_rpc(Rpc::DeleteConnection));
        assert!(p.allows_rpc(Rpc::WatchConnectionEvents));
        assert!(!p.allows_rpc(Rpc::ImportConnection));
        let p = policy(&["*", "ImportConnection"], &["*"], &["*"]).unwrap();
        assert!(p.allows_rpc(Rpc::ImportConnection));
    }

    #[test]
    fn paths_name_rpcs() {
        assert_eq!(
            Rpc::from_path("/tokenvault.v1.TokenVault/GetAccessToken"),
            Some(Rpc::GetAccessToken)
        );
        assert_eq!(Rpc::from_path("/tokenvault.v1.TokenVault/Nope"), None);
        assert_eq!(Rpc::from_path("/grpc.health.v1.Health/Check"), None);
    }
}
