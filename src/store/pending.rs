//! Pending authorizations: begun by BeginAuthorization, consumed once by CompleteAuthorization.
//! Bounded: at most `max_open` open per tenant and provider (the oldest give way), deleted when
//! consumed, and swept once expired.

use time::OffsetDateTime;

use super::{Backend, StoreError};
use crate::connection_key::ConnectionKey;

pub struct PendingAuthorizations<'a> {
    backend: &'a Backend,
}

pub struct NewPendingAuthorization<'a> {
    pub state_hash: &'a [u8],
    pub key: &'a ConnectionKey,
    pub redirect_uri: &'a str,
    pub scopes: &'a [String],
    pub pkce_verifier: Option<Vec<u8>>,
    pub expires_at: OffsetDateTime,
    /// Open (unconsumed, unexpired) states this tenant and provider may have, this one included.
    pub max_open: u32,
}

#[derive(Debug)]
pub struct PendingAuthorization {
    pub state_hash: Vec<u8>,
    pub tenant_id: String,
    pub provider: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub pkce_verifier: Option<Vec<u8>>,
}

impl<'a> PendingAuthorizations<'a> {
    pub(super) fn new(backend: &'a Backend) -> Self {
        Self { backend }
    }

    /// Stores a new state and, in the same transaction, deletes the tenant's oldest open states
    /// beyond `max_open`; returns how many were deleted. Giving way rather than refusing: a
    /// customer who clicks "connect" again and again keeps getting working states, and only the
    /// oldest, most likely abandoned ones stop working (INVALID_STATE on their callback).
    pub async fn insert(&self, new: NewPendingAuthorization<'_>) -> Result<u64, StoreError> {
        dispatch!(self.backend, pending::insert(new))
    }

    /// Deletes the state and returns it, if it exists, is unused and has not expired. One
    /// statement, so two concurrent callbacks with the same state can't both succeed. Nothing
    /// of a used state is kept: a repeated callback finds no row and gets INVALID_STATE, the
    /// answer it got when used rows were kept (`consumed_at` is only set by older versions).
    pub async fn consume(&self, state_hash: &[u8]) -> Result<Option<PendingAuthorization>, StoreError> {
        dispatch!(self.backend, pending::consume(state_hash))
    }

    /// Deletes the states that can no longer be completed: expired, or used (rows of older
    /// versions, which kept them); returns how many.
    pub async fn delete_finished(&self) -> Result<u64, StoreError> {
        dispatch!(self.backend, pending::delete_finished())
    }
}
