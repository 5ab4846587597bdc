//! `MERGE INTO` a Delta table: DataFusion plans the statement (its `TableProvider::merge_into`
//! hook hands over the source plan and the typed ON and WHEN clauses) and delta-rs's merge runs it,
//! as one commit, when the plan executes (`EXPLAIN` never writes).
//!
//! The source is whatever DataFusion planned for `USING`: a table, a subquery, or a prepared
//! statement's parameter rows (`USING (SELECT $1 AS id, $2 AS v) s`).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchemaRef, TableReference};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::context::SessionState;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::dml::{MergeIntoAction, MergeIntoClause, MergeIntoClauseKind};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;

use crate::error::Result;
use crate::storage::table::{count_batch, count_schema};
use crate::storage::upkeep;
use crate::storage::write::take_turn;

/// The names delta-rs's merge knows the two sides by.
const TARGET: &str = "target";
const SOURCE: &str = "source";

/// The plan of one MERGE into `table`: runs when executed and returns the rows it inserted,
/// updated and deleted as DML's `count`.
pub fn merge_plan(
    table: &DeltaTable,
    state: &dyn Session,
    source: Arc<dyn ExecutionPlan>,
    merge_schema: DFSchemaRef,
    on: Expr,
    clauses: Vec<MergeIntoClause>,
) -> DFResult<Arc<dyn ExecutionPlan>> {
    let state = state
        .as_any()
        .downcast_ref::<SessionState>()
        .cloned()
        .ok_or_else(|| DataFusionError::Internal("MERGE planned outside a SessionState".into()))?;
    // The first columns of the merge schema are the target's, qualified by its table name.
    let target = merge_schema
        .iter()
        .next()
        .and_then(|(qualifier, _)| qualifier.cloned());
    let merge = Arc::new(Merge {
        table: table.clone(),
        state,
        source,
        on: requalified(on, target.as_ref())?,
        clauses: clauses
            .into_iter()
            .map(|c| clause_requalified(c, target.as_ref()))
            .collect::<DFResult<_>>()?,
    });
    Ok(Arc::new(StreamingTableExec::try_new(
        count_schema(),
        vec![merge],
        None,
        vec![],
        false,
        None,
    )?))
}

/// Columns of the target renamed to [`TARGET`], all others (the source's) to [`SOURCE`]; the
/// aliases DataFusion's analyzer put around rewritten expressions removed (delta-rs writes the
/// conditions into the commit as SQL, which has no place for them).
fn requalified(expr: Expr, target: Option<&TableReference>) -> DFResult<Expr> {
    expr.unalias_nested()
        .data
        .transform(|e| match e {
            Expr::Column(Column {
                relation: Some(relation),
                name,
                spans,
            }) => {
                let side = if Some(&relation) == target {
                    TARGET
                } else {
                    SOURCE
                };
                Ok(Transformed::yes(Expr::Column(Column {
                    relation: Some(TableReference::bare(side)),
                    name,
                    spans,
                })))
            }
            other => Ok(Transformed::no(other)),
        })
        .map(|t| t.data)
}

fn clause_requalified(
    clause: MergeIntoClause,
    target: Option<&TableReference>,
) -> DFResult<MergeIntoClause> {
    let predicate = clause
        .predicate
        .map(|p| requalified(p, target))
        .transpose()?;
    let action = match clause.action {
        MergeIntoAction::Update(set) => MergeIntoAction::Update(
            set.into_iter()
                .map(|(c, v)| Ok((c, requalified(v, target)?)))
                .collect::<DFResult<_>>()?,
        ),
        MergeIntoAction::Insert { columns, values } => MergeIntoAction::Insert {
            columns,
            values: values
                .into_iter()
                .map(|v| requalified(v, target))
                .collect::<DFResult<_>>()?,
        },
        MergeIntoAction::Delete => MergeIntoAction::Delete,
    };
    Ok(MergeIntoClause {
        kind: clause.kind,
        predicate,
        action,
    })
}

/// One MERGE, run once when its partition executes.
struct Merge {
    table: DeltaTable,
    state: SessionState,
    source: Arc<dyn ExecutionPlan>,
    on: Expr,
    clauses: Vec<MergeIntoClause>,
}

impl fmt::Debug for Merge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Merge")
            .field("table", &self.table.table_url().as_str())
            .field("on", &self.on)
            .finish_non_exhaustive()
    }
}

