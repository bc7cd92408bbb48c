//! `GET /metrics` (`telemetry.metrics_listen`): scraped over HTTP after real work and parsed as
//! the Prometheus text exposition format. The instruments of the OTLP export are there with
//! their Prometheus types and unit suffixes, the counters moved by what the test did, no label
//! carries a tenant id or a secret; and every query of the chart's Grafana dashboard names only
//! series and labels that a real scrape has.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use token_vault::{
    config::{LogFormat, LogSettings, TelemetrySettings},
    proto,
};

use crate::helpers::{on_rows, spawn_app_with, TestApp, TestOptions};

/// One metric family: its `# TYPE`, `# HELP` and samples.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: String,
    samples: Vec<Sample>,
}

#[derive(Debug)]
struct Sample {
    /// The series name: the family's, or for a histogram with `_bucket`, `_sum`, `_count`.
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape, parsed strictly: a malformed line, or a sample before its family's `# TYPE`,
/// fails the test.
#[derive(Debug)]
struct Exposition {
    families: BTreeMap<String, Family>,
}

impl Exposition {
    fn parse(text: &str) -> Self {
        let mut families: BTreeMap<String, Family> = BTreeMap::new();
        for line in text.lines() {
            if line.trim().is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix("# ") {
                let mut parts = comment.splitn(3, ' ');
                let (keyword, name, rest) = (parts.next(), parts.next(), parts.next());
                match (keyword, name) {
                    (Some("TYPE"), Some(name)) => {
                        let kind = rest.expect("a type").to_owned();
                        assert!(
                            ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind.as_str()),
                            "unknown type in {line:?}"
                        );
                        families.entry(name.to_owned()).or_default().kind = kind;
                    }
                    (Some("HELP"), Some(name)) => {
                        families.entry(name.to_owned()).or_default().help = rest.unwrap_or("").to_owned();
                    }
                    _ => {}
                }
                continue;
            }
            let sample = parse_sample(line);
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|suffix| sample.name.strip_suffix(suffix))
                .find(|base| families.get(*base).is_some_and(|f| f.kind == "histogram"))
                .unwrap_or(&sample.name)
                .to_owned();
            let family = families
                .get_mut(&family)
                .filter(|f| !f.kind.is_empty())
                .unwrap_or_else(|| panic!("sample before its # TYPE: {line:?}"));
            family.samples.push(sample);
        }
        Self { families }
    }

    fn family(&self, name: &str, kind: &str) -> &Family {
        let family = self
            .families
            .get(name)
            .unwrap_or_else(|| panic!("no family {name} in {:?}", self.families.keys()));
        assert_eq!(family.kind, kind, "the type of {name}");
        assert!(!family.help.is_empty(), "{name} has a description");
        family
    }

    /// The sum of `series`' samples whose labels include `matching`; 0 when there are none.
    fn sum(&self, series: &str, matching: &[(&str, &str)]) -> f64 {
        self.families
            .values()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == series)
            .filter(|s| {
                matching
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Every series name with the label names its samples carry.
    fn series(&self) -> BTreeMap<&str, BTreeSet<&str>> {
        let mut series: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for sample in self.families.values().flat_map(|f| &f.samples) {
            series
                .entry(&sample.name)
                .or_default()
                .extend(sample.labels.keys().map(String::as_str));
        }
        series
    }
}

/// `name{label="value",...} value [timestamp]`, with the format's escapes in label values.
fn parse_sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value: {line:?}"));
    let name = &line[..name_end];
    assert!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name in {line:?}"
    );
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        loop {
            let (start, c) = chars.next().unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
            if c == '}' {
                rest = &inner[start + 1..];
                break;
            }
            if c == ',' {
                continue;
            }
            let eq = inner[start..]
                .find('=')
                .unwrap_or_else(|| panic!("label without =: {line:?}"))
                + start;
            let key = &inner[start..eq];
            assert!(
                key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "bad label name {key:?} in {line:?}"
            );
            while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                chars.next();
            }
            assert_eq!(
                chars.next().map(|(_, c)| c),
                Some('"'),
                "unquoted label value: {line:?}"
            );
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        other => panic!("bad escape {other:?} in {line:?}"),
                    },
                    Some(c) => value.push(c),
                    None => panic!("unterminated label value: {line:?}"),
                }
            }
            assert!(
                labels.insert(key.to_owned(), value).is_none(),
                "repeated label: {line:?}"
            );
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().unwrap_or_else(|| panic!("no value: {line:?}"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
    };
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().expect("a timestamp in milliseconds");
    }
    assert!(fields.next().is_none(), "trailing fields: {line:?}");
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

