//! `keys status`: how many stored values each key id still protects, read from the framing of
//! every sealed value without decrypting any, so an operator can tell when a key can go.

use std::{collections::BTreeMap, fmt::Write as _};

use crate::{
    crypto::{sealed_key_id, KeyId, Keyring},
    store::{SealedColumn, Store, StoreError},
};

/// What a stored value's framing says protects it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protector {
    /// The key id framed into the value.
    Key(String),
    /// The framing is unreadable (truncated or corrupted): no key can open the value.
    Malformed,
}

/// Counts of stored values by protecting key and column.
#[derive(Debug, Clone, Default)]
pub struct KeyUsage {
    counts: BTreeMap<Protector, BTreeMap<SealedColumn, i64>>,
}

/// Reads the usage from the database: one grouped query, a handful of rows back.
pub async fn key_usage(store: &Store) -> Result<KeyUsage, StoreError> {
    let mut usage = KeyUsage::default();
    for group in store.sealed_values().count_by_header().await? {
        let protector = match sealed_key_id(&group.header) {
            Ok(id) => Protector::Key(id.to_owned()),
            Err(_) => Protector::Malformed,
        };
        *usage
            .counts
            .entry(protector)
            .or_default()
            .entry(group.column)
            .or_default() += group.count;
    }
    Ok(usage)
}

impl KeyUsage {
    /// Every value under `key_id`, in all columns.
    pub fn values_under(&self, key_id: &str) -> i64 {
        self.total(&Protector::Key(key_id.to_owned()))
    }

    /// Values whose framing can't be read.
    pub fn malformed(&self) -> i64 {
        self.total(&Protector::Malformed)
    }

    /// Every protector with its total.
    pub fn totals(&self) -> impl Iterator<Item = (&Protector, i64)> {
        self.counts.iter().map(|(p, by_column)| (p, by_column.values().sum()))
    }

    /// Values under keys other than `key_id` (malformed ones included): what a rewrap to
    /// `key_id` has left to do.
    pub fn values_not_under(&self, key_id: &str) -> i64 {
        self.totals()
            .filter(|(p, _)| **p != Protector::Key(key_id.to_owned()))
            .map(|(_, n)| n)
            .sum()
    }

    fn total(&self, protector: &Protector) -> i64 {
        self.counts.get(protector).map(|c| c.values().sum()).unwrap_or(0)
    }

    /// One row per key id (and one for unreadable framings), with the keyring's view of it;
    /// keys in the keyring that protect nothing are listed too: those are the ones that can be
    /// retired (or the freshly added active key). Key ids read from the database that are not
    /// valid ids are quoted and escaped.
    pub fn rows(&self, keyring: Option<&Keyring>) -> Vec<KeyUsageRow> {
        let row = |key_id: String, keyring_note: &'static str, by_column: Option<&BTreeMap<SealedColumn, i64>>| {
            let n = |c| by_column.and_then(|b| b.get(&c)).copied().unwrap_or(0);
            KeyUsageRow {
                key_id,
                total: by_column.map(|b| b.values().sum()).unwrap_or(0),
                access_token: n(SealedColumn::AccessToken),
                refresh_token: n(SealedColumn::RefreshToken),
                pkce_verifier: n(SealedColumn::PkceVerifier),
                keyring: keyring_note,
            }
        };
        let mut rows = Vec::new();
        for (protector, by_column) in &self.counts {
            rows.push(match protector {
                Protector::Key(id) => row(display_id(id), keyring_note(keyring, id), Some(by_column)),
                Protector::Malformed => row("<malformed>".to_owned(), "cannot be opened", Some(by_column)),
            });
        }
        for id in keyring.into_iter().flat_map(Keyring::key_ids) {
            if !self.counts.contains_key(&Protector::Key(id.as_str().to_owned())) {
                rows.push(row(id.to_string(), keyring_note(keyring, id.as_str()), None));
            }
        }
        rows
    }

    /// The key ids that protect at least one stored value but are not in `keyring`: values
    /// that cannot be opened until the key is back.
    pub fn missing_from(&self, keyring: &Keyring) -> Vec<(String, i64)> {
        self.totals()
            .filter_map(|(p, n)| match p {
                Protector::Key(id) if n > 0 && keyring.get(id).is_none() => Some((display_id(id), n)),
                _ => None,
            })
            .collect()
    }

    /// A table for operators, marking which ids the keyring has and which is active.
    pub fn render(&self, keyring: Option<&Keyring>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<34} {:>8} {:>14} {:>14} {:>14}  keyring",
            "key id", "total", "access_token", "refresh_token", "pkce_verifier"
        );
        for r in self.rows(keyring) {
            let _ = writeln!(
                out,
                "{:<34} {:>8} {:>14} {:>14} {:>14}  {}",
                r.key_id, r.total, r.access_token, r.refresh_token, r.pkce_verifier, r.keyring
            );
        }
        out
    }
}

/// One line of `keys status` (`--output json` prints these as they are).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyUsageRow {
    pub key_id: String,
    pub total: i64,
    pub access_token: i64,
    pub refresh_token: i64,
    pub pkce_verifier: i64,
    /// `active`, `decrypt-only`, `present`, `MISSING: …`, or `(keyring not loaded)`.
    pub keyring: &'static str,
}

fn display_id(id: &str) -> String {
    match KeyId::parse(id) {
        Ok(valid) => valid.to_string(),
        Err(_) => format!("{id:?}"),
    }
}

fn keyring_note(keyring: Option<&Keyring>, id: &str) -> &'static str {
    match keyring {
        None => "(keyring not loaded)",
        Some(ring) if ring.active().0.as_str() == id => "active",
        // Opens values, seals none: the first step of a rotation, or a key set aside.
        Some(ring) if ring.is_decrypt_only(id) => "decrypt-only",
        Some(ring) if ring.get(id).is_some() => "present",
        Some(_) => "MISSING: these values cannot be opened",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_marks_active_decrypt_only_and_present_keys() {
        let (_, old) = Keyring::generate("key-old");
        let (_, current) = Keyring::generate("key-current");
        let next = Keyring::generate_line("key-next", true).unwrap();
        let ring = Keyring::parse(&format!("{}{}{}", old.as_str(), current.as_str(), next.as_str()), None).unwrap();
        let table = KeyUsage::default().render(Some(&ring));
        let note = |id: &str| {
            table
                .lines()
                .find(|l| l.starts_with(id))
                .and_then(|l| l.split_whitespace().last())
                .unwrap_or_else(|| panic!("{id} not listed:\n{table}"))
                .to_owned()
        };
        assert_eq!(note("key-current"), "active");
        assert_eq!(note("key-next"), "decrypt-only");
        assert_eq!(note("key-old"), "present");
    }
}
