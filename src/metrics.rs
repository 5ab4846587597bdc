//! Prometheus metrics (layer 0): the names every layer records under, the process's one recorder,
//! and its rendering in the Prometheus text format for `GET /metrics` (see `http`).
//!
//! Layers record through the `metrics` facade (`counter!`, `gauge!`, `histogram!` with a name from
//! here), so storage or scoring record without knowing who scrapes; with no recorder installed (a
//! test, `quiver sql`) recording costs a relaxed load and does nothing. Label values come from a
//! bounded set: fixed words, or names run through [`bounded`], so a client inventing table names
//! cannot grow the scrape without limit.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock, PoisonError};

use metrics::SharedString;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// gRPC calls by `method` and `code` (the gRPC status name, `OK` included).
pub const RPCS: &str = "quiver_rpcs_total";
/// Time from a call's arrival to the end of its response (a stream's last message), by `method`.
pub const RPC_SECONDS: &str = "quiver_rpc_duration_seconds";
/// Statements by `kind` (query, lookup, dml, ddl, command, ingest, explain, other) and `status`
/// (ok, error, cancelled).
pub const STATEMENTS: &str = "quiver_statements_total";
/// Statement duration, by `kind`.
pub const STATEMENT_SECONDS: &str = "quiver_statement_duration_seconds";
/// Statements running now (admitted under `--max-concurrent-queries`).
pub const STATEMENTS_ACTIVE: &str = "quiver_statements_active";
/// Statements refused by admission (the concurrency cap was reached).
pub const STATEMENTS_REFUSED: &str = "quiver_statements_refused_total";
/// Rows and Arrow bytes sent to clients in query results.
pub const ROWS_SERVED: &str = "quiver_rows_served_total";
pub const BYTES_SERVED: &str = "quiver_bytes_served_total";
/// Rows and Arrow bytes (uncompressed, in memory) written by ingest, by `table`.
pub const ROWS_INGESTED: &str = "quiver_rows_ingested_total";
pub const BYTES_INGESTED: &str = "quiver_bytes_ingested_total";
/// Records that did not fit their table and went to its schema's dead-letter table, by `table`.
pub const DEAD_LETTERS: &str = "quiver_dead_letters_total";
/// Messages of a source's assigned partitions its table does not hold yet, by `source`.
pub const SOURCE_LAG: &str = "quiver_source_lag_messages";
/// Requests to the HTTP collector (`POST /v1/ingest/{table}`), by `status` (the HTTP status code).
pub const HTTP_INGEST_REQUESTS: &str = "quiver_http_ingest_requests_total";
/// Delta commits written, by `table`.
pub const DELTA_COMMITS: &str = "quiver_delta_commits_total";
/// Delta commits that lost to a concurrent writer, by `table`; and statements run again because of one.
pub const DELTA_CONFLICTS: &str = "quiver_delta_commit_conflicts_total";
pub const DELTA_RETRIES: &str = "quiver_delta_commit_retries_total";
/// Feature-view refreshes by `view`, `mode` (full, incremental, unchanged) and `status`.
pub const REFRESHES: &str = "quiver_feature_refreshes_total";
pub const REFRESH_SECONDS: &str = "quiver_feature_refresh_duration_seconds";
/// Rows written by feature-view refreshes, by `view`.
pub const REFRESH_ROWS: &str = "quiver_feature_refresh_rows_total";
/// Seconds since the rows a view serves were read from its sources (its refresh, or its load at start).
pub const VIEW_AGE: &str = "quiver_feature_view_age_seconds";
/// Keys and bytes of a view's online index, by `view`.
pub const ONLINE_ENTRIES: &str = "quiver_online_index_entries";
pub const ONLINE_BYTES: &str = "quiver_online_index_bytes";
/// Model loads by `model` and `result` (loaded, failed).
pub const MODEL_LOADS: &str = "quiver_model_loads_total";
/// `predict(...)` batches and `recommend(...)` calls, by `model`.
pub const PREDICT_SECONDS: &str = "quiver_predict_duration_seconds";
pub const RECOMMEND_SECONDS: &str = "quiver_recommend_duration_seconds";
/// The query memory pool (`--memory-limit`): bytes reserved now, and the limit (absent: unlimited).
pub const MEMORY_USED: &str = "quiver_memory_pool_used_bytes";
pub const MEMORY_LIMIT: &str = "quiver_memory_pool_limit_bytes";

/// Histogram buckets for every `_seconds` metric: 100 µs (a lookup) to a minute (a full refresh).
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Distinct values [`bounded`] passes through before it answers `other`.
const MAX_LABEL_VALUES: usize = 200;
const OTHER: &str = "other";

/// The process's recorder: installed on first use, rendered by [`render`].
pub struct Metrics {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Installs the Prometheus recorder as the process's `metrics` recorder (once; later calls return
/// the same one).
pub fn install() -> &'static Metrics {
    METRICS.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed: /metrics will be empty");
        }
        let process = metrics_process::Collector::default();
        process.describe();
        describe();
        Metrics { handle, process }
    })
}

