//! Materializing a feature view into its Delta table `features.<view>`, incrementally when it can be.
//!
//! The refresh state lives in the view's own Delta table, in the same commit as the rows: one Delta
//! application transaction (`txn`) per source, `quiver.source.<schema>.<table>`, holding the source
//! version the rows were computed from, and `quiver.view.definition` holding the definition's
//! fingerprint. So the state survives restarts, moves with the warehouse, and can never disagree with
//! the data.
//!
//! A refresh compares each source's latest version with the recorded one and reads only the commits in
//! between (the Delta log, not the data):
//! - nothing new: **unchanged**, no commit (`@refresh full` views too);
//! - only appends (`add` actions with `dataChange`): **incremental**. The view runs over just the
//!   added files to find which entities they touch, is recomputed for those entities only (the entity
//!   filter is pushed down to the sources), and the table is rewritten as the other entities' rows plus
//!   the recomputed ones, in one commit;
//! - anything else (a delete, an overwrite, a schema change, a changed definition, a log entry already
//!   cleaned up, the first refresh, any change under `@refresh full`): **full**, the view recomputed from scratch.
//!
//! Either commit is atomic: readers see the old rows or the new, never a mix.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::logical_expr::utils::disjunction;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, cast};
use datafusion::prelude::{SessionContext, col, lit};
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;

use super::{FEATURES_SCHEMA, FeatureStore, FeatureView, ViewState};
use crate::error::{Error, Result};
use crate::storage::changes::{Changes, changes_since, limited_to, read_of, replace_read};
use crate::storage::{
    AsOf, DeltaTableProvider, WarehouseCatalog, WriteKind, WriteRequest, open_delta, write_stream,
};

/// More changed entities than this and an incremental refresh would filter on a list longer than a
/// full recompute is worth: the refresh is full.
const MAX_INCREMENTAL_ENTITIES: usize = 50_000;

const DEFINITION_TXN: &str = "quiver.view.definition";

fn source_txn(source: &str) -> String {
    format!("quiver.source.{source}")
}

/// How a refresh went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Full,
    Incremental,
    Unchanged,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Incremental => "incremental",
            Mode::Unchanged => "unchanged",
        }
    }
}

/// One row of `REFRESH FEATURE VIEW`'s result.
#[derive(Debug, Clone)]
pub struct Report {
    pub view: String,
    pub mode: Mode,
    /// Why the mode was chosen.
    pub reason: String,
    /// `schema.table@version` of each source, as materialized now.
    pub sources: Vec<String>,
    /// Entities recomputed (all of them for a full refresh).
    pub entities: u64,
    /// Rows in the view's table after the refresh (written in this commit).
    pub rows: u64,
    /// The view table's Delta version after the refresh.
    pub version: Option<u64>,
    pub elapsed: Duration,
}

/// A Delta table the view reads, at the version this refresh reads.
struct Source {
    name: String,
    table: DeltaTable,
    version: u64,
}

enum Plan {
    Full(String),
    Incremental(Vec<(usize, Vec<String>)>),
    Unchanged,
}

/// Refreshes `view`; concurrent refreshes of one view run one after the other. Counted in the
/// refresh metrics by view, mode and status.
pub async fn refresh(
    ctx: &SessionContext,
    catalog: &WarehouseCatalog,
    view: &Arc<ViewState>,
) -> Result<Report> {
    use crate::metrics::{REFRESH_ROWS, REFRESH_SECONDS, REFRESHES, bounded};
    let started = Instant::now();
    let refreshed = refresh_view(ctx, catalog, view).await;
    let name = bounded(&view.definition.name);
    match &refreshed {
        Ok(report) => {
            let mode = report.mode.as_str();
            metrics::counter!(REFRESHES, "view" => name.clone(), "mode" => mode, "status" => "ok")
                .increment(1);
            metrics::histogram!(REFRESH_SECONDS, "view" => name.clone(), "mode" => mode)
                .record(started.elapsed().as_secs_f64());
            metrics::counter!(REFRESH_ROWS, "view" => name).increment(report.rows);
        }
        Err(_) => {
            metrics::counter!(REFRESHES, "view" => name, "mode" => "none", "status" => "error")
                .increment(1);
        }
    }
    refreshed
}

