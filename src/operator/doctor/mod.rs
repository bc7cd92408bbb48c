//! `token-vault doctor`: checks a deployment from the machine (or pod) it runs on, one line per
//! check, pass or fail with the reason; the exit status is non-zero when any check fails.
//!
//! The configuration is loaded first (nothing else can be checked without it); then the TLS
//! files (`tls_files`), the database and its migrations (`database`), the keyring against the
//! stored values (`keyring`), and each provider's endpoints and clock (`providers`, `clock`).
//! Nothing is written: no migration is applied, no keyring generated, no credential sent.

mod clock;
mod database;
mod keyring;
mod providers;
mod tls_files;

use std::{fmt::Write as _, path::Path, process::ExitCode};

use serde::Serialize;
use time::OffsetDateTime;

use super::{print_json, Output};
use crate::config::Settings;

pub use clock::MAX_CLOCK_SKEW;
pub use tls_files::EXPIRY_WARNING;

/// One check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    /// Works, but not as production should (e.g. a plain-http provider in development mode).
    Warn,
    Fail,
    /// Not checked because an earlier check failed (that one says why).
    Skip,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked, e.g. `database`, `tls.cert_file`, `provider understory token_endpoint`.
    pub name: String,
    pub outcome: Outcome,
    /// Why it passed or failed; never a secret.
    pub detail: String,
}

impl Check {
    fn new(name: impl Into<String>, outcome: Outcome, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            outcome,
            detail: detail.into(),
        }
    }
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(name, Outcome::Pass, detail)
    }
    fn warn(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(name, Outcome::Warn, detail)
    }
    fn fail(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(name, Outcome::Fail, detail)
    }
    fn skip(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(name, Outcome::Skip, detail)
    }
}

/// The whole report, as `--output json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// No check failed.
    pub ok: bool,
    pub checks: Vec<Check>,
}

/// Runs every check against the configuration `config` (plus TOKEN_VAULT_* variables).
pub async fn diagnose(config: Option<&Path>) -> Report {
    let mut checks = Vec::new();
    match load(config) {
        Err(detail) => checks.push(Check::fail("config", detail)),
        Ok(settings) => {
            checks.push(Check::pass(
                "config",
                format!(
                    "parsed and valid ({} mode, {} provider(s))",
                    mode_name(&settings),
                    settings.providers.len()
                ),
            ));
            let now = OffsetDateTime::now_utc();
            checks.extend(tls_files::check(&settings.tls, settings.mode, now));
            let store = database::check(&settings, &mut checks).await;
            checks.push(keyring::check(&settings, store.as_ref()).await);
            checks.extend(providers::check(&settings).await);
        }
    }
    Report {
        ok: checks.iter().all(|c| c.outcome != Outcome::Fail),
        checks,
    }
}

/// `doctor` as a command: prints the report, fails if any check failed.
pub async fn run(config: Option<&Path>, output: Output) -> anyhow::Result<ExitCode> {
    let report = diagnose(config).await;
    match output {
        Output::Json => print_json(&report)?,
        Output::Text => print!("{}", render(&report)),
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Loads and validates the settings, including what is only read when the vault starts: the
/// providers (client secret files) and the callers (`auth.policy_file`).
fn load(config: Option<&Path>) -> Result<Settings, String> {
    // Loading validates every provider's settings as far as they go without the issuer's
    // metadata; the providers check does the discovery.
    let settings = Settings::load(config).map_err(|e| e.to_string())?;
    settings.auth_callers().map_err(|e| e.to_string())?;
    Ok(settings)
}

fn mode_name(settings: &Settings) -> &'static str {
    match settings.mode {
        crate::config::Mode::Production => "production",
        crate::config::Mode::Development => "development",
    }
}

fn render(report: &Report) -> String {
    let mut out = String::new();
    for c in &report.checks {
        let label = match c.outcome {
            Outcome::Pass => "PASS",
            Outcome::Warn => "WARN",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "SKIP",
        };
        let _ = writeln!(out, "{label}  {:<40} {}", c.name, c.detail);
    }
    let failed = report.checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
    let _ = writeln!(
        out,
        "{}",
        if failed == 0 {
            "all checks passed".to_owned()
        } else {
            format!("{failed} check(s) failed")
        }
    );
    out
}