impl Metrics {
    /// Every metric in the Prometheus text format, process figures (RSS, open files, CPU) read now.
    pub fn render(&self) -> String {
        self.process.collect();
        self.handle.render()
    }

    /// Drains histogram samples into their buckets; run every few seconds whether or not anyone
    /// scrapes, so an unscraped server's samples do not pile up.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// `value` as a label value, or `other` once [`MAX_LABEL_VALUES`] distinct values have been seen.
pub fn bounded(value: &str) -> SharedString {
    static SEEN: Mutex<Option<LabelValues>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(PoisonError::into_inner);
    seen.get_or_insert_with(LabelValues::default).label(value)
}

/// The distinct values one process has given out as labels.
#[derive(Default)]
struct LabelValues(HashSet<String>);

impl LabelValues {
    fn label(&mut self, value: &str) -> SharedString {
        if self.0.contains(value) || self.0.len() < MAX_LABEL_VALUES {
            self.0.insert(value.to_string());
            return SharedString::from(value.to_string());
        }
        SharedString::const_str(OTHER)
    }
}

/// A table's label from its location (`.../warehouse/public/events/` -> `public.events`) or its
/// name, bounded.
pub fn table(location: &str) -> SharedString {
    bounded(&table_name(location))
}

fn table_name(location: &str) -> String {
    let mut segments = location.trim_end_matches('/').rsplit('/');
    let name = segments.next().unwrap_or_default();
    match segments.next() {
        Some(schema) if !schema.is_empty() && !schema.contains(':') => format!("{schema}.{name}"),
        _ => name.to_string(),
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(RPCS, "gRPC calls by method and status code");
    describe_histogram!(
        RPC_SECONDS,
        Unit::Seconds,
        "gRPC call duration, to the last message"
    );
    describe_counter!(STATEMENTS, "SQL statements and ingests by kind and status");
    describe_histogram!(
        STATEMENT_SECONDS,
        Unit::Seconds,
        "Statement duration by kind"
    );
    describe_gauge!(STATEMENTS_ACTIVE, "Statements running now");
    describe_counter!(
        STATEMENTS_REFUSED,
        "Statements refused at the concurrency cap"
    );
    describe_counter!(ROWS_SERVED, "Rows sent to clients in results");
    describe_counter!(BYTES_SERVED, Unit::Bytes, "Arrow bytes sent to clients");
    describe_counter!(ROWS_INGESTED, "Rows written by ingest, by table");
    describe_counter!(
        BYTES_INGESTED,
        Unit::Bytes,
        "Arrow bytes ingested, by table"
    );
    describe_counter!(DELTA_COMMITS, "Delta commits written, by table");
    describe_counter!(DELTA_CONFLICTS, "Delta commits lost to a concurrent writer");
    describe_counter!(
        DELTA_RETRIES,
        "Statements run again after a commit conflict"
    );
    describe_counter!(REFRESHES, "Feature-view refreshes by view, mode and status");
    describe_histogram!(
        REFRESH_SECONDS,
        Unit::Seconds,
        "Feature-view refresh duration"
    );
    describe_counter!(REFRESH_ROWS, "Rows written by feature-view refreshes");
    describe_gauge!(
        VIEW_AGE,
        Unit::Seconds,
        "Seconds since a view's served rows were read from its sources"
    );
    describe_gauge!(ONLINE_ENTRIES, "Keys in a view's online index");
    describe_gauge!(ONLINE_BYTES, Unit::Bytes, "Memory of a view's online index");
    describe_counter!(MODEL_LOADS, "Model loads by model and result");
    describe_histogram!(PREDICT_SECONDS, Unit::Seconds, "predict() batch duration");
    describe_histogram!(
        RECOMMEND_SECONDS,
        Unit::Seconds,
        "recommend() call duration"
    );
    describe_gauge!(MEMORY_USED, Unit::Bytes, "Query memory pool reserved");
    describe_gauge!(MEMORY_LIMIT, Unit::Bytes, "Query memory pool limit");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_capped() {
        let mut values = LabelValues::default();
        assert_eq!(values.label("t0").as_ref(), "t0");
        for i in 0..MAX_LABEL_VALUES * 2 {
            values.label(&format!("t{i}"));
        }
        // Seen before the cap: still its own value. Never seen, past the cap: `other`.
        assert_eq!(values.label("t0").as_ref(), "t0");
        assert_eq!(values.label("never-seen").as_ref(), OTHER);
    }

    #[test]
    fn tables_are_labelled_schema_dot_name() {
        assert_eq!(table_name("file:///tmp/w/public/events/"), "public.events");
        assert_eq!(table_name("s3://bucket/public/events"), "public.events");
        assert_eq!(table_name("public.events"), "public.events");
    }
}
