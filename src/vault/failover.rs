//! Surviving a database that went back in time: a failover to an asynchronous standby that had
//! not received the last commits, or a restore. The vault relies on a committed rotation being
//! there at the next expiry; a database that lost it hands back the previous generation, whose
//! refresh token the provider has already retired, and presenting it again revokes the
//! customer's grant.
//!
//! * **Knowing which database this is.** The refresh lease statement reads the database's
//!   identity (system identifier and timeline) beside the one recorded in `database_identity`,
//!   and each replica also checks it every `failover.check_interval`. A difference is a change of
//!   database; the first replica to see it records it with the database's clock.
//! * **Rotations kept, then written back.** Each replica keeps the rotations it stored for
//!   `failover.rotation_window` (sealed, exactly as in the database, bounded in number). When it
//!   sees the database change, it writes back every one the database no longer has, fenced on
//!   the database being behind.
//! * **Refreshes wait for write-backs.** For `failover.grace` after a change (longer than the
//!   check interval, so every replica has looked), a refresh that has nothing of its own to
//!   write back does not present a token: callers get UNAVAILABLE `DATABASE_FAILOVER` with the
//!   time left, and a still valid access token is served meanwhile.
//! * **Never an older token.** A replica whose rotations or cache hold a newer generation than
//!   the row it leased writes its rotation back, or, holding none, reports the rotation lost
//!   (metric, log, and the connection marked `rotation_lost` so that no replica presents the
//!   spent token); it never refreshes from the older row.

use std::{
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

use moka::sync::Cache;

use super::{ConnectionKey, VaultError};
use crate::{
    config::FailoverSettings,
    metrics::RefreshCounters,
    store::{DatabaseSeen, NewTokens, Store},
};

/// What `token_vault_database_identity()` answers where the platform hides the system
/// identifier or the WAL position.
const UNKNOWN_IDENTITY: &str = "unknown";

/// A rotation this replica stored: where, and the sealed tokens as written.
#[derive(Clone)]
pub(super) struct Rotation {
    pub connection_id: i64,
    /// The grant the rotation belongs to: a write-back never lands on a newer authorization.
    pub authorized_at: time::OffsetDateTime,
    pub tokens: NewTokens,
}

/// What the database identity seen by a lease means for the refresh holding it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The same database as before, or a change long enough ago.
    Proceed,
    /// The database changed recently: write-backs may still be on their way.
    Grace { remaining: Duration },
}

pub(super) struct FailoverGuard {
    grace: Duration,
    /// The rotations this replica stored lately, by connection.
    rotations: Cache<ConnectionKey, Rotation>,
    /// The identity this replica saw last, from its checks and its leases.
    last_seen: Mutex<Option<String>>,
    /// Set when the database changed and cleared only once every kept rotation was written
    /// back or found not behind: a write-back that failed is tried again at every check.
    write_back_pending: std::sync::atomic::AtomicBool,
    /// Whether the database's identity was reported unknown already (said once).
    unknown_reported: std::sync::atomic::AtomicBool,
    counters: Arc<RefreshCounters>,
}

impl FailoverGuard {
    pub fn new(settings: &FailoverSettings, counters: Arc<RefreshCounters>) -> Self {
        Self {
            grace: settings.grace,
            // Least recently written goes first: the newest rotations are the ones a failover
            // loses, and the default admission policy could refuse exactly those when full.
            rotations: Cache::builder()
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .max_capacity(settings.max_rotations)
                .time_to_live(settings.rotation_window)
                .build(),
            last_seen: Mutex::new(None),
            write_back_pending: std::sync::atomic::AtomicBool::new(false),
            unknown_reported: std::sync::atomic::AtomicBool::new(false),
            counters,
        }
    }

    /// Keeps a rotation this replica just stored.
    pub fn remember(
        &self,
        key: &ConnectionKey,
        connection_id: i64,
        authorized_at: time::OffsetDateTime,
        tokens: &NewTokens,
    ) {
        self.rotations.insert(
            key.clone(),
            Rotation {
                connection_id,
                authorized_at,
                tokens: tokens.clone(),
            },
        );
    }

    /// This replica's rotation of `key` newer than `generation`, if it holds one.
    pub fn newer_rotation(&self, key: &ConnectionKey, generation: i64) -> Option<Rotation> {
        self.rotations
            .get(key)
            .filter(|rotation| rotation.tokens.generation > generation)
    }

