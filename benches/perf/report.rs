//! The results table: each scenario's vault figure, its floor from the same run, the ratio and
//! the target. Printed always; written to docs/performance.md by a full run.

use std::{fmt::Write as _, path::Path, process::Command, time::Duration};

use prost::Message as _;
use token_vault::proto;

use crate::{
    load::{FirstAnswer, LoadResult, Pair},
    statements::StatementTimes,
    DatabaseLatencies, Plan, Proc,
};

pub struct Row {
    pub scenario: String,
    pub vault: String,
    pub floor: String,
    pub ratio: String,
    pub target: String,
    pub met: Option<bool>,
}

pub struct Report {
    short: bool,
    /// Only some scenarios ran: the table goes to target/, not to docs/.
    partial: bool,
    rows: Vec<Row>,
    notes: Vec<String>,
    /// How the load client ran, for the report's opening.
    method: String,
}

fn ms(v: f64) -> String {
    format!("{v:.2} ms")
}

/// The value at quantile `q` (0.5 is the median) of `values`, in any order.
fn quantile<T: Copy + Ord>(values: &[T], q: f64) -> Option<T> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let last = sorted.len().checked_sub(1)?;
    Some(sorted[(last as f64 * q).round() as usize])
}

/// A comparison in pairs of slices, summed up: the median pair's ratio with the spread of the
/// pairs, and each side pooled over all its slices, which the alternation exposed to the same
/// stretches of the machine. The pooled req/s' ratio is shown too: it weighs a fast stretch's
/// slices more, so it can differ from the median pair's by a few hundredths, and a reader
/// should see both.
struct Sliced {
    median_ratio: f64,
    /// The pairs' spread, as `median_pair` words it.
    spread: String,
    /// The median ratio of the pairs in which the vault's side went first, and of those in
    /// which the floor's did, when there are several of each: a slice's place in its pair
    /// can lean its ratio, and these show by how much.
    by_order: Option<(f64, f64)>,
    vault: LoadResult,
    floor: LoadResult,
}

impl Sliced {
    fn of(pairs: &[Pair]) -> Self {
        let ratios: Vec<f64> = pairs.iter().map(Pair::ratio).collect();
        let (median, spread) = median_pair(&ratios);
        let median_of = |vault_first: bool| {
            let mut of_order: Vec<f64> = pairs
                .iter()
                .filter(|pair| pair.vault_first == Some(vault_first))
                .map(Pair::ratio)
                .collect();
            of_order.sort_by(f64::total_cmp);
            // With an odd number of pairs one order has an even count: the mean of its two
            // middle ratios, as taking either one would lean that order's median.
            let n = of_order.len();
            (n > 2).then(|| (of_order[(n - 1) / 2] + of_order[n / 2]) / 2.0)
        };
        Self {
            median_ratio: ratios[median],
            spread,
            by_order: median_of(true).zip(median_of(false)),
            vault: LoadResult::pooled(pairs.iter().map(|pair| &pair.vault)),
            floor: LoadResult::pooled(pairs.iter().map(|pair| &pair.floor)),
        }
    }

    fn p99_ratio(&self) -> f64 {
        self.vault.percentile_ms(0.99) / self.floor.percentile_ms(0.99)
    }

    fn ratio_text(&self) -> String {
        let by_order = match self.by_order {
            Some((vault_first, floor_first)) => {
                format!("; median with the vault first {vault_first:.3} x, with the floor first {floor_first:.3} x")
            }
            None => String::new(),
        };
        format!(
            "{:.3} x req/s; all slices pooled {:.3} x{by_order}; p99 {:.2} x{}",
            self.median_ratio,
            self.vault.rps() / self.floor.rps(),
            self.p99_ratio(),
            self.spread
        )
    }
}

/// A load run's req/s and latency percentiles, as the table shows them.
fn describe_load(r: &LoadResult) -> String {
    format!(
        "{:.0} req/s, p50 {} p90 {} p99 {} max {}",
        r.rps(),
        ms(r.percentile_ms(0.5)),
        ms(r.percentile_ms(0.9)),
        ms(r.percentile_ms(0.99)),
        ms(r.max_ms())
    )
}

/// Of back-to-back vault/floor pairs given by their ratios (in run order), the index of the
/// median pair (the upper one of an even count, as in `quantile`) and, for more than one pair,
/// the text that shows their spread beside it: every ratio for a few pairs, the middle half and
/// the range for many.
fn median_pair(ratios: &[f64]) -> (usize, String) {
    let mut order: Vec<usize> = (0..ratios.len()).collect();
    order.sort_by(|a, b| ratios[*a].total_cmp(&ratios[*b]));
    let listed = if ratios.len() > 7 {
        let at = |q: f64| ratios[order[((order.len() - 1) as f64 * q).round() as usize]];
        format!(
            " (median of {} pairs; middle half {:.3} to {:.3}, all {:.3} to {:.3})",
            ratios.len(),
            at(0.25),
            at(0.75),
            at(0.0),
            at(1.0)
        )
    } else if ratios.len() > 1 {
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
        format!(" (median of {} pairs, in run order: {})", ratios.len(), each.join(", "))
    } else {
        String::new()
    };
    (order[order.len() / 2], listed)
}

/// One stampede burst against the vault, and the same against the gRPC floor.
pub struct Burst {
    pub answers: Vec<(Duration, Result<String, tonic::Code>)>,
    pub floor_answers: Vec<(Duration, Result<String, tonic::Code>)>,
    pub refreshes: u64,
}

impl Report {
    pub fn new(plan: &Plan) -> Self {
        let shape = &plan.shape;
        let slicing = &plan.slicing;
        let seconds = shape.measure.as_secs();
        let slices = format!(
            "the vault and its floor loaded in turn over connections that stay open, opened \
             one to each in turn: a {} s warm-up of both at once, then {} pair{} of slices of {} s \
             measured after {} ms of load, alternating which goes first",
            shape.warm_up.as_secs(),
            slicing.pairs,
            if slicing.pairs == 1 { "" } else { "s" },
            slicing.measure.as_secs_f64(),
            slicing.settle.as_millis(),
        );
        let h2load = if plan.rounds == 1 {
            format!("one vault run and one floor run of {seconds} s")
        } else {
            format!(
                "the median of {} back-to-back pairs of a vault run and a floor run of {seconds} s \
                 each, alternating which goes first, shown with the pair it comes from",
                plan.rounds
            )
        };
        let method = format!(
            "`benches/perf`: {} HTTP/2 connections, {} requests in flight, every gRPC status \
             checked; each throughput comparison is {slices}; the ratio checked is the median \
             pair's, shown with the spread of all pairs and with the ratio of all slices pooled, \
             and req/s and latencies are each side's over all its slices, so that both sides of a \
             ratio saw the same stretches of a machine whose speed drifts; h2load's cross-check \
             is {h2load}",
            shape.connections, shape.in_flight,
        );
        Self {
            short: plan.short,
            partial: plan.only.is_some(),
            rows: Vec::new(),
            notes: Vec::new(),
            method,
        }
    }

    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    fn push(&mut self, row: Row) {
        println!(
            "{:<60} vault {:<32} floor {:<32} ratio {:<16} target {:<28} {}",
            row.scenario,
            row.vault,
            row.floor,
            row.ratio,
            row.target,
            match row.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "-",
            }
        );
        self.rows.push(row);
    }

    /// Two processes of the same floor compared as the vault is compared with its floor: no
    /// target, the ratio and its pairs' spread are what the machine (or the method) puts into a ratio.
    pub fn resolution_row(&mut self, scenario: &str, pairs: &[Pair]) {
        self.sliced_row(
            scenario,
            &Sliced::of(pairs),
            "reported: 1 x, the spread is the noise".into(),
            None,
        );
    }

    /// A floor doing what the design requires, compared with a barer floor as the vault is: no
    /// target of its own. Its ratio is the most that `bounded`'s row can reach without dropping
    /// work the design requires, so where it sits under that row's target, the target is out of
    /// reach in this run and the row beside it is what the vault adds.
    pub fn bound_row(&mut self, scenario: &str, pairs: &[Pair], bounded: &str) {
        let target = format!("reported: the most \"{bounded}\" can reach");
        self.sliced_row(scenario, &Sliced::of(pairs), target, None);
    }

    /// Throughput against a floor (higher is better), and p99 against the floor's (noted, and
    /// checked when `max_p99_ratio` is given), from `pairs` of slices taken in turn
    /// ([`Sliced`]): the median pair's ratio is the one checked.
    pub fn ratio_row(
        &mut self,
        scenario: &str,
        pairs: &[Pair],
        floor_name: &str,
        min_ratio: f64,
        max_p99_ratio: Option<f64>,
    ) {
        let sliced = Sliced::of(pairs);
        let mut met = sliced.median_ratio >= min_ratio;
        let mut target = format!(">= {min_ratio:.2} x {floor_name} req/s");
        if let Some(max) = max_p99_ratio {
            met &= sliced.p99_ratio() <= max;
            target.push_str(&format!("; p99 <= {max:.1} x"));
        }
        self.sliced_row(scenario, &sliced, target, Some(met));
    }

    /// A row of a sliced comparison: each side's load over all its slices and the pairs' ratio,
    /// with the row's own target and verdict.
    fn sliced_row(&mut self, scenario: &str, sliced: &Sliced, target: String, met: Option<bool>) {
        self.push(Row {
            scenario: scenario.into(),
            vault: describe_load(&sliced.vault),
            floor: describe_load(&sliced.floor),
            ratio: sliced.ratio_text(),
            target,
            met,
        });
    }

    /// What a new caller connection costs over mutual TLS, from the TCP connect to the first
    /// GetAccessToken answered, against the same through the TLS floor: both run the same rustls
    /// handshake (`negotiated`), so the vault should cost no more than the floor beyond its own
    /// steps (the accept loop's slot and deadline, recognising the caller by its certificate,
    /// the audit count). Judged on the medians; p99 noted.
    pub fn new_connection_row(&mut self, mode: &str, vault: &[FirstAnswer], floor: &[FirstAnswer], negotiated: &str) {
        const MAX_MEDIAN_RATIO: f64 = 1.2;
        let at = |v: &[FirstAnswer], q: f64, pick: fn(&FirstAnswer) -> Duration| {
            let times: Vec<Duration> = v.iter().map(pick).collect();
            quantile(&times, q).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
        };
        let answered = |a: &FirstAnswer| a.answered;
        let connected = |a: &FirstAnswer| a.connected;
        let describe = |v: &[FirstAnswer]| {
            format!(
                "first answer p50 {} p90 {} p99 {} max {}; connected (TCP, TLS, HTTP/2) p50 {}",
                ms(at(v, 0.5, answered)),
                ms(at(v, 0.9, answered)),
                ms(at(v, 0.99, answered)),
                ms(at(v, 1.0, answered)),
                ms(at(v, 0.5, connected)),
            )
        };
        let ratio = at(vault, 0.5, answered) / at(floor, 0.5, answered);
        let p99_ratio = at(vault, 0.99, answered) / at(floor, 0.99, answered);
        self.push(Row {
            scenario: format!(
                "new caller connection over mutual TLS, {mode} ({} each; full handshakes, {negotiated}): connect to first GetAccessToken answered",
                vault.len()
            ),
            vault: describe(vault),
            floor: describe(floor),
            ratio: format!("{ratio:.3} x median; p99 {p99_ratio:.2} x"),
            target: format!("median <= {MAX_MEDIAN_RATIO:.1} x TLS floor's"),
            met: Some(ratio <= MAX_MEDIAN_RATIO),
        });
    }

    /// The keeper's claim statement among `indexed` connections with `due` due: its latency
    /// per batch (µs, sorted) and whether its plan is a scan of the partial index. `keeper`:
    /// the row's name ("keeper", or with the store it ran on).
    #[allow(clippy::too_many_arguments)]
    pub fn keeper_claim_row(
        &mut self,
        keeper: &str,
        indexed: i64,
        due: u64,
        batch: i64,
        claim_us: &[u32],
        index_scan: bool,
        plan: &[String],
    ) {
        let at = |q| quantile(claim_us, q).map_or(0.0, |us| f64::from(us) / 1000.0);
        self.push(Row {
            scenario: format!("{keeper}: claim {batch} due among {indexed} connections ({due} due)"),
            vault: format!(
                "p50 {} p99 {} per claim ({} claims)",
                ms(at(0.5)),
                ms(at(0.99)),
                claim_us.len()
            ),
            floor: "-".into(),
            ratio: if index_scan {
                "index scan".into()
            } else {
                "NOT an index scan".into()
            },
            target: "a range scan of connections_keepalive_due".into(),
            met: Some(index_scan),
        });
        self.note(format!(
            "{keeper} claim plan: {}",
            plan.join(" / ").split_whitespace().collect::<Vec<_>>().join(" ")
        ));
    }

    /// One refresh path's row. `vault_us`: each refreshing call's latency through the vault;
    /// `floor_us`: the same call against the provider floor (a server that makes the one token
    /// request and answers), taken alternately with the vault's; `bare`: the path's own store
    /// statements from a bare client, taken alternately with both (`statements::refresh_once`);
    /// `direct_us`: the token request sent straight to the provider; `database`: bare one-row
    /// statements, for context. Latencies sorted, in microseconds.
    #[allow(clippy::too_many_arguments)]
    pub fn refresh_row(
        &mut self,
        path: &str,
        vault_us: &[u32],
        floor_us: &[u32],
        bare: &[StatementTimes],
        direct_us: &[u32],
        database: &DatabaseLatencies,
        delay: Duration,
    ) {
        let at = |v: &[u32], p: f64| quantile(v, p).map_or(f64::NAN, f64::from) / 1000.0;
        let delay_ms = delay.as_secs_f64() * 1000.0;
        let over = |v: &[u32], p: f64| at(v, p) - delay_ms;
        // The vault's own time: what it adds to the same gRPC call beyond the token request
        // every server must make for an expired token.
        let own = at(vault_us, 0.5) - at(floor_us, 0.5);
        // What the invariants make the database do on this path, priced by the path's own
        // statements in this run: the lease (returning the row and the refresh token) and the
        // new tokens (three rows), each committed durably on a database that has just been
        // idle (a caller's arrival, the provider's delay), and on a miss the row's read first.
        let sorted = |times: &mut dyn Iterator<Item = u32>| {
            let mut v: Vec<u32> = times.collect();
            v.sort_unstable();
            v
        };
        let required = at(&sorted(&mut bare.iter().map(StatementTimes::total)), 0.5);
        let reads = sorted(&mut bare.iter().filter_map(|t| t.read));
        let (leases, stores) = (
            sorted(&mut bare.iter().map(|t| t.lease)),
            sorted(&mut bare.iter().map(|t| t.store)),
        );
        let steps = if reads.is_empty() {
            format!("the lease {}, the store {}", ms(at(&leases, 0.5)), ms(at(&stores, 0.5)))
        } else {
            format!(
                "the read {}, the lease {}, the store {}",
                ms(at(&reads, 0.5)),
                ms(at(&leases, 0.5)),
                ms(at(&stores, 0.5))
            )
        };
        self.push(Row {
            scenario: format!("refresh: token expired, one caller, {path} ({} samples)", vault_us.len()),
            vault: format!(
                "latency over the {} ms delay: median {} p90 {} max {}",
                delay.as_millis(),
                ms(over(vault_us, 0.5)),
                ms(over(vault_us, 0.9)),
                ms(over(vault_us, 1.0))
            ),
            floor: format!(
                "provider floor over the delay: median {} p90 {}; the path's statements from a bare client ({} samples, medians): {steps}; for context (medians): the token request sent directly {}; a durable one-row commit {} back to back, {} after {} ms idle",
                ms(over(floor_us, 0.5)),
                ms(over(floor_us, 0.9)),
                bare.len(),
                ms(over(direct_us, 0.5)),
                ms(at(&database.commit, 0.5)),
                ms(at(&database.commit_after_idle, 0.5)),
                delay.as_millis(),
            ),
            ratio: format!(
                "vault's own time: median {}; the path's bare statements: median {}; {:.2} x",
                ms(own),
                ms(required),
                own / required
            ),
            // The invariants need these statements whatever the vault does, and what they cost
            // follows the machine's disk: the vault's own time is judged against them.
            target: "vault's own time (median) <= 1.15 x the bare statements of its path".into(),
            met: Some(own <= 1.15 * required),
        });
    }

    /// Refresh throughput: `fleet` expired connections asked for by `calls` calls at
    /// `in_flight`, against the bare client's refreshes, from `pairs` of back-to-back rounds.
    #[allow(clippy::too_many_arguments)]
    pub fn refresh_throughput_row(
        &mut self,
        fleet: usize,
        calls: usize,
        in_flight: usize,
        pairs: &[Pair],
        provider_requests: u64,
        reused: u64,
        delay: Duration,
    ) {
        let ratios: Vec<f64> = pairs.iter().map(Pair::ratio).collect();
        let (median, listed) = median_pair(&ratios);
        let Pair { vault, floor, .. } = &pairs[median];
        let ratio = ratios[median];
        let latencies = |r: &LoadResult| {
            format!(
                "p50 {} p90 {} p99 {} max {}",
                ms(r.percentile_ms(0.5)),
                ms(r.percentile_ms(0.9)),
                ms(r.percentile_ms(0.99)),
                ms(r.max_ms())
            )
        };
        // What the provider's delay alone allows at this concurrency (Little's law).
        let bound = in_flight as f64 / delay.as_secs_f64();
        self.push(Row {
            scenario: format!(
                "refresh throughput: {fleet} connections expired together, {calls} calls at {in_flight} in flight (every {}th tenant by {} callers at once)",
                crate::FLEET_SHARED,
                crate::FLEET_SHARED_CALLERS
            ),
            vault: format!(
                "{:.0} refreshes/s ({fleet} in {:.2} s); per call {}; {provider_requests} provider requests over {} rounds, {reused} refresh tokens presented twice",
                vault.rps(),
                vault.seconds,
                latencies(vault),
                pairs.len(),
            ),
            floor: format!(
                "{:.0} refreshes/s; per refresh {} (a durable commit, the token request, a durable commit); the provider's {} ms delay alone allows {bound:.0}/s at {in_flight} in flight",
                floor.rps(),
                latencies(floor),
                delay.as_millis(),
            ),
            ratio: format!("{ratio:.3} x refreshes/s{listed}"),
            target: ">= 0.80 x the bare client's refreshes/s and >= 1000 refreshes/s; one provider request per tenant; no refresh token presented twice".into(),
            met: Some(ratio >= 0.80 && vault.rps() >= 1000.0 && provider_requests as usize == fleet * pairs.len() && reused == 0),
        });
    }

    /// The refresh throughput split in two: the vault against its own statements run from a
    /// bare client (`statements.rs`), and those statements against the bare floor. Each ratio
    /// is the median over the rounds, each round's three runs taken back to back.
    pub fn refresh_statements_row(&mut self, fleet: usize, pairs: &[Pair], statements: &[LoadResult]) {
        let over_statements: Vec<f64> = pairs
            .iter()
            .zip(statements)
            .map(|(p, s)| p.vault.rps() / s.rps())
            .collect();
        let statements_over_floor: Vec<f64> = pairs
            .iter()
            .zip(statements)
            .map(|(p, s)| s.rps() / p.floor.rps())
            .collect();
        let (median, listed) = median_pair(&over_statements);
        let (floor_median, floor_listed) = median_pair(&statements_over_floor);
        let ratio = over_statements[median];
        let run = &statements[median];
        self.push(Row {
            scenario: format!(
                "refresh throughput against the vault's own statements: {fleet} expired connections refreshed by a bare client running the vault's store statements (read, lease, token request, store)"
            ),
            vault: format!("{:.0} refreshes/s", pairs[median].vault.rps()),
            floor: format!(
                "{:.0} refreshes/s; per refresh p50 {} p99 {}; these statements against the bare client's one-row commits: {:.3} x{floor_listed}",
                run.rps(),
                ms(run.percentile_ms(0.5)),
                ms(run.percentile_ms(0.99)),
                statements_over_floor[floor_median],
            ),
            ratio: format!("{ratio:.3} x refreshes/s{listed}"),
            target: ">= 0.80 x the vault's own statements (the honest target beside the row above; see findings)".into(),
            met: Some(ratio >= 0.80),
        });
    }

    /// Stampede bursts: each must make one provider request and hand every caller the same
    /// token; the slowest caller is compared, as the median over the bursts, with the
    /// provider's delay plus 1.5 x the median of the same bursts' slowest caller against the
    /// gRPC floor.
    pub fn stampede_row(&mut self, bursts: &[Burst], delay: Duration) {
        let slowest = |answers: &[(Duration, Result<String, tonic::Code>)]| {
            answers.iter().map(|(d, _)| *d).max().unwrap_or_default()
        };
        let vault_slowest: Vec<Duration> = bursts.iter().map(|b| slowest(&b.answers)).collect();
        let floor_slowest: Vec<Duration> = bursts.iter().map(|b| slowest(&b.floor_answers)).collect();
        let errors: usize = bursts
            .iter()
            .flat_map(|b| &b.answers)
            .filter(|(_, r)| r.is_err())
            .count();
        let floor_errors: usize = bursts
            .iter()
            .flat_map(|b| &b.floor_answers)
            .filter(|(_, r)| r.is_err())
            .count();
        let one_token_each = bursts.iter().all(|b| {
            let tokens: std::collections::HashSet<_> = b.answers.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
            tokens.len() == 1
        });
        let requests: Vec<u64> = bursts.iter().map(|b| b.refreshes).collect();
        let median = |v: &[Duration]| quantile(v, 0.5).unwrap_or_default();
        let (vault_median, floor_median) = (median(&vault_slowest), median(&floor_slowest));
        let budget = delay + floor_median.mul_f64(1.5);
        let list = |v: &[Duration]| {
            v.iter()
                .map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let callers = bursts.first().map_or(0, |b| b.answers.len());
        self.push(Row {
            scenario: format!(
                "stampede: {callers} concurrent callers, one expired tenant ({} bursts)",
                bursts.len()
            ),
            vault: format!(
                "provider requests per burst: {requests:?}; one distinct token per burst: {}; {errors} errors; slowest caller median {} (bursts in run order: {} ms)",
                if one_token_each { "yes" } else { "no" },
                ms(vault_median.as_secs_f64() * 1000.0),
                list(&vault_slowest),
            ),
            floor: format!(
                "provider delay {} ms; the same bursts against the gRPC floor: slowest caller median {} ({} ms; {floor_errors} errors)",
                delay.as_millis(),
                ms(floor_median.as_secs_f64() * 1000.0),
                list(&floor_slowest),
            ),
            ratio: format!(
                "slowest - delay: {}; budget delay + 1.5 x floor: {}",
                ms(vault_median.saturating_sub(delay).as_secs_f64() * 1000.0),
                ms(budget.as_secs_f64() * 1000.0)
            ),
            target: "1 request per burst; median slowest caller <= delay + 1.5 x the gRPC floor's".into(),
            met: Some(
                requests.iter().all(|r| *r == 1) && errors == 0 && one_token_each && vault_median <= budget,
            ),
        });
    }

    /// `points`: (distinct tokens asked for so far, RSS) once the cache of `cache_entries` is
    /// full, then after each doubling of the distinct tokens asked for; `repeats`: RSS after each
    /// sweep of the same tokens, twice the cache's worth. Bounded means the last doubling grew
    /// RSS by less than a tenth of what caching all of its new tokens would cost at the measured
    /// per-token rate (an unbounded cache grows by the whole of it), and the second half of the
    /// sweeps sits less than a tenth of the cache's own cost above the first half.
    #[allow(clippy::too_many_arguments)]
    pub fn scale_row(
        &mut self,
        stored: u64,
        startup_empty: Duration,
        startup_full: Duration,
        cache_entries: u64,
        rss_start: u64,
        half: (u64, u64),
        points: &[(u64, u64)],
        sweep: u64,
        repeats: &[u64],
    ) {
        let mib = |b: f64| format!("{:.1} MiB", b / 1048576.0);
        let median = |v: &[u64]| quantile(v, 0.5).map_or(f64::NAN, |bytes| bytes as f64);
        // The cache's cost in steady state: the median RSS over the repeated sweeps, each of
        // which leaves the cache full, less RSS at start; a median of six readings rather than
        // the one after the first fill, so that one reading's swing does not set the yardstick.
        let rss_full_cache = median(repeats);
        let cache_cost = (rss_full_cache - rss_start as f64).max(0.0);
        let per_token = cache_cost / cache_entries as f64;
        let per_100k = per_token * 100_000.0;
        // Beyond the token itself: what the cache's entry, its key and the allocator add, from
        // the cost since start (which includes what the process grows by under any load) and
        // from the growth between a half-full and a full cache (which does not).
        let token = crate::seed::ACCESS_TOKEN_BYTES as f64;
        let overhead = per_token - token;
        let slope_overhead = match points.first() {
            Some(&(full, rss_full)) if full > half.0 => {
                (rss_full as f64 - half.1 as f64) / (full - half.0) as f64 - token
            }
            _ => f64::NAN,
        };
        let (last_growth, unbounded_growth) = match points {
            [.., before, last] => (last.1 as f64 - before.1 as f64, (last.0 - before.0) as f64 * per_token),
            _ => (f64::NAN, f64::NAN),
        };
        // A trend across the repeated sweeps, robust to their swings: the median of the second
        // half against the median of the first.
        let (first_half, second_half) = repeats.split_at(repeats.len() / 2);
        let repeat_growth = median(second_half) - median(first_half);
        let bounded = last_growth < unbounded_growth * 0.10 && repeat_growth < cache_cost * 0.10;
        let startup_ok =
            startup_full <= Duration::from_secs(1) && startup_full <= startup_empty + Duration::from_millis(250);
        let curve = points
            .iter()
            .map(|(tokens, rss)| format!("{} after {tokens}", mib(*rss as f64)))
            .collect::<Vec<_>>()
            .join(", ");
        self.push(Row {
            scenario: format!("scale: {stored} stored connections, cache of {cache_entries}"),
            vault: format!(
                "start-up to SERVING {} ms; RSS {} at start, +{} per 100k cached {token:.0}-byte tokens: {overhead:.0} bytes per entry beyond the token ({slope_overhead:.0} bytes from half to full cache); {} after {}, {curve} distinct tokens; then {} after each of {} sweeps of the same {sweep}",
                startup_full.as_millis(),
                mib(rss_start as f64),
                mib(per_100k),
                mib(half.1 as f64),
                half.0,
                repeats.iter().map(|r| mib(*r as f64)).collect::<Vec<_>>().join(", "),
                repeats.len(),
            ),
            floor: format!("start-up on an empty database {} ms", startup_empty.as_millis()),
            ratio: format!(
                "{:.2} x start-up; last doubling grew RSS {} of {} unbounded ({:.0} %); the repeated sweeps' second half {} against their first (medians; {:.0} % of the cache's {})",
                startup_full.as_secs_f64() / startup_empty.as_secs_f64(),
                mib(last_growth),
                mib(unbounded_growth),
                100.0 * last_growth / unbounded_growth,
                mib(repeat_growth),
                100.0 * repeat_growth / cache_cost,
                mib(cache_cost),
            ),
            target: "<= 1 s, not growing; memory bounded: the last doubling of distinct tokens grows RSS by < 10 % of what caching them would cost, and the repeated sweeps' second half by < 10 % of the cache's cost (bytes per entry: the memory row, against its floor)".into(),
            met: Some(startup_ok && bounded),
        });
    }

    /// The cache's memory against a vault whose cache is tiny, driven the same way: each
    /// process's median RSS over its sweeps less its RSS at start; the difference, per cached
    /// token, less the token itself, is what an entry costs beyond the token.
    pub fn memory_floor_row(
        &mut self,
        cache_entries: u64,
        (vault_start, vault_sweeps): (u64, &[u64]),
        (floor_cache, floor_start, floor_sweeps): (u64, u64, &[u64]),
    ) {
        let mib = |b: f64| format!("{:.1} MiB", b / 1048576.0);
        let median = |v: &[u64]| quantile(v, 0.5).map_or(f64::NAN, |bytes| bytes as f64);
        let vault_growth = median(vault_sweeps) - vault_start as f64;
        let floor_growth = median(floor_sweeps) - floor_start as f64;
        let token = crate::seed::ACCESS_TOKEN_BYTES as f64;
        let cached = (cache_entries - floor_cache) as f64;
        let overhead = (vault_growth - floor_growth) / cached - token;
        self.push(Row {
            scenario: format!("memory per cached token: a cache of {cache_entries} against one of {floor_cache}, the same fill and sweeps"),
            vault: format!(
                "RSS {} at start, median {} over {} sweeps: +{}",
                mib(vault_start as f64),
                mib(median(vault_sweeps)),
                vault_sweeps.len(),
                mib(vault_growth)
            ),
            floor: format!(
                "RSS {} at start, median {} over {} sweeps: +{}",
                mib(floor_start as f64),
                mib(median(floor_sweeps)),
                floor_sweeps.len(),
                mib(floor_growth)
            ),
            ratio: format!("{overhead:.0} bytes per entry beyond the {token:.0}-byte token"),
            target: "<= 512 bytes per entry beyond the token".into(),
            met: Some(overhead <= 512.0),
        });
    }

    /// The cross-check with an independent load generator, when it is installed.
    pub async fn h2load(&mut self, vault: &Proc, floor: &Proc, tenant: &str, plan: &Plan) {
        if Command::new("h2load").arg("--version").output().is_err() {
            self.note("h2load cross-check skipped: h2load is not installed (apt-get install nghttp2-client)".into());
            return;
        }
        let request = proto::GetAccessTokenRequest {
            tenant_id: tenant.into(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(request.len() as u32).to_be_bytes());
        frame.extend_from_slice(&request);
        let path = std::env::temp_dir().join(format!("token-vault-bench-frame-{}", std::process::id()));
        std::fs::write(&path, frame).unwrap();
        let seconds = plan.shape.measure.as_secs().max(1).to_string();
        let run = |addr: std::net::SocketAddr| {
            let out = Command::new("h2load")
                .args(["-c", "4", "-m", "16", "-D", &seconds, "--warm-up-time=1"])
                .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
                .arg("-d")
                .arg(&path)
                .arg(format!("http://{addr}/tokenvault.v1.TokenVault/GetAccessToken"))
                .output()
                .expect("h2load runs");
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let rps = text
                .lines()
                .find(|l| l.starts_with("finished in"))
                .and_then(|l| l.split(", ").nth(1))
                .and_then(|s| s.trim_end_matches(" req/s").parse::<f64>().ok());
            let failed = text
                .lines()
                .find(|l| l.starts_with("requests:"))
                .map(|l| l.contains(" 0 failed, 0 errored"))
                .unwrap_or(false);
            (rps, failed)
        };
        // Back-to-back pairs, alternating which goes first, as for the load client's rows.
        let mut pairs = Vec::new();
        let mut clean = true;
        for round in 0..plan.rounds {
            let ((f, f_clean), (v, v_clean)) = if round % 2 == 0 {
                let f = run(floor.target.addr);
                (f, run(vault.target.addr))
            } else {
                let v = run(vault.target.addr);
                (run(floor.target.addr), v)
            };
            clean &= f_clean && v_clean;
            match (v, f) {
                (Some(v), Some(f)) => pairs.push((v, f)),
                _ => {
                    let _ = std::fs::remove_file(&path);
                    self.note("h2load cross-check: could not read h2load's output".into());
                    return;
                }
            }
        }
        let _ = std::fs::remove_file(&path);
        let ratios: Vec<f64> = pairs.iter().map(|(v, f)| v / f).collect();
        let (median, listed) = median_pair(&ratios);
        let (v, f) = pairs[median];
        self.push(Row {
            scenario: "hot path, cross-checked with h2load (HTTP status only)".into(),
            vault: format!("{v:.0} req/s"),
            floor: format!("{f:.0} req/s"),
            ratio: format!("{:.3} x req/s{listed}", v / f),
            target: ">= 0.90 x gRPC floor req/s".into(),
            met: Some(v / f >= 0.90 && clean),
        });
    }

    /// Criterion's figures for sealing and opening, if `cargo bench --bench crypto` ran first.
    pub fn crypto_rows(&mut self) {
        let root = target_dir().join("criterion");
        for (id, what) in [("seal_access_token", "seal"), ("open_access_token", "open")] {
            let file = root.join(id).join("new/estimates.json");
            let estimate = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["mean"]["point_estimate"].as_f64());
            match estimate {
                Some(ns) => self.push(Row {
                    scenario: format!("crypto: {what} a 900-byte access token (criterion mean)"),
                    vault: format!("{:.2} µs", ns / 1000.0),
                    floor: "-".into(),
                    ratio: "-".into(),
                    target: "reported".into(),
                    met: None,
                }),
                None => self.note(format!(
                    "crypto: no criterion estimate at {} (run `cargo bench --bench crypto`)",
                    file.display()
                )),
            }
        }
    }

    pub fn finish(self) {
        let mut md = String::new();
        let machine = machine();
        let _ = writeln!(md, "# Performance\n");
        let _ = writeln!(
            md,
            "Generated by `./scripts/bench` (full run) on {} — {machine}.\n\n\
             Every figure is measured in the same run as its floor, with the same load client \
             ({}), on the same machine. The vault runs \
             as its release binary in its own process, logging as in a container (JSON lines at info, \
             to /dev/null); each floor is a process serving the same proto with \
             tonic's default server settings (the vault's HTTP/2 keep-alive, with a cost per frame, its \
             stream cap and its call timeout, whose timer is made only for a call that waits, are not \
             the floor's): the gRPC floor answers \
             GetAccessToken with a constant, the database \
             floor with one indexed SELECT (tenant, provider) of a sealed token row through sqlx (on Postgres, \
             in the vault's own pool, which does not ping a connection on its return); the TLS \
             floor is the gRPC floor over mutual TLS with the vault's rustls settings and the same \
             certificate files; the floor doing the design's own work per miss reads with the vault's \
             statement, unseals with its keyring and counts into its audit trail. The floors run in the \
             bench's binary on mimalloc, the vault's allocator. The resolution rows compare two processes \
             of the gRPC floor the same way, the second process (started for the row, as the vault \
             is for most rows) first in the vault's place and then in the floor's: how far from 1 the \
             machine alone put a ratio in this run, and whether a process started for the row or the \
             vault's place leans it. Each sliced comparison also gives its median over the pairs in which \
             the vault's side went first and over those in which the floor's did. \
             Ratios, not absolute numbers, are what to compare across machines.\n",
            time::OffsetDateTime::now_utc().date(),
            self.method
        );
        let _ = writeln!(
            md,
            "| scenario | vault | floor | ratio | target | met? |\n|---|---|---|---|---|---|"
        );
        for r in &self.rows {
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {met} |",
                r.scenario, r.vault, r.floor, r.ratio, r.target
            );
        }
        let _ = writeln!(md, "{FINDINGS}");
        if !self.notes.is_empty() {
            let _ = writeln!(md, "\nNotes:\n");
            for n in &self.notes {
                let _ = writeln!(md, "- {n}");
            }
        }
        for n in &self.notes {
            println!("note: {n}");
        }
        let out = if self.short {
            target_dir().join("performance-short.md")
        } else if self.partial {
            target_dir().join("performance-partial.md")
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/performance.md")
        };
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir).expect("creating the report's folder");
        }
        std::fs::write(&out, md).expect("writing the report");
        println!("wrote {}", out.display());
        // Rows without a target (the resolution row, crypto's) are neither met nor missed.
        let count = |met: bool| self.rows.iter().filter(|r| r.met == Some(met)).count();
        println!(
            "perf: {} rows, {} with a target: {} met, {} missed",
            self.rows.len(),
            count(true) + count(false),
            count(true),
            count(false)
        );
    }
}

