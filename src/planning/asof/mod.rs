//! Point-in-time joins: `l ASOF JOIN r MATCH_CONDITION (l.ts >= r.ts) ON l.k = r.k`.
//!
//! Semantics as in Snowflake and DuckDB: for each left row, the right row with equal keys whose
//! time is the latest at or before the left row's time (`>=`; `>` excludes equal times, `<=` and `<`
//! take the earliest at or after). Every left row appears once; without a match its right columns are
//! NULL. Rows with a NULL key or time never match. Among right rows tied on key and time, one is
//! picked.
//!
//! `plan` takes the SQL to an [`AsofJoin`] logical node, `exec` runs it as a streaming sort-merge.

mod exec;
mod plan;

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{Result, internal_err};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};

pub use exec::AsofJoinExec;
pub use plan::{AsofJoin, AsofMatch, AsofRelationPlanner, nest_asof_joins};

/// Turns [`AsofJoin`] nodes into [`AsofJoinExec`].
#[derive(Debug)]
pub struct AsofExtensionPlanner;

#[async_trait]
impl ExtensionPlanner for AsofExtensionPlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(join) = node.as_any().downcast_ref::<AsofJoin>() else {
            return Ok(None);
        };
        let ([left, right], [left_plan, right_plan]) = (physical_inputs, logical_inputs) else {
            return internal_err!("AsofJoin has two inputs");
        };
        let (left_schema, right_schema) = (left_plan.schema(), right_plan.schema());
        let physical =
            |expr, schema| planner.create_physical_expr(expr, schema, session, planning_ctx);
        let on = join
            .on
            .iter()
            .map(|(l, r)| Ok((physical(l, left_schema)?, physical(r, right_schema)?)))
            .collect::<Result<Vec<_>>>()?;
        let times = (
            physical(&join.left_time, left_schema)?,
            physical(&join.right_time, right_schema)?,
        );
        Ok(Some(Arc::new(AsofJoinExec::new(
            left.clone(),
            right.clone(),
            on,
            times,
            join.matching,
            Arc::new(join.schema.as_arrow().clone()),
        ))))
    }
}