impl PartitionStream for Merge {
    fn schema(&self) -> &SchemaRef {
        static SCHEMA: std::sync::LazyLock<SchemaRef> = std::sync::LazyLock::new(count_schema);
        &SCHEMA
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let table = self.table.clone();
        let state = self.state.clone();
        let source = self.source.clone();
        let on = self.on.clone();
        let clauses = self.clauses.clone();
        let run = async move {
            let counts = run_merge(table, &state, source, on, clauses).await?;
            count_batch(counts.inserted + counts.updated + counts.deleted)
        };
        Box::pin(RecordBatchStreamAdapter::new(
            count_schema(),
            futures::stream::once(async move { run.await.map_err(DataFusionError::from) }),
        ))
    }
}

/// Rows a MERGE changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeCounts {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
}

async fn run_merge(
    mut table: DeltaTable,
    state: &SessionState,
    source: Arc<dyn ExecutionPlan>,
    on: Expr,
    clauses: Vec<MergeIntoClause>,
) -> Result<MergeCounts> {
    let _turn = take_turn(&mut table).await?;
    let source = SessionContext::new_with_state(state.clone())
        .read_table(Arc::new(PlannedSource(source)))?;
    let target_columns: Vec<String> = table
        .snapshot()?
        .schema()
        .fields()
        .map(|f| f.name().clone())
        .collect();
    let mut builder = table
        .merge(source, on)
        .with_source_alias(SOURCE)
        .with_target_alias(TARGET)
        // The source is read once, as it streams (its values still prune target files).
        .with_streaming(true)
        .with_session_state(Arc::new(state.clone()))
        .with_commit_properties(upkeep::commit_properties());
    for MergeIntoClause {
        kind,
        predicate,
        action,
    } in clauses
    {
        builder = match (kind.canonical(), action) {
            (MergeIntoClauseKind::Matched, MergeIntoAction::Update(set)) => builder
                .when_matched_update(|u| {
                    let u = predicate.into_iter().fold(u, |u, p| u.predicate(p));
                    set.into_iter().fold(u, |u, (c, v)| u.update(c, v))
                })?,
            (MergeIntoClauseKind::Matched, MergeIntoAction::Delete) => builder
                .when_matched_delete(|d| predicate.into_iter().fold(d, |d, p| d.predicate(p)))?,
            (MergeIntoClauseKind::NotMatchedBySource, MergeIntoAction::Update(set)) => builder
                .when_not_matched_by_source_update(|u| {
                    let u = predicate.into_iter().fold(u, |u, p| u.predicate(p));
                    set.into_iter().fold(u, |u, (c, v)| u.update(c, v))
                })?,
            (MergeIntoClauseKind::NotMatchedBySource, MergeIntoAction::Delete) => builder
                .when_not_matched_by_source_delete(|d| {
                    predicate.into_iter().fold(d, |d, p| d.predicate(p))
                })?,
            (_, MergeIntoAction::Insert { columns, values }) => {
                // No column list: the target's columns, in order.
                let columns = if columns.is_empty() {
                    target_columns.clone()
                } else {
                    columns
                };
                builder.when_not_matched_insert(|i| {
                    let i = predicate.into_iter().fold(i, |i, p| i.predicate(p));
                    columns
                        .into_iter()
                        .zip(values)
                        .fold(i, |i, (c, v)| i.set(c, v))
                })?
            }
            (kind, action) => {
                return Err(crate::error::Error::InvalidInput(format!(
                    "MERGE: WHEN {kind:?} cannot {}",
                    match action {
                        MergeIntoAction::Update(_) => "UPDATE",
                        MergeIntoAction::Insert { .. } => "INSERT",
                        MergeIntoAction::Delete => "DELETE",
                    }
                )));
            }
        };
    }
    let (merged, metrics) = builder.await?;
    upkeep::after_commit(&merged);
    Ok(MergeCounts {
        inserted: metrics.num_target_rows_inserted as u64,
        updated: metrics.num_target_rows_updated as u64,
        deleted: metrics.num_target_rows_deleted as u64,
    })
}

/// The MERGE source DataFusion planned, as a table delta-rs's merge can read (as often as it
/// needs: the plan runs again each time).
#[derive(Debug)]
struct PlannedSource(Arc<dyn ExecutionPlan>);

#[async_trait]
impl TableProvider for PlannedSource {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        match projection {
            None => Ok(self.0.clone()),
            Some(columns) => {
                let schema = self.0.schema();
                let exprs = columns
                    .iter()
                    .map(|&i| {
                        let field = schema.field(i);
                        let column: Arc<dyn datafusion::physical_expr::PhysicalExpr> = Arc::new(
                            datafusion::physical_expr::expressions::Column::new(field.name(), i),
                        );
                        (column, field.name().clone())
                    })
                    .collect::<Vec<_>>();
                Ok(Arc::new(
                    datafusion::physical_plan::projection::ProjectionExec::try_new(
                        exprs,
                        self.0.clone(),
                    )?,
                ))
            }
        }
    }
}
