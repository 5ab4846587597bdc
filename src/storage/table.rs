//! A Delta table as a DataFusion table: reads through delta-rs's scan, writes through Delta commits.
//!
//! `INSERT` uses delta-rs's own data sink (one commit per statement); `DELETE` and `UPDATE` run delta-rs's
//! operations lazily, when the plan executes, so `EXPLAIN` never writes. A table opened at an older
//! version (time travel) is read-only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{Statistics, plan_err};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::context::SessionState;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::SessionContext;
use deltalake::logstore::ObjectStoreRef;
use deltalake::{DeltaTable, DeltaTableBuilder};
use object_store::{ObjectMeta, ObjectStoreExt};
use url::Url;

use crate::error::{Error, Result};
use crate::storage::upkeep;
use crate::storage::write::take_turn;

/// Which snapshot of a table to read: the latest, or one chosen with `VERSION AS OF` / `TIMESTAMP AS OF`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsOf {
    Latest,
    Version(u64),
    /// An RFC 3339 timestamp: the latest version committed at or before it.
    Timestamp(String),
}

/// Loads a Delta table at the requested snapshot.
pub async fn open_delta(url: &Url, as_of: &AsOf) -> Result<DeltaTable> {
    let builder = DeltaTableBuilder::from_url(url.clone())?;
    let builder = match as_of {
        AsOf::Latest => builder,
        AsOf::Version(v) => builder.with_version(*v),
        AsOf::Timestamp(ts) => builder.with_datestring(ts)?,
    };
    let table = match builder.load().await {
        Ok(table) => table,
        Err(e) => return Err(explain_load_error(url, as_of, e).await),
    };
    if let AsOf::Timestamp(ts) = as_of {
        check_not_before_creation(&table, ts).await?;
    }
    if *as_of != AsOf::Latest {
        check_files_present(&table, as_of).await?;
    }
    Ok(table)
}

/// Tables kept at most in [`Snapshots`]; past it, all are dropped and loaded again when next read.
const MAX_SNAPSHOTS: usize = 1024;

/// The latest snapshot of each table read, brought up to date at every open: only the commits since
/// the kept version are read (when there are none, one look for the next commit's file), instead of
/// replaying the whole log and rebuilding its file list for every statement. Reads stay fresh: a
/// commit another writer made is seen by the next open.
///
/// A table deleted and written again at the same place has a new log starting over at version 0, in
/// which the kept version may exist again: so each open first checks that the kept version's commit
/// file is the one read then (its size, modification time and entity tag), and loads the table
/// afresh when it is gone or another. Quiver's own DDL forgets every table ([`Snapshots::clear`]).
#[derive(Default)]
pub struct Snapshots {
    latest: Mutex<HashMap<Url, Kept>>,
}

/// A table's snapshot and what its last commit file looked like when it was read.
#[derive(Clone)]
struct Kept {
    table: DeltaTable,
    commit: ObjectMeta,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tables = self.latest.lock().map_or(0, |l| l.len());
        f.debug_struct("Snapshots")
            .field("tables", &tables)
            .finish()
    }
}

impl Snapshots {
    /// The table at `as_of`; the latest version from the kept snapshot when there is one.
    pub async fn open(&self, url: &Url, as_of: &AsOf) -> Result<DeltaTable> {
        if *as_of != AsOf::Latest {
            return open_delta(url, as_of).await;
        }
        let kept = self.latest.lock().ok().and_then(|l| l.get(url).cloned());
        let updated = match kept {
            Some(kept) => brought_up_to_date(kept).await,
            None => None,
        };
        let kept = match updated {
            Some(kept) => kept,
            None => {
                let table = open_delta(url, as_of).await?;
                match last_commit(&table).await {
                    Some(commit) => Kept { table, commit },
                    // Nothing to check a kept copy against: not kept.
                    None => return Ok(table),
                }
            }
        };
        if let Ok(mut latest) = self.latest.lock() {
            if latest.len() >= MAX_SNAPSHOTS && !latest.contains_key(url) {
                latest.clear();
            }
            latest.insert(url.clone(), kept.clone());
        }
        Ok(kept.table)
    }

