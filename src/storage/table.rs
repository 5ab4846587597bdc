//! A Delta table as a DataFusion table (the provider the catalog hands out): reads through delta-rs's
//! scan, writes through Delta commits.
//!
//! `INSERT` uses delta-rs's own data sink (one commit per statement); `DELETE` and `UPDATE` run delta-rs's
//! operations lazily, when the plan executes, so `EXPLAIN` never writes. A table opened at an older
//! version (time travel) is read-only.

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
use deltalake::DeltaTable;

use crate::error::{Error, Result};
use crate::storage::AsOf;
use crate::storage::upkeep;
use crate::storage::write::take_turn;
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
        let taken = self
            .stream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        taken.unwrap_or_else(|| {
            let err = DataFusionError::Internal("a one-shot stream was executed twice".into());
            Box::pin(RecordBatchStreamAdapter::new(
                self.schema.clone(),
                futures::stream::once(async move { Err(err) }),
            ))
        })
    }
}
