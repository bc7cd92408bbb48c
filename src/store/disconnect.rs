//! DeleteConnection's two statements: taking the refresh exclusion on a connection in any
//! status but disconnected, and the wipe that disconnects it (one transaction, fenced on the
//! generation and the lease).

use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use super::{Connections, CurrentRefreshToken, StoreError};
use crate::connection_key::ConnectionKey;

/// What taking the exclusion for a disconnect found.
pub enum DisconnectLease {
    /// No connection for this tenant and provider.
    NotFound,
    /// Already disconnected, at this time; nothing was taken.
    AlreadyDisconnected { disconnected_at: Option<OffsetDateTime> },
    /// Another holder (a refresh) has an unexpired lease; look again later.
    Busy,
    /// The lease is ours: the connection at `generation`, and its current refresh token if it
    /// holds one.
    Taken {
        connection_id: i64,
        generation: i64,
        refresh_token: Option<CurrentRefreshToken>,
    },
}

impl Connections<'_> {
    /// Takes the refresh lease for `holder`, whatever the status (a connection that needs a
    /// new authorization is disconnected too) except disconnected, if nobody holds an
    /// unexpired lease; reads the current refresh token in the same round trip. The same
    /// column as a refresh's lease (`try_acquire_lease`), so a disconnect and a refresh
    /// exclude each other across every replica.
    pub async fn take_disconnect_lease(
        &self,
        key: &ConnectionKey,
        holder: Uuid,
        ttl: Duration,
    ) -> Result<DisconnectLease, StoreError> {
        dispatch!(self.backend, disconnect::take_disconnect_lease(key, holder, ttl))
    }

    /// Disconnects the connection `holder` leased at `generation`, in one transaction: the
    /// generation moves on (a lapsed writer that still holds tokens is fenced out), the status
    /// becomes `disconnected` (`deleted`), the access token and every refresh token's
    /// ciphertext are wiped (the rows stay as history), the lease and the keep-alive are
    /// cleared, `last_error` says why the revocation failed (`None`: it did not), and a
    /// `disconnected` event with `event_reason` is written. `None` if the fence failed (the
    /// lease lapsed and someone else changed the connection): take the lease again.
    pub async fn disconnect(
        &self,
        connection_id: i64,
        generation: i64,
        holder: Uuid,
        last_error: Option<&str>,
        event_reason: &str,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        dispatch!(
            self.backend,
            disconnect::disconnect(connection_id, generation, holder, last_error, event_reason)
        )
    }
}
