//! `keys rewrap`: re-seals every stored value that is not under the active key, with the same
//! associated data it had, so that old keys can be retired. Safe to run while the vault
//! serves and to run again: it goes in short batches (see `store::SealedValues`), skips rows
//! that are busy, and never overwrites a value that changed after it was read.

use std::collections::BTreeMap;

use crate::{
    crypto::{sealed_header, Aad, Keyring, Purpose, SealError},
    store::{Binding, Position, SealedColumn, SealedRow, Store, StoreError},
};

#[derive(Debug, Clone)]
pub struct RewrapOptions {
    /// Rows per transaction (row locks are held for one batch only).
    pub batch_size: u32,
}

impl Default for RewrapOptions {
    fn default() -> Self {
        Self { batch_size: 500 }
    }
}

/// A value that could not be re-sealed. It is left as it was.
#[derive(Debug, Clone)]
pub struct RewrapFailure {
    pub column: SealedColumn,
    pub tenant_id: String,
    pub provider: String,
    pub error: SealError,
}

/// What one rewrap pass did.
#[derive(Debug, Default)]
pub struct RewrapReport {
    /// Values re-sealed under the active key, per column.
    pub rewritten: BTreeMap<SealedColumn, u64>,
    /// Values that changed between read and write (a refresh or a new authorization wrote
    /// them, under the active key): left to the newer write.
    pub changed_meanwhile: u64,
    pub failures: Vec<RewrapFailure>,
}

impl RewrapReport {
    pub fn total_rewritten(&self) -> u64 {
        self.rewritten.values().sum()
    }
}

/// One pass over every sealed column. Rows locked by another transaction at the moment are
/// skipped, so afterwards check `keys status` (or run it again) before retiring a key.
pub async fn rewrap(store: &Store, keyring: &Keyring, options: &RewrapOptions) -> Result<RewrapReport, StoreError> {
    let (active, _) = keyring.active();
    let keep = sealed_header(active);
    let limit = i64::from(options.batch_size.max(1));
    let mut report = RewrapReport::default();
    for column in SealedColumn::ALL {
        let mut position = Position::start(column);
        loop {
            let mut failures = Vec::new();
            let batch = store
                .sealed_values()
                .rewrap_batch(&position, &keep, limit, |row| match reseal(keyring, column, row) {
                    Ok(sealed) => Some(sealed),
                    Err(error) => {
                        failures.push(RewrapFailure {
                            column,
                            tenant_id: row.tenant_id.clone(),
                            provider: row.provider.clone(),
                            error,
                        });
                        None
                    }
                })
                .await?;
            for f in &failures {
                tracing::error!(column = column.name(), tenant_id = %f.tenant_id, provider = %f.provider, error = %f.error, "a stored value could not be re-sealed; it is left as it was");
            }
            report.failures.extend(failures);
            if batch.selected == 0 {
                break;
            }
            *report.rewritten.entry(column).or_default() += batch.rewritten;
            report.changed_meanwhile += batch.changed_meanwhile;
            tracing::info!(
                column = column.name(),
                rewritten = batch.rewritten,
                "rewrap batch committed"
            );
            position = batch.next;
        }
    }
    Ok(report)
}

/// Opens a value with its own associated data and seals it again under the active key, bound
/// to exactly the same data.
fn reseal(keyring: &Keyring, column: SealedColumn, row: &SealedRow) -> Result<Vec<u8>, SealError> {
    let (tenant, provider) = (row.tenant_id.as_str(), row.provider.as_str());
    let aad = match (column, &row.binding) {
        (SealedColumn::AccessToken, Binding::Generation(g)) => {
            Aad::for_generation(Purpose::AccessToken, tenant, provider, *g)
        }
        (SealedColumn::RefreshToken, Binding::Generation(g)) => {
            Aad::for_generation(Purpose::RefreshToken, tenant, provider, *g)
        }
        (SealedColumn::PkceVerifier, Binding::StateHash(hash)) => Aad::for_pending_verifier(tenant, provider, hash),
        // The store pairs each column with its binding; anything else is a programming error,
        // reported like a value that can't be opened rather than by a panic.
        _ => return Err(SealError::Malformed("unexpected binding for the column")),
    };
    let plaintext = keyring.open(&aad, &row.sealed)?;
    keyring.seal(&aad, &plaintext)
}
