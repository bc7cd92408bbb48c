//! Results of the reliability tests, written as JSON under `target/reliability/` so that
//! `scripts/reliability` can turn them into the table in `docs/reliability.md`.

use serde_json::json;

pub struct FaultReport<'a> {
    pub fault: &'a str,
    pub happened: String,
    pub token_requests: usize,
    pub tenants_lost: usize,
    pub callers_saw: String,
}

pub fn record(slug: &str, report: FaultReport<'_>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/reliability");
    std::fs::create_dir_all(&dir).unwrap();
    let body = json!({
        "fault": report.fault,
        "happened": report.happened,
        "token_requests": report.token_requests,
        "tenants_lost": report.tenants_lost,
        "callers_saw": report.callers_saw,
    });
    std::fs::write(
        dir.join(format!("{slug}.json")),
        serde_json::to_string_pretty(&body).unwrap(),
    )
    .unwrap();
}

/// Counts outcomes: "300 × token" or "2 × UNAVAILABLE, 298 × token".
pub fn summarize<T>(results: &[Result<T, tonic::Status>]) -> String {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for r in results {
        let key = match r {
            Ok(_) => "token".to_string(),
            Err(s) => format!("{:?}", s.code()),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(k, n)| format!("{n} × {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}
