//! Query history (layer 0): the last N statements the server ran, in memory, served as
//! `system.queries`; each also counted in the statement metrics.
//!
//! The Flight layer opens a [`Running`] entry when a statement starts and finishes it with its
//! outcome; dropping one unfinished (the client went away) records it as cancelled. SQL text is
//! kept truncated and bound parameter values are never kept. A caller with the `read` role sees
//! only their own statements: the session they query with carries a [`Viewer`] (see
//! `QuiverSession::viewed_by`); without one (the server's own session, `quiver sql`) all rows show.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::Result;
use datafusion::execution::TaskContext;

use crate::metrics;

/// Default for `--query-history`.
pub const DEFAULT_CAPACITY: usize = 1000;
/// Characters of SQL text kept per statement.
const MAX_SQL_CHARS: usize = 4096;
pub const QUERIES_TABLE: &str = "queries";

/// The last statements, newest last; `capacity` 0 keeps none (metrics still count).
#[derive(Debug)]
pub struct QueryHistory {
    capacity: usize,
    entries: Mutex<VecDeque<Arc<Record>>>,
    /// Statements not yet appended to the audit table (`--audit-table`), when there is one.
    audit: Option<Mutex<Vec<Arc<Record>>>>,
}

/// Statements waiting for the audit table at most; past it the oldest are dropped (and logged).
const MAX_AUDIT_BACKLOG: usize = 100_000;

/// Ids of requests and statements, unique in the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A new request id (the guard gives one to every RPC; a statement takes its RPC's).
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// What `system.queries` shows of one statement.
#[derive(Debug)]
pub struct Record {
    pub id: u64,
    pub user: String,
    pub role: &'static str,
    pub kind: &'static str,
    pub sql: String,
    pub client: Option<String>,
    pub started: DateTime<Utc>,
    pub duration: Duration,
    pub rows: Option<u64>,
    pub bytes: Option<u64>,
    pub status: &'static str,
    pub error: Option<String>,
}

/// Who is reading `system.queries`: a caller who may see only their own statements.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub user: String,
}

/// A statement as it starts: who ran what, from where.
#[derive(Debug, Clone)]
pub struct Statement {
    pub user: String,
    pub role: &'static str,
    pub kind: &'static str,
    pub sql: String,
    pub client: Option<String>,
}

/// How a statement ended.
#[derive(Debug, Default)]
pub struct Outcome {
    pub rows: Option<u64>,
    pub bytes: Option<u64>,
    /// `None`: it succeeded.
    pub error: Option<String>,
}

impl Outcome {
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            error: Some(message.into()),
            ..Self::default()
        }
    }

    pub fn failed(error: &impl std::fmt::Display) -> Self {
        Self::error(error.to_string())
    }
}

/// A statement that has started and not yet been recorded.
#[derive(Debug)]
pub struct Running {
    history: Arc<QueryHistory>,
    id: u64,
    statement: Option<Statement>,
    started: DateTime<Utc>,
    clock: Instant,
}

