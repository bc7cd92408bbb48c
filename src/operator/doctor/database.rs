//! The database answers, and its schema is exactly this binary's migrations: none pending
//! (`token-vault migrate` applies them), none unknown (a newer release migrated it: run that
//! release), none changed or failed part-way.

use super::Check;
use crate::{
    config::Settings,
    store::{probe_connection, PoolOptions, Store},
};

/// Adds the `database` and `migrations` checks; the store when the database answered.
pub async fn check(settings: &Settings, checks: &mut Vec<Check>) -> Option<Store> {
    if let Err(e) = probe_connection(&settings.database.url, settings.database.acquire_timeout).await {
        let mut detail = format!("does not answer: {}", error_chain(&e));
        if settings.database.create_if_missing && detail.contains("does not exist") {
            detail.push_str(" (database.create_if_missing: `token-vault migrate` or the first start creates it)");
        }
        checks.push(Check::fail("database", detail));
        checks.push(Check::skip("migrations", "the database was not reached"));
        return None;
    }
    let store = match Store::connect_lazy(
        &settings.database.url,
        &PoolOptions {
            max_connections: 1,
            acquire_timeout: settings.database.acquire_timeout,
        },
    ) {
        Ok(store) => store,
        Err(e) => {
            checks.push(Check::fail("database", format!("database.url is not usable: {e}")));
            checks.push(Check::skip("migrations", "the database was not reached"));
            return None;
        }
    };
    checks.push(Check::pass("database", "answers"));
    checks.push(match store.migrations().status().await {
        Err(e) => Check::fail("migrations", format!("cannot read the applied migrations: {e}")),
        Ok(status) if status.is_current() => Check::pass(
            "migrations",
            format!("all {} migrations of this release applied", status.applied),
        ),
        Ok(status) => {
            let mut problems = Vec::new();
            if !status.pending.is_empty() {
                let versions: Vec<String> = status.pending.iter().map(|(v, d)| format!("{v} {d}")).collect();
                problems.push(format!(
                    "{} pending ({}); run `token-vault migrate`",
                    status.pending.len(),
                    versions.join(", ")
                ));
            }
            if !status.unknown.is_empty() {
                problems.push(format!(
                    "{} unknown to this release (versions {:?}): the database was migrated by a newer release",
                    status.unknown.len(),
                    status.unknown
                ));
            }
            if !status.changed.is_empty() {
                problems.push(format!(
                    "versions {:?} were applied from a different script than this release's",
                    status.changed
                ));
            }
            if !status.failed.is_empty() {
                problems.push(format!("versions {:?} failed part-way", status.failed));
            }
            Check::fail("migrations", problems.join("; "))
        }
    });
    Some(store)
}

/// The error with its causes: sqlx's I/O error says "connection refused" only in its source.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
