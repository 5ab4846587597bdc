//! The physical planner for every session: DataFusion's, plus the extension nodes Quiver and delta-rs
//! add to logical plans (ASOF joins; delta-rs's write, delete and merge nodes).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::Result;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use deltalake::delta_datafusion::planner::DeltaExtensionPlanner;

use super::asof::AsofExtensionPlanner;

#[derive(Debug)]
pub struct QuiverPlanner;

#[async_trait]
impl QueryPlanner for QuiverPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let planner = DefaultPhysicalPlanner::with_extension_planners(vec![
            DeltaExtensionPlanner::new(),
            Arc::new(AsofExtensionPlanner),
        ]);
        planner.create_physical_plan(logical_plan, session).await
    }
}