async fn scrape(app: &TestApp) -> Exposition {
    let addr = app.metrics_addr.expect("the metrics listener is configured");
    let response = reqwest::get(format!("http://{addr}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "the text exposition format, not {content_type}"
    );
    Exposition::parse(&response.text().await.unwrap())
}

/// A vault serving `/metrics`, telemetry initialised as `main` does from the same settings.
async fn vault_with_metrics() -> (TestApp, token_vault::telemetry::TelemetryGuard) {
    let guard = token_vault::telemetry::init(
        &LogSettings {
            format: LogFormat::Text,
            level: "warn".into(),
        },
        &TelemetrySettings {
            otlp_endpoint: None,
            service_name: "token-vault-test".into(),
            metrics_interval: Duration::from_secs(60),
            connection_count_interval: Duration::from_millis(100),
            metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        },
    )
    .unwrap();
    let app = spawn_app_with(TestOptions {
        extra_toml: "[telemetry]\nmetrics_listen = \"127.0.0.1:0\"\nconnection_count_interval = \"100ms\"\n".into(),
        ..Default::default()
    })
    .await;
    (app, guard)
}

/// Connects a tenant, gets its token twice (database, then cache), asks for a tenant that has
/// none, and reports the token rejected while another replica (by hand) holds the refresh
/// lease for a moment: a lease wait, then a refresh. Returns the scrape once the connection
/// gauge has caught up.
async fn exercise(app: &TestApp) -> Exposition {
    app.connect_tenant("acme").await;
    let token = app.get_token("acme").await.unwrap().access_token;
    app.get_token("acme").await.unwrap();
    assert!(app.get_token("nobody").await.is_err());
    let lease = app.rows.sql(
        "UPDATE connections SET refresh_lease_holder = gen_random_uuid(),
                                refresh_lease_until = now() + interval '1 second'",
        "UPDATE connections SET refresh_lease_holder = randomblob(16),
                refresh_lease_until = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+1 seconds')",
    );
    on_rows!(app.rows, |pool| sqlx::query(lease)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected());
    let refreshed = app
        .client
        .clone()
        .get_access_token(proto::GetAccessTokenRequest {
            tenant_id: "acme".into(),
            rejected_access_token: token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    assert_ne!(refreshed, token, "the rejected token was refreshed");
    assert_eq!(app.provider.stats().refresh_requests, 1);
    // The connection count is read from the database every 100 ms.
    for _ in 0..100 {
        let scraped = scrape(app).await;
        if scraped.sum("tokenvault_connections", &[("status", "active")]) == 1.0 {
            return scraped;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("tokenvault_connections{{status=\"active\"}} never showed the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_in_the_prometheus_format_with_the_otlp_instruments_and_units() {
    let (app, _guard) = vault_with_metrics().await;
    let before = scrape(&app).await;
    assert_eq!(before.sum("tokenvault_access_token_requests_total", &[]), 0.0);
    let after = exercise(&app).await;

    // Every instrument of src/metrics.rs, named as the OpenTelemetry Prometheus conventions
    // name them: dots to underscores, `_total` on counters, the unit (`s`) as `_seconds`,
    // `1` on a gauge as `_ratio`, annotations (`{request}`) dropped.
    for (name, kind) in [
        ("tokenvault_access_token_requests_total", "counter"),
        ("tokenvault_provider_request_duration_seconds", "histogram"),
        ("tokenvault_refresh_lease_wait_duration_seconds", "histogram"),
        ("tokenvault_refreshes_total", "counter"),
        ("tokenvault_refresh_provider_requests_total", "counter"),
        ("tokenvault_refresh_unsaved_rotation_retries_total", "counter"),
        ("tokenvault_database_failover_total", "counter"),
        ("tokenvault_database_synchronous_standby_ratio", "gauge"),
        ("tokenvault_keepalive_refreshes_total", "counter"),
        ("tokenvault_retention_purged_total", "counter"),
        ("tokenvault_connections", "gauge"),
    ] {
        after.family(name, kind);
    }

    // The calls this test made, by outcome and source.
    let requests = "tokenvault_access_token_requests_total";
    assert_eq!(after.sum(requests, &[]), 4.0, "four GetAccessToken calls");
    assert_eq!(after.sum(requests, &[("outcome", "ok"), ("source", "database")]), 1.0);
    assert_eq!(after.sum(requests, &[("outcome", "ok"), ("source", "cache")]), 1.0);
    assert_eq!(after.sum(requests, &[("outcome", "ok"), ("source", "refresh")]), 1.0);
    assert_eq!(after.sum(requests, &[("rejected_token", "true")]), 1.0);
    assert_eq!(after.sum(requests, &[("outcome", "CONNECTION_NOT_FOUND")]), 1.0);

    assert_eq!(
        after.sum("tokenvault_refreshes_total", &[("outcome", "succeeded")]),
        1.0
    );
    assert_eq!(after.sum("tokenvault_refreshes_total", &[("outcome", "failed")]), 0.0);
    assert_eq!(after.sum("tokenvault_refresh_provider_requests_total", &[]), 1.0);
    assert_eq!(after.sum("tokenvault_refresh_unsaved_rotation_retries_total", &[]), 0.0);
    assert_eq!(
        after.sum("tokenvault_refresh_lease_wait_duration_seconds_count", &[]),
        1.0,
        "the refresh waited once for the lease held by hand"
    );
    assert!(
        after.sum("tokenvault_refresh_lease_wait_duration_seconds_sum", &[]) > 0.0,
        "a wait of some time, in seconds"
    );

    let latency = "tokenvault_provider_request_duration_seconds";
    for grant_type in ["authorization_code", "refresh_token"] {
        let labels = [
            ("provider", "understory"),
            ("grant_type", grant_type),
            ("outcome", "ok"),
        ];
        assert_eq!(after.sum(&format!("{latency}_count"), &labels), 1.0, "{grant_type}");
        // Cumulative buckets up to +Inf, which holds every request.
        let inf = [labels.as_slice(), &[("le", "+Inf")]].concat();
        assert_eq!(after.sum(&format!("{latency}_bucket"), &inf), 1.0, "{grant_type}");
    }
    let buckets: Vec<f64> = after.families[latency]
        .samples
        .iter()
        .filter(|s| {
            s.name.ends_with("_bucket") && s.labels.get("grant_type").map(String::as_str) == Some("refresh_token")
        })
        .map(|s| s.value)
        .collect();
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]),
        "buckets are cumulative: {buckets:?}"
    );
    assert_eq!(after.sum("tokenvault_connections", &[("status", "active")]), 1.0);

    // No tenant id, token or client secret in any label.
    for sample in after.families.values().flat_map(|f| &f.samples) {
        for value in sample.labels.values() {
            assert!(
                !value.contains("acme") && !value.contains("nobody"),
                "a tenant id as a label: {sample:?}"
            );
            for secret in app.provider.issued_secrets().iter().chain([&app.client_secret]) {
                assert!(
                    !value.contains(secret.as_str()),
                    "a secret in a label of {}",
                    sample.name
                );
            }
        }
    }

    // Only /metrics is served, and only to GET and HEAD.
    let addr = app.metrics_addr.unwrap();
    let client = reqwest::Client::new();
    let other = client.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(other.status(), 404);
    let post = client.post(format!("http://{addr}/metrics")).send().await.unwrap();
    assert_eq!(post.status(), 405);
}

/// The identifiers of a PromQL expression: names of metrics, functions, labels and keywords.
/// String literals (label values) and `$variables` are skipped.
fn identifiers(expr: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut chars = expr.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '$' => {
                while chars
                    .peek()
                    .is_some_and(|(_, c)| c.is_ascii_alphanumeric() || *c == '_')
                {
                    chars.next();
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut end = i + c.len_utf8();
                while let Some((j, c)) = chars.peek().copied() {
                    if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                        end = j + c.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                found.push((end, expr[i..end].to_owned()));
            }
            _ => {}
        }
    }
    found
}

/// Labels a Prometheus scrape adds to every series of a target (the vault does not export them).
const TARGET_LABELS: &[&str] = &[
    "namespace",
    "pod",
    "job",
    "instance",
    "service",
    "container",
    "endpoint",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_series_and_labels_the_vault_exports() {
    let (app, _guard) = vault_with_metrics().await;
    let scraped = exercise(&app).await;
    let series = scraped.series();

    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/helm/token-vault/dashboards/token-vault.json"
    );
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    collect_queries(&dashboard, &mut queries);
    assert!(queries.len() >= 10, "the dashboard's queries were found: {queries:?}");

    let mut charted = BTreeSet::new();
    for query in &queries {
        let names: Vec<(usize, String)> = identifiers(query)
            .into_iter()
            .filter(|(_, id)| id.starts_with("tokenvault"))
            .collect();
        assert!(!names.is_empty(), "a query that names no vault metric: {query}");
        let mut labels_available: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
        for (_, name) in &names {
            let labels = series.get(name.as_str()).unwrap_or_else(|| {
                panic!(
                    "{name} (in {query}) is not exported; the scrape has {:?}",
                    series.keys()
                )
            });
            labels_available.extend(labels.iter().copied());
            charted.insert(name.clone());
        }
        // Label names: in `{…}` selectors (before an operator) and `by (…)` groupings.
        for label in label_names(query) {
            assert!(
                labels_available.contains(label.as_str()),
                "label {label} (in {query}) is on none of its series: {labels_available:?}"
            );
        }
    }
    // The six subjects the dashboard is for.
    for name in [
        "tokenvault_access_token_requests_total",
        "tokenvault_refreshes_total",
        "tokenvault_provider_request_duration_seconds_bucket",
        "tokenvault_connections",
        "tokenvault_refresh_unsaved_rotation_retries_total",
        "tokenvault_refresh_lease_wait_duration_seconds_count",
    ] {
        assert!(charted.contains(name), "the dashboard charts {name}");
    }
}

/// The label names a query matches on (`{name="…"}`, `{name=~"…"}`) or groups by
/// (`by (a, b)`, `without (…)`), and those of `label_values(metric, label)`.
fn label_names(query: &str) -> Vec<String> {
    let ids = identifiers(query);
    let mut labels = Vec::new();
    for (k, (end, id)) in ids.iter().enumerate() {
        let after = query[*end..].trim_start();
        let matcher = ["=~", "!=", "!~"].iter().any(|op| after.starts_with(op))
            || (after.starts_with('=') && !after.starts_with("=="));
        if matcher {
            labels.push(id.clone());
        } else if (id == "by" || id == "without") && after.starts_with('(') {
            let close = after.find(')').expect("a closed grouping");
            labels.extend(after[1..close].split(',').map(|l| l.trim().to_owned()));
        } else if id == "label_values" && k + 2 < ids.len() {
            labels.push(ids[k + 2].1.clone());
        }
    }
    labels
}

/// Every PromQL string of a dashboard: panel targets' `expr` and query variables' `query`.
fn collect_queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(q)) => out.push(q.clone()),
                    ("query", serde_json::Value::String(q)) if q.contains("tokenvault") => out.push(q.clone()),
                    _ => collect_queries(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_queries(v, out)),
        _ => {}
    }
}