impl Default for QueryHistory {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl QueryHistory {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(VecDeque::with_capacity(capacity.min(DEFAULT_CAPACITY))),
            audit: None,
        }
    }

    /// Also keeps every statement for [`QueryHistory::drain_audit`] (an audit table's writer).
    pub fn with_audit(mut self) -> Self {
        self.audit = Some(Mutex::default());
        self
    }

    /// Gives back statements [`QueryHistory::drain_audit`] took and could not append, before the
    /// ones recorded since.
    pub fn requeue_audit(&self, mut records: Vec<Arc<Record>>) {
        if let Some(audit) = &self.audit {
            let mut pending = audit.lock().unwrap_or_else(PoisonError::into_inner);
            records.append(&mut pending);
            *pending = records;
        }
    }

    /// The statements recorded since the last call, oldest first (none without an audit table).
    pub fn drain_audit(&self) -> Vec<Arc<Record>> {
        self.audit.as_ref().map_or_else(Vec::new, |audit| {
            std::mem::take(&mut *audit.lock().unwrap_or_else(PoisonError::into_inner))
        })
    }

    /// Starts statement `id` (its request's id); record it with [`Running::finish`].
    pub fn start(self: &Arc<Self>, id: u64, statement: Statement) -> Running {
        Running {
            history: self.clone(),
            id,
            statement: Some(statement),
            started: Utc::now(),
            clock: Instant::now(),
        }
    }

    /// The kept statements, oldest first; only `viewer`'s own when given.
    pub fn records(&self, viewer: Option<&Viewer>) -> Vec<Arc<Record>> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .iter()
            .filter(|r| viewer.is_none_or(|v| v.user == r.user))
            .cloned()
            .collect()
    }

    fn push(&self, record: Record) {
        // Inside the RPC's span where there is one (its `request_id`); failures at info, the rest
        // at debug (a lookup server runs thousands a second).
        match &record.error {
            Some(error) => tracing::info!(
                id = record.id,
                kind = record.kind,
                status = record.status,
                %error,
                "statement failed"
            ),
            None => tracing::debug!(
                id = record.id,
                kind = record.kind,
                status = record.status,
                rows = record.rows,
                ms = record.duration.as_secs_f64() * 1e3,
                "statement"
            ),
        }
        ::metrics::counter!(metrics::STATEMENTS, "kind" => record.kind, "status" => record.status)
            .increment(1);
        ::metrics::histogram!(metrics::STATEMENT_SECONDS, "kind" => record.kind)
            .record(record.duration.as_secs_f64());
        let record = Arc::new(record);
        if let Some(audit) = &self.audit {
            let mut pending = audit.lock().unwrap_or_else(PoisonError::into_inner);
            if pending.len() >= MAX_AUDIT_BACKLOG {
                tracing::warn!(
                    "the audit table is {MAX_AUDIT_BACKLOG} statements behind: dropping the oldest"
                );
                pending.drain(..MAX_AUDIT_BACKLOG / 10);
            }
            pending.push(record.clone());
        }
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        while entries.len() >= self.capacity {
            entries.pop_front();
        }
        entries.push_back(record);
    }
}

impl Running {
    /// This statement's id, as `system.queries` and the logs show it.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn finish(mut self, outcome: Outcome) {
        self.record(outcome, None);
    }

    /// Not recorded after all (a query planned at GetFlightInfo is recorded by its DoGet).
    pub fn discard(mut self) {
        self.statement = None;
    }

    fn record(&mut self, outcome: Outcome, status: Option<&'static str>) {
        let Some(statement) = self.statement.take() else {
            return;
        };
        let status = status.unwrap_or(if outcome.error.is_some() {
            "error"
        } else {
            "ok"
        });
        self.history.push(Record {
            id: self.id,
            user: statement.user,
            role: statement.role,
            kind: statement.kind,
            sql: truncate(statement.sql),
            client: statement.client,
            started: self.started,
            duration: self.clock.elapsed(),
            rows: outcome.rows,
            bytes: outcome.bytes,
            status,
            error: outcome.error,
        });
    }
}

impl Drop for Running {
    /// A statement dropped before it finished: its client went away, or it was cancelled.
    fn drop(&mut self) {
        self.record(Outcome::default(), Some("cancelled"));
    }
}

fn truncate(mut sql: String) -> String {
    if let Some((at, _)) = sql.char_indices().nth(MAX_SQL_CHARS) {
        sql.truncate(at);
        sql.push('…');
    }
    sql
}

/// A statement's kind from its first keyword: a small fixed set, fit for a metric label.
pub fn kind_of(sql: &str) -> &'static str {
    let first = sql
        .trim_start_matches(|c: char| c.is_whitespace() || c == '(')
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    match first.as_str() {
        "SELECT" | "WITH" | "VALUES" | "SHOW" | "DESCRIBE" | "TABLE" => "query",
        "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "COPY" => "dml",
        "CREATE" | "DROP" | "ALTER" => "ddl",
        "EXPLAIN" => "explain",
        "REFRESH" | "RELOAD" | "SET" | "RESET" | "OPTIMIZE" | "VACUUM" | "RESTORE" => "command",
        _ => "other",
    }
}