async fn refresh_view(
    ctx: &SessionContext,
    catalog: &WarehouseCatalog,
    view: &Arc<ViewState>,
) -> Result<Report> {
    let _one_at_a_time = view.refresh_lock.lock().await;
    let started = Instant::now();
    let definition = &view.definition;
    if !definition.offline {
        return Err(Error::InvalidInput(format!(
            "feature view {} is not materialized (@materialize)",
            definition.name
        )));
    }
    let state = ctx.state();
    let query = state
        .create_logical_plan(&definition.sql)
        .await
        .map_err(|e| in_view(definition, e.into()))?;
    check_output(definition, query.schema())?;
    let (sources, untracked) = sources_of(&query)?;

    let location = catalog
        .warehouse()
        .locate(FEATURES_SCHEMA, &definition.name)
        .await?;
    let target = match &location {
        Some(location) => Some(open_delta(location.url(), &AsOf::Latest).await?),
        None => None,
    };
    let decision = match (&target, untracked.first()) {
        (None, _) => Plan::Full("first refresh".into()),
        (Some(_), Some(other)) => Plan::Full(format!(
            "reads {other}, whose changes are not tracked (only warehouse Delta tables are)"
        )),
        (Some(target), None) => decide(definition, &sources, target).await?,
    };
    let mut transactions = vec![Transaction::new(DEFINITION_TXN, definition.fingerprint())];
    transactions.extend(sources.iter().map(|s| {
        Transaction::new(
            source_txn(&s.name),
            i64::try_from(s.version).unwrap_or(i64::MAX),
        )
    }));

    let (mode, reason, entities, data) = match decision {
        Plan::Unchanged => {
            return Ok(Report {
                view: definition.name.clone(),
                mode: Mode::Unchanged,
                reason: "no source changed since the last refresh".into(),
                sources: describe(&sources),
                entities: 0,
                rows: 0,
                version: target.as_ref().and_then(DeltaTable::version),
                elapsed: started.elapsed(),
            });
        }
        Plan::Full(reason) => (Mode::Full, reason, None, query.clone()),
        Plan::Incremental(changes) => {
            let keys =
                changed_entities(ctx, catalog, definition, &query, &sources, &changes).await?;
            let count: usize = keys.iter().map(RecordBatch::num_rows).sum();
            let changed: Vec<String> = changes
                .iter()
                .map(|(s, files)| format!("{} ({} new files)", sources[*s].name, files.len()))
                .collect();
            match (count, target.as_ref()) {
                (n, _) if n > MAX_INCREMENTAL_ENTITIES => (
                    Mode::Full,
                    format!("{n} entities changed (more than {MAX_INCREMENTAL_ENTITIES})"),
                    None,
                    query.clone(),
                ),
                (n, Some(target)) => {
                    let filter = key_filter(&definition.entity, &keys)?;
                    let data = merge_plan(catalog, definition, &query, target, filter).await?;
                    let reason = format!("appends to {}", changed.join(", "));
                    (Mode::Incremental, reason, Some(n as u64), data)
                }
                (_, None) => {
                    return Err(Error::Internal(
                        "incremental refresh without a table".into(),
                    ));
                }
            }
        }
    };

    let table = match (target, &location) {
        (Some(table), _) => table,
        (None, _) => {
            catalog
                .warehouse()
                .create_schema(FEATURES_SCHEMA, true)
                .await?;
            let url = catalog
                .warehouse()
                .new_table_url(FEATURES_SCHEMA, &definition.name)
                .await?;
            DeltaTable::try_from_url(url).await?
        }
    };
    let stream = ctx
        .execute_logical_plan(data)
        .await?
        .execute_stream()
        .await?;
    let rows = write_stream(
        &state,
        WriteRequest {
            table,
            kind: WriteKind::Replace,
            partition_by: Vec::new(),
            data: stream,
            transactions,
            merge_schema: false,
        },
    )
    .await
    .map_err(|e| in_view(definition, e))?;

    view.reload(ctx, catalog).await?;
    if location.is_none() {
        // A new table (maybe in a new schema): renew the cached name listing.
        catalog.refresh().await?;
    }
    let version = view.materialized().map(|m| m.version);
    let report = Report {
        view: definition.name.clone(),
        mode,
        reason,
        sources: describe(&sources),
        entities: entities.unwrap_or(rows),
        rows,
        version,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        view = %report.view,
        mode = report.mode.as_str(),
        reason = %report.reason,
        entities = report.entities,
        rows = report.rows,
        ms = report.elapsed.as_millis() as u64,
        "feature view refreshed"
    );
    Ok(report)
}

