//! The TLS files the vault serves with (`tls.cert_file`, `tls.key_file`, `tls.client_ca_file`)
//! are readable, hold what they should, and no certificate in them expires within
//! `EXPIRY_WARNING` (14 days: two weekly renewal runs of a certificate manager that failed,
//! with time left to act before callers are refused). Then the listener's own loader reads
//! them together, as `serve` would (the key matches the certificate, the CA parses).

use std::{path::Path, time::Duration};

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use super::Check;
use crate::{
    auth::validity,
    config::{Mode, TlsSettings},
};

/// A certificate expiring sooner than this fails the check.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

pub fn check(tls: &TlsSettings, mode: Mode, now: OffsetDateTime) -> Vec<Check> {
    let mut checks = Vec::new();
    if let Some(path) = &tls.cert_file {
        checks.push(certificates("tls.cert_file", path, now));
    }
    if let Some(path) = &tls.key_file {
        checks.push(private_key("tls.key_file", path));
    }
    if let Some(path) = &tls.client_ca_file {
        checks.push(certificates("tls.client_ca_file", path, now));
    }
    // Together, as `serve` loads them: the key matches the certificate, the CA parses.
    if tls.cert_file.is_some() && tls.key_file.is_some() {
        checks.push(match crate::auth::tls::load(tls, true) {
            Ok(_) => Check::pass("tls", "the listener accepts the certificate, its key and the client CA"),
            Err(e) => Check::fail("tls", format!("the listener refuses the files: {e}")),
        });
    }
    if checks.is_empty() {
        let detail = "not configured: the vault serves plaintext gRPC";
        checks.push(match mode {
            Mode::Production => Check::warn(
                "tls",
                format!("{detail} (expected only behind a TLS-terminating proxy or mesh)"),
            ),
            Mode::Development => Check::pass("tls", detail),
        });
    }
    checks
}

fn certificates(name: &str, path: &Path, now: OffsetDateTime) -> Check {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return Check::fail(name, format!("cannot read {}: {e}", path.display())),
    };
    let mut soonest: Option<OffsetDateTime> = None;
    for (i, cert) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let cert = match cert {
            Ok(c) => c,
            Err(e) => {
                return Check::fail(
                    name,
                    format!("{}: certificate {} is not valid PEM: {e}", path.display(), i + 1),
                )
            }
        };
        let period = match validity(&cert) {
            Ok(v) => v,
            Err(e) => return Check::fail(name, format!("{}: certificate {} {e}", path.display(), i + 1)),
        };
        if period.not_before > now {
            return Check::fail(
                name,
                format!(
                    "{}: certificate {} is not valid before {}",
                    path.display(),
                    i + 1,
                    date(period.not_before)
                ),
            );
        }
        soonest = Some(soonest.map_or(period.not_after, |s| s.min(period.not_after)));
    }
    let Some(not_after) = soonest else {
        return Check::fail(name, format!("{} holds no PEM certificate", path.display()));
    };
    let left = not_after - now;
    if left <= time::Duration::ZERO {
        Check::fail(name, format!("{}: expired on {}", path.display(), date(not_after)))
    } else if left < EXPIRY_WARNING {
        Check::fail(
            name,
            format!(
                "{}: expires in {} on {} (less than {} days left); renew it",
                path.display(),
                format_args!("{}d {}h", left.whole_days(), left.whole_hours() % 24),
                date(not_after),
                EXPIRY_WARNING.as_secs() / 86_400
            ),
        )
    } else {
        Check::pass(
            name,
            format!(
                "{}: valid until {} ({} days)",
                path.display(),
                date(not_after),
                left.whole_days()
            ),
        )
    }
}

fn private_key(name: &str, path: &Path) -> Check {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return Check::fail(name, format!("cannot read {}: {e}", path.display())),
    };
    // The error never quotes the file: it is a private key.
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(_) => Check::pass(name, format!("{}: a readable private key", path.display())),
        Err(_) => Check::fail(name, format!("{} holds no readable PEM private key", path.display())),
    }
}

fn date(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}