    /// Judges the database a lease was taken on. A change seen here first is recorded, and
    /// this replica's rotations are written back at once.
    pub async fn judge(&self, store: &Store, seen: &DatabaseSeen) -> Result<Verdict, VaultError> {
        let previous = self.last_seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let recorded = seen.recorded.as_deref();
        // A change is what the table says, or what this replica saw itself.
        let changed =
            recorded.is_some_and(|r| r != seen.identity) || previous.as_deref().is_some_and(|p| p != seen.identity);
        let changed_at = if changed {
            let changed_at = store.identity().record_change(&seen.identity, self.grace).await?;
            tracing::warn!(was = ?recorded.or(previous.as_deref()), now = %seen.identity, "the database changed (a failover or a restore): it may have lost rotated refresh tokens; refreshes wait for write-backs");
            changed_at
        } else if recorded.is_none() {
            store.identity().record_first(&seen.identity).await?;
            time::OffsetDateTime::UNIX_EPOCH
        } else {
            seen.changed_at.unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        };
        self.saw(store, &seen.identity).await;
        // Compared, never subtracted: a first identity counts as changed at the epoch.
        let grace = time::Duration::try_from(self.grace).unwrap_or(time::Duration::MAX);
        match changed_at.checked_add(grace) {
            Some(grace_ends) if grace_ends > seen.now => Ok(Verdict::Grace {
                remaining: Duration::try_from(grace_ends - seen.now).unwrap_or(self.grace),
            }),
            _ => Ok(Verdict::Proceed),
        }
    }

    /// The periodic check: which database this is, and whether it changed since this replica
    /// last looked; a change is recorded and this replica's rotations written back.
    pub async fn check(&self, store: &Store) -> Result<(), VaultError> {
        let identity = store.identity().current().await?;
        if identity == UNKNOWN_IDENTITY && !self.unknown_reported.swap(true, Ordering::Relaxed) {
            tracing::warn!("this database does not say which one it is (pg_control_system() or pg_current_wal_lsn() is unavailable): a failover cannot be detected by its timeline, only by generations this replica has seen; prefer a synchronous standby (docs/deploy.md)");
        }
        let previous = self.last_seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match previous {
            None => store.identity().record_first(&identity).await?,
            Some(previous) if previous != identity => {
                store.identity().record_change(&identity, self.grace).await?;
                tracing::warn!(was = %previous, now = %identity, "the database changed (a failover or a restore): writing back the rotations it may have lost");
            }
            Some(_) => {}
        }
        self.saw(store, &identity).await;
        if self.write_back_pending.load(Ordering::Acquire) {
            self.write_back_everything(store).await;
        }
        Ok(())
    }

    /// Notes `identity` as the one seen; on a change from a known one, writes back every
    /// rotation this replica holds that the database no longer has.
    async fn saw(&self, store: &Store, identity: &str) {
        let changed = {
            let mut last = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
            let changed = last.as_deref().is_some_and(|l| l != identity);
            *last = Some(identity.to_owned());
            changed
        };
        if changed {
            self.counters.database_changes.fetch_add(1, Ordering::Relaxed);
            self.write_back_pending.store(true, Ordering::Release);
            self.write_back_everything(store).await;
        }
    }

    /// Writes back every kept rotation the database is behind on; the pending flag is cleared
    /// only if none failed.
    async fn write_back_everything(&self, store: &Store) {
        let (mut written, mut failed) = (0, 0);
        for (key, rotation) in self.rotations.iter() {
            match self.write_back(store, &key, &rotation).await {
                Ok(true) => written += 1,
                Ok(false) => {}
                Err(e) => {
                    failed += 1;
                    tracing::error!(tenant_id = %key.tenant(), provider = %key.provider(), error = %e, "could not write back a rotation the database lost; it is tried again at the next check");
                }
            }
        }
        if failed == 0 {
            self.write_back_pending.store(false, Ordering::Release);
        }
        tracing::warn!(written, failed, "rotations written back after the database changed");
    }

    /// Writes one rotation back if the database is behind on it.
    pub async fn write_back(
        &self,
        store: &Store,
        key: &ConnectionKey,
        rotation: &Rotation,
    ) -> Result<bool, VaultError> {
        let written = store
            .connections()
            .write_back(rotation.connection_id, rotation.authorized_at, &rotation.tokens)
            .await?;
        if written {
            self.counters.written_back.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(tenant_id = %key.tenant(), provider = %key.provider(), generation = rotation.tokens.generation, "wrote back a rotation the database had lost");
        }
        Ok(written)
    }

    /// Counts and logs a rotation the database lost that this replica saw but does not hold.
    pub fn lost(&self, key: &ConnectionKey, row_generation: i64, known_generation: i64) {
        self.counters.rotations_lost.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            tenant_id = %key.tenant(), provider = %key.provider(), row_generation, known_generation,
            "the database lost a rotation no replica wrote back: the stored refresh token was already used, so the connection needs a new authorization (a synchronous standby prevents this)"
        );
    }
}