/// Chooses full, incremental or unchanged from the state recorded in the view's table and the
/// sources' logs.
async fn decide(view: &FeatureView, sources: &[Source], target: &DeltaTable) -> Result<Plan> {
    let snapshot = target.snapshot()?;
    let log_store = target.log_store();
    let recorded = snapshot
        .transaction_version(log_store.as_ref(), DEFINITION_TXN)
        .await?;
    if recorded != Some(view.fingerprint()) {
        return Ok(Plan::Full("the view's definition changed".into()));
    }
    let mut changes = Vec::new();
    for (s, source) in sources.iter().enumerate() {
        let recorded = snapshot
            .transaction_version(log_store.as_ref(), source_txn(&source.name))
            .await?
            .and_then(|v| u64::try_from(v).ok());
        let Some(recorded) = recorded else {
            return Ok(Plan::Full(format!("{} is a new source", source.name)));
        };
        match changes_since(&source.table, &source.name, recorded).await? {
            Changes::None => {}
            // Recomputed whole whenever a source moved; never rewritten when none did.
            _ if view.full_refresh => return Ok(Plan::Full("@refresh full".into())),
            Changes::Appended(files) => changes.push((s, files)),
            Changes::Other(reason) => return Ok(Plan::Full(reason)),
        }
    }
    Ok(if changes.is_empty() {
        Plan::Unchanged
    } else {
        Plan::Incremental(changes)
    })
}

/// The entities whose rows the appended files can change: for each changed source and each place
/// the query reads it, the query run with that one read limited to the new files, keys only.
async fn changed_entities(
    ctx: &SessionContext,
    catalog: &WarehouseCatalog,
    view: &FeatureView,
    query: &LogicalPlan,
    sources: &[Source],
    changes: &[(usize, Vec<String>)],
) -> Result<Vec<RecordBatch>> {
    let mut branches = Vec::new();
    for (s, files) in changes {
        let source = &sources[*s];
        let provider = limited_to(&source.table, catalog.settings().clone(), files.clone()).await?;
        let occurrences = count_reads(query, &source.name)?;
        for occurrence in 0..occurrences {
            let limited = replace_read(query.clone(), &source.name, occurrence, &provider)?;
            let keys = view.entity.iter().map(|e| col(e.as_str()));
            branches.push(LogicalPlanBuilder::from(limited).project(keys)?.build()?);
        }
    }
    let mut union = LogicalPlanBuilder::from(branches.remove(0));
    for branch in branches {
        union = union.union(branch)?;
    }
    let plan = union.distinct()?.build()?;
    Ok(ctx.execute_logical_plan(plan).await?.collect().await?)
}

/// The rows to write: the view's current rows for unchanged entities, and the query recomputed for
/// the changed ones (`filter` selects them; DataFusion pushes it down to the sources).
async fn merge_plan(
    catalog: &WarehouseCatalog,
    view: &FeatureView,
    query: &LogicalPlan,
    target: &DeltaTable,
    filter: Expr,
) -> Result<LogicalPlan> {
    let recomputed = LogicalPlanBuilder::from(query.clone())
        .filter(filter.clone())?
        .build()?;
    let provider = DeltaTableProvider::try_new(
        format!("{FEATURES_SCHEMA}.{}", view.name),
        target.clone(),
        &AsOf::Latest,
        catalog.settings(),
    )
    .await?;
    let output = recomputed.schema().clone();
    let kept = LogicalPlanBuilder::scan(
        view.name.as_str(),
        provider_as_source(Arc::new(provider)),
        None,
    )?
    .filter(filter.is_not_true())?
    .project(
        output
            .fields()
            .iter()
            .map(|f| cast(col(f.name().as_str()), f.data_type().clone()).alias(f.name())),
    )?
    .build()?;
    Ok(LogicalPlanBuilder::from(kept).union(recomputed)?.build()?)
}

/// `entity IN (keys)` for one key column, `(a = x AND b = y) OR ...` for several.
fn key_filter(entity: &[String], keys: &[RecordBatch]) -> Result<Expr> {
    if let [column] = entity {
        let mut values = Vec::new();
        for batch in keys {
            for row in 0..batch.num_rows() {
                values.push(lit(ScalarValue::try_from_array(batch.column(0), row)?));
            }
        }
        return Ok(col(column.as_str()).in_list(values, false));
    }
    let mut alternatives = Vec::new();
    for batch in keys {
        for row in 0..batch.num_rows() {
            let mut all = Vec::with_capacity(entity.len());
            for (c, column) in entity.iter().enumerate() {
                let value = ScalarValue::try_from_array(batch.column(c), row)?;
                all.push(col(column.as_str()).eq(lit(value)));
            }
            alternatives.extend(datafusion::logical_expr::utils::conjunction(all));
        }
    }
    Ok(disjunction(alternatives).unwrap_or(lit(false)))
}