    /// Forgets every table: after DDL, which may drop a table and create another in its place.
    pub fn clear(&self) {
        if let Ok(mut latest) = self.latest.lock() {
            latest.clear();
        }
    }
}

/// The kept table with the commits since its version applied. `None` when its last commit file is
/// gone or not the one read (the table was deleted, perhaps written again), or the update fails:
/// the caller loads the table from scratch.
async fn brought_up_to_date(kept: Kept) -> Option<Kept> {
    let Kept { mut table, commit } = kept;
    let version = table.version()?;
    match log_state(&table.object_store(), version, &commit).await {
        LogState::Replaced => return None,
        LogState::Unchanged => return Some(Kept { table, commit }),
        LogState::Advanced => {}
    }
    table.update_incremental(None).await.ok()?;
    let commit = if table.version() == Some(version) {
        commit
    } else {
        last_commit(&table).await?
    };
    Some(Kept { table, commit })
}

/// What the commit file of the table's version looks like in storage; `None` if it is not there.
async fn last_commit(table: &DeltaTable) -> Option<ObjectMeta> {
    commit_file(&table.object_store(), table.version()?).await
}

/// Where a table's log stands against a version read before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogState {
    /// The version's commit file is the one read and no commit follows it.
    Unchanged,
    /// The version's commit file is the one read and later commits exist.
    Advanced,
    /// The version's commit file is gone or another (same path, size, modification time and entity
    /// tag compared): the table was deleted, perhaps written again with a new log.
    Replaced,
}

/// Where the log of the table in `store` stands against `version`, whose commit file looked like
/// `commit` when read: two `head`s, made concurrently, without listing the log.
pub async fn log_state(store: &ObjectStoreRef, version: u64, commit: &ObjectMeta) -> LogState {
    let (now, next) = futures::join!(commit_file(store, version), commit_file(store, version + 1));
    match (now, next) {
        (Some(now), _) if now != *commit => LogState::Replaced,
        (None, _) => LogState::Replaced,
        (_, None) => LogState::Unchanged,
        (_, Some(_)) => LogState::Advanced,
    }
}

/// What the commit file of `version` looks like in `store` (rooted at a table, as
/// [`DeltaTable::object_store`] is); `None` if it is not there or cannot be read.
pub async fn commit_file(store: &ObjectStoreRef, version: u64) -> Option<ObjectMeta> {
    let path = deltalake::logstore::commit_uri_from_version(Some(version));
    ObjectStoreExt::head(store, &path).await.ok()
}

/// A failed load, said in the table's terms where the Delta kernel's message would not: a version
/// past the end of the log (which versions exist), or a commit file that is not JSON (which one).
async fn explain_load_error(url: &Url, as_of: &AsOf, error: deltalake::DeltaTableError) -> Error {
    if matches!(
        error,
        deltalake::DeltaTableError::KernelError(_) | deltalake::DeltaTableError::Kernel { .. }
    ) && let Some(corrupt) = find_corrupt_commit(url).await
    {
        return corrupt;
    }
    let AsOf::Version(requested) = as_of else {
        return error.into();
    };
    match unloaded(url) {
        Some(table) => match table.get_latest_version().await {
            Ok(latest) if *requested > latest => Error::InvalidInput(format!(
                "VERSION AS OF {requested}: the table's latest version is {latest}"
            )),
            _ => error.into(),
        },
        None => error.into(),
    }
}

/// The table at `url` with nothing of its log read: its store, to look at the log by hand.
fn unloaded(url: &Url) -> Option<DeltaTable> {
    DeltaTableBuilder::from_url(url.clone()).ok()?.build().ok()
}

/// Commit files read when looking for a corrupt one, newest first.
const COMMITS_CHECKED: usize = 100;