/// What profiling found and what changed, with the before/after figures of the runs that
/// showed it (release builds, `cargo bench --bench perf -- all --short`, same machine).
const FINDINGS: &str = "
## What the profile showed, and what changed

Where the rows stand, in short (each has its bullet further down, with the runs and profiles
behind it):

- **This table** ran on commit 51f920b, 2026-12-07 22:47 to 23:19 (the whole run 1,927 s),
  on an `Intel(R) Xeon(R) Processor` machine: the sessions' machine changed again since the
  table on 1d77a0e (`AMD EPYC`), and this one's gRPC floor is 84,585 req/s against 45,381
  there. **13 of 26 rows met.** On this kind of machine the rows against the gRPC floor
  fell by 4 to 13 hundredths before (the bullet \"Runs on another machine\" below), and they
  did again: the hot path 0.854 x (0.859 x on it before, 0.946 x in the table on
  1d77a0e), CPU per call 1.17 x the floor's against 1.07 x there, the floor's own call
  being 11.7 us here against 21.0 us. The vault's code since 1d77a0e changed only the
  keeper's claim on SQLite (ee80f1a: it names its partial index, and the index on status
  alone is dropped; the bullet \"The keeper's claim on SQLite read every connection\"). The
  bench gained two rows that run it, **the keeper on SQLite** (the bullet \"The keeper on
  SQLite in the table\"): its claim, 200 due among 1,000,500 connections with the seed's
  statistics deleted as on a vault's file, p50 4.53 ms and p99 10.95 ms, a range scan of
  the partial index; and the hot path on SQLite while the keeper refreshes (1,470
  keep-alives in 74 s), 0.891 x. Each throughput comparison is 21 pairs of 1.5 s slices.
  26 rows have a target; the two resolution rows, the two bounds and crypto's two have
  none. The first start of this run hung after 510,000 of the 1,000,000 Postgres
  connections were seeded (the bullet \"A bench run that hung in its seed\"); this table is
  the second start.
- **The resolution rows:** the second floor process in the vault's place 1.007 x (pooled
  1.003 x), the places swapped 0.996 x (pooled 0.992 x). A row within ~5 % of its target
  is still not decided by one table: h2load's five pairs in this run ran 0.920 to 0.872 x.
- **Missed in this table (13):**
  - the hot path 0.854 x (pooled 0.866 x) and bearer authentication and audit 0.829 x;
  - every call's trace exported 0.678 x (CPU per call 1.61 x the floor's) and 1 % of calls
    traced 0.789 x (1.31 x);
  - mutual TLS 0.879 x (pooled 0.859 x);
  - **the cold cache on Postgres 0.846 x** (pooled 0.860 x), against the design's own work
    0.890 x and that work's bound 0.941 x;
  - the hot path while the keeper refreshes 0.869 x, on SQLite 0.891 x;
  - on SQLite the hot path 0.863 x and the cold cache 0.898 x (pooled 0.892 x);
  - refresh latency on SQLite 1.24 and 1.17 x its bare statements (2.09 against 1.68 ms
    and 2.18 against 1.86 ms); a run after the table ruled out the idle before the
    vault's statements, and its own spans put most of the gap in the store's transaction,
    ~0.4 to 0.55 ms slower in the vault than from the bare client (the bullet \"Refresh
    latency on SQLite: not the idle before the statements\").
- **Met (13):** h2load's cross-check 0.904 x; a new mutual-TLS connection one at a time
  1.025 x and in bursts of 64 1.112 x; refresh latency on Postgres 1.00 and 0.82 x its
  bare statements; **refresh throughput 1,066 refreshes/s, 0.899 x its bare client
  (1,186/s)**, both of its targets, and 0.943 x the vault's own statements; the stampede
  (slowest caller 22.7 ms over the delay, budget 77.4 ms, one provider request per burst);
  the keeper's claim on Postgres (p50 8.19 ms, p99 49.46 ms among 1,050,705 connections)
  and on SQLite (above), both index scans; the cold cache on SQLite against the design's
  own work 0.917 x; memory per cached token, 346 bytes beyond the token; the scale row.
- **The table before, on 1d77a0e** (the `AMD EPYC` machine, 18:30 to 19:04), met 15 of
  24: it missed bearer 0.880 x, h2load 0.858 x, the traced rows 0.734 and 0.882 x, the
  cold cache on Postgres 0.866 x, refresh throughput 936/s (0.822 x, the ratio met), the
  hot path while the keeper refreshes 0.884 x and refresh latency on SQLite 1.31 and
  1.28 x. **The one on 3e57a5c** (15:48 to 16:22) met 18 of 24, **the one on c6264aa** (at
  noon) 12, **the one on a9de961** (05:44 to 06:17) 19.
- **Runs on another machine:** between the tables on a9de961 and c6264aa the sessions'
  machine was an `Intel(R) Xeon(R) Processor` whose gRPC floor is nearly twice as fast.
  There the rows against the gRPC floor fell by 4 to 13 hundredths (the hot path 0.859 x),
  the shutdown's cut-off measured at no cost, and a bullet says where the vault's extra
  goes (\"Another machine, and what the shutdown's cut-off costs\").
- **What it means for the work.** Over the ten full runs before this one on the `AMD EPYC`
  machine (4656fa0, c44d9d9, 666991b, 1e5c479, 8774fde, 7cffc7c, a9de961, c6264aa, 3e57a5c
  and 1d77a0e; this one's figures, on the faster Xeon, follow each list in brackets):
  - **The cold cache on Postgres** missed in all ten: 0.860, 0.868, 0.868, 0.836, 0.827,
    0.851, 0.876, 0.850, 0.850, 0.866 x. Its bound made 0.935, 0.930, 0.939, 0.998, 0.951
    and 0.859 x in the last six, and the vault 0.963, 0.906, 0.973, 0.873, 0.959 and
    0.930 x the design's work, whose products (0.900, 0.843, 0.914, 0.871, 0.912, 0.799 x)
    the row fell short of, matched or beat (0.827, 0.851, 0.876, 0.850, 0.850, 0.866 x):
    the three comparisons run minutes apart on a machine whose speed drifts [this run:
    0.846 x, the design's work 0.890 x, its bound 0.941 x, product 0.837 x]. The bullet
    \"The cold cache on Postgres: CPU per call, process and database\" splits the CPU of a
    call on each side, the Postgres backends' included. Per call the backends serving the
    vault used as much CPU as the vault's process (75.1 against 70.7 us in one run), and
    1.26 x the database floor's backends, 15.5 us more: the audit trail's rows and the
    vault's wider read cost Postgres ~10.5 us of those 15.5 (the design's-work floor's
    backends pay them too), and 1.5 to 4.3 us more were not explained then. A sampler of
    the database's activity later found the gauge's count of the whole table among them
    (the bullet \"The connection gauge's count\"); in the tables on 3e57a5c and 1d77a0e the
    vault's backends used 1.02 and 1.11 x the design's-work floor's (109.2 against 107.0
    and 93.8 against 84.5 us a call) [this run: 1.05 x, 39.7 against 37.9 us]. The
    per-tenant index of `audit_events` is 1.5 to 4 us a call (a scratch timing, and two
    runs of the bench); one run without it made 0.904 x (pooled 0.885 x). It stays: it is
    what answers \"who got this tenant's token\" (that bullet). Since the table on a9de961 a
    window's rows are written in that index's order, about 2 us less of Postgres's time a
    row on a scratch table (that bullet again).
  - **Refresh throughput** made 927, 874, 972, 1,028, 941, 924, 1,020, 972, 924 and 936
    refreshes/s; its bare client 1,145, 1,193, 1,165, 1,132, 1,173, 1,150, 1,114 and
    1,139/s in the last eight. The absolute figure follows the machine and its hour; the
    ratio target is met in all ten, the 1,000/s in two [this run: 1,066/s, its bare
    client 1,186/s, 0.899 x: both targets met].
  - **The traced rows.** With every call sampled 0.737, 0.854, 0.766, 0.738, 0.776, 0.722,
    0.781, 0.744, 0.725, 0.734 x: every span is built and exported there, as the SDK's
    default asks, and no step of it is more than a few percent (the bullet \"Sampling
    decided where a trace starts\"). The README and the chart's values say to sample a
    fraction on a busy replica. At 1 %: 0.822, 0.803, 0.853, 0.873 x before sampling was
    decided where a trace starts, 0.917, 0.882, 0.853, 0.912 and 0.882 x since [this run:
    every call 0.678 x, 1 % 0.789 x, CPU per call 1.61 and 1.31 x, the untraced hot path
    0.854 x and 1.17 x].
  - Rows that changed sides between runs, in run order: bearer authentication 1.017,
    0.879, 0.910, 0.903, 0.926, 0.973, 0.928, 0.895, 0.961, 0.880 x; mutual TLS 0.842,
    0.915, 0.968, 0.948, 0.938, 0.970, 0.919, 0.903, 0.926, 0.930 x; h2load 0.946, 1.037,
    0.860, 0.877, 1.027, 0.936, 0.927, 0.970, 0.911, 0.858 x; refresh latency on SQLite
    1.29/1.26, 1.11/1.14, 1.13/1.10, 1.25/1.28, 1.23/1.24, 1.28/1.29, 1.25/1.24, 1.25/1.21,
    1.24/1.26, 1.31/1.28 x; the cold cache on SQLite 0.986, 0.872 (p99 1.38), 0.988,
    0.994, 0.962, 1.035, 1.005, 0.992, 0.984, 0.928 x; against the design's own work on
    SQLite 0.873, 0.862, 0.915, 0.964, 0.917, 0.910, 0.930 x in the last seven; the new
    mutual-TLS connection in bursts 0.978, 1.207, 0.961, 0.928, 0.863, 0.973 x in the last
    six; the hot path 0.936, 0.860, 0.883 and 0.946 x in the last four; the hot path while
    the keeper refreshes 0.882, 0.911 and 0.884 x in the last three [this run: bearer
    0.829 x, mutual TLS 0.879 x, h2load 0.904 x, refresh latency on SQLite 1.24/1.17 x,
    its cold cache 0.898 x and against the design's work 0.917 x, the new connection in
    bursts 1.112 x, the hot path 0.854 x, with the keeper 0.869 x and on SQLite 0.891 x].

What was found and changed, in the order the work happened:

- **Hot path 0.03 x the floor, p50 44 ms.** Every answer waited ~40 ms: the server accepted
  connections through `serve_with_incoming`, which ignores the builder's `TCP_NODELAY`, so small
  responses sat in Nagle's algorithm until the client's delayed ACK. Setting `TCP_NODELAY` on
  accepted sockets (`src/startup.rs`): 1,675 -> 47,064 req/s, p50 44 -> 1.05 ms, 1.01 x the floor.
  The cold-cache scenario had the same cause: 0.12 -> 0.99 x the database floor.
- **Cold cache at 1,000,000 tenants: 0.83 x the database floor.** At that size nearly every call
  misses the cache, decodes a row and evicts an entry, so the vault allocates and frees on every
  call. With mimalloc as the global allocator (`src/main.rs`), the same scenario
  (`./scripts/bench --only cold`, one run each, same machine and hour) went from 0.833 x with
  glibc's allocator to 0.941 x.
- **Memory grew with every audit window.** With 100,000 cache entries, RSS kept rising after
  twice as many distinct tokens as the cache holds (143 -> 165 MiB). Measured after 1, 2, 4 and
  8 times the cache's size in distinct tokens and after sweeping the largest set twice more,
  before the fix it went 146 -> 181 -> 243 -> 225 -> 253 -> 270 MiB,
  with glibc's allocator and with mimalloc alike. A heap profile (heaptrack, vault killed after
  the sweeps, live allocations by site) showed 68 MiB held in sqlx `Bind` buffers from the audit
  writer: a closed window of up to 50,000 keys was written as one INSERT, sqlx encodes the
  parameters into the pooled connection's write buffer and keeps its size, so every connection
  that ever wrote a window kept ~14 MiB. The writer now sends at most 1,000 rows per INSERT
  (`src/audit/writer.rs`); the same sweeps then stayed between 145 and 166 MiB in one run and
  between 163 and 182 MiB in a full run, whose last repeat sweep rose 14 MiB (12 % of the
  cache's cost).
- **Hot path 0.806 x in one full run, 0.971 x in a partial run half an hour later.** The
  throughput comparisons kept the best of two alternating 10 s runs each of the vault and its
  floor. On this machine that was not enough: in two `--only hot` runs (2026-12-02) the four
  vault/floor pairs gave 0.953, 1.235, 0.846 and 1.011, the floor alone moving between 35,000
  and 40,000 req/s from one window to the next, and the full run just before them (2026-12-02)
  put the hot path at 0.806 x while h2load put the same vault and floor at 1.023 x (the
  committed full run of 2026-12-01 had it the other way round: hot path 0.908 x, h2load 0.807 x). Each comparison is now five back-to-back pairs (6 s each,
  alternating which goes first) and the table shows the median pair, with every pair's ratio
  beside it: the next `--only hot,auth` run gave 0.971 x (pairs 0.926 to 1.040) and, with
  authentication and audit, 0.953 x (0.805 to 1.029). The vault's code did not change between
  these runs. The h2load cross-check is run the same way.
- **Memory swung from sweep to sweep because the cache was not full.** The scale scenario ran the
  vault with the default `cache_max_age` of 5 s, and a sweep of 200,000 tokens takes tens of
  seconds, so the cache held only the tokens of the last few seconds: RSS showed that churn and
  the allocator's free pages, not the bound the cache's size sets. Six sweeps of the same 800,000
  tokens (2026-12-01) left RSS at 91, 111, 97, 101, 99 and 97 MiB, and the per-100k figure,
  computed as if the cache were full, came out at 46 to 116 MiB from run to run. A standalone
  program (moka with the same settings and ~900-byte tokens, mimalloc) that fills a 100,000-entry
  cache and sweeps 200,000 keys sixteen times fast enough that nothing expires held 99,654 to
  100,000 entries after every sweep, with RSS between 162 and 166 MiB; with glibc's allocator it
  crept from 185 to 200 MiB. The scenario's vault now sets `cache_max_age = \"1h\"`, so only
  `cache_max_entries` bounds the cache. Then, in `./scripts/bench --only scale` (2026-12-02): RSS
  205 MiB after the first 100,000 tokens, 212, 214, 219 MiB after 200,000, 400,000 and 800,000,
  and 214, 210, 215, 214, 215, 213 MiB after six sweeps of the same 200,000; the second half of
  the sweeps sat 0.8 MiB below the first. The check is unchanged: the scenario sweeps twice the
  cache's worth six times and compares the median of the last three with the median of the
  first three (a steady leak of 3.4 % of the cache's cost per sweep would fail it); the cache's
  cost is the median RSS over the sweeps less RSS at start, now that of a full cache.
- **Refresh: 5.1 ms of the vault's own time per refresh.** sqlx pinged each pooled connection
  before every query (`test_before_acquire`), and the refresh path made eight round trips. Now the
  lease and the current refresh token are one statement, the new tokens and the superseding of
  the old refresh token one statement (migration 2), connections are not pinged, and a refresh
  that starts from a stale cached token takes the lease without reading the row first (the lease
  statement returns it). The floor is now a server that makes the same token request and answers
  (taken alternately with the vault's calls), so transport and the provider's own overhead are
  netted out. The scenario measures both paths an expired token takes: stale in this replica's
  cache (lease first) and not cached (read, then lease), alternately with each other and with
  the floor.
- **Refresh: where the rest goes.** Timestamps from a diagnostic build (client, vault and
  provider on one clock; medians of 200 refreshes of the stale-cache path, 2026-12-01): client
  -> vault 0.46 ms, the vault's own steps up to the lease 0.08 ms, taking the lease 1.65 ms, to
  the provider 0.36 ms, the provider 51.7 ms (its 50 ms delay), sealing 0.06 ms, storing the new
  tokens 1.85 ms, back to the client 0.73 ms. The same run measured this database's bare costs:
  a durable one-row commit 0.66 ms back to back and 1.40 ms after 50 ms idle, a one-row SELECT
  0.62 ms after idle. The invariants need a durable lease before the provider is called and a
  durable store before anyone sees the new token, and each lands on a database that has just
  been idle, so two bare commits alone take 2.8 ms here: more than the 2 ms target, whatever the
  vault does. Beyond them the lease costs 0.25 ms (it returns the row and the refresh token) and
  the store 0.45 ms (it writes three rows); the vault's own code, the spawn of the shared
  refresh task included, ~0.3 ms. In the full run of commit 7b448ea the same commit cost 0.84 ms
  after idle and the vault's own time was 2.64 ms: the figure follows the machine's disk. Tried and not kept:
  taking the lease on the connection that had just read the row (0.82 vs 0.87 ms: the commit,
  not the backend's wake-up, is the cost). Not done, because the invariants forbid it: an
  asynchronous commit for the lease, or answering callers before the new tokens are committed.
- **Stampede.** Callers holding a stale cached token join the refresh in flight before reading
  the database. Timestamps from a diagnostic build showed two more things. Callers that missed
  the cache at the same moment each read the row (7 to 141 reads per run), and the lease
  statement queued for a pooled connection behind those reads (3 to 45 ms); now misses on one
  key share one read (`src/vault/reads.rs` today), and the lease follows the read by ~3 ms.
  And the load client polled its 1,000 calls from one task, so the first request left only
  after all 1,000 were prepared (7-19 ms later) while its timer had started: each call is now a
  task of its own, timed from when it starts sending, against the vault and the floor alike.
  With both, one diagnostic run: the row read 1.6 ms, the lease 3 ms, the provider 56 ms (its
  50 ms delay plus ~5 ms, as the scripted provider shares the load client's process), storing
  1.7 ms, and the 1,000 answers went out over the next 15 ms. The slowest caller still varies
  from run to run between ~66 and ~91 ms on this machine, so the 25 ms budget is met only in a
  quiet moment. Tried and not kept: running refresh tasks on a thread of their own, so that
  arriving calls cannot delay the lease; over six alternating runs each the slowest caller's
  median was 81 ms with it and 78 ms without.
  A timeline of nine bursts in one diagnostic run (2026-12-02, `--only stampede` with the burst
  repeated on the same, warm channels): the client started its 1,000 calls over 7 to 16 ms; the
  first answer came 57 to 71 ms after the first call started (the 50 ms delay, the lease and the
  store, the provider's HTTP exchange, while the vault took in the other 999 calls), and the
  answers went out over the next 13 to 20 ms, ~18 us each for vault and client together on these
  two cores; the slowest caller took 68 to 91 ms. A profile of the vault over those bursts (perf,
  ~1,300 samples) put 22 % of its CPU in the kernel zeroing transparent huge pages that mimalloc
  faults in again after purging freed memory (its 10 ms purge delay); the hot path's profile has
  no page zeroing near the top. With mimalloc's huge pages off (`MIMALLOC_ALLOW_THP=0`) or a 1 s
  purge delay, the slowest caller over nine bursts each was 68-83 and 67-83 ms, against 66-78 ms
  with the defaults in the same hour: no difference beyond the noise, so the defaults stay.
- **Memory per cached token: ~1 KB beyond the token.** `./scripts/bench --only
  refresh,throughput,stampede,scale` (2026-12-02, machine shared with other builds, load
  average 9 to 12): +181.6 MiB per 100,000 cached 890-byte tokens, 1,015 bytes per entry beyond
  the token since start, 834 bytes between a half-full and a full cache (which leaves out what
  the process grows by under any load). Where the bytes go, from a standalone program holding
  100,000 entries of the same shape in moka with the same settings, counting every allocation's
  usable size under mimalloc: the token 896 (its size class), the tenant id's `Arc<str>` 32,
  moka's own structures ~330 (the `Arc` of the key, the hash table's bucket, the value entry
  holding key and value inline, the entry's info and deque nodes for the access order and, with
  a time to live, the write order), the cached value 96 inline, its token type `String` 8 more
  on the heap and its scopes (`Arc<[String]>` and two strings) 88: ~1,490 bytes, ~600 beyond
  the token. The rest of what the process shows (~230 bytes per entry between half and full)
  is not attributed yet; the likely holder is the allocator (pages of the entries' size classes
  left partly filled by evictions, per-thread heaps keeping pages of their own), which a heap
  profile of the vault would confirm or refute. The cache now keeps a compact entry (`src/vault/cache.rs`): the token type and scope set
  are shared between entries (one copy of each distinct value, at most 256 of each, then per
  entry), 88 bytes inline; the standalone program then holds ~1,380 bytes per entry (~490
  beyond the token), 107 fewer. In the vault (`--only scale`, same conditions, right after):
  +168.4 MiB per 100k, 875 bytes per entry beyond the token since start (from 1,015), 851
  between half and full cache (834 before: no change beyond the noise); bound and sweeps flat. Left: moka's ~330 bytes are the bulk of what remains; a cache
  with less per-entry bookkeeping, or moka without a time to live (the age checked on read),
  would cut further, but the latter keeps expired plaintext tokens in memory until evicted,
  which `cache_max_age` exists to bound.
- **Memory per cached token: the cache on quick_cache.** moka's per-entry bookkeeping (~330
  bytes) was the bulk of what remained, so the cache (`src/vault/cache.rs`) now uses
  quick_cache: one sharded table whose slab slot holds key and value inline (144 bytes a slot
  here), CLOCK-Pro eviction, and the age kept in the entry (checked on every read, aged entries
  swept every `cache_max_age`). A standalone program with 100,000 entries of the vault's shape
  (mimalloc, 890-byte tokens), filled and then swept six times with twice as many keys: moka
  495 bytes per entry beyond the token when full and ~610 after the sweeps; quick_cache 243 and
  474 with its default ghosts (recently evicted keys, each in a slot as big as a live entry's,
  for half the capacity), 244 and 265 with ghosts for a tenth, which the cache now uses. In the
  vault, `./scripts/bench --only scale` (2026-12-02, machine loaded by parallel builds, load
  average 9 to 13), one run each: with ghosts for half, 977 bytes per entry beyond the token
  since start (RSS 35.4 MiB at start, 176.5 MiB after 100,000 tokens, 209 to 215 MiB after the
  sweeps); with ghosts for a tenth, 680 (33.7 MiB at start, 180.0 MiB after 100,000, 180 to 196
  MiB after the sweeps); bound and sweeps flat in both. Still over the 512-byte target. The
  figure since start also carries what the process grows by under any load: the first 50,000
  tokens cost 113.6 MiB in the second run, the next 50,000 32.7 MiB. A vault with a tiny cache
  swept the same way, as a floor measured in the same run, would take that out: built
  since, see the last bullet.
- **Refresh throughput: a lease that read every active connection.** With the vault's own
  statements run from a bare client beside the vault and the floor
  (`benches/perf/statements.rs`), that client's throughput fell round after round, 0.92 x the
  floor in the first of five and 0.14 x in the last; its mean lease went from 3.1 to 156 ms.
  auto_explain on the slow statements showed the plan: a generic plan (the one a pooled
  connection settles on after its first executions), built on statistics older than the
  table, estimated a dozen rows for the unique key (tenant, provider) and ANDed it in a bitmap
  with the single-column index on `status`, reading all 172,578 active entries of that index
  on every lease. The vault's own connections happened to keep a better plan in these runs;
  any connection can settle on that one after a fleet is imported or grows. Migration
  `20261210000001` removes the lure: status is no longer a searchable key of any index, only
  an INCLUDE column of the listing index, which the connection gauge (GROUP BY status) still
  read with an index-only scan (until migration 20261211000001: the bullet \"The connection
  gauge's count\"); every update that moves a row writes one index entry fewer.
  After it, in `--only throughput` (2026-12-03, quiet machine), the same client's rounds held
  at 1.4 to 2.3 ms per read and 3.2 to 4.9 ms per lease; `query_plans.rs` keeps status out of
  every index key and bounds a lease's pages on stale statistics.
- **The runs of the tables on 4b0d322 and ad639b3.** The table on 4b0d322 was a full run of 2026-12-05 (23:31
  to 23:58) on commit 64b3b87, the first with the floors and the load client on mimalloc. The
  table on ad639b3 was the full run of the same evening (22:54 to 23:21) on ad639b3, with the
  floors on glibc's allocator; the vault's code is the same in both. Before it, the table on
  560dfa1 (2026-12-05) and the one on eade072 (2026-12-04). Three commits came between the
  tables on 560dfa1 and ad639b3, each measured in partial runs in the bullet \"Cold cache: the
  design's own work per miss\" below: the cache-miss read narrowed to the columns it uses and
  the audit's keys sharing the connection key's strings (fe04069), the rows against a floor
  doing the design's own work per miss (4ee24ae), and foldhash for the audit window's and the
  single-flight reads' maps (ad639b3). None touches a refresh's statements.
  - The floors, the table on 4b0d322 against the one on ad639b3: the hot path's gRPC floor 79,738 req/s
    against 83,993, h2load's 101,342 against 95,429, the Postgres database floor 14,097
    against 12,691, the floor doing the design's work 11,866 against 11,119; a durable commit
    0.34 ms back to back and 1.01 ms after 50 ms idle, against 0.29 and 1.58. The vault on the
    hot path made 69,063 req/s against 79,277. The ratios are what compare.
  - The table on ad639b3 against the one on 560dfa1 (both with glibc floors): met in both, the
    hot path 0.944 x (0.967), with authentication 0.932 x (0.915), over mutual TLS 0.980 x
    (0.932), refresh latency on Postgres 1.06 and 1.02 x (1.08 and 1.05), refresh throughput
    1,046 refreshes/s (1,035), the hot path on SQLite 0.971 x (0.977), memory 300 bytes (216);
    met then and not before, the cold cache on Postgres 0.909 x (0.886) and refresh latency on
    SQLite, not cached, 1.07 x (1.29); missed in both, the cold cache on SQLite 0.840 x
    (0.874), p99 1.81 x (1.51), and refresh latency on SQLite, stale, 1.21 x (1.44).

  Each bullet below gives the figures of the tables it names and of the partial runs between
  them. The spread of one row's pairs within a run (the cold cache on Postgres in the table on 4b0d322:
  0.734 to 0.919) is as wide as the change of any row from one table to the next.
- **Refresh throughput: 1,046 refreshes/s, 0.875 x the bare client, 0.924 x the vault's own
  statements (the table on ad639b3).** The table on ad639b3: 10,000 connections expired together, 10,400 calls at 64 in flight,
  1,046 refreshes/s against the bare client's 1,195 (pairs 0.855 to 0.884). Exactly one
  provider request per tenant, and no refresh token presented twice. Both of the issue's
  targets are met: 0.80 x the bare client, and 1,000 refreshes/s. The table on 560dfa1 had
  1,035/s (0.866 x), the one on eade072 1,020/s (0.863 x); the full runs before them met the
  first and not the second: 951/s (0.814 x) on 6f56e33, 984/s (0.835 x) in the first run of
  2026-12-03. The bare client barely moved (1,168 and 1,179 then, 1,182, 1,196 and 1,195
  since), because at 64 in flight it waits on the provider's 50 ms delay and two commits,
  which did not get faster. The vault did, because its extra time per refresh is CPU. Its 64
  calls in flight at 1,046/s take 61.2 ms per refresh, 7.6 ms over the bare client's 53.6 ms
  (64 at 1,195/s); the table on 560dfa1 had 61.8 against 53.5 ms, 8.3 ms over, and the one on
  6f56e33 67.3 against 54.8 ms, 12.5 ms over. So 1,000/s holds on this machine when it runs as
  fast as it did for the last three tables, and not when it runs as it did on 2026-12-03. The
  provider's delay alone allows 1,280/s.
  The split, per round: the vault's own statements from a bare client (read, lease, token
  request, store, through a pool of 20 as the vault's) reach 0.952 x the bare client's one-row
  commits (0.925 to 0.957; the table on 560dfa1 0.938 x, the one on eade072 0.931 x). The lease returns
  the row and its refresh token, and the store writes three rows and supersedes one, where the
  floor updates one narrow row. The vault then reaches 0.924 x those statements (0.898 to
  0.941; the table on 560dfa1 0.920 x, the one on eade072 0.927 x). That covers gRPC, the cache, the single flight, the coalesced read and the rotation
  kept for failover, in a process that shares two cores with Postgres, the load client and the
  scripted provider. A system-wide `perf record` over an `--only throughput` run (2026-12-03)
  put Postgres at 38 % of the samples, the bench process (load client, scripted provider and
  both bare clients) at ~12 %, the vault at ~8 % and idle at 18 %: the database, not the
  vault's code, is where a refresh's CPU goes here. The honest target beside the issue's, met
  in every full run: >= 0.80 x the vault's own statements (the second throughput row). Tried before
  and not kept: a pool of 40 or 64, batching the audit, fillfactor 30 or 70
  on connections.
- **Refresh latency: priced by the path's own statements.** The rows used to price a refresh
  with bare one-row commits (two, and a one-row SELECT on a miss), which the vault's statements
  exceed by what they carry: the lease returns the row and the refresh token, the store writes
  three rows. They now run the path's own statements from a bare client
  (`statements::refresh_once`, through `Store` with the vault's pool size): the lease, on a
  miss the row's read before it, the provider's delay as idle time, then the store, each timed
  on its own, on tenants of their own, alternately with the vault's calls and the provider
  floor's. The vault's own time is its latency less the provider floor's. Results on Postgres,
  stale in the cache / not cached:
  - the table on ad639b3: 3.76 against 3.54 ms and 4.06 against 3.96 ms, 1.06 and 1.02 x, met;
  - the table on 560dfa1: 3.95 against 3.66 ms and 4.27 against 4.06 ms, 1.08 and
    1.05 x, met;
  - the table on eade072: 3.74 against 3.38 ms and 4.11 against 3.77 ms, 1.11 and 1.09 x, met;
  - `--only refresh` (2026-12-03, few rows in the table): 3.75 against 3.41 ms and 4.20
    against 3.72 ms, 1.10 and 1.13 x, met;
  - the first full run of 2026-12-03: 5.86 against 5.04 and 6.52 against 4.93 ms, 1.16 and
    1.32 x;
  - the table on 6f56e33: 5.78 against 4.58 and 6.48 against 5.15 ms, 1.26 and 1.26 x, missed.

  The vault's time beyond its statements was 0.22 and 0.10 ms in the table on ad639b3, 0.29 and 0.21 ms
  in the one on 560dfa1, 0.36 and 0.34 ms in the one on eade072 and ~0.35 to 0.5 ms in the
  partial run. That is about its own code (~0.3 ms by the diagnostic timestamps
  above). In the two full runs of 2026-12-03 it was 0.8 to 1.6 ms, and most of that was the
  pool, not the vault's code. sqlx hands out idle connections first in, first out (a crossbeam
  `ArrayQueue` in sqlx-core 0.8.6). So each of the vault's statements lands on one of its 20
  connections, whose Postgres backend has been idle for ~1 s, while the bare client, one call
  at a time, reuses one. Three `--only refresh` runs, one after the other (2026-12-03, 14:00,
  machine slower than in the morning: bare statements 6 to 8 ms), opened 20 connections in the
  bare client first, so that it rotated over them as the vault does, then did not, then did
  again. They gave 1.10 and 1.08 x, then 1.25 and 1.39 x, then 1.11 and 1.14 x (stale, not
  cached). Rotating cost the bare statements 0.7 to 1.9 ms, and the vault's own time did not
  move (7.6 to 7.8 ms stale). That experiment was not kept: the row's floor stays the least
  work (one warm connection). On the faster machine of the last three tables, the rotation cost little.
  On a slower one the gap comes back, and closing it is the vault's job, for instance with a
  pool that hands out the connection used last. sqlx's pool does not offer one. A pool of the
  vault's own would also have to do what sqlx's does on release: it pings each returned
  connection, which flushes the rollback of a transaction whose caller went away. Not done
  here.
- **Refresh latency on SQLite: 1.1 to 1.8 x its statements.**
  - The table on ad639b3: 2.94 against 2.44 ms stale in the cache and 3.12 against 2.93 ms not cached
    (1.21 and 1.07 x; the second met).
  - The table on 560dfa1: 3.26 against 2.26 ms stale in the cache and 3.24 against
    2.51 ms not cached (1.44 and 1.29 x).
  - Four `--only sqlite` runs of that commit in the hour after it (2026-12-05, ABBA, the B
    runs with the audit's aggregate keys capped, see the cold-cache bullet): with the defaults
    2.64 against 2.41 and 2.80 against 2.55 ms (1.10 and 1.10 x), then 3.24 against 2.85 and
    3.47 against 3.13 ms (1.14 and 1.11 x); capped 1.08 and 1.06 x, then 1.18 and 1.17 x. The
    row met its target in three of the four, so that table's 1.44 x was the far end of the
    row's spread from run to run.
  - The table on eade072, the first after the one-writer change: 3.00 against 2.25 and 3.23
    against 2.46 ms (1.34 and 1.31 x).
  - The table on 6f56e33, before it: 5.11 against 3.17 and 5.23 against 3.54 ms (1.61 and
    1.48 x); the first run of 2026-12-03 had 1.79 and 1.68 x.
  - `--only sqlite` runs between those two tables: 1.20 to 1.28 x. One after the table on
    eade072 (2026-12-04, 17:40, with the machine slower again: hot path's floor 55,627 req/s):
    4.92 against 3.19 ms and 5.48 against 3.74 ms, 1.54 and 1.47 x.

  The vault's tail is long where the bare statements' is not: max 74.8 and 134.8 ms in the table
  on ad639b3, 161.5 and 167.8 ms in the one on 560dfa1, 150.5 and 99.3 ms in the one on eade072,
  69.8 and 258.9 ms in the one on 6f56e33. `strace -c` on both processes over 40 s of the
  scenario (a partial run, 2026-12-03): the vault made 26,553 pread64, 18,933 pwrite64 and
  1,500 fsync calls, and the bench process (the bare statements) 4,801, 2,265 and 264. The vault
  also runs each batch's authorizations (through the vault, for both sides' tenants), which
  explains the fsyncs but not all of the page traffic. SQLite checkpoints its write-ahead log
  in whichever connection commits past 1,000 pages, so the process that writes most pays for
  copying the log into the file, on a commit of some caller's request. That fits the tail, not
  the median. Moving checkpoints off the request path was tried and dropped: a background
  `PRAGMA wal_checkpoint(PASSIVE)`, with a larger automatic threshold as the safety net, and
  `serve` checkpointing every 250 ms. Two `--only sqlite` runs with it gave the vault's own
  time:
  - stale in the cache: 2.90 and 3.50 ms (1.52 and 1.23 x), max 137.0 and 97.1 ms;
  - not cached: 3.08 and 3.71 ms (1.37 and 1.23 x).

  The run just before, without it: 3.40 and 3.67 ms (1.23 and 1.23 x), max 75.1 ms stale and
  127.6 ms not cached. No change beyond the runs' spread, so the tail is not the checkpoints.
  The vault's ~0.75 ms beyond its statements in the table on eade072 (0.35 ms on Postgres; on
  SQLite 0.50 and 0.19 ms in the table on ad639b3, 1.00 and 0.73 ms in the one on 560dfa1) was taken apart
  on 2026-12-04, after that table, in four `--only sqlite` runs of a throwaway build that
  timed the vault's steps (machine slower: hot-path floor 35,090 to 41,931 req/s; own time 1.24
  to 1.32 x stale in the cache and 1.25 to 1.28 x not cached). Medians over 200 samples:
  - Inside the vault, the path's statements together cost what the bare client's cost: the
    lease 0.62 to 0.84 ms (bare 0.70 to 0.94; always 0.06 to 0.14 ms less), the store 0.99 to
    1.23 ms (bare 0.87 to 1.08; always 0.08 to 0.16 ms more), the two summed within -0.06 to
    +0.10 ms of the bare client's. The token request took 1.77 to 1.91 ms beyond the delay, as
    when this process sends it directly (1.81 to 1.90 ms). Sealing the new tokens took 0.02 ms.
  - One run also put wall-clock stamps in the client, in the vault's authentication layer and
    handler, and in the provider floor's handler (2.45 and 2.68 ms own time against 1.97 and
    2.13 ms of statements, so ~0.5 ms beyond them). Stale in the cache:
    - the gRPC call around the handler, ~0.19 ms: from the client's send to the handler, 477 µs
      in the vault against 320 µs in the floor; from the handler's answer back to the client,
      414 against 378 µs;
    - inside the handler, between the timed steps, ~0.28 ms:
      - the hand-off to the refresh task and back, 0.10 ms: the stale cache entry's lookup, the
        spawn, the task's cache insert and end, the wake of the waiting handler. A fifth run
        (1.25 and 1.20 x) timed it leg by leg, medians of 196 with the probes' own writes in
        them: the spawn to the task's start 35 µs, the task's cache insert and end 25 µs, the
        task's end to the handler resumed 40 µs;
      - within the task, outside the timed steps, 0.06 ms;
      - between the lease statement and the token request (the database's identity check, the
        cache lookup), 0.05 ms;
      - after the store statement (the rotation kept for a failover), 0.03 ms;
      - the handler beyond the vault's call (audit, conversion), 0.04 ms;
    - the token request ~0.04 ms more than the floor's whole handler.
  - A cache hit shows the same per-call cost. 200 calls to one cached tenant, each after 50 ms
    idle of the client, took 0.61 to 0.72 ms in the vault against 0.46 to 0.57 ms for the gRPC
    floor: 0.13 to 0.15 ms more, round by round (medians of rounds of 200, two runs). Back to
    back: 0.18 to 0.22 against 0.15 to 0.19 ms (four runs). Back to back, the vault used 1.3
    times the floor's CPU: `perf stat` on both over the same seconds, and 456 against 351
    samples of `perf record --call-graph dwarf`. The profile spreads the difference over the
    vault's own steps (the cache, the audit's count, the conversion, the authentication layer,
    routing among four services), each a few percent of its samples at most. After 50 ms idle
    a call costs about three times what it costs back to back, in the floor too.
  - Not the cause, each tried once or twice, none helping: the audit holding its event rows
    5 ms before writing them (1.32 and 1.27 x, against 1.30 and 1.28 x the run before); for
    the cache hit after idle, a tonic server without HTTP/2 keep-alive, stream cap and call
    timeout, no per-call trace span, and the system allocator instead of mimalloc; for the
    calls back to back, mimalloc never returning memory.

  So on SQLite, whose path's statements take ~2 ms, the 1.15 x target leaves 0.3 ms for all the
  vault adds, and after 50 ms idle its gRPC call alone costs 0.13 to 0.19 ms more than the
  floor's. On Postgres, with 3.4 to 4.1 ms of statements, the vault's 0.2 to 0.36 ms beyond them
  is 1.02 to 1.11 x. In the table on ad639b3 the not-cached row met its target (1.07 x) and the stale
  row missed it (1.21 x, 0.50 ms beyond the statements). Meeting it in every run needs a
  leaner per-call path and a cheaper hand-off from the refresh task; no single step holds the
  difference.
  Also on 2026-12-03: the SQLite pool no longer pings a connection before each statement
  (`test_before_acquire`, off on Postgres since an earlier stop). With the floor's ping removed
  as well, the cold-cache row on SQLite went from 0.842 x to 0.935 x.
- **SQLite: one writer per process.** The store sends a process's writes through one
  connection of their own and its reads through the others (`src/store/sqlite/mod.rs`,
  `SqlitePools`). Before, each write took any of up to 20 connections and met the others at
  SQLite's lock, whose busy handler polls, sleeping 1 to 100 ms between tries. A throwaway
  program (2026-12-03, not kept) ran 3,000 authorizations and then 3,000 refreshes' writes
  (the lease, then the store) through the store, 64 at once, on a new file:
  - before: 1,177 and 1,234/s, p99 373 and 464 ms, max 2,250 and 2,333 ms (two runs);
  - after: 1,097 and 1,346/s, p99 54.5 and 85.1 ms, max 55.4 and 86.9 ms.

  The rate is the same, since SQLite still runs one write at a time; the wait is now in order.
  The SQLite scenario prints this as a note (`sqlite_write_burst`). In the ad639b3 table's run, 2,500
  refreshes' writes at 64 at once made 1,306/s, max 72.6 ms, which is 1.48 x the time of 64
  writes one at a time (an earlier table: 1,073/s, max 109.6 ms, 1.93 x; the one on eade072:
  1,183/s, max 66.9 ms, 1.20 x).
- **The database floors no longer ping.** sqlx's pools ping an idle connection before handing
  it out unless told not to; the vault's do not, and the floors did, so each floor query cost
  a round trip more than the least a call needs. Both database floors now skip it. The
  cold-cache floor on Postgres made 8,267 req/s in the first run of 2026-12-03, with the ping,
  and 8,807 in the table on 6f56e33, without it.
- **Mutual TLS and the bearer hot path: 0.980 x and 0.932 x (the table on ad639b3).**
  - The table on ad639b3: over mutual TLS 0.980 x its TLS floor (pairs 0.939 to 0.994); the
    bearer-authenticated hot path with audit 0.932 x (0.909 to 0.943). Both meet the 0.90 x
    target.
  - The table on 560dfa1: 0.932 x and 0.915 x. The one on eade072: 0.967 x and 0.941 x.
  - The table on 6f56e33: 0.881 x and 0.880 x, both missed.
  - The first run of 2026-12-03: 0.838 x and 0.934 x.
  - The full run before those: 0.978 x and 0.941 x.

  A new connection costs 1.038 x the floor's one at a time and 0.951 x in bursts of 64, within
  target (the table on 560dfa1 1.028 and 1.035 x). The accept loop runs on the runtime's workers (`src/startup.rs`): context switches
  per run went from 13.7k-15.4k to 7.4k-7.9k. The spread of the same code's ratio across runs
  (0.84 to 0.98) is wider than its distance to the target.
  A profile of the bearer vault (2026-12-03, `--only auth`, `perf record --call-graph dwarf -F
  299` on the vault for 15 s, 3,312 samples; that run's row 0.918 x, pairs 0.892 to 0.946):
  35 % of its samples in the kernel, 29 % in HTTP/2 and gRPC, 8 % copying memory, 5 % tokio,
  5 % the allocator. Checking the bearer token and the policy took 1.5 %, the audit's counting
  0.5 % and the SipHash of its keys 1.8 %. What authentication and audit add is about 4 % of the
  vault's own work; the rest is what the floor pays too.
  The same for the mutual-TLS vault (`--only tls`, 15 s, 3,543 samples; that run's row 0.905
  x, pairs 0.877 to 0.942): kernel 34 %, HTTP/2 and gRPC 22 %, the TLS records' encryption
  5.5 % (the floor's too), and identifying the caller from its certificate on every call
  (`auth::identity`, webpki's parsing) 1.5 %. That parse now happens once per connection: the
  listener reads the verified certificate's URI and DNS names when the handshake ends
  (`src/auth/peer.rs`), and each call only looks them up in the policy in force. Criterion
  (`cargo bench --bench auth`, 2026-12-04, the commit before and after): identifying,
  admitting and authorising an mTLS call went from 284 to 108 ns. Reading the names costs
  277 ns, once per connection. The row of the table on eade072 (0.967 x) was the first full
  run with it.
- **Cold cache at 1,000,000 tenants: 0.909 x on Postgres, 0.840 x on SQLite (the table on
  ad639b3).** Both are
  measured against floors that no longer ping (above).
  - Postgres, the table on ad639b3: the vault made 11,535 req/s against 12,691 (pairs 0.838 to 0.951),
    0.909 x, p99 1.04 x; against the floor doing the design's own work per miss, 1.040 x
    (bullet \"Cold cache: the design's own work per miss\" below).
  - Postgres, the table on 560dfa1: 11,669 against 13,168 (pairs 0.844 to 0.924),
    0.886 x, p99 1.01 x, the first full run with the shared plaintext and the 10 s purge delay
    (below). The table on eade072: 10,382 against 11,891 (0.831 to 0.948), 0.873 x, p99 1.08 x.
    The table on 6f56e33: 7,395 against 8,807 (0.801 to 0.936), 0.840 x. The first run of
    2026-12-03, against the pinging floor: 0.982 x (vault 8,118, floor 8,267). The full run
    before that: 0.993 x.
  - SQLite, the table on ad639b3: 16,749 against 19,939 (pairs 0.791 to 1.028), 0.840 x, p99 1.81 x;
    against the floor doing the design's own work, 1.140 x, p99 0.92 x.
  - SQLite, the table on 560dfa1: 14,322 against 16,385 (pairs 0.784 to 1.036), 0.874 x, p99
    1.51 x. The table on eade072: 0.859 x (19,238 against 22,388, pairs 0.847 to 0.930), p99
    1.17 x. The table on 6f56e33: 0.935 x (11,108 against 11,883). An `--only sqlite` run after
    the table on eade072 (2026-12-04, 17:40, machine slower): 0.792 x (11,802 against 14,911, pairs
    0.755 to 0.931), p99 1.51 x. The SQLite store's change between the tables on 6f56e33 and
    eade072 sends writes to their own connection and leaves the reads' statement and pool size
    as they were.
  - SQLite, four `--only sqlite` runs in the hour after the table on 560dfa1 (ABBA as for the
    refresh latency above): with the defaults 0.800 and 0.871 x, p99 1.26 and 1.20 x; with the audit's
    aggregate keys capped at one 0.841 and 0.854 x, p99 1.18 and 1.18 x. On SQLite the audit's
    rows are written by the vault's own process; capping them moved the means by +0.012 x,
    within the spread of the two default runs (0.071 apart). That table's p99 of 1.51 x was not
    seen again in these runs.

  The miss path, profiled on 2026-12-03 (`--only cold`, `perf record --call-graph dwarf -F 149`
  on the vault for 25 s of the scenario, 1,994 samples, about half a core of the machine's two):
  - 42 % of the vault's samples in the kernel (task switches and the sockets);
  - 15 % in HTTP/2 and gRPC;
  - 6 % in sqlx and the Postgres protocol (the row's decode included);
  - 5 % in the allocator, 5 % in tokio;
  - 3 % unsealing (AES-GCM), 1 % the cache's insert and eviction.

  No step of the miss path's own is worth the gap. Two guesses were tried and dropped, two
  `--only cold` runs each:
  - the floor reading the same 14 columns as the vault instead of 2: floor 14,174 and 13,619
    req/s, against 14,226 and 14,792 before, within the runs' spread;
  - mimalloc never returning freed pages to the system (`MIMALLOC_PURGE_DELAY=-1`): 0.856 and
    0.864 x, against 0.851 and 0.824 x.

  In these partial runs the row was 0.824 to 0.890 x. On Postgres, the full runs since the
  floor stopped pinging have it between 0.84 and 0.91 x (0.840, 0.873, 0.886, 0.909), and
  partial runs of the code as committed between 0.75 and 0.89 x (0.72 to 0.84 under the
  profilers below). After the run of the table on eade072 (2026-12-04), both processes were profiled over the same 30 s of one
  `--only cold` run (`perf record -F 149 --call-graph dwarf`, 1,854 samples of the vault and
  1,887 of the floor; vault 9,253 req/s, floor 11,471, 0.807 x). Per request, the vault used
  1.22 x the floor's CPU. On a scale where the floor's CPU per request is 100:
  - the query through the pool: vault 33, floor 32;
  - sqlx's ping of each connection it takes back (`return_to_pool`, which sqlx-core 0.8.6
    runs on every release): vault 23, floor 25;
  - the handler: vault 51, floor 36. The read beyond its query (coalescing, the row's 14
    columns) costs 6 of the difference, the cache's insert and eviction 3.5, unsealing 3.3 and
    the audit's count 1.4;
  - the remaining 7.5 of the vault's 122 are spread over the authentication layer, tracing's
    spans and HTTP/2.

  System calls per request were the same in both (`perf stat` on the syscall tracepoints, an
  earlier run the same hour): ~1.9 sendto, ~2.7 recvfrom and ~1.6 writev. The gap is the
  vault's own work per miss, each step a few percent; no one step holds it. Partial runs under
  these profilers gave 0.72 to 0.84 x. A pool without the release ping (see the refresh
  latency bullet) would cut about a fifth of the CPU per miss. It would cut the floor's just as
  much, so the ratio would hardly move. Closing the gap needs less work in the vault's own
  steps.
  The pool without the release ping was measured on Postgres on 2026-12-04, after the table on eade072,
  with a throwaway build: the cache-miss read in the vault, the floor's read, or both, took a
  connection from a last-in-first-out stack of at most 20 (the pools' size) and put it back
  without a ping. `--only cold` runs, one after another on a slow hour of the machine:
  - both with sqlx's ping on release, as in the table: 0.746 x and 0.854 x (floor 8,834 and
    10,078 req/s);
  - only the vault without the ping: 0.970 x (floor 8,543 req/s). A first run whose stack had
    no bound, so that the vault held up to 64 connections against the floor's 20, gave
    1.059 x;
  - both without the ping: 0.898 x and 0.826 x (floor 10,920 and 13,264 req/s). A first such
    run, with neither stack bounded, ended with the vault answering INTERNAL, most likely for
    want of Postgres connections (not verified); it is not counted.

  Without the ping the floor answered ~28 % more requests a second on the means of two runs
  each (single pairs of runs 8 to 50 %: the machine's drift is in these figures), and the
  vault's ratio to a floor built the same way stayed where it was. A pool of the vault's own
  would likely raise its cache-miss throughput by a similar amount. The row would then read as
  met only against a floor that keeps paying a round trip the vault no longer pays, and the
  table does not count that as met. Such a pool also has to keep what the ping does today (a
  cancelled read's unread answer drained before the connection serves another, a cancelled
  transaction's rollback sent before the connection is parked) and has to be tested with
  thousands of cancellations; it is not built.

  Measured on 2026-12-04, after the table on eade072, in `--only cold` runs, with the processes' CPU time
  read from /proc every second and `perf record -a -F 499`:
  - The machine is saturated through the row (1 to 3 % idle in `vmstat`), so throughput follows
    the CPU a call costs. In one run (vault 13,795 req/s, floor 15,785) the vault's process used
    77 % of a core against the floor's 70 %, 1.26 times the floor's CPU per call; Postgres (83
    to 84 %) and the load client (38 %) used the same in both runs. Over four profiled runs the
    vault's process took 1.23 to 1.36 times the floor's samples per call.
  - Part of that is the allocator handing the cache's pages back, which the harness's pauses
    make worse. The floor runs for 6 s between two of the vault's runs, longer than the default
    `cache_max_age` (5 s): the sweep frees the whole cache, mimalloc hands the freed pages back
    to the system after its purge delay (1 s in the v3 that the `mimalloc` crate builds), and
    the vault's next run faults them in again, each zeroed by the kernel. In one run the vault's
    RSS went from 170 to 114 MiB across a floor run and back up in its own, and its minor faults
    rose by thousands a run. The kernel's page zeroing (`clear_page_erms`, reached mostly from
    the allocation of a cached token) came to 3.5 % of the floor's CPU per call. With
    `MIMALLOC_PURGE_DELAY=-1`, RSS stayed at 209 MiB and the faults stopped after the first
    fill. A vault with `cache_max_age = \"1h\"` keeps its entries across the floor's runs, fills
    its 100,000 entries and evicts. Five pairs of runs, each pair the default age then one hour
    (the first two before the change to the plaintext's copies in the next bullet, the last
    three after it; all five with mimalloc's default purge delay): 0.816 / 0.854, 0.843 / 0.925,
    0.874 / 0.890, 0.752 / 0.898 and 0.817 / 0.862 x. The hour came out ahead in all five, by
    0.065 x on the means (0.820 against 0.886 x), and even then below the 0.90 x target on this
    hour of the machine. The row keeps the default age: it is what operators run, and a longer
    age keeps plaintext tokens in memory longer, which `cache_max_age` exists to bound. The same
    faults happen under sustained load with the default age. A throwaway 60 s run of the vault
    alone (64 in flight, 1,000,000 tenants) showed its minor faults rising by ~700 a second
    throughout, and its RSS swinging between 163 and 185 MiB: each sweep frees up to
    `cache_max_age` worth of entries at once, and pages still free a second later go back to the
    system before the entries that replace them are put. With `MIMALLOC_PURGE_DELAY=10000`,
    longer than the sweep interval, the same run showed ~100 faults a second, RSS steady at 211
    to 214 MiB, and the vault's CPU per call at 57.4 against 61.7 us (one run each: 749,696 and
    734,565 calls). The earlier `MIMALLOC_PURGE_DELAY=-1` runs (above) showed no change beyond
    the spread in the ratio; these count faults and CPU directly, and the pairs below alternate
    the two settings run by run. The image now sets it (`Dockerfile`, docs/deploy.md), and the
    bench starts the vault with the image's `MIMALLOC_` settings (`image_env` in
    `benches/perf/main.rs`). The code does not set it: mimalloc's option call is a C function
    that the `mimalloc` crate does not wrap, and token-vault forbids `unsafe` code; the
    environment variable is read as the process starts. Three pairs of `--only cold` runs, each
    1 s (mimalloc's default) then 10 s: 0.845 / 0.853, 0.854 / 0.881 and 0.808 / 0.873 x (means
    0.836 and 0.869 x), p99 1.83 / 1.64, 1.60 / 1.42 and 1.84 / 1.39 x. The memory row with it
    (`--only scale`): 183 bytes per entry beyond the token, from the vault's +158.3 MiB and its
    memory floor's +56.9 MiB (the floor, a vault with a small cache, keeps its freed pages
    longer too); the bound and the sweeps within their limits (the last doubling +5.4 MiB, 1 %;
    the sweeps' second half +7.7 MiB against their first, 5 % of the cache's cost, where the run
    before the change had -4.4 MiB).
  - Copies of the plaintext. The access token is now one allocation shared by the cache and
    every caller it is handed to (`Arc<SecretString>`, `src/vault/types.rs`), so a cache hit and
    a cache put no longer allocate, copy and zeroize ~900 bytes each. It is also opened in
    place, into a buffer of its exact size (`Keyring::open_str`): 1.025 us before, 0.918 us
    after (criterion means of the new `open_access_token_as_text`, `cargo bench --bench crypto`,
    run against the previous `open_str` and then this one in the same hour). Since commit
    560dfa1, `Keyring::open` itself decrypts this way and `open_str` takes its buffer over:
    `open_access_token` (`open`) 0.943 us, against 1.002 and 1.014 us earlier the same evening,
    and `open_access_token_as_text` 0.880 us. The row's token type and scopes are moved into the
    token, not cloned. Three `--only cold` runs after these changes: 0.859, 0.808 and 0.819 x,
    no change beyond the runs' spread. The copies are not where the vault's gap to the floor
    lies. Costs, measured before and after in the same hour: the shared token's counter is one
    more 32-byte allocation per cached entry (`--only scale`: the vault grew 159.0 MiB after
    against 156.1 MiB before, ~30 bytes an entry; the memory row's figure came to 431 bytes
    after against 341 before, most of that the memory floor's own swing, 34.3 MiB after against
    39.9 before; within the 512-byte target). The hot path (`--only hot`, a slow hour of the
    machine): 0.887 x after, 0.869 x before. The copy made for the gRPC response (an ordinary
    `String` in the generated message) is still freed without being zeroized, as before this
    change. The ad639b3 table's criterion run put `open` at 0.89 us and `seal` at 1.00 us (the table on
    560dfa1 0.97 and 1.11 us, the one on eade072 0.94 and 1.07 us), within what these means move
    between runs.
  - The audit trail's rows, which the floor does not write. Every GetAccessToken is counted
    per caller, tenant, provider, outcome and detail, and each window (`audit.flush_interval`,
    10 s) becomes one row per distinct key in `audit_events` (a heap, its primary key and three
    indexes), up to
    `audit.max_aggregate_keys` (50,000) keys a window. With 1,000,000 tenants asked for
    uniformly nearly every call is a key of its own, so during the row the vault writes up to
    5,000 audit rows a second into the Postgres whose CPU the floor's reads compete for. Two
    ABBA sets of `--only cold` runs on 2026-12-05, the hour before the table on 560dfa1, on its commit:
    - with `TOKEN_VAULT_AUDIT__MAX_AGGREGATE_KEYS=1` (every key past the first counted per
      caller only, so a window writes a handful of rows): 0.883 and 0.862 x, against 0.843 and
      0.851 x with the default in the same set, +0.026 x on the means;
    - with `RUST_LOG=warn` (no per-call span formatted by the log layer, no log line per
      audit row): 0.836 and 0.848 x, against 0.828 and 0.843 x, no change beyond the spread.
      (Corrected later: the bench's vault logged at `warn` already, so this set compared
      `warn` with `warn` and measured nothing about the log layer; see \"The bench's vault
      now logs as in a container\".)

    So the audit's database writes were about half of these runs' distance to 0.90 x (0.847 x
    on the default's means) and a sixth of their distance to the floor; the log layer's share
    was not measured by it (see the correction above). One such set each, on a noisy machine: an indication, not a measure. The rows are the design's record of who got
    which tenant's token, when to within the window, and the row is measured with them.
    What a row costs Postgres, timed on a scratch database with the table's migration (100
    INSERTs of 1,000 rows like the writer's, random tenants among 1,000,000, `psql` on this
    machine, 2026-12-05): 6.6 to 7.4 us a row with every index, 3.7 to 3.9 us without the
    per-tenant index, 6.3 us without the `recorded_at` one. At 5,000 rows a second that is
    ~35 ms of Postgres's CPU a second, about 4 % of the 83 to 84 % of a core it used in the
    sampled run above. The per-tenant index (random insert positions) is half of it, and it is
    what makes \"who got this tenant's token\" answerable without reading the whole trail, so it
    stays; a BRIN index on `recorded_at` would save up to ~1 us a row and was not made. The
    next bullet prices the audit's whole cost per miss, the counting included, against a
    floor that does the design's work.
- **Stampede over five bursts.** The table on ad639b3: one provider request and one token in every
  burst. The slowest caller took 94.8, 67.2, 74.6, 69.2 and 65.7 ms (median 69.2 ms), against
  the gRPC floor's median 17.0 ms (13.5 to 21.1): within the delay plus 1.5 x the floor's
  (75.5 ms). The table on 560dfa1: median 72.1 ms against the floor's 32.2 ms, a budget of
  98.3 ms; the one on eade072: median 75.2 ms against a budget of 78.4 ms; the one on 6f56e33:
  median 95.8 ms against a budget of 111.9 ms. The vault's slowest caller moves less between
  runs than the floor's does.
- **Keeper among 1,050,605 connections.** Claiming 200 due connections is a range scan of
  `connections_keepalive_due` (the plan is in the notes): p50 7.5 ms and p99 13.0 ms over 50
  claims (the table on 560dfa1 9.5 and 24.8 ms, the one on eade072 8.0 and 34.3 ms). While the
  keeper refreshes 1,598 connections over 80 s, the hot path runs at 0.943 x the gRPC floor
  (pairs 0.926 to 1.062; the table on 560dfa1 0.942 x).
- **Memory per cached token: 300 bytes beyond the token, against a memory floor (the table on
  ad639b3).** The scale
  scenario runs a memory floor after the vault: a vault of the same build and settings with a
  cache of 1,000 entries, taken through the same fill and three of the sweeps. The vault's
  growth beyond the floor's is the cache's. The table on ad639b3: the vault +165.2 MiB from start (33.4
  MiB) to the median of its six sweeps, the floor +52.9 MiB under the same calls. That is 300
  bytes per entry beyond the 890-byte token, within the 512-byte target. The table on 560dfa1 had
  +169.0 and +64.6 MiB, 216 bytes; the one on eade072 +152.1 and +39.3 MiB, 305 bytes. Most of
  the swing is the memory floor's own (+39.3 to +64.6 MiB over the three tables): with
  mimalloc's 10 s purge delay each process keeps its freed pages longer (the cold-cache
  bullet). The table on 6f56e33 had 255, the first run of 2026-12-03 320, and the standalone
  measure of the cache in the previous bullet 244 to 265. The figure since start, which also
  carries what the process grows by under any load, was 843 bytes (the table on 560dfa1 882). The
  bound and the sweeps stay flat: the last doubling of distinct tokens grew RSS by 4.5 MiB
  (1 % of what caching them would cost), and the repeated sweeps' second half sat 1.6 MiB
  below their first (the table on 560dfa1 0.0 MiB and +0.1 MiB).

- **Cold cache: the design's own work per miss, priced by a floor of its own.** The database
  floor reads two columns and answers with the sealed bytes. A miss in the vault must also do
  what the design requires: read the connection's status with its token, unseal the token, and
  count the call into the audit trail, whose writer turns each 10 s window into one row per
  caller and tenant. A second floor now does exactly that and nothing else (`MissDuties` in
  `benches/perf/floors.rs`): the vault's own read statement through `token_vault::store`, the
  vault's keyring, the vault's `Audit` writing into the same database. It has no cache, no
  single flight, no authentication, policy, metrics or spans. Each cold-cache row now has a
  second row beside it against this floor, the way the refresh throughput has one against
  the vault's own statements. That row prices what the vault adds around the design's work.
  The database floor's row prices everything, the design's work included.
  - Three `--only cold` runs on 2026-12-05 (22:37 to 22:50, commit 4ee24ae) also timed this floor against the database floor, in the same alternating pairs,
    as a throwaway third comparison. The design's work came to 0.835 x and 0.869 x the
    database floor's throughput. With the audit count switched off in the floor (one run), it
    came to 0.921 x. In the same runs the vault made 0.996 x, 0.991 x and (against the floor
    without the audit) 0.930 x this floor. Against the database floor it made 0.878, 0.848 and
    0.844 x. So on these runs, with every floor on glibc's allocator, nearly all of the row's
    distance to the database floor was the design's work: the read with its unsealing
    (0.921 x) and the audit (down to 0.835 and 0.869 x), with the vault adding about 1 %
    around it. With the floors on mimalloc (the last sub-bullet) the vault made 0.869 and
    0.931 x the floor doing the design's work: what the vault adds is larger than these runs
    showed.
  - The audit's counting, hashed with foldhash. `perf record -a -F 199` over one of these
    runs: of the floor's 12,539 samples, `Audit::count` with its map's entry, probing and
    SipHash took 197 (1.6 %). At 1,000,000 tenants nearly every call is a new key, hashed once
    to pick the shard and once inside it. The maps are now hashed with foldhash, seeded at
    random per process like the standard `RandomState`, so callers still cannot aim collisions
    at them (commit ad639b3). The single-flight reads' map is hashed the same way, since every
    miss hashes its key there up to three times. A probe that counts 1,000,000 distinct keys
    into windows of 50,000, five rounds each, went from 404 to 488 ns per new key to 328 to
    334 ns. The probe is the audit's own `count` in a release build; it is not committed. A
    small cut: the counting is a small part of what the audit costs a miss; the rest is most
    likely its rows (the database's work on them and the writer's), which was not taken apart.
  - Two smaller cuts came before it (commit fe04069). The miss reads the 8 columns it uses
    instead of the row's 14 (`Connections::find_access_token`). An audit key now holds the
    connection key's shared tenant and provider, so counting a call copies no string and a new
    key costs one lookup instead of two. An ABBA set of `--only cold` runs (2026-12-05,
    22:15 to 22:21; A the commit before, B these): A 0.832 and 0.873 x, B 0.853 and 0.810 x.
    Within these runs' spread, as the earlier test of the floor reading 14 columns predicted.
  - The floors' allocator. In the same profile the floor doing the design's work spent 13 % of
    its samples in glibc's `malloc` and `free` (1,637 of 12,539), the audit's counting 1.6 %
    (197). Every floor runs in the bench's binary on glibc's allocator, while the vault runs on
    mimalloc. Two `--only cold` runs after the table on ad639b3 with the bench's binary on mimalloc
    (2026-12-05, 23:24 and 23:27; a throwaway change): the database floor made 13,684 and
    15,056 req/s and the vault 0.789 and 0.785 x of it (pairs 0.719 to 0.850); the floor doing
    the design's work made 12,554 and 12,303 req/s and the vault 0.869 and 0.931 x of it
    (pairs 0.837 to 0.999). The seven `--only cold` runs of the same evening with glibc floors
    and no profiler (this bullet and the ones before) had the row at 0.793 to 0.878 x, mean
    0.840: the two runs sit at the bottom of that range. The floors run on mimalloc since commit 64b3b87,
    whatever the size of the effect, because a floor is the least work a call needs; the
    table on 4b0d322 was the first run with them.
- **The first table with fair floors (the table on 4b0d322).** Until the table on ad639b3 the
  floors and the load client ran in the bench's binary on glibc's allocator, while the vault
  runs on mimalloc, which the vault chose because it raised the cold cache from 0.83 to
  0.94 x. A floor on a slower allocator than the vault's is not the least work a call needs,
  and it likely flattered the rows whose floors allocate. The bench's binary now runs on mimalloc too
  (commit 64b3b87). The vault's code was the same for both tables, so they
  differ in the floors' allocator and in the machine's hour. Two partial runs of the cold
  cache with mimalloc floors gave 0.789 and 0.785 x, against 0.79 to 0.88 x (mean 0.84) in
  seven runs with glibc's the same evening: lower, at the bottom of that range, not outside
  it. One full run each cannot split the two causes row by row either: within the run on 4b0d322 the hot
  path made 0.866 x its gRPC floor early and 0.945 x beside the keeper later, with the same
  floor.
- **The bench's vault now logs as in a container, and the per-call spans left the logs.**
  Until commit 0e80358 the bench started the vault with `[log] level = \"warn\"` and
  `format = \"text\"`, while a container runs the defaults, info and JSON lines (the Helm chart
  sets no log settings). At info the log layer opened every call's RPC span, formatted its
  fields as JSON and, when the handler recorded the status code, parsed that JSON back into a
  map and wrote it again (tracing-subscriber's JSON field formatter does this whenever a span
  is recorded into twice); a cache miss did the same for each database statement's span. No
  table showed it, because no table ran at info. The RPC and statement spans are now for
  traces only (commit 50b36d7, `src/telemetry.rs`): the log layer leaves them out, and without
  an OTLP endpoint nothing opens them. Log lines still list the refresh and token-request
  spans. ABBA runs on 2026-12-06, the same bench binary, the vault's binary swapped between
  runs:
  - `--only hot`, commit d056773 with the bench's old settings (warn, text): 0.870, 0.906,
    0.889, 0.868 and 0.855 x the gRPC floor;
  - the same commit with the container's settings: 0.660, 0.650 and 0.673 x, about a quarter
    less;
  - commit 50b36d7 with the container's settings: 0.853 and 0.888 x, the same as at warn.
    Two first versions of the change are worth knowing about. One combined the level filter
    with the exclusion in a way that dropped the filter's maximum level, so tracing asked
    about every debug and trace callsite in h2, hyper and tokio: 0.444 and 0.455 x. The next
    added the traces' layer as an empty `Option` when no OTLP endpoint is set; an empty
    `Option` layer answers \"always\" for every callsite, so the RPC span was still opened for
    nobody: 0.818 and 0.810 x. The unit tests in `src/telemetry.rs` check both.
  - `--only cold`, the container's settings: d056773 0.679 and 0.715 x the database floor
    (p99 1.71 and 1.51 x), 50b36d7 0.797 and 0.839 x (p99 1.23 and 1.37 x); against the
    design's own work, 0.864 and 0.837 x, then 0.899 and 0.875 x.
  - `--only throughput`, commit 50b36d7's binary, ABBA right after the table: at info in JSON
    0.752 and 0.689 x the bare client (0.859 and 0.832 x the vault's own statements), at warn
    in text 0.748 and 0.710 x (0.875 and 0.833 x). The refresh's log lines cost nothing these
    runs can see; the fall from the table on 4b0d322 (0.854 x) came with the machine's hour.

  What logging still costs on a miss is the audit trail's log line per row (target
  `token_vault::audit`), which the design keeps beside the table, and on a refresh the
  refresh's own info lines. The table on 0e80358 is the first measured with the container's
  log settings, so every row against the table on 4b0d322 compares the code and the logging
  together.
- **The bearer row's floor now gets the same header (after the table on 0e80358).** Until commit
  5defecc the load client sent `authorization: Bearer …` to the vault only, so in the bearer
  row the client built, encoded and sent a header per call for the vault and not for its
  floor, on the same two cores, and the floor never decoded it. From the table on 403d448 on the
  floor is sent the same header and ignores it, as every authenticated call needs the header
  sent and received whatever the server does with it. A profile of the bearer vault
  (`perf record -F 999 -g`, 25 s of `--only auth`, 8,912 samples) put its own authentication
  work at about 1.3 % of its samples (SHA-256 0.29 %, the constant-time match 0.43 %, the
  authenticator's lookup and identify 0.35 %, the semaphore 0.28 %) and the audit's count near
  1 %, less than the row's 0.07 to 0.11 x below the plain hot path. ABBA `--only auth` with
  the two bench binaries, 2026-12-06 on a noisy hour: without the header 0.818 and 0.852 x,
  with it 0.794 and 0.911 x, pairs from 0.575 to 1.129: the runs cannot tell the two apart.
- **Two tables on another machine, and where a refresh's CPU goes when the machine is full
  (2026-12-06, after commit 403d448).** The session's machine was an `AMD EPYC` with 2
  cores, where the tables before ran on an `Intel(R) Xeon(R) Processor`. It is slower for
  this work: the hot path's gRPC floor made 36,487 req/s in the first table against 67,854
  before, and the pairs within a row spread wider (the hot path 0.748 to 1.180, over mutual
  TLS 0.685 to 1.262). Both tables ran the same vault code as the table on 0e80358; commit
  f59829b only added tests to 403d448.
  - The table on 403d448 (EXIT 0 in 2,122 s): 15 of 24 met. Met for the first time since
    the container's log settings: both refresh-latency rows on Postgres (1.05 and 1.08 x),
    the cold cache on Postgres (0.920 x, p99 1.11 x) and the hot path on SQLite (0.927 x).
    Missed: with bearer authentication 0.874 x (pairs 0.851 to 0.957; the first table with
    the header sent to the floor too), h2load 0.888 x, mutual TLS 0.842 x, the cold cache on
    Postgres against the design's own work 0.954 x with p99 1.29 x, on SQLite 0.876 x
    (p99 1.24 x) and 0.939 x (p99 1.37 x), refresh latency on SQLite 1.28 and 1.29 x, and
    refresh throughput 793 refreshes/s, 0.683 x the bare client.
  - The table on f59829b (EXIT 0 in 1,687 s), the one above: 15 of 24 met. Refresh
    throughput made 963 refreshes/s, 0.826 x the bare client (pairs 0.790 to 0.865), against
    793/s and 0.683 x an hour before with the same code; the hot path's floor made 42,619
    req/s against 36,487. The machine's hour moved the row more than anything in this stop.
  - **Refresh throughput, taken apart.** Every pair of the first table sat below 0.80 x
    (0.666 to 0.778), and three `--only throughput` runs between the two tables gave 0.773,
    0.751 and 0.752 x (pairs 0.724 to 0.843). Against the vault's own statements it met its
    target in both tables (0.825 and 0.897 x). The CPU of every process was read from
    `/proc` every 0.5 s through one `--only throughput` run (894 refreshes/s, the bare
    client 1,157, the vault's statements ~1,060), in the first round's three sides:
    - while the vault refreshes, the machine is full (4 % idle): the vault's process uses
      ~0.63 ms of CPU per refresh, Postgres ~1.27 ms, the bench's process (load client and
      scripted provider) ~0.22 ms;
    - while the bare client runs its one-row commits, 45 % is idle: Postgres ~0.50 ms,
      the bench's process ~0.35 ms per refresh;
    - while the vault's statements run from a bare client, 27 % is idle: Postgres ~0.96 ms,
      the bench's process ~0.38 ms per refresh.

    So on two cores the vault's side is bound by CPU, and the floors' sides are not: they
    wait on the provider's delay and the commits. The vault's extra per refresh is its own
    process (gRPC, the refresh task, the audit, the logs) and ~0.3 ms more of Postgres, most
    likely the audit trail's rows, which the bare client does not write (the refresh event's
    row, and the window's count per tenant; capping the latter, below, gained ~0.02 x). A profile of
    the vault alone (`perf record --call-graph dwarf -F 249`, 6 s of its side, 433 samples):
    its statements through sqlx 21 %, sqlx's ping of each connection it takes back 15 % (a
    round trip to Postgres per statement, see the cold-cache bullets), the gRPC server ~13 %,
    the token request 9 %, keeping the rotation for failover 5 % (a moka insert, most of it
    rehashing as the map grows by 10,000 entries a round), JSON log lines ~4 %, the audit
    writer 3 %. No one step holds the gap. Every database connection here is TLS: the local
    server has `ssl = on` and sqlx's default `sslmode=prefer` takes it, for the floors' pools
    as for the vault's, so every row pays it alike.
  - The audit's count rows, measured: with `audit.max_aggregate_keys = 1` (the window
    writes one overflow row instead of one per tenant) two `--only throughput` runs gave
    0.786 and 0.762 x against 0.751 and 0.752 x with the default, ABBA: about +0.02 x. The
    default stays: who got which tenant's token is what the audit is for.
  - The refresh events' INSERTs, measured: a throwaway build whose audit writer waited up to
    20 ms for more events before each INSERT (today it writes whatever is queued at each
    wake-up), its binary swapped with the committed one between `--only throughput` runs
    (06:47 to 06:56, a quicker hour: the committed vault made 1,005 and 1,037 refreshes/s).
    Committed 0.849 and 0.873 x the bare client, batched 0.876 and 0.842 x (ABBA): no
    difference, as when an earlier stop tried batching the audit. Not kept.
  - What would move the row, not done in this stop: a pool without sqlx's release ping (the
    cold-cache bullet above measured what it does to a floor; it needs its own
    cancellation tests), and a cheaper hasher for the rotations kept for failover.
- **A pool of the vault's own on Postgres, and a transaction left open by a caller that gave up
  (2026-12-06, after commit 0c3d9ac).** The bullets above asked for a pool without sqlx's ping
  on release, tested with thousands of cancellations. Commit ae4ff91 built it: deadpool's pool
  of sqlx connections (`src/store/postgres/pool.rs`), which puts a connection whose work
  finished straight back and checks only one left mid-work (an error, or a caller's future
  dropped). Its cancellation test found a bug in what it replaced, worse than the ping's cost:
  a caller that gave up while its `BEGIN` was in flight left a pooled connection inside a
  transaction that nothing would end, and the statements that followed on it (in the test's
  failing runs a health check, the failover identity check, the audit trail's INSERT) were
  never committed. On SQLite, sqlx's `BEGIN IMMEDIATE` had the mirror gap. docs/reliability.md
  has the test and the failure counts. Commit fc808d7 makes the pool hand out the connection
  used last (the rotation over 20 connections that an earlier bullet priced at 0.7 to 1.9 ms
  of the refresh path's statements on a slow hour). Commit 8bc5c6a puts the Postgres
  database floors (the cold cache's, refresh throughput's bare client) on the same pool, as
  the cold-cache bullet above required: no floor pays a round trip the vault no longer pays.
  The floors built on the vault's store (the design's work per miss, the vault's own
  statements) use it through the store. So from the table on fc808d7 on, the ratios compare
  a vault and floors that both skip the ping.
  - Refresh throughput, ABBA with one bench binary (fc808d7's floors), the vault's binary
    swapped between `--only throughput` runs (08:33 to 08:43): the vault on 0c3d9ac (sqlx's
    pool) made 991 and 953 refreshes/s, 0.843 and 0.810 x the bare client; the vault on
    fc808d7 made 991 and 1,001/s, 0.841 and 0.859 x. About +2.5 % on the means, inside the
    hour's spread. The bare client made 1,166 to 1,178/s in all four runs, as the sqlx-pool
    floor did in the table on f59829b (1,166/s): on this row the ping cost the floor nothing
    visible. The ping's 15 % of the vault's CPU did not turn into 15 % more refreshes: the
    machine is shared with Postgres, which does most of the work per refresh (the bullet
    above).
  - foldhash for the rotations kept for failover (5 % of the vault's CPU in the profile
    above, SipHash rehashing moka's map): a throwaway build, ABBA against fc808d7 (08:47 to
    08:57). fc808d7 939 and 999 refreshes/s, 0.807 and 0.850 x; with foldhash 930 and
    984/s, 0.804 and 0.832 x. No difference the runs can see. Not kept.
- **Traces exported over OTLP: what tracing costs a call (2026-12-06, commits 4656fa0 and
  after).** No row ran the vault with an exporter, which is how a platform team runs it. The
  bench now starts a stand-in collector (`tests/support/otlp_collector.rs`, shared with the
  tests: OTLP/gRPC for traces and metrics, decoding each export and counting its spans,
  nothing kept) in the bench's process beside the load client, as a collector shares a
  node's cores, and two vaults exporting to it: one at the SDK's default sampler (`parentbased_always_on`, every call a span), one at
  `parentbased_traceidratio` with 0.01, both set with OpenTelemetry's standard variables.
  Each runs against the gRPC floor, which exports nothing. The issue sets no target for
  these rows; the bench's own are 0.90 x at 1 % (a trace that is not kept should cost a call
  next to nothing) and 0.80 x with every call sampled.
  - The table on 4656fa0: every call sampled 0.737 x (pairs 0.697 to 0.785), and 0.981 spans
    reached the collector per call sent. That count took every span, the authorizations'
    and the cache's re-reads' included, so slightly more than 2 % of the calls' spans did not
    arrive, most likely dropped from the exporter's queue (2,048 spans by default), which the
    SDK drops from rather than make a call wait. At 1 %: 0.927 x (pairs 0.903 to 1.052),
    0.010 spans a call. Since the commit after the table the row counts server spans only
    (one per call sampled), after the authorizations' spans have arrived.
  - CPU per call, a new note beside these rows and the hot path's (each process's user and
    system time from /proc over the five pairs, divided by the calls sent to it, warm-ups
    included): a second measure beside throughput, which the load client's share of the two
    cores does not enter, though it moves too (the vault with every call sampled, same code:
    30.4 us a call in the table's run, 42.5 and 39.7 us in the partial runs below). In the
    table's run: the hot path's vault 23.0 us a call against its floor's 21.4 us (1.08 x);
    with every call sampled 30.4 us against 21.6 (1.41 x); at 1 % 26.1 us against 23.1
    (1.13 x). So an exported span cost the vault ~7 us of CPU a call, and at 1 % the layer
    still cost ~1 us against the floor (1.13 against 1.08 x): it builds every span's data
    before the sampler drops it.
  - Commit 4656fa0 turned off what tracing-opentelemetry's layer records for every span,
    sampled or not, and nothing here reads: the thread's id and name (a copy of the name per
    span), busy and idle times (two clock reads per poll of an instrumented future) and
    making the span's context current on every poll (parents are found through `tracing`'s
    span tree; the telemetry test's parent links hold without it). Five `--only otlp` runs
    before the commit (10:37 to 11:08; A without, B with the first two off, C with all
    three), CPU per call against the floor with every call sampled: A 1.48 and 1.61 x, B
    1.23 x, C 1.36 and 1.52 x; at 1 %: A 1.19 and 1.36 x, B 1.21 x, C 1.22 and 1.20 x. Within
    the runs' spread; kept as work removed that nobody reads.
  - The commit after it also turns off each span's source location and target (four
    attributes more to build, encode and decode per span). ABBA `--only otlp`, 11:52 to
    12:04, A the table's commit, B this: with every call sampled, A 0.686 and 0.724 x with
    CPU per call 1.50 and 1.51 x the floor's, B 0.924 and 0.789 x with 1.20 and 1.36 x,
    both B runs ahead of both A runs on both measures (the vault's own CPU a call 42.5 and
    39.7 us against 33.8 and 33.4 us). At 1 % the opposite, with no mechanism to explain it:
    A 0.983 and 0.921 x (1.16 and 1.15 x CPU), B 0.776 and 0.829 x (1.33 and 1.23 x). The
    change only skips work, so it stays; whether the every-call row now meets 0.80 x waits for
    the next full table.
  - A trace-quality fix found while reading the spans: a caller that joined a refresh in
    flight made a `refresh` span of its own that stayed empty, exported beside the real one.
    The test `telemetry::callers_joining_a_refresh_in_flight_add_no_refresh_span` (50
    callers at once on a replica that had not cached the token) counted 50 `refresh` spans
    for the one refresh in three runs of the code before; the span is now made only for a
    refresh that starts, and the test counts one.
  - What would move the every-call row further: a sampling decision before a span's data is
    built, which tracing-opentelemetry does not offer (the SDK's sampler runs when the layer
    starts the span, after its data is built), and a cheaper export (its encoding, and here the collector's decoding, share the
    machine). The README and the chart's values say to sample a fraction on a busy replica.
- **The table's resolution, and comparisons in slices (2026-12-06, commit 666991b).** A full
  run on commit c44d9d9 (13:45 to 14:18, the old method, the machine at about 60 % of its
  speed in the table on 4656fa0: the hot path's floor 26,597 req/s against 44,243) met 19 of
  the 24 rows with a target. Its vault differs from the one in the table on 4656fa0 only in what the tracing
  layer records (nothing without an OTLP endpoint) and where the refresh span is made (which
  changes only the refreshes that callers join, none on these rows' paths), yet six of the
  rows that export no traces changed sides:
  - now missed: the hot path with bearer authentication 0.879 x (was 1.017 x), the cold cache
    on SQLite 0.872 x with p99 1.38 x (0.986 x);
  - now met: mutual TLS 0.915 x (0.842 x), refresh latency on SQLite 1.11 and 1.14 x (1.29 and
    1.26 x), the cold cache on Postgres against the design's work 0.997 x with p99 0.98 x
    (0.947 x, p99 1.49 x).

  The traced rows, whose code did change: every call sampled 0.854 x (0.737 x), met; 1 %
  0.822 x (0.927 x), missed.

  So a row's met or missed said as much about the hour as about the vault. Two things changed:
  - **How a comparison runs.** Each used to be five pairs of a vault run and a floor run of
    6 s, each run on new connections after a 2 s warm-up, the two runs of a pair 8 s apart.
    Now the bench opens the connections to both once, warms each up for 2 s, then alternates
    20 pairs of 1.5 s slices (each measured after 200 ms of load; `load::alternate`), so the
    two sides of a pair are under 2 s apart. The ratio is still the median pair's, shown with
    the middle half and the range of the pairs; req/s and latencies are now each side's over
    all its slices, since both saw the same stretches of the machine. A comparison takes
    ~70 s instead of ~80 s. (After this table: 21 pairs, the ratio of the pooled req/s
    printed beside the median, and errors counted in the warm-up and between slices too;
    a review of the change found all three.)
  - **A resolution row.** The gRPC floor against a second process of the same binary,
    compared as the vault is. Its median says how far from 1 the machine alone puts a ratio
    in that run.

  Measured before the change was kept, `--only hot` runs with both methods (the old one
  reproduced as 5 pairs of 6 s slices after 2 s of settling), 14:21 to 14:45:
  - the hot path, slices: 0.928, 0.917, 0.912, 0.965 x; old method: 0.813, 0.949 x (and
    0.942 x in the c44d9d9 table's run an hour before);
  - the floor against its twin, slices: 1.054, 1.043, 1.047, 1.024, 0.979, 1.006 x, and with
    the two floors' places swapped 0.991 and 1.005 x; old method: 1.023 and 1.013 x.

  The slices made the hot row repeat more closely (0.912 to 0.965 against 0.813 to 0.949),
  few runs as these are. The twin did not come out at 1: its median ranged 0.979 to 1.054,
  and within one comparison its pairs spread 0.57 to 1.26 at worst. It stood in the vault's
  place and was the fresher process, and it came out above 1 in six of seven runs with
  slices; with the places swapped (the long-running floor in the vault's place) 0.991 and
  1.005 x. So part of it may be a lean rather than noise: a process that has just started
  running faster than one that has served load for minutes, or the vault's place in the
  order. Not settled by these runs. It matters beyond the resolution row, because most
  rows compare a vault started for the row with the gRPC floor that has run since the
  start. Until it is settled, a row within 5 % of its target is not decided by one table;
  the resolution row says how wide the machine's share was in each run, and running the
  twin in both places in every run would separate the lean from the noise.
  In this table's run (the first full run with slices) the resolution row made 1.015 x, its
  pairs' middle half 1.002 to 1.026. The middle half of the vault's rows was 0.02 to 0.08
  wide on the hot paths (the hot path 0.898 to 0.951, mutual TLS 0.913 to 0.989), 0.12
  beside the keeper and 0.24 on SQLite's hot path, and 0.10 to 0.14 on the cold caches,
  whose 1.5 s slices hold 10,000 to 17,000 calls against ~40,000 on a hot path. The slices
  also made the traced rows' gap plain: every pair at 1 % between 0.722 and 0.846.
  - The two traced rows are where the next work is. With 1 % sampled, the vault's CPU per
    call was 1.36 x the floor's (1.12 x untraced). The candidates are building each span's
    data before the sampler drops it, and, with an exporter configured, the metrics SDK
    recording each call's counter (a no-op without one). A profile of the vault at 1 %
    would show which (the next bullet). One difference from the tables before: between its slices the vault
    now idles ~1.7 s, so the exporter's queue drains, and the every-call row's 1.000 spans
    a call (0.981 in the table on 4656fa0, counted differently) is not comparable with the
    older figure.
- **What an unsampled span costs, profiled (2026-12-06, commits 842cbfd and 1e5c479).** The
  vault at 1 % sampled, profiled with `perf record -F 299 --call-graph dwarf` for 25 s in the
  middle of its comparison in `./scripts/bench --only otlp`, shares of the vault's samples
  inclusive of callees:
  - On 842cbfd (4,234 samples): tracing ~9 % in all. `telemetry::rpc_span` 4.8 %: the
    span's creation with tracing-opentelemetry's `on_new_span` 2.4 %, looking up the global
    propagator and its `extract` 1.8 %, `set_parent` 0.6 %. Closing the span 2.6 %
    (`on_close` 1.5 %, of which the SDK's `build_with_context`, the sampler included,
    1.0 %). Recording the status 1.1 %. The metrics SDK's counter 0.7 %. The largest single
    symbol, `memmove` at 4.4 %, moves the request's futures in hyper, h2 and tonic.
  - Commit 1e5c479: a call with no `traceparent` is a trace's root as it stands, so the RPC
    span is made a root in `tracing`'s tree (`parent: None`) and the extraction and
    `set_parent` run only when the header is there, with the Trace Context propagator named
    in place of the global lookup (the one format the vault reads). The telemetry test now
    also checks that the calls without the header come out as roots of traces of their own
    (it passed before the change too: it pins the behaviour, the change keeps it).
  - On 1e5c479 with the bench's next commit (3,893 samples): tracing ~6 %. `rpc_span`
    2.8 % (`on_new_span` 1.5 %); closing the span 1.4 % (`on_close` 0.8 %, of which
    `build_with_context` 0.5 %); recording the status 1.2 %; the metrics SDK's `measure`
    0.5 %; `on_exit` 0.3 % (not picked out in the first profile). The extraction and
    `set_parent` are gone.
  - So `rpc_span` fell from 4.8 to 2.8 %, and closing the span from 2.6 to 1.4 %, about 110
    against 55 samples, more than sampling noise. A likely reason for both is that the
    span's parent context is now the empty default: before, `on_new_span` looked up the
    current span and cloned the thread's OpenTelemetry context, `set_parent` replaced it with
    the extracted one, and the SDK read that at close. Not traced further.
  - CPU per call against the floor, before and after in full tables: at 1 %, 1.36 x
    (666991b) and 1.20 x (this table); with every call sampled, which the change spares the
    same work per call, 1.43 and 1.41 x; the `--only otlp` run under the profiler 1.21 x at
    1 %. The every-call row moved about as much as the removed work predicts. The 1 % row's
    CPU ratio has ranged 1.13 to 1.36 x across tables, so its move beyond a few hundredths,
    like the row's 0.803 -> 0.853 x, is within run-to-run spread.
  - **The floor of this row, and an honest target.** What remains of tracing at 1 % is
    tracing-opentelemetry building every span's data (name, kind, six attributes, start
    time), recording the status into it and handing it to the SDK when the span closes,
    where the sampler drops 99 % of it. The layer offers no sampling decision before that
    work, and the span has to exist in `tracing` for the 1 % that are kept and for their
    children (refresh, token request, statements) to find their parent. That work is ~6 %
    of the vault's samples, so the row's floor is the untraced hot path of the same run less
    ~6 %: 0.85 to 0.89 x for the untraced 0.902 to 0.948 x of this session's runs. The
    0.90 x target needs an untraced run at 0.96 x, which none of the last four tables made
    (0.955 x in the table on 4656fa0, whose 0.927 x at 1 % came from the old method with
    pairs 0.903 to 1.052). **So 0.90 x at 1 % is out of reach with tracing-opentelemetry;
    the honest target beside it is 0.94 x the untraced hot path in the same run**, which
    this table's 0.853 against 0.902 x (0.946) meets by less than the resolution, so
    unsettled. The row keeps its 0.90 x and is counted missed. Meeting 0.90 x would take
    sampling at the RPC's start, before any span data is built, with the decision carried
    to the children: a layer of our own or a change to tracing-opentelemetry, not tuning.
    (Done since: the bullet \"Sampling decided where a trace starts\".)
  - The every-call row delivered 0.965 server spans a call in this table (1.000 in the
    table before): at 35,545 calls/s more spans than the exporter's queue (2,048 by
    default) could hold were dropped, as the SDK does rather than make a call wait.
- **The resolution in both places (2026-12-06, commit 1e5c479 and after).** The table before
  left open whether the resolution row leaned above 1 because the second floor process was
  fresh (started for the row, as the vault is for most rows) or because it stood in the
  vault's place in the load client. The bench now runs the resolution a second time with the
  two floor processes' places swapped. If the place leaned it, both rows lean alike; if
  freshness did, the swapped row leans less (by then the second process has served a whole
  comparison, so it comes out nearer 1 rather than below it).
  - In this table: 1.016 x and, swapped, 1.016 x (pooled 1.007 and 1.007 x).
  - Two `./scripts/bench --only hot,auth` runs right after (17:28 to 17:38, the second cut
    short after its resolution rows), with the bench's next commit: 1.015 and 1.007 x
    swapped (pooled 1.030 and 1.014 x), then 0.998 and 1.008 x swapped (pooled 1.006 and
    1.021 x). The hot path in the same runs 0.939 and 0.948 x.
  - With the runs of the table before: without the swap 1.054, 1.043, 1.047, 1.024, 0.979,
    1.006, 1.015, 1.016, 1.015, 0.998 x (mean 1.020); swapped 0.991, 1.005, 1.016, 1.007,
    1.008 x (mean 1.005). So the vault's place carried a lean, about +0.5 to +1 %, and the
    process started for the row perhaps about +1 % more; these runs could not tell (the
    last two sub-bullets do).
  - The pair's order does not explain it: 21 pairs put the floor's side first 11 times, and
    the pooled ratio, in which that one extra pair weighs 1/21, leans too (1.006 to
    1.030). Those runs also printed the medians by which side went first, but took the
    upper middle of the 10 pairs with the vault first; the bench now takes the mean of the
    two middle ones, and those figures are not quoted.
  - What was left was the vault's side of the load client itself, whose connections were
    opened and warmed up first, and perhaps the fresh process.
  - **The setup made even.** `load::alternate` now opens the connections one to each side
    in turn and warms both sides up at once. Three `./scripts/bench --only hot` runs on
    that code (18:14 to 18:26), the resolution and, swapped: 1.003 and 0.996 x (pooled
    0.994 and 1.008 x), 0.988 and 1.001 x (0.987 and 0.997 x), 1.004 and 0.992 x (1.011
    and 0.972 x). Their means: medians 0.997 x and pooled 0.995 x, against 1.010 and
    1.014 x for the six measures before the change; the two places now straddle 1, and
    the row with the second process in the vault's place (1.003, 0.988, 1.004 x) leans no
    more than the swapped one (0.996, 1.001, 0.992 x), so in these three runs the fresh
    process showed no lean either. The medians by which side went first (the vault-first one now the mean of its 10
    pairs' two middle ones) stayed within 0.980 to 1.005 on the resolution rows. The hot
    path in those runs: 0.927, 0.912, 0.939 x.
  - A fourth run, `./scripts/bench --only hot,auth,tls` on commit 79db2d9 (18:46 to
    18:54), did not straddle 1 that way: 1.032 x (pooled 1.024 x) and, swapped, 0.946 x
    (0.935 x). Both say the second process, started for the row, served 3 to 5 % more than
    the long-running floor in that run, whichever place it stood in. The hot path in that
    run 0.953 x, bearer 0.926 x, mutual TLS 0.950 x.
  - So over the four runs on the even setup: the place's lean is gone (the two rows'
    geometric mean 0.995 x, where the six measures before came to about 1.01 x); a
    difference between two processes of the same binary remains. On average it favoured
    the process started for the row by about 1 % (mean 1.007 x in the vault's place, 0.984 x
    swapped), but 3 to 5 % in one run of four. Most rows compare a vault started for the
    row with the floor running since the start, so a row can carry a few percent of it in
    either direction, and this table, measured before the change, carries the place's
    lean besides: its hot path (0.902 x) and bearer (0.903 x) rows are met by less than
    either. Next: start each row's floor fresh too, so that both sides of every row are
    new processes (done for the rows whose vault is started for the row, the next bullet).

- **A floor started for the row (commit 8774fde).** The runs on the even setup (the bullet
  before) left two processes of one binary differing by a few percent, in whichever place
  each stood. Most rows compared a vault started for the row with the gRPC floor running
  since the start, so one floor process's difference ran through all of them. The rows whose
  vault is started for the row (bearer, the two traced rows, the hot path on SQLite, the hot
  path beside the keeper) now start a gRPC floor for the row too, as the mutual-TLS row
  always did with its TLS floor. The hot path and the resolution rows keep the floor
  started at the beginning, with the vault started at the beginning too.
- **The cold cache's bound, in the same run (2026-12-06, commit 8774fde).** The bullet
  \"Cold cache: the design's own work per miss\" found, on 2026-12-05 with the floors on
  glibc's allocator, that the design's own work alone made 0.835 and 0.869 x the database
  floor. Had that held, the cold row's 0.90 x would be out of reach without dropping work
  the design requires. It was measured in throwaway runs only, so each cold-cache scenario
  now measures it: a third comparison puts the floor doing the design's work in the vault's
  place against the database floor (`Report::bound_row`). The floor doing the design's work
  now also logs each audit row with the vault's own logging and default settings (JSON
  lines on stdout, `token_vault::telemetry::init`), since the design keeps a
  `token_vault::audit` log line per row beside the table. Until then it had no subscriber,
  so those lines cost it nothing. Checked with `strace -e trace=write` on the floor during
  a run: one 301-byte JSON line per audit row on fd 1.
  - Postgres, `./scripts/bench --only cold` runs (2026-12-06, 20:03 to 20:30; the vault's
    code that of 07efbd8):

    | run | vault / database floor | vault / design's work | bound: design's work / database floor |
    |---|---|---|---|
    | 1 (no bound row yet) | 0.852 (pooled 0.824) | 0.890 (pooled 0.931) | - |
    | 2 (profiled, below) | 0.791 (pooled 0.835) | 0.913 (pooled 0.918) | - |
    | 3 (bound row; floor not logging) | 0.887 (pooled 0.861) | 0.903 (pooled 0.902) | 0.956 (pooled 0.947) |
    | 4 (floor logging its audit rows) | 0.869 (pooled 0.902) | 0.898 (pooled 0.923) | 0.958 (pooled 0.906) |
    | this table | 0.827 (pooled 0.843) | 0.963 (pooled 0.935) | 0.935 (pooled 0.942) |

    The design's own work made 0.935 to 0.958 x the database floor: the 0.90 x is within
    its reach (the design's work as the vault's own store, keyring and audit do it today),
    and the earlier 0.835 and 0.869 x no longer hold (they came before the floors moved to
    mimalloc, 64b3b87, and before the audit's maps were hashed with foldhash, ad639b3). What
    remains between the cold row and 0.90 x is what the vault adds around that work, and
    the row's own spread: in the table the bound and the vault against the design's work
    multiply to 0.900, while the row made 0.827 x, its pairs from 0.590 to 1.262. The three
    comparisons run minutes apart on a machine whose speed drifts.
  - Where the vault's addition goes. Run 2 profiled the vault and the floor doing the
    design's work over the same 25 s (`perf record -F 299 --call-graph dwarf,16384 -p
    <pid>` on each, about 8 s into the second comparison): 2,896 samples of the vault and
    2,602 of the floor. Scaled to equal calls (the vault's samples divided by the run's
    0.913), the vault took 3,172 against the floor's 2,602, 1.22 x. Each sample was put in
    the first of these groups whose frame is on its stack:

    | group | vault (scaled to equal calls) | floor | vault's extra, % of the floor's total |
    |---|---|---|---|
    | the read statement through the pool (`Pool::fetch_optional`), the row's decode included | 1,068 | 992 | 2.9 |
    | each connection's HTTP/2 task (frames, flushes, the socket writes) | 890 | 777 | 4.3 |
    | the gRPC stack, the vault's layers and the handler beyond the other groups | 789 | 594 | 7.5 |
    | the audit writer (the log line per row included: 88 in the vault, none in the floor then) | 151 | 87 | 2.5 |
    | the cache's put, get and sweep | 78 | 0 | 3.0 |
    | unsealing (the floor: `open_str`; the vault: `open_access_token`) | 79 | 52 | 1.0 |
    | tokio's scheduler outside the above | 87 | 61 | 1.0 |
    | the audit's count | 27 | 38 | -0.4 |

    The same read statement and the same HTTP/2 code cost the vault 8 and 15 % more per
    call than the floor. Both are the same code in both processes, so this is most likely
    the machine being full (1 to 3 % idle in the earlier `vmstat` runs): the side answering
    slower gets fewer answers per write and per wake-up, and pays more per call for them.
    That was not separated from the rest here. Beyond that, no single step of the vault's
    own holds the gap alone: the gRPC stack and the vault's layers (authentication, policy,
    metrics, the single flight, the deadline) 7.5 %, the cache 3 %, the audit writer 2.5 %
    (its log lines alone 3.4 %, the rest of the vault's writer cheaper than the floor's).
    The 7.5 % group, the one near the ~8 % the row lacked in this table, was not split
    further. The floor's 37 samples in `tracing`'s `log` fallback (`Span::log`,
    `record_all`: with no subscriber set, each disabled span reports to the `log` crate)
    should go with the subscriber it now has; no profile was taken after the change.
  - SQLite: in the table the bound came out at 1.123 x (pooled 1.128 x). The design's work
    through the vault's store answered more calls a second than the database floor's one
    SELECT, so on SQLite the database floor is not the least work a miss needs, and the
    cold row's 0.962 x (met) is measured against a floor that flatters it; against the
    design's own work the vault made 0.862 x (missed). The floor opens its connections
    read-only and the store does not, but that is not the cause: a throwaway
    `./scripts/bench --only sqlite` run with the floor's connections opened as the store's
    (21:10 to 21:18) gave the bound 1.124 x (pooled 1.129 x), the cold row 0.976 x and the
    vault against the design's work 0.881 x. The cause was not found this session. Until it
    is, the SQLite cold row is read beside its bound, not alone.
  - A profile of both SQLite floors over the same 25 s of the bound's comparison
    (`./scripts/bench --only sqlite` on 1015ccd, 21:41 to 21:49; `perf record -F 299
    --call-graph dwarf,16384 -p <pid>` on each): 3,426 samples of the database floor and
    6,034 of the floor doing the design's work. The latter answered 1.066 x as many calls a
    second in that run (11,181 against 10,225 req/s over all slices). So per call the
    design's work took about 1.65 x the database floor's CPU and still answered more: the
    database floor is not held back by its own CPU but waits on something else. Neither
    slept in SQLite's WAL read locks (no `unixSleep` on any stack). Each spent a fifth to a
    quarter of its samples handing statements to sqlx's SQLite worker threads and parking
    them. What the database floor waits on is not found. In that run the cold row made
    1.000 x the database floor and 0.915 x the design's work.
- **Sampling decided where a trace starts (2026-12-06 and 07, commits 7cffc7c and f937349).** The
  step the bullet \"What an unsampled span costs\" named. Before, tracing-opentelemetry built
  every span's data (name, kind, attributes, start time), recorded into it and handed it to
  the SDK when the span closed, where the sampler first ran and, at 1 %, dropped 99 % of it.
  Now the sampler the environment configures (`OTEL_TRACES_SAMPLER` and
  `OTEL_TRACES_SAMPLER_ARG`, read by the SDK's own `Config` as before) is asked once per
  trace, where the trace starts (`src/telemetry/sampling.rs`):
  - for a call, in `telemetry::rpc_span`, with the caller's `traceparent` as the parent,
    before the span exists. A call that is not sampled gets a bare span of its own callsite
    (`rpc.unsampled`, no fields), which tracing-opentelemetry never sees;
  - for any other span that starts a trace (background work), in the OpenTelemetry layer's
    per-layer filter.

  Every other span follows its trace: the filter enables it when an exported span encloses
  it and not when only unexported ones do. A layer that does nothing wants every span that
  may be exported, so that each exists in `tracing`'s tree whether or not it is exported
  (the unsampled call's span, the refresh's span at `warn`), and the spans under an
  unsampled call cannot start traces of their own. The SDK keeps whatever it is handed
  (`Sampler::AlwaysOn`). Two differences from the SDK deciding alone are written in the
  module's doc: a span is decided by the span current where it opens, not by an explicit
  `parent:` (the vault's spans are contextual; the call's span is decided in `rpc_span`);
  and for a trace started here, `traceidratio` is asked with a trace id drawn for the
  decision rather than the one the SDK gives the span, which keeps the fraction and only
  matters to a downstream sampler by trace id (the vault propagates no trace context).
  - Measured, `./scripts/bench --only hot,otlp`, each row against the gRPC floor:

    | run | commit | untraced hot path | 1 % sampled | every call sampled | CPU per call: untraced, 1 %, every call |
    |---|---|---|---|---|---|
    | partial, 23:13 to 23:20 | 7cffc7c | 0.945 | 0.919 | 0.776 | 1.06, 1.10, 1.36 |
    | this table, 23:21 to 23:54 | 7cffc7c | 0.966 | 0.917 | 0.722 | 1.06, 1.11, 1.44 |
    | partial, 00:03 to 00:10 | f937349 | 0.934 | 0.866 (pooled 0.893) | 0.740 | 1.09, 1.14, 1.37 |
    | partial, 00:11 to 00:18 | f937349 | 0.933 | 0.943 (pooled 0.935) | 0.744 | 1.09, 1.09, 1.42 |

    In the tables before, the 1 % row's CPU per call was 1.20 and 1.21 x the floor's; in
    these runs it stood 0.00 to 0.05 above the untraced row's, where the profile of the
    old code put ~6 % of the vault's CPU on the unsampled spans. Its throughput made 0.93 to
    1.01 of the untraced row's (0.866 against 0.934 x in the third run, 0.943 against
    0.933 x in the fourth, the same code: one run does not settle a row within a few
    hundredths of its target). The every-call row is where it was: its spans are all built
    and exported, as before.
  - Where the every-call row's CPU goes now, profiled (`./scripts/bench --only otlp` on
    0619610, 00:42 to 00:46; `perf record -F 299 --call-graph dwarf,16384 -p <pid>` on that
    row's vault for 20 s of its comparison, 2,946 samples; that run's rows 0.777 x and, with
    the profile's post-processing running beside it, 1 % 0.898 x). Each sample was put in
    the first group whose frame is on its stack: the OpenTelemetry batch processor's
    thread 5.5 % (turning spans into OTLP's protobuf types, dropping the span data), the
    tracing-opentelemetry layer 4.0 % (closing a span, which builds the SDK's span,
    opening one, copying the string attributes in `record_str` and recording the status,
    in that order of size), the exporter's gRPC client to the collector 1.8 % plus 1.4 % of its
    HTTP/2 connection, `rpc_span` and the sampler 1.3 %, `tracing`'s registry 1.3 %, the
    metrics 0.5 %: about 16 % of the vault's samples, no step above 5.5 %. The rest is the
    server's own work (HTTP/2 to the callers 65 %, the handler 16 %). By CPU per call
    (1.40 x the floor's in that run, the untraced row 1.06 to 1.09 x in the runs above),
    tracing is about a fifth to a quarter of the vault's CPU; the profile finds ~16 % in
    tracing's own frames and does not place the rest. So the row has no single cost left to cut: each
    exported span is built twice (tracing's, then the SDK's), converted, encoded and sent,
    each step a few percent.
  - A helper's review of 7cffc7c found two faults, mended in f937349:
    - with an exporter, the subscriber's maximum level fell to TRACE. The layer keeping
      the unsampled calls' spans had a filter with no level hint, and a pair of per-layer
      filters hints the lesser of the two, so `tracing` asked about every disabled callsite
      of the libraries and `try_init` set the `log` crate's maximum to Trace. The filter
      now hints INFO, and a test checks the whole subscriber's hint at log levels info and
      warn (it fails without the hint). It was in the table's traced rows;
    - that layer wanted only the unsampled calls' spans, so at `warn` a refresh's span
      under an unsampled call would rest on the log layer wanting it. The review expected
      the refresh's token request and statements to leak out as traces of their own. The
      two tests written for it (a unit test whose refresh span outlives its call with no
      log layer at all, and a vault process at the default sampler whose caller sent an
      unsampled `traceparent`) pass with the narrower layer too: tracing-subscriber made
      the refresh's span although both per-layer filters declined it. The reason, read in
      its source (0.3.23): with per-layer filters only, the registry's `enabled` answers
      whether any filter enabled the span as `FilterMap::any_enabled`, which is `bits !=
      u64::MAX`, true unless all 64 filter slots declined; so a span whose callsite is
      asked each time is made even when every filter declines it. The layer now wants
      every span that may be exported, so the guarantee does not rest on that.
    - without an exporter of ours, `rpc_span` makes the call's span again (disabled when
      nothing wants it), reading the caller's `traceparent` when a subscriber does, so that
      an embedder's own subscriber still sees the calls' spans; the sampler is installed
      only when `init`'s subscriber is the one installed.
  - Tests: unit tests through the layer `init` installs with an in-memory exporter (a call
    whose caller declined exports nothing, its refresh included, and fails without the
    keeping layer; calls without `traceparent` and background work start sampled traces
    under `parentbased_always_on`; traces started outside a call sampled at 0.25 over
    4,000, within five standard deviations, each kept whole); a vault process at
    `parentbased_traceidratio` 0 exports the whole trace of a call whose caller sampled it
    and nothing else; the existing telemetry tests (names, attributes, parents, the
    caller's trace continued, no secret, one refresh span per stampede) pass unchanged.
- **The cold cache on Postgres: what the vault adds per miss, split (2026-12-07, commit
  88d0d5e).** The next step the bullet \"The cold cache's bound\" named: its 7.5 % group (the
  gRPC stack, the vault's layers and the handler) taken apart. `./scripts/bench --only cold`
  (00:48 to 00:52): the cold row 0.820 x (pooled 0.847 x, pairs 0.521 to 1.339), the vault
  against the design's own work 0.873 x (pooled 0.876 x), the bound 1.021 x (pooled
  0.989 x). `perf record -F 299 --call-graph dwarf,16384 -p <pid>` on the vault for 25 s of
  its comparison with the design's work, 3,037 samples, each frame counted once per sample
  it is on:
  - the read statement through the pool (`Pool::fetch_optional`) 34.6 %;
  - the single flight around it (`Vault::read_active_access_token` outside the statement:
    the coalescer's map, its shared future and its wakers) 4.2 %;
  - the handler outside the read 9.5 %: unsealing 2.5 %, the cache's put 1.8 % and get
    0.7 %, the audit's count 1.1 %, the conversions to and from the messages 0.9 %;
  - tonic's decoding, response mapping and generated service outside the handler 5.2 %,
    which the floor's tonic server does too;
  - the authentication layer and the router outside the service 1.4 %;
  - the audit writer 3.0 %.

  Of these, what the floor doing the design's work does not do is the single flight (4.2 %),
  the cache (2.5 %), the authentication layer and routing (1.4 %) and part of the
  conversions: about 8 to 9 % of the vault's samples, most of the gap to that floor in this
  run (0.873 x, 12.7 % short of it), not all. Each is a duty of the design, the single flight and the cache the largest:
  closing the row needs them cheaper (the coalescer takes its lock three times and builds a
  shared future and a boxed read for every miss, even with no other caller for the key), not
  gone. Not tried that session; the next bullet did.

- **The cold cache's single flight, made cheap (2026-12-07, commits fcc0f93 and 70f813e).**
  The step the bullet above named. The read behind a miss was wrapped in a `futures` shared
  future, with a weak handle in the coalescer's map, so that any waiter could poll it and it
  lived as long as one of them did: three rounds of the map's lock, a shared future and a
  boxed read for every miss, and a waker registered on every poll, even with nobody else
  after the key (at 1,000,000 tenants, nearly always). `src/vault/reads.rs` now lets the
  first caller lead: it polls the read itself, and the map holds a key, an id and a start
  time until a second caller comes; waiters share a `watch` channel made by the first of
  them. A leader that gives up while others wait hands its read to a task of its own, which
  drives it for them and drops it when the last of them leaves, so the design's guarantees
  stand: an abandoned read returns its pooled connection at once, and a patient caller is
  not starved by impatient leaders. (A first form, never committed, restarted the read when
  its leader gave up; a helper's review found that callers with short deadlines arriving
  one after another could then cut every read short, and the hand-off replaced it.)
  - In isolation: a throwaway harness ran the old `Coalescer::run` and the new
    `ReadFlights::run` around a read that yields three times, 20,000 misses on 1,000 keys in
    turn, under `valgrind --tool=callgrind`: the old single flight added 3,008 instructions
    a miss, the new one 1,438 (0.48 x); the uncommitted first form, which did not box the
    read, 938.
  - In the bench, `./scripts/bench --only cold` runs (each row against its floor, pooled in
    brackets; CPU per call is a new note beside the two cold rows, each process's CPU over
    the calls sent):

    | run (2026-12-07) | code | cold vs the database floor | vault vs the design's work | bound | CPU per call: vault / database floor, vault / design's work |
    |---|---|---|---|---|---|
    | 02:22 to 02:29 | the first form | 0.879 (0.871), p99 1.34 x | 0.988 (0.962) | 0.966 | - |
    | 02:30 to 02:37 | the first form | 0.848 (0.878), p99 1.11 x | 0.887 (0.921) | 1.006 | - |
    | 02:51 to 02:58 | the first form | 0.876 (0.867), p99 1.28 x | 0.951 (0.923) | 0.984 | 1.29, 1.14 |
    | 03:09 to 03:16 | edd9b26, the old single flight, with this bench | 0.856 (0.879), p99 1.19 x | 0.845 (0.880) | 0.978 | 1.28, 1.17 |
    | 03:18 to 03:57, a full run | edd9b26's vault and bench binaries, by mistake (below) | 0.891 (0.904), p99 1.14 x | 0.879 (0.889) | 1.045 | 1.26, 1.19 |
    | 04:01 to 04:08 | 70f813e | 0.860 (0.854), p99 1.21 x | 0.875 (0.903) | 0.974 | 1.32, 1.15 |

  - What that says: neither ratio moved outside its spread. Against the database floor the
    cold row made 0.848 to 0.879 x (pooled 0.854 to 0.878 x) with the new single flight, and
    0.856 and 0.891 x (pooled 0.879 and 0.904 x) with the old one in the same hours; against
    the design's work 0.875 to 0.988 x new, 0.845 and 0.879 x old. The CPU per call shows
    the saving and its size: against the design's work the vault's process spent 1.14 and
    1.15 x that floor's CPU per call with the new single flight, 1.17 and 1.19 x with the
    old, about 3 % of the vault's CPU per miss. Against the database floor it spent 1.26 to
    1.32 x with either, some 25 to 30 us a call (for example 126.9 against 96.2 us), where
    the single flight's saving is some 1,500 instructions, under a microsecond. The single
    flight was not what holds the row. The next step is those 25 to 30 us: the same split as
    the bullet above, of CPU per call rather than of samples, between the audit trail (its
    count and its writer), unsealing, the cache and tonic's stack, with the design's-work
    floor beside it (it does the audit and the unsealing, and the vault spends 1.14 to
    1.19 x its CPU per call).
  - The full run meant to give this change its table ran the old code. Its binaries had
    been built, in the same target directory, from a worktree of edd9b26 for the A/B run at
    03:09; cargo's fingerprints record a package's sources by relative path and mtime, and
    the files this change touched were older than that build, so `cargo bench` on 70f813e
    relinked nothing (and the bench wrote its table into the worktree, by its
    `CARGO_MANIFEST_DIR`). Its rows are the old single flight in a slow hour (the hot path's
    floor at 21,284 req/s against 54,276 in the table above; the hot path's CPU per call
    50.7 against 19.0 us): 16 of 24 rows met, the cold cache on Postgres 0.891 x (pooled
    0.904 x). The table above stays the one on 7cffc7c; a full run on this change is still
    to be made. The run in the last line was made after touching every source file, and
    its vault is this change's (its log's first line compiles token-vault afresh).
- **The cold cache on Postgres: CPU per call, process and database (2026-12-07, the table
  on a9de961 and three `--only cold` runs).** The step the bullet above named: the vault's
  25 to 30 us a call over the database floor, split as CPU per call. Two findings: the
  vault's additions are spread over some eight duties, the audit writer the largest (7.2 %
  of the floor's CPU per call, its log lines 3.9 of that) and each other under ~4 %; and
  the Postgres backends serving a side use as much CPU per call as that side's
  process, so the audit trail's rows, which only the vault and the design's-work floor
  write, weigh as much as the largest of the vault's own additions.
  - **The process, split.** `perf record -F 299 --call-graph dwarf,16384 -p <pid>` on the
    vault and on its floor for 25 s of each comparison (`./scripts/bench --only cold` on
    a9de961, 05:33 to 05:37; that run's rows, the recording beside them: 0.817, 0.878 and the
    bound 0.915 x). The vault spent 1.33 x the database floor's CPU per call (80.7 against
    60.9 us). Each sample counted once per group whose frame is on its stack, each share
    scaled by its process's CPU per call, in percent of the floor's CPU per call:

    | where | vault | database floor | vault's extra |
    |---|---|---|---|
    | the handler (`get_access_token`, everything under it) | 62 | 47 | +15 |
    | of which the read statement (`fetch_optional`, its decode included) | 44.6 | 42.8 | +1.8 |
    | of which unsealing | 4.1 | - | +4.1 |
    | of which the cache's get and put | 2.9 | - | +2.9 |
    | of which the audit's count | 1.3 | - | +1.3 |
    | of which the single flight | 0.8 | - | +0.8 |
    | of which the rest (conversions, the key, the futures) | | | ~+4.1 |
    | the connections' HTTP/2 tasks outside the handler | 58 | 49 | +9 |
    | of which tonic's router, polled under the authentication layer (the layer's own frames 0.2) | 4.2 | 2.9 | +1.3 |
    | the rest of the process (the audit writer 7.2, its log lines 3.9 of that; the cache's sweep 0.7) | 12.9 | 3.8 | +9 |
    | in all | 133 | 100 | +33 |

    The connections' tasks outside the handler run the same tonic and HTTP/2 code on both
    sides; that they cost the vault more per call is the effect the bullet \"The cold cache's
    bound\" saw (the side answering slower gets fewer answers per write and per wake-up).
  - **The database, measured.** `CpuPerCall` (`benches/perf/main.rs`) now also counts the
    Postgres backends serving each side's connections (`benches/perf/procfs.rs`: the
    process's TCP connections to port 5432, and the postgres processes at their other
    ends) and notes their CPU per call beside the process's. Two `--only cold` runs on
    a9de961's vault with this bench, 06:21 to 06:32 (CPU per call sent, in us: process,
    backends, both together):

    | run | cold row (pooled), p99 | vault / design's work (pooled) | bound (pooled) | vault vs the database floor | vault vs the design's work |
    |---|---|---|---|---|---|
    | as the table | 0.856 x (0.858), 1.26 x | 0.891 x (0.901) | 0.962 x (0.960) | 70.7/54.1, 75.1/59.6, 145.8/113.7 (1.28 x) | 70.2/60.6, 74.4/70.1, 144.6/130.7 (1.11 x) |
    | `audit_events_tenant` dropped after the migrations | 0.904 x (0.885), 1.17 x | 0.942 x (0.930) | 0.958 x (0.948) | 72.5/57.3, 71.1/60.8, 143.6/118.1 (1.22 x) | 73.7/64.5, 68.0/66.5, 141.7/131.0 (1.08 x) |

    What it says:
    - a Postgres backend spends about 60 us of CPU per call on the floor's one indexed
      SELECT, more than the floor's whole process (54 to 57 us); the connections to
      Postgres use TLS, and the backends' CPU was not split further here;
    - the design's work adds ~10 us per call in Postgres (70.1 against 59.6 us): the audit
      rows and the read's wider row. The per-tenant index of `audit_events` is about 4 of
      them by the second run (the vault's backends 71.1 against 75.1 us, the design's 66.5
      against 70.1), a comparison across runs within their noise (the database floor's
      own backends moved 1.2 us between them). The scratch-database timing in the bullet
      on the audit's rows above put that index at ~3.2 us of a row's ~7; at the row's
      rate of about 0.45 audit rows a call (a 10 s window of ~110,000 calls is capped at
      50,000 keys) that is ~1.5 us a call, so the bench's 4 is the upper end;
    - in the same comparison the vault's backends used 4.3 and 1.5 us per call more than the
      design's-work floor's, with the same read statement and the same audit rows. What
      that is was not found this session; the vault's other statements (health and
      failover checks every few seconds) are far too rare to be it;
    - the throughput ratio follows the processes' and backends' CPU together: with the load
      client's share per call the same on both sides (C), the row is about (113.7 + C) /
      (145.8 + C). Fitted to the first run's pooled ratio (0.858 x) that gives C near
      80 us, and predicts 0.886 x for the second, whose pooled ratio was 0.885 x (its median
      pair 0.904 x): it holds for the pooled ratios, not for the median pairs.
  - **What reaching 0.90 x takes, by that arithmetic:** about 10 to 11 us less CPU per
    call, process and database together, out of the vault's +32 us (the first run). No
    single duty is that big: the per-tenant index 1.5 to 4, unsealing ~2.5, the audit writer's
    log lines ~2.4 and the rest of the writer ~2, the cache ~2.2 (its sweep included),
    routing under the authentication layer ~0.8, the vault's unexplained backend share
    1.5 to 4.3. The index stays: it answers \"who got this tenant's token\"
    (docs/security.md's queries) without reading the whole trail, and the one run without
    it (0.904 x, pooled 0.885 x) is one run. Its inserts are made cheaper instead (the next
    sub-bullet); the unexplained backend share and the log line per audit row are the next
    candidates, each to be measured as here.
  - **A window's rows in the per-tenant index's order (commit after the table).** The
    writer now sorts a closed window's rows by tenant before its INSERTs
    (`src/audit/writer.rs`, `close_window`), so that each INSERT of 1,000 rows walks the
    index from one end to the other instead of landing on its pages at random. Timed on a
    scratch database with the table's migration (2026-12-07; `psql` on this machine,
    nothing else running): 1,500,000 rows with random tenants among 1,000,000 first, then
    the same 50,000 tenants, a window's worth, inserted as 50 INSERTs of 1,000 rows in
    random order and in sorted order, alternately, after a `CHECKPOINT` each time. Random:
    11.87, 10.03, 9.63, 9.89 us a row; sorted: 9.79, 9.17, 7.53, 7.47 us; without the
    checkpoints, random 9.52 and 9.26, sorted 7.59 and 7.26. About 1.9 us less a row,
    every pair the same way. At ~0.45 rows a call that is ~0.8 us of Postgres's CPU a call,
    about half a percent of a call's CPU on both sides: too little to show in a cold row
    whose pairs spread from 0.68 to 1.31, and not measured there. Sorting a full window of
    50,000 keys costs the writer a few milliseconds every 10 s. A unit test checks the
    order (it fails without the sort).
- **Another machine, and what the shutdown's cut-off costs (2026-12-07, commits 9cc38ef
  and 5d04f84, after the table).** This session's machine is an `Intel(R) Xeon(R)
  Processor` with 2 cores (the table's: `AMD EPYC`). Its gRPC floor served 86,976 to 88,242
  req/s on the hot path, against 45,818 in the table: nearly twice the table's machine.
  - **A full `./scripts/bench` on 5d04f84** (09:43 to 10:00), stopped after the refresh rows
    to make room for the comparison below, so it wrote no table. Its rows: the resolution
    1.003 x and, swapped, 0.997 x (pooled 0.999 and 0.999 x); the hot path 0.859 x (pooled
    0.854 x, floor 88,242 req/s); bearer authentication and audit 0.811 x (pooled 0.809 x);
    h2load 0.883 x; every call traced 0.652 x; 1 % traced 0.819 x (pooled 0.810 x); mutual
    TLS 0.879 x (pooled 0.877 x); a new mutual-TLS connection one at a time 1.038 x and in
    bursts 0.956 x (median, met); the cold cache on Postgres 0.814 x (pooled 0.802 x, 15,041
    against 18,754 req/s, p99 1.39 x), against the design's own work 0.879 x (pooled
    0.895 x), its bound 0.937 x (pooled 0.927 x); refresh latency 1.15 x stale in the cache
    (2.25 against 1.95 ms: over the target by less than its rounding) and 1.06 x not cached.
    Every throughput row against the gRPC floor fell by 4 to 13 hundredths from the table.
  - **Not the cut-off.** The cut-off layer (`src/api/cut_off.rs`) is new on every call, so
    two `./scripts/bench --only hot` runs followed (10:02 to 10:13), the first with the layer
    taken out of `startup.rs`, the second as committed. Without it: the hot path 0.874 x
    (pooled 0.869 x), CPU per call 13.1 against the floor's 11.3 us (1.16 x), the resolution
    0.985 and 1.014 x swapped. With it: 0.873 x (pooled 0.873 x), 13.1 against 11.3 us
    (1.15 x), the resolution 1.013 and 0.997 x. Criterion (`benches/auth.rs`, the service
    cloned per call as the server does): +32 ns a call answered at once (37.9 to 70.2 ns),
    +144 ns a call that waits (52.2 to 196.0 ns), on a call of ~13 us.
  - **Where the vault's extra goes on this machine.** `perf record -F 499 -g` on the vault and
    on its floor for the same 20 s of a hot comparison (10:14; 4,842 samples of the vault).
    The vault read the clock in 1.69 % of its samples, the floor in 0.38 %; most of the
    vault's are hyper's HTTP/2 keep-alive, whose ping recorder stamps every frame received
    (its frames 1.8 % of the vault's samples, theirs included). tonic's call timeout, a timer
    set and cleared per call, is ~1 %; the cache's get 0.5 %; the audit's count 0.3 %;
    `rpc_span` and its drop 0.4 %. The scheduler's context switches (`finish_task_switch`)
    took 2.1 % of the vault's samples and 0.7 % of the floor's. The floor, for its part,
    spent ~3.5 % in `tracing`'s fallback to `log` (`Span::log`, `record_all`), which a
    process with a subscriber, like the vault, skips. Two of those costs are the vault's
    safeguards: the floor is tonic's default server, without the keep-alive, stream cap and
    call timeout. The header of this page said \"the same tonic settings\"; it now says so.
  - **What it means for the rows.** The vault's extra CPU per call on the hot path is about
    what it was (1.8 us here, 1.6 us at 1.07 x in the table), but a floor twice
    as fast makes the same microseconds weigh twice as much. The table stays the one on
    a9de961. A full table on this kind of machine would miss most rows against the gRPC
    floor, and the bench would not say why. Meeting them here would take the keep-alive's
    stamping and the call timeout's timer off the hot path, and no single step is bigger
    than ~2 %. A call timeout set only when a call has to wait, as the cut-off does with its
    token, would save about 1 %; it was not tried. (Done since: the bullet \"This table, the
    floors' subscriber and the call timeout\".)
  - **The audit's rows by COPY instead of INSERT ... UNNEST: ~0.8 us less a row, not done.**
    On a scratch database with the table's migration and 1,500,000 rows (python and psycopg,
    binary parameters and binary COPY, 120 batches of 1,000 rows sorted by tenant, the two
    methods alternating), the backend's CPU was 8.33 us a row by the writer's statement and
    7.50 us by `COPY ... FROM STDIN (FORMAT BINARY)`, with the same ~0.8 us between them in
    each half of the batches (`/proc/<pid>/stat` of the backend, 10 ms ticks summed over the
    batches). At ~0.45 rows a call that is ~0.4 us of Postgres's CPU a call, a quarter of a
    percent of a cold call: too little to justify a second way of writing rows.
- **This table, the floors' subscriber and the call timeout (2026-12-07, commits e367f08
  and c6264aa).**
  - **The call timeout, made only for a call that waits.** tonic's server timeout
    (`Server::timeout`) made a `tokio::time::Sleep` for every call: a clock read, a reference
    to the runtime's handle, and, when it is dropped, the timer driver's lock, which both
    workers share, whether the timer was ever armed or not (tokio 1.54's
    `TimerEntry::cancel`). `src/listener/call_timeout.rs` makes it at the call's first wait,
    so a cached token's call has none; callers see the same CANCELLED \"Timeout expired\"
    (a process test holds a read on a table lock past a 5 s timeout). Criterion,
    `cargo bench --bench auth -- call_`, with `tokio::time::timeout` standing in for tonic's
    timer (made the same way), on one thread, so with the lock uncontended: a call answered
    at once 83.4 against 43.9 ns, a call that waits once 127.8 against 130.7 ns. Two
    `--only hot` runs each way (11:48 to 12:03, both binaries built by
    `cargo build --release --bins`): before 0.933 and 0.895 x (CPU per call 1.08 and
    1.12 x the floor's), after 0.948 and 0.921 x (1.08 and 1.08 x), inside the runs'
    spread. A caller that sends `grpc-timeout` (the project's client does, on every call)
    still pays for tonic's timer: tonic's layer is always there, outside the vault's. The
    bench's load client sends none, and neither side of a row is charged for it.
  - **The floors' subscriber.** A process with no `tracing` subscriber hands its spans to the
    `log` crate. The gRPC floor had none: `perf record -F 499 -g` on it for 15 s of a hot
    comparison put 0.8 % of its samples in `tracing::span::Span::log` on this machine (the
    Intel profile above: ~3.5 %), a cost the vault, which has a subscriber, does not pay. The
    bench's processes now install one that wants nothing (`benches/perf/main.rs`), and the
    same profile shows none. The floor doing the design's work per miss keeps the vault's
    own logging: the first version (e367f08) turned it off by taking the process's only
    subscriber slot first; a helper's review caught it and c6264aa, the table's commit,
    mends it.
  - **The runs around this table.** After it (13:01 to 13:16), four `--only hot` runs of the
    same vault binary, alternating the bench's binary from before the subscriber (A) and the
    table's (B): A 0.945 x (pooled 0.948 x, CPU per call 1.06 x), B 0.913 x (0.942 x,
    1.09 x), A 0.961 x (0.911 x, 1.12 x), B 0.901 x (0.920 x, 1.11 x), the resolution rows
    0.989 to 1.080 x. By the medians the subscriber took ~0.05 off the row, by the pooled
    ratios nothing; the floor's CPU per call was 21.8 us on both sides of the first pair.
    Four runs do not separate it from the machine's drift; the honest reading is 0 to 5
    hundredths off every row against the gRPC floor, which they had been credited with.
  - **Why the table is worse than the one on a9de961.** Its hot row, 0.860 x, ran first, on a
    floor serving 40,040 req/s; the same binaries made 0.901 to 0.961 x in the runs just
    after, and the resolution rows 47,719 and 47,518 req/s minutes later. The rows against
    the gRPC floor fell 3 to 8 hundredths (bearer 0.928 to 0.895 x, the keeper's hot path
    0.947 to 0.882 x, SQLite's hot path 0.930 to 0.891 x, 1 % traced 0.882 to 0.853 x),
    which the subscriber explains at most in part and the machine's stretch in part; the
    vault's changes since (the cut-off, +32 ns a call; the call timeout, -40 ns) do not reach
    hundredths. The cold rows on Postgres moved with the machine too (the design's work
    0.973 to 0.873 x, its bound 0.939 to 0.998 x). A row within ~5 % of its target is
    decided by several runs, not one table; the bullet \"What it means for the work\" keeps
    them.
- **The connection gauge's count (2026-12-07, commits 3e57a5c and after).** The bullet \"The
  cold cache on Postgres: CPU per call, process and database\" left the vault's Postgres
  backends using more CPU per call than the design's-work floor's, with the same read
  statement and the same audit rows (4.3 and 1.5 us in its runs; 11.4 us in the table on
  c6264aa, 101.8 against 90.4 us).
  - **Found by sampling the database.** A script read `pg_stat_activity` every ~20 ms during
    an `--only cold` run on 44093db (15:00 to 15:05, 14,377 samples), each backend matched to
    the bench process or vault holding the other end of its socket. The statement
    `SELECT status, count(*) FROM connections GROUP BY status` was running in 637 backend
    samples (260 in the vault's own backend, 377 in two parallel workers, which belong to
    neither side's connections and so to neither side's CPU per call), against 696 for all
    of the vault's cache-miss reads. It is the `tokenvault.connections` gauge: every replica
    counted every `telemetry.connection_count_interval` (30 s).
  - **What that count costs, measured alone.** A scratch database with the migrations and
    1,000,000 connections (918 random bytes each, 1,116 MB of table), `EXPLAIN (ANALYZE,
    BUFFERS)`, three processes each time: fresh from the load, a parallel sequential scan of
    the whole table, 464, 314 and 276 ms; after `VACUUM`, the index-only scan migration
    20261210000001 meant it to have, 145 and 109 ms; after an update of a fifth of the rows
    (as refreshes do all day, each clearing its page's visibility bit), an index-only scan
    with 1,000,000 heap fetches, 3,541, 733 and 649 ms. In steady operation at that scale,
    then, some 2 s of the database's CPU per replica every 30 s, for a gauge.
  - **Now** (migration 20261211000001, both stores): triggers append +1 or -1 per connection
    that appears, leaves or changes status (updates that leave status alone, every refresh
    among them, fire nothing), and the count sums that table and folds it to a row per status
    (on Postgres one replica at a time, under a try-advisory lock; on SQLite 10,000 changes
    to a write transaction). The sum at 1,000,000 connections: 0.18 ms. The migration's own
    first count, taken under a lock on writes: 0.46 s at 1,000,000 on the vacuumed table.
    The bench folds and vacuums the seed's million change rows right after seeding, as a
    vault's first count would fold them, so that no row's slices hold a bulk load's clean-up.
  - **In the bench, not resolved.** `--only cold`, alternating this change's binaries (the
    seed's changes not yet folded before the rows: the first row's vault folded them) with
    44093db's, 15:24 to 15:40:

    | run | cold vs the database floor (pooled) | vault vs the design's work (pooled) | backends' CPU per call, vault / design's work |
    |---|---|---|---|
    | new | 0.827 (0.847) | 0.899 (0.935) | 117.5 / 114.0 us (1.03 x) |
    | old | 0.884 (0.897) | 0.876 (0.912) | 103.5 / 100.4 us (1.03 x) |
    | new | 0.921 (0.909) | 0.948 (0.929) | 98.0 / 94.3 us (1.04 x) |
    | old | 0.903 (0.908) | 0.901 (0.899) | 94.8 / 88.3 us (1.07 x) |

    The old binaries' backends used 1.03 and 1.07 x the design's-work floor's here, not the
    table's 1.13 x: a row of ~80 s holds two or three counts, a few microseconds per call
    spread over the vault's backend and two workers that neither side is charged with, under
    these runs' spread. The table on 3e57a5c, run after them, put the vault's backends at
    1.02 x the design's-work floor's (109.2 against 107.0 us a call) and the vault against the
    design's work at 0.959 x, one run. The change is for the fleet the issue describes more
    than for a row: ~2 s of database CPU per replica every 30 s at a million connections,
    now a fraction of a millisecond.
- **Refresh latency on SQLite: the lease in one statement (2026-12-07, commit 1d77a0e).** On
  SQLite the lease was a `BEGIN IMMEDIATE` transaction of five statements (BEGIN, the
  update, the refresh token's read, the file identity's read, COMMIT), each a round trip to
  the writer connection's thread, all with the process's one writer held. It is now one
  `UPDATE … RETURNING`: SQLite begins a data-modifying statement's implicit transaction with
  the write lock, as `BEGIN IMMEDIATE` does, so the check and the write stay one atomic step,
  and the RETURNING clause's subqueries read the current refresh token and the identity in
  that transaction. A new test races 64 lease attempts from two stores on one file (two
  writers, as two processes have) and gets one lease, carrying the current refresh token and
  not the superseded one.
  - Found on the way: sqlx (sqlx-sqlite 0.8.6) stops a statement fetched for one row
    (`fetch_optional`, `fetch_one`) after that row and resets it. For a write outside a
    transaction the reset is what commits (checked with Python's sqlite3: after the first row
    of an `UPDATE … RETURNING` the change is not visible and the write lock is held until the
    reset), and sqlx drops the reset's result, so a failed commit would pass for a success.
    The lease, the pending authorization's `DELETE … RETURNING` (a callback's state handed
    out once) and the identity's upsert are now fetched to their end (`fetch_all`), where a
    failed commit is the statement's error.
  - Measured, `./scripts/bench --only sqlite`, the old code, the new, the old again (17:38
    to 18:16; medians of 200 samples each, in ms):

    | run | code | bare lease, stale / not cached | vault's own time against the bare statements, stale | not cached | one-at-a-time lease and store (write-burst note) |
    |---|---|---|---|---|---|
    | 17:38 to 17:47 | 1297aa4 | 0.99 / 0.87 | 2.96 against 2.15 (1.38 x) | 3.41 against 2.37 (1.44 x) | p50 0.82 |
    | 17:58 to 18:06 | 1d77a0e | 0.86 / 0.72 | 2.49 against 1.95 (1.28 x) | 2.69 against 2.08 (1.30 x) | p50 0.89 |
    | 18:07 to 18:16 | 1297aa4 | 0.92 / 0.78 | 2.52 against 1.96 (1.29 x) | 2.58 against 2.10 (1.23 x) | p50 1.07 |

  - What it says: the lease got 0.06 to 0.15 ms cheaper, about what four round trips of
    10 to 35 us predict, within what the machine drifted between the runs. The vault's own
    time moved with its bare statements, and the ratio stayed where it was (1.28 and 1.30 x
    new, 1.29 and 1.23 x in the old run beside it; the first old run was the slowest of the
    three). So the round trips to SQLite's connection thread, which the bare client pays as
    the vault does, are not where the vault's ~0.5 ms beyond its statements goes; the
    split in the bullet \"Refresh latency on SQLite\" (the gRPC call after idle, the hand-off
    to the refresh task, the steps between statements) stands. The change stays for what it
    does: one round trip instead of five with the one writer held, and a failed commit seen.
    The full table on 1d77a0e then gave 2.46 against 1.88 ms and 2.61 against 2.04 ms (1.31
    and 1.28 x), within the rows' run-to-run range (1.10 to 1.31 x over the last ten tables).
- **The keeper's claim on SQLite read every connection (2026-12-07, commit ee80f1a).**
  Found while checking what the SQLite index on status alone still served, after the
  gauge stopped counting through it. The keeper's claim (due active connections of the
  configured providers, in due order, 200 at a time) was planned by SQLite, which has no
  statistics on the vault's files (nothing runs `ANALYZE`), as a search of that index for
  `status = 'active'`, every active connection read and then sorted, inside an `UPDATE`
  that holds the file's write lock. Timed with Python's sqlite3 (SQLite 3.40) on the
  migrated schema, the claim's lookup alone (its subquery, 200 ids), five times each:
  - 1,000,000 connections (~1 KB rows), one in 50 due: 853, 915, 761, 772 and 835 ms as
    planned; 0.8, 0.3, 0.2, 0.2 and 0.2 ms through the partial index
    `connections_keepalive_due`;
  - 200,000 connections, one in 100 due: 103 to 117 ms against 0.1 to 0.5 ms.

  A helper's review timed the whole claim (the lookup and the update of the 200 rows it
  returns) at 200,000 connections on the same machine, under a CI run's load: 67 to 130 ms
  as planned against 1.35 to 2.6 ms through the index.

  With the status index dropped, the vault's bundled SQLite (3.46) took the equality on
  `provider` instead (`connections_provider_tenant`, then a temporary B-tree for the
  order): the same whole read. The statement now names its index (`INDEXED BY
  connections_keepalive_due`, in `src/store/sqlite/keepalive_claim.sql`), which also makes
  SQLite refuse to prepare it, rather than scan, if that index can no longer serve it; and
  migration 20261212000001 drops the status index, the same lure Postgres lost in
  20261210000001. A test plans the statement's own file on a fleet with no statistics
  (`sqlite_store::the_keepers_claim_reads_its_partial_index_in_due_order`: a range of the
  partial index, no temporary B-tree; with the hint removed from the planned text it fails
  on `connections_provider_tenant (provider=?)` and `USE TEMP B-TREE FOR ORDER BY`). These
  timings are scratch ones; the table's own rows for the keeper on SQLite came after (the
  bullet \"The keeper on SQLite in the table\").
- **The keeper on SQLite in the table (2026-12-07, commit 51f920b).** The keeper's two rows
  now run on the embedded store as well, after the SQLite scenario's other rows, on its
  file of 1,000,000 seeded connections. The seed (`seed::keepalive_sqlite`) gives the
  first 20,000 a refresh token and a keep-alive due now, a second apart, and every other
  connection one due over the next 30 days. The statistics the seed gathered with
  `ANALYZE` are deleted before the claim is timed, because a vault's own file has none and
  they are what hid the plan in the bullet above; the plan is the claim file's own
  (`EXPLAIN QUERY PLAN` of `src/store/sqlite/keepalive_claim.sql`), read on a connection
  opened after the deletion, and the claims go through `Store` as the keeper's do. In the
  table on 51f920b: 50 claims of 200 among 1,000,500 connections, p50 4.53 ms and p99
  10.95 ms (Postgres in the same run: p50 8.19 ms, p99 49.46 ms among 1,050,705), a
  search of `connections_keepalive_due` by range with no temporary B-tree. The hot path
  on SQLite while a keeper refreshes at the default pace (1,470 keep-alives in 74 s):
  0.891 x the gRPC floor, against 0.869 x for the same row on Postgres and 0.863 x for
  the hot path on SQLite without a keeper in the same run; the keeper's writes, one at a
  time through the process's one writer, cost the cached hot path nothing beyond the
  rows' spread.
- **Refresh latency on SQLite: not the idle before the statements (2026-12-07, after
  51f920b).** A read of the vault's path for one refresh found that it sends SQLite the
  statements the bare client sends, the lease and the store's transaction, all on the
  process's one writer, with nothing else on SQLite before the answer. What differs is
  the moment: in each sample the vault's process has been idle for 100 ms or more (the
  floor's call and the bare statements run between its calls), while the bare statements
  start just after the bench's own process handled the floor's answer. If waking an idle
  process's threads cost the vault ~0.1 ms a round trip, the row would be measuring that.
  One `--only refresh,sqlite` run of 51f920b (23:27 to 23:40) took a second set of bare
  statements after 100 ms of the bench process idle, on tenants of their own, in the same
  loop. Medians, right after the floor's call against after the idle:
  - SQLite: stale 1.71 against 1.72 ms, not cached 1.69 against 1.84 ms;
  - Postgres: stale 2.56 against 2.58 ms, not cached 2.77 against 2.96 ms.

  The vault's own time in that run was 2.12 and 2.20 ms on SQLite (1.24 and 1.30 x) and
  2.69 and 2.64 ms on Postgres (1.05 and 0.95 x). The idle moves the bare statements by
  0.15 ms at most, so it is not the vault's ~0.45 ms beyond them on SQLite, and the rows
  keep their protocol (the variant was not committed). The vault's own spans then
  split a refresh. Two more `--only sqlite` runs (23:43 and 23:51, not committed either)
  started the SQLite vault of the refresh rows with every call traced to the bench's
  collector (`tests/support/otlp_collector.rs`, keeping the exports) and read each
  refresh's trace: the RPC span, the refresh task's, the statements' (`db_span!`, each
  from the pool's acquire to its last row) and the token request's. Medians over 200
  refreshes on each path, the second run (stale in the cache; not cached):
  - the lease: 0.52 and 0.38 ms in the vault, against the bare client's 0.58 and 0.48 ms
    in the same run: no slower;
  - **the store's transaction: 1.19 and 1.41 ms in the vault, against the bare client's
    0.82 and 0.85 ms** (p90 2.43 and 2.36 ms; one trace in the first run's twelve read
    0.62 ms, another 3.45 ms);
  - the vault's code between them, inside the RPC span: 0.29 and 0.31 ms in all (before
    the refresh task starts 0.08 and 0.11 ms, the task to its lease 0.02 ms, lease to
    token request 0.04 and 0.03 ms, token request to store 0.03 ms, store to the task's
    end 0.05 ms, the task's end to the answer 0.06 ms), with tracing's own cost in it.

  So most of the gap is in the store, the same `store_refresh` the bare client runs on
  the same file, taking ~0.4 to 0.55 ms longer in the vault's process; the rest is the
  vault's own ~0.3 ms, which against SQLite's ~1.4 ms of statements is ~20 % by itself
  (against Postgres's ~2.5 to 3 ms, ~10 %). Why the same transaction is slower in the
  vault was not found. The two differences at that moment: the vault's store runs just
  after its process handled the token response, while other threads of both processes on
  the machine's two cores are still busy (the provider's, the vault's HTTP client's, the
  exporter's), where the bare client's store runs after a quiet sleep; and each of the
  transaction's six round trips is a hop to the writer's thread. A third uncommitted
  run (00:21) tested the first: the bare client's store, on alternate pairs of samples,
  came after a real token request to the bench's provider (the same server, the same
  50 ms delay) instead of a sleep. Medians over 100 each, after the sleep against after
  the request: stale 1.40 against 1.48 ms, not cached 1.53 against 1.27 ms. No
  consistent effect, so the moment after the token response does not slow a store by
  itself. In that run every statement was slower than in the runs before it (the bare
  lease 1.07 ms against 0.58 ms), a reminder of how much this machine's speed drifts
  within the hour. Counting the vault's store's hops that wait for a core (`perf sched`,
  or the writer thread's run-queue latency in `/proc/<pid>/task/*/schedstat`) is the next
  step.
- **A bench run that hung in its seed (2026-12-07, commit 51f920b).** The first start of
  the table on 51f920b stopped making progress 10 minutes in, while seeding the 1,000,000
  Postgres connections: 510,300 rows were in, the pool's connection showed its last
  `INSERT` finished and idle (`ClientRead`) for 22 minutes, and every thread of the bench
  process was parked (`gdb`: the main thread in `block_on`, the runtime's workers waiting
  for I/O or a timer; load average 0.00). The next batch was never sent, with no error and
  no timeout. The run was stopped and started again, and the second start, with the same
  binary, ran through. The cause was not found: the seed's loop is the one every table
  since the first has run, and the hang has not been seen before. Were it to recur, the
  first thing to learn is whether the `INSERT`'s answer reached the client (a capture on
  port 5432) and which future the main task is parked on (tokio-console).
";

/// Cargo's target folder: `CARGO_TARGET_DIR` when set, else `target/` in the repository.
fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0))
        })
        .unwrap_or(0);
    format!("{cpu}, {cores} cores, {:.0} GiB", mem as f64 / 1048576.0)
}