/// The warehouse Delta tables the query reads, at the versions it reads them, and the names of the
/// other tables it reads (other feature views, system tables), whose changes a refresh cannot see.
fn sources_of(query: &LogicalPlan) -> Result<(Vec<Source>, Vec<String>)> {
    let mut sources: Vec<Source> = Vec::new();
    let mut untracked = Vec::new();
    query.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let provider = source_as_provider(&scan.source)?;
            let delta = provider.downcast_ref::<DeltaTableProvider>();
            if delta.is_none() {
                untracked.push(scan.table_name.to_string());
            }
            if let Some(delta) = delta
                && !sources.iter().any(|s| s.name == delta.name())
            {
                let table = delta.delta_table().clone();
                sources.push(Source {
                    name: delta.name().to_string(),
                    version: table.version().unwrap_or_default(),
                    table,
                });
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok((sources, untracked))
}

/// How many times the query reads `source`.
fn count_reads(query: &LogicalPlan, source: &str) -> Result<usize> {
    let mut count = 0;
    query.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && read_of(scan).as_deref() == Some(source)
        {
            count += 1;
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(count)
}

/// The query must output the entity and event time columns, the latter a timestamp.
fn check_output(view: &FeatureView, schema: &DFSchema) -> Result<()> {
    for column in view.entity.iter().chain([&view.event_time]) {
        if schema.field_with_unqualified_name(column).is_err() {
            let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(in_view(
                view,
                Error::InvalidInput(format!(
                    "the query has no output column '{column}' (it outputs: {})",
                    columns.join(", ")
                )),
            ));
        }
    }
    let time = schema.field_with_unqualified_name(&view.event_time)?;
    if !matches!(time.data_type(), DataType::Timestamp(..)) {
        return Err(in_view(
            view,
            Error::InvalidInput(format!(
                "@event_time column '{}' is {}, not a timestamp",
                view.event_time,
                time.data_type()
            )),
        ));
    }
    Ok(())
}

/// Prefixes an error with the view's file and the line its query starts on.
fn in_view(view: &FeatureView, error: Error) -> Error {
    Error::Context {
        context: format!(
            "feature view {} ({}:{})",
            view.name,
            view.path.display(),
            view.sql_line
        ),
        source: Box::new(error),
    }
}

fn describe(sources: &[Source]) -> Vec<String> {
    sources
        .iter()
        .map(|s| format!("{}@{}", s.name, s.version))
        .collect()
}

/// The result schema of `REFRESH FEATURE VIEW(S)`.
pub fn report_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("view", DataType::Utf8, false),
        Field::new("mode", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("sources", DataType::Utf8, false),
        Field::new("entities", DataType::UInt64, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("version", DataType::Int64, true),
        Field::new("elapsed_ms", DataType::UInt64, false),
    ]))
}

pub fn report_batch(reports: &[Report]) -> Result<RecordBatch> {
    let strings = |f: fn(&Report) -> String| {
        Arc::new(StringArray::from_iter_values(reports.iter().map(f))) as _
    };
    Ok(RecordBatch::try_new(
        report_schema(),
        vec![
            strings(|r| r.view.clone()),
            strings(|r| r.mode.as_str().to_string()),
            strings(|r| r.reason.clone()),
            strings(|r| r.sources.join(", ")),
            Arc::new(UInt64Array::from_iter_values(
                reports.iter().map(|r| r.entities),
            )),
            Arc::new(UInt64Array::from_iter_values(
                reports.iter().map(|r| r.rows),
            )),
            Arc::new(Int64Array::from_iter(
                reports
                    .iter()
                    .map(|r| r.version.and_then(|v| i64::try_from(v).ok())),
            )),
            Arc::new(UInt64Array::from_iter_values(reports.iter().map(|r| {
                u64::try_from(r.elapsed.as_millis()).unwrap_or(u64::MAX)
            }))),
        ],
    )?)
}

/// Refreshes every materialized view of `features` every `interval`, for ever: spawn it on the
/// runtime the refreshes should run on (the server's query runtime). A failing view is logged and
/// retried at the next tick; the others still refresh.
pub async fn refresh_every(
    ctx: SessionContext,
    catalog: Arc<WarehouseCatalog>,
    features: Arc<FeatureStore>,
    interval: Duration,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        for view in features.materialized_views() {
            if let Err(e) = refresh(&ctx, &catalog, &view).await {
                tracing::error!(view = %view.definition.name, "scheduled refresh failed: {e}");
            }
        }
    }
}