/// The newest of the table's last [`COMMITS_CHECKED`] commit files that is not JSON lines, as
/// [`Error::Corrupt`]; `None` when they all parse (or the log cannot be listed).
async fn find_corrupt_commit(url: &Url) -> Option<Error> {
    use futures::TryStreamExt;
    let store = unloaded(url)?.object_store();
    let log = object_store::path::Path::from("_delta_log");
    let listed: Vec<ObjectMeta> = store.list(Some(&log)).try_collect().await.ok()?;
    let mut commits: Vec<(u64, ObjectMeta)> = listed
        .into_iter()
        .filter_map(|meta| {
            let name = meta.location.filename().filter(|n| n.ends_with(".json"))?;
            let version = deltalake::logstore::extract_version_from_filename(name)?;
            Some((version, meta))
        })
        .collect();
    commits.sort_by_key(|c| std::cmp::Reverse(c.0));
    for (version, meta) in commits.into_iter().take(COMMITS_CHECKED) {
        let bytes = ObjectStoreExt::get(&store, &meta.location)
            .await
            .ok()?
            .bytes()
            .await
            .ok()?;
        let bad = bytes
            .split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.trim_ascii().is_empty())
            .find_map(|(i, line)| {
                serde_json::from_slice::<serde_json::Value>(line)
                    .err()
                    .map(|e| (i + 1, e))
            });
        if let Some((line, e)) = bad {
            let earlier = match version {
                0 => String::new(),
                v => format!("; earlier versions still read with VERSION AS OF {}", v - 1),
            };
            return Some(Error::Corrupt(format!(
                "the Delta log of {url} is corrupt: commit {version} ({}) is not JSON at line \
                 {line}: {e}. The table cannot be read or written until that file is repaired{earlier}",
                meta.location
            )));
        }
    }
    None
}

/// Checks that the data files of a time-travel snapshot are still there (one listing of the table),
/// so reading a version VACUUM removed files of is an error naming it, not a failed Parquet read.
async fn check_files_present(table: &DeltaTable, as_of: &AsOf) -> Result<()> {
    use futures::{StreamExt, TryStreamExt};
    use std::collections::HashSet;
    let snapshot = table.snapshot()?;
    let store = table.object_store();
    let present: HashSet<String> = store
        .list(None)
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await?;
    let mut views = snapshot.snapshot().file_views(&table.log_store(), None);
    while let Some(view) = views.next().await {
        let view = view?;
        let path = view.object_store_path().to_string();
        if !present.contains(&path) {
            return Err(Error::VersionGone(format!(
                "{} of {} cannot be read: VACUUM removed its data file {path}. Versions inside \
                 the table's delta.deletedFileRetentionDuration can be read",
                describe(as_of),
                table.table_url()
            )));
        }
    }
    Ok(())
}

fn describe(as_of: &AsOf) -> String {
    match as_of {
        AsOf::Latest => "the latest version".into(),
        AsOf::Version(v) => format!("version {v}"),
        AsOf::Timestamp(ts) => format!("the version at {ts}"),
    }
}

/// delta-rs answers a timestamp older than the table with its first version; Spark and Databricks
/// reject it, and so does Quiver: there was no data then.
async fn check_not_before_creation(table: &DeltaTable, ts: &str) -> Result<()> {
    let requested = chrono::DateTime::parse_from_rfc3339(ts)
        .map_err(|e| Error::InvalidInput(format!("bad timestamp '{ts}': {e}")))?
        .timestamp_millis();
    // delta-rs picks the latest version committed at or before the timestamp, falling back to the
    // first version; the pick is only newer than the timestamp in that fallback.
    let committed = table
        .version()
        .and_then(|v| table.snapshot().ok().and_then(|s| s.version_timestamp(v)));
    if let Some(committed) = committed
        && committed > requested
    {
        return Err(Error::InvalidInput(format!(
            "TIMESTAMP AS OF {ts} is before the earliest version available (committed at {})",
            chrono::DateTime::from_timestamp_millis(committed)
                .map_or_else(|| committed.to_string(), |t| t.to_rfc3339())
        )));
    }
    Ok(())
}

/// The provider the catalog hands to DataFusion for every Delta table.
#[derive(Debug)]
pub struct DeltaTableProvider {
    name: String,
    table: DeltaTable,
    scan: Arc<dyn TableProvider>,
    read_only: bool,
}

impl DeltaTableProvider {
    /// `settings` supplies the scan options (view types, Parquet pushdown) of Quiver's session.
    pub async fn try_new(
        name: String,
        table: DeltaTable,
        as_of: &AsOf,
        settings: &Arc<SessionState>,
    ) -> Result<Self> {
        let scan = table
            .table_provider()
            .with_session(settings.clone())
            .await?;
        Ok(Self {
            name,
            table,
            scan,
            read_only: *as_of != AsOf::Latest,
        })
    }

