//! DELETE and UPDATE: checked and run by Quiver itself, not through DataFusion's `delete_from`.
//!
//! DataFusion hands a provider only the filters it can attribute to the target scan *after*
//! optimization: `WHERE false`, `IN (SELECT ...)`, joins and LIMIT all arrive as "no filter", which
//! would rewrite the whole table. So the predicate is taken from the unoptimized plan, plans of any
//! other shape are refused, and delta-rs's delete/update run with exactly that predicate.

use datafusion::common::tree_node::TreeNode;
use datafusion::datasource::source_as_provider;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::expr_rewriter::unnormalize_col;
use datafusion::logical_expr::{DmlStatement, Expr, LogicalPlan, WriteOp};

use crate::error::{Error, Result};
use crate::storage::table::{DeltaTableProvider, count_batch, delete_rows, update_rows};

/// Whether this DML statement is a DELETE or UPDATE that Quiver runs itself.
pub fn is_delete_or_update(dml: &DmlStatement) -> bool {
    matches!(dml.op, WriteOp::Delete | WriteOp::Update)
}

/// Refuses DELETE/UPDATE shapes whose predicate cannot be passed on exactly.
pub fn check_shape(dml: &DmlStatement) -> Result<()> {
    let what = if dml.op == WriteOp::Delete {
        "DELETE"
    } else {
        "UPDATE"
    };
    let mut node = dml.input.as_ref();
    if dml.op == WriteOp::Update
        && let LogicalPlan::Projection(p) = node
    {
        if p.expr.iter().any(has_subquery) {
            return Err(Error::Unsupported(format!("{what} with a subquery in SET")));
        }
        node = p.input.as_ref();
    }
    loop {
        match node {
            LogicalPlan::Filter(f) => {
                if has_subquery(&f.predicate) {
                    return Err(Error::Unsupported(format!(
                        "{what} with a subquery in WHERE: select the keys first, or use a literal list"
                    )));
                }
                node = f.input.as_ref();
            }
            LogicalPlan::TableScan(_) => return Ok(()),
            other => {
                return Err(Error::Unsupported(format!(
                    "{what} over {}: only {what} ... [WHERE <condition on the table's columns>] is supported",
                    other.display()
                )));
            }
        }
    }
}

fn has_subquery(expr: &Expr) -> bool {
    expr.exists(|e| {
        Ok(matches!(
            e,
            Expr::Exists(_) | Expr::InSubquery(_) | Expr::ScalarSubquery(_)
        ))
    })
    .unwrap_or(true)
}

/// Runs a checked DELETE or UPDATE as one Delta commit; yields the `count` of rows changed.
pub async fn run(dml: &DmlStatement) -> Result<SendableRecordBatchStream> {
    check_shape(dml)?;
    let provider = source_as_provider(&dml.target)?;
    let table = provider
        .downcast_ref::<DeltaTableProvider>()
        .ok_or_else(|| Error::Unsupported(format!("{} is not a Delta table", dml.table_name)))?
        .delta_table()
        .clone();
    let predicate = predicate(&dml.input)?;
    let count = if dml.op == WriteOp::Delete {
        delete_rows(table, predicate).await?
    } else {
        update_rows(table, assignments(&dml.input)?, predicate).await?
    };
    crate::query::one_batch(count_batch(count)?)
}

/// The conjunction of every WHERE filter, with columns unqualified (delta-rs resolves them against
/// the table alone).
fn predicate(input: &LogicalPlan) -> Result<Option<Expr>> {
    let mut filters = Vec::new();
    input.apply(|node| {
        if let LogicalPlan::Filter(f) = node {
            filters.push(unnormalize_col(f.predicate.clone()));
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    })?;
    Ok(filters.into_iter().reduce(Expr::and))
}

/// UPDATE's `SET` list: the projected expressions that are not the column itself.
fn assignments(input: &LogicalPlan) -> Result<Vec<(String, Expr)>> {
    let LogicalPlan::Projection(p) = input else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for expr in &p.expr {
        if let Expr::Alias(alias) = expr {
            let identity = matches!(alias.expr.as_ref(), Expr::Column(c) if c.name == alias.name);
            if !identity {
                out.push((
                    alias.name.clone(),
                    unnormalize_col(alias.expr.as_ref().clone()),
                ));
            }
        }
    }
    Ok(out)
}