/// The connection gauge follows a connection through the vault's own statements, not only the
/// table's rows written by hand (connection_counts.rs): connected, it is active; deleted through
/// the API, it is disconnected, and `active` reads 0 rather than leaving the exposition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_gauge_follows_a_connection_deleted_through_the_api() {
    let (app, _guard) = vault_with_metrics().await;
    app.connect_tenant("acme").await;
    let connections = |scraped: &Exposition, status: &str| -> Option<f64> {
        scraped.families.get("tokenvault_connections").and_then(|family| {
            family
                .samples
                .iter()
                .find(|s| s.labels.get("status").map(String::as_str) == Some(status))
                .map(|s| s.value)
        })
    };
    let mut scraped = scrape(&app).await;
    for _ in 0..100 {
        if connections(&scraped, "active") == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        scraped = scrape(&app).await;
    }
    assert_eq!(
        connections(&scraped, "active"),
        Some(1.0),
        "the connection, counted active"
    );

    app.client
        .clone()
        .delete_connection(proto::DeleteConnectionRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for _ in 0..100 {
        scraped = scrape(&app).await;
        if connections(&scraped, "disconnected") == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        connections(&scraped, "disconnected"),
        Some(1.0),
        "deleted, it is disconnected"
    );
    assert_eq!(connections(&scraped, "active"), Some(0.0), "and active reads 0");
}