pub fn schema() -> SchemaRef {
    let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("user", DataType::Utf8, false),
        Field::new("role", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("sql", DataType::Utf8, false),
        Field::new("started_at", utc, false),
        Field::new("duration_ms", DataType::Float64, false),
        Field::new("rows", DataType::Int64, true),
        Field::new("bytes", DataType::Int64, true),
        Field::new("status", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("client_address", DataType::Utf8, true),
    ]))
}

/// Records as `system.queries` rows.
pub fn batch(records: &[Arc<Record>]) -> Result<RecordBatch> {
    let mut id = Int64Builder::new();
    let mut user = StringBuilder::new();
    let mut role = StringBuilder::new();
    let mut kind = StringBuilder::new();
    let mut sql = StringBuilder::new();
    let mut started = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut duration = Float64Builder::new();
    let mut rows = Int64Builder::new();
    let mut bytes = Int64Builder::new();
    let mut status = StringBuilder::new();
    let mut error = StringBuilder::new();
    let mut client = StringBuilder::new();
    let count = |n: Option<u64>| n.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    for r in records {
        id.append_value(i64::try_from(r.id).unwrap_or(i64::MAX));
        user.append_value(&r.user);
        role.append_value(r.role);
        kind.append_value(r.kind);
        sql.append_value(&r.sql);
        started.append_value(r.started.timestamp_micros());
        duration.append_value(r.duration.as_secs_f64() * 1e3);
        rows.append_option(count(r.rows));
        bytes.append_option(count(r.bytes));
        status.append_value(r.status);
        error.append_option(r.error.as_deref());
        client.append_option(r.client.as_deref());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(user.finish()),
        Arc::new(role.finish()),
        Arc::new(kind.finish()),
        Arc::new(sql.finish()),
        Arc::new(started.finish()),
        Arc::new(duration.finish()),
        Arc::new(rows.finish()),
        Arc::new(bytes.finish()),
        Arc::new(status.finish()),
        Arc::new(error.finish()),
        Arc::new(client.finish()),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

/// `system.queries` as `ctx`'s caller may see it: every statement, or only a [`Viewer`]'s own.
pub fn batch_for(history: &QueryHistory, ctx: &TaskContext) -> Result<RecordBatch> {
    let viewer = ctx.session_config().get_extension::<Viewer>();
    batch(&history.records(viewer.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(user: &str, sql: &str) -> Statement {
        Statement {
            user: user.into(),
            role: "read",
            kind: kind_of(sql),
            sql: sql.into(),
            client: None,
        }
    }

    #[test]
    fn keeps_the_last_n_and_filters_by_viewer() {
        let history = Arc::new(QueryHistory::new(2));
        for (user, sql) in [("a", "SELECT 1"), ("b", "SELECT 2"), ("a", "DELETE FROM t")] {
            history
                .start(next_id(), statement(user, sql))
                .finish(Outcome::default());
        }
        let all = history.records(None);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].sql, "SELECT 2");
        assert_eq!(all[1].kind, "dml");
        let mine = history.records(Some(&Viewer { user: "a".into() }));
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].sql, "DELETE FROM t");
    }

    #[test]
    fn a_dropped_statement_is_cancelled_and_none_is_kept_at_zero() {
        let history = Arc::new(QueryHistory::new(5));
        drop(history.start(next_id(), statement("a", "SELECT 1")));
        assert_eq!(history.records(None)[0].status, "cancelled");
        let off = Arc::new(QueryHistory::new(0));
        off.start(next_id(), statement("a", "SELECT 1"))
            .finish(Outcome::default());
        assert!(off.records(None).is_empty());
    }

    #[test]
    fn kinds_and_truncation() {
        assert_eq!(kind_of("  with x as (select 1) select * from x"), "query");
        assert_eq!(kind_of("(SELECT 1)"), "query");
        assert_eq!(kind_of("refresh feature views"), "command");
        assert_eq!(kind_of("'; drop"), "other");
        let long = "x".repeat(MAX_SQL_CHARS + 10);
        assert_eq!(truncate(long).chars().count(), MAX_SQL_CHARS + 1);
    }
}
