//! Which database the vault talks to: its system identifier and timeline, and the identity
//! last recorded in `database_identity`. A promoted standby runs on a new timeline, a restore
//! brings a new system identifier or timeline: either may have lost commits the vault relied
//! on. Also what the database promises about durability (a synchronous standby or not).

use time::OffsetDateTime;

use super::{Backend, StoreError};

pub struct DatabaseIdentity<'a> {
    backend: &'a Backend,
}

/// What a durability check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durability {
    /// `synchronous_standby_names`; empty when no standby must confirm a commit.
    pub synchronous_standby_names: String,
    /// `synchronous_commit` (`on`, `remote_apply`, `remote_write`, `local`, `off`).
    pub synchronous_commit: String,
    /// Whether the database can fail over at all: false for the embedded store (one file on
    /// this machine's disk, written with `synchronous=FULL`), where there is no standby.
    pub can_fail_over: bool,
}

impl Durability {
    /// The embedded store's answer: no standby, and nothing to fail over to.
    pub fn single_node() -> Self {
        Self {
            synchronous_standby_names: String::new(),
            synchronous_commit: "local".to_owned(),
            can_fail_over: false,
        }
    }

    /// Whether a commit waits for a standby: only then does a failover keep every commit.
    pub fn has_synchronous_standby(&self) -> bool {
        !self.synchronous_standby_names.trim().is_empty()
            && matches!(self.synchronous_commit.as_str(), "on" | "remote_apply" | "remote_write")
    }
}

impl<'a> DatabaseIdentity<'a> {
    pub(super) fn new(backend: &'a Backend) -> Self {
        Self { backend }
    }

    /// The database's identity now: `<system identifier>/<timeline>` (or `unknown` where the
    /// platform hides them; see the migration), as the lease statement reads it too.
    pub async fn current(&self) -> Result<String, StoreError> {
        dispatch!(self.backend, identity::current())
    }

    /// Records `identity` as the first one seen, unless one is recorded already; a first
    /// identity is no failover, so it counts as changed at the epoch.
    pub async fn record_first(&self, identity: &str) -> Result<(), StoreError> {
        dispatch!(self.backend, identity::record_first(identity))
    }

    /// Records a change of identity to `identity`, once: the first replica to see it sets
    /// `changed_at`, the others get that same moment back. A row that already names `identity`
    /// but changed longer than `grace` ago (recorded as a first identity by a replica that
    /// never saw the old one) is a change too: the caller saw the old identity. The upsert
    /// always updates, so that a caller that waited on another's row lock reads the row as that
    /// one left it, never an older snapshot.
    pub async fn record_change(
        &self,
        identity: &str,
        grace: std::time::Duration,
    ) -> Result<OffsetDateTime, StoreError> {
        dispatch!(self.backend, identity::record_change(identity, grace))
    }

    /// What the database promises about a commit surviving a failover.
    pub async fn durability(&self) -> Result<Durability, StoreError> {
        dispatch!(self.backend, identity::durability())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_named_standby_with_a_waiting_commit_is_synchronous() {
        let d = |names: &str, commit: &str| Durability {
            synchronous_standby_names: names.into(),
            synchronous_commit: commit.into(),
            can_fail_over: true,
        };
        assert!(d("ANY 1 (*)", "on").has_synchronous_standby());
        assert!(d("standby1", "remote_apply").has_synchronous_standby());
        assert!(!d("", "on").has_synchronous_standby());
        assert!(!d("standby1", "local").has_synchronous_standby());
        assert!(!d("standby1", "off").has_synchronous_standby());
    }
}
