//! What one caller may do: which RPCs, which providers, which tenants. Nothing is allowed that
//! the caller's entry does not list; `*` must be written out to mean "all".

use std::collections::HashSet;

use crate::config::{invalid, ConfigError};

/// The vault's RPCs, as named in policies and in the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    BeginAuthorization,
    CompleteAuthorization,
    GetAccessToken,
    GetConnection,
}

/// The path prefix of every vault RPC (`/<package>.<Service>/`).
const SERVICE_PATH: &str = "/tokenvault.v1.TokenVault/";

impl Rpc {
    pub const ALL: [Rpc; 4] = [
        Rpc::BeginAuthorization,
        Rpc::CompleteAuthorization,
        Rpc::GetAccessToken,
        Rpc::GetConnection,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rpc::BeginAuthorization => "BeginAuthorization",
            Rpc::CompleteAuthorization => "CompleteAuthorization",
            Rpc::GetAccessToken => "GetAccessToken",
            Rpc::GetConnection => "GetConnection",
        }
    }

    /// The RPC an HTTP/2 request path calls, if it is one of the vault's.
    pub fn from_path(path: &str) -> Option<Rpc> {
        let method = path.strip_prefix(SERVICE_PATH)?;
        Rpc::ALL.into_iter().find(|rpc| rpc.name() == method)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
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
    rpcs: u8,
    providers: Names,
    tenants: Tenants,
    /// What an empty `provider` in a request means, so that a caller limited to some providers
    /// can't reach another one by leaving the field empty.
    default_provider: Option<String>,
}

impl Policy {
    /// Everything: only for `auth.mode = "insecure-dev"`.
    pub fn allow_all(default_provider: Option<String>) -> Self {
        Self {
            rpcs: u8::MAX,
            providers: Names::Any,
            tenants: Tenants {
                any: true,
                ..Default::default()
            },
            default_provider,
        }
    }

    /// The provider a request means: its own, or the default for an empty one.
    pub fn resolve<'a>(&'a self, provider: &'a str) -> &'a str {
        match (provider, &self.default_provider) {
            ("", Some(default)) => default,
            _ => provider,
        }
    }

    /// Parses one caller's lists; `field` names the caller's entry in errors.
    pub fn parse(
        field: &str,
        rpcs: &[String],
        providers: &[String],
        tenants: &[String],
        known_providers: &[&str],
        default_provider: Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut rpc_bits = 0u8;
        for name in rpcs {
            if name == "*" {
                rpc_bits = u8::MAX;
            } else {
                let rpc = Rpc::ALL.into_iter().find(|r| r.name() == name).ok_or_else(|| {
                    invalid(
                        format!("{field}.rpcs"),
                        format!("{name:?} is no RPC (known: BeginAuthorization, CompleteAuthorization, GetAccessToken, GetConnection, *)"),
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
            default_provider,
        })
    }

    pub fn allows_rpc(&self, rpc: Rpc) -> bool {
        self.rpcs & rpc.bit() != 0
    }

    /// Whether the caller may touch `tenant` at `provider` (empty means the default provider).
    /// An empty provider with no default is let through: the vault rejects it as invalid.
    pub fn allows(&self, provider: &str, tenant: &str) -> bool {
        let provider_ok = match &self.providers {
            Names::Any => true,
            // Still empty: no default, and the vault will reject the request as invalid.
            Names::Listed(names) => match self.resolve(provider) {
                "" => true,
                resolved => names.contains(resolved),
            },
        };
        provider_ok && self.tenants.allows(tenant)
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
            Some("understory".into()),
        )
    }

    #[test]
    fn tenants_match_exactly_or_by_prefix() {
        let p = policy(&["GetAccessToken"], &["*"], &["acme", "team-a-*"]).unwrap();
        assert!(p.allows("", "acme"));
        assert!(p.allows("", "team-a-42"));
        assert!(!p.allows("", "acme-2"));
        assert!(!p.allows("", "team-b-1"));
        assert!(p.allows_rpc(Rpc::GetAccessToken));
        assert!(!p.allows_rpc(Rpc::BeginAuthorization));
    }

    #[test]
    fn an_empty_provider_is_the_default_one() {
        let p = policy(&["*"], &["other"], &["*"]).unwrap();
        assert!(p.allows("other", "x"));
        assert!(!p.allows("understory", "x"));
        assert!(!p.allows("", "x"), "the default provider is not in the list");
    }

    #[test]
    fn nothing_listed_allows_nothing() {
        let p = policy(&[], &[], &[]).unwrap();
        assert!(Rpc::ALL.iter().all(|r| !p.allows_rpc(*r)));
        assert!(!p.allows("understory", "acme"));
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
    fn paths_name_rpcs() {
        assert_eq!(
            Rpc::from_path("/tokenvault.v1.TokenVault/GetAccessToken"),
            Some(Rpc::GetAccessToken)
        );
        assert_eq!(Rpc::from_path("/tokenvault.v1.TokenVault/Nope"), None);
        assert_eq!(Rpc::from_path("/grpc.health.v1.Health/Check"), None);
    }
}