    /// `schema.table`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn delta_table(&self) -> &DeltaTable {
        &self.table
    }

    /// Whether this is the table's latest version (not a time travel snapshot).
    pub fn is_latest(&self) -> bool {
        !self.read_only
    }

    fn check_writable(&self, what: &str) -> DFResult<()> {
        if self.read_only {
            return plan_err!(
                "{what} into {} is not allowed: time travel snapshots are read-only",
                self.name
            );
        }
        Ok(())
    }
}

/// Most values of an IN list, or terms of an OR, in a filter given to delta-rs. It turns an IN
/// list into a chain of ORs and walks that chain recursively (deltalake-core 1.1
/// `flatten_junction_expr`): about 20,000 values overflow a thread's stack, and a stack overflow
/// aborts the server.
pub const MAX_DELTA_FILTER_TERMS: usize = 1_000;

/// Whether `filter` has an IN list or a chain of ORs longer than [`MAX_DELTA_FILTER_TERMS`].
pub fn too_long_for_delta(filter: &Expr) -> bool {
    filter
        .exists(|e| {
            Ok(match e {
                Expr::InList(list) => list.list.len() > MAX_DELTA_FILTER_TERMS,
                Expr::BinaryExpr(b) if b.op == Operator::Or => or_terms(e) > MAX_DELTA_FILTER_TERMS,
                _ => false,
            })
        })
        .unwrap_or(true)
}

/// How many terms the OR chain at `expr` has (1 if it is not an OR), walking both sides without
/// recursion.
fn or_terms(expr: &Expr) -> usize {
    let mut terms = 0;
    let mut pending = vec![expr];
    while let Some(e) = pending.pop() {
        match e {
            Expr::BinaryExpr(b) if b.op == Operator::Or => {
                pending.push(&b.left);
                pending.push(&b.right);
            }
            _ => terms += 1,
        }
        if terms > MAX_DELTA_FILTER_TERMS {
            break;
        }
    }
    terms
}

#[async_trait]
impl TableProvider for DeltaTableProvider {
    fn schema(&self) -> SchemaRef {
        self.scan.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        // Only pruning hints from here on: callers apply their filters above the scan.
        if filters.iter().any(too_long_for_delta) {
            let short: Vec<Expr> = filters
                .iter()
                .filter(|f| !too_long_for_delta(f))
                .cloned()
                .collect();
            return self.scan.scan(state, projection, &short, limit).await;
        }
        self.scan.scan(state, projection, filters, limit).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DFResult<Vec<TableProviderFilterPushDown>> {
        // Filters too long for delta-rs stay above the scan (DataFusion applies them to the rows).
        let (long, short): (Vec<usize>, Vec<usize>) =
            (0..filters.len()).partition(|&i| too_long_for_delta(filters[i]));
        if long.is_empty() {
            return self.scan.supports_filters_pushdown(filters);
        }
        let pushed: Vec<&Expr> = short.iter().map(|&i| filters[i]).collect();
        let mut answers = vec![TableProviderFilterPushDown::Unsupported; filters.len()];
        for (i, answer) in short
            .into_iter()
            .zip(self.scan.supports_filters_pushdown(&pushed)?)
        {
            answers[i] = answer;
        }
        Ok(answers)
    }

    fn statistics(&self) -> Option<Statistics> {
        self.scan.statistics()
    }

    async fn insert_into(
        &self,
        state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        self.check_writable("INSERT")?;
        crate::storage::insert::insert_plan(&self.table, self.schema(), state, input, insert_op)
    }

    async fn merge_into(
        &self,
        state: &dyn Session,
        source: Arc<dyn ExecutionPlan>,
        merge_schema: datafusion::common::DFSchemaRef,
        on: Expr,
        clauses: Vec<datafusion::logical_expr::dml::MergeIntoClause>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        self.check_writable("MERGE")?;
        crate::storage::merge::merge_plan(&self.table, state, source, merge_schema, on, clauses)
    }

    async fn delete_from(
        &self,
        _state: &dyn Session,
        _filters: Vec<Expr>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        // DataFusion passes only the filters left after optimization (`WHERE false` and subqueries
        // arrive as none at all); Quiver runs DELETE itself from the unoptimized plan (query::dml).
        datafusion::common::not_impl_err!(
            "DELETE on {} inside another statement (e.g. EXPLAIN ANALYZE)",
            self.name
        )
    }

    async fn update(
        &self,
        _state: &dyn Session,
        _assignments: Vec<(String, Expr)>,
        _filters: Vec<Expr>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        datafusion::common::not_impl_err!(
            "UPDATE on {} inside another statement (e.g. EXPLAIN ANALYZE)",
            self.name
        )
    }
}

/// Sets `assignments` on the rows matching `predicate` (all rows if none), as one commit.
pub async fn update_rows(
    mut table: DeltaTable,
    assignments: Vec<(String, Expr)>,
    predicate: Option<Expr>,
) -> Result<u64> {
    if assignments.is_empty() {
        return Ok(0);
    }
    check_predicate_length("UPDATE", predicate.as_ref())?;
    let _turn = take_turn(&mut table).await?;
    let mut builder = table.update();
    if let Some(predicate) = predicate {
        builder = builder.with_predicate(predicate);
    }
    for (column, value) in assignments {
        builder = builder.with_update(column, value);
    }
    let (table, metrics) = builder
        .with_commit_properties(upkeep::commit_properties())
        .await?;
    upkeep::after_commit(&table);
    Ok(metrics.num_updated_rows as u64)
}

/// Deletes the rows matching `predicate` (all rows if none), as one commit.
pub async fn delete_rows(mut table: DeltaTable, predicate: Option<Expr>) -> Result<u64> {
    check_predicate_length("DELETE", predicate.as_ref())?;
    let _turn = take_turn(&mut table).await?;
    // delta-rs cannot count rows it drops by removing whole files; count them first on the same snapshot.
    let counted = count_matching(&table, predicate.as_ref()).await?;
    let mut builder = table
        .delete()
        .with_commit_properties(upkeep::commit_properties());
    if let Some(predicate) = predicate {
        builder = builder.with_predicate(predicate);
    }
    let (table, metrics) = builder.await?;
    upkeep::after_commit(&table);
    Ok(metrics.num_deleted_rows.map_or(counted, |n| n as u64))
}

/// delta-rs's DELETE and UPDATE convert their whole predicate, and one too long for it would
/// overflow the stack ([`too_long_for_delta`]): such a statement is refused, before anything is
/// written.
fn check_predicate_length(statement: &str, predicate: Option<&Expr>) -> Result<()> {
    if predicate.is_some_and(too_long_for_delta) {
        return Err(Error::InvalidInput(format!(
            "{statement} predicate has an IN list or OR chain of more than \
             {MAX_DELTA_FILTER_TERMS} values, more than delta-rs takes: split the statement"
        )));
    }
    Ok(())
}

async fn count_matching(table: &DeltaTable, predicate: Option<&Expr>) -> Result<u64> {
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state())?;
    let mut df = ctx.read_table(table.table_provider().await?)?;
    if let Some(predicate) = predicate {
        df = df.filter(predicate.clone())?;
    }
    Ok(df.count().await? as u64)
}

/// The one-column `count` result DataFusion expects from DML plans.
pub fn count_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::UInt64,
        false,
    )]))
}

pub fn count_batch(count: u64) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(
        count_schema(),
        vec![Arc::new(UInt64Array::from(vec![count]))],
    )?)
}

/// A partition that can be executed exactly once.
pub struct OnceStream {
    schema: SchemaRef,
    stream: Mutex<Option<SendableRecordBatchStream>>,
}

impl OnceStream {
    pub fn new(stream: SendableRecordBatchStream) -> Self {
        Self {
            schema: stream.schema(),
            stream: Mutex::new(Some(stream)),
        }
    }
}

impl std::fmt::Debug for OnceStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnceStream").finish_non_exhaustive()
    }
}

impl PartitionStream for OnceStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let taken = self.stream.lock().ok().and_then(|mut s| s.take());
        taken.unwrap_or_else(|| {
            let err = DataFusionError::Internal("a one-shot stream was executed twice".into());
            Box::pin(RecordBatchStreamAdapter::new(
                self.schema.clone(),
                futures::stream::once(async move { Err(err) }),
            ))
        })
    }
}
