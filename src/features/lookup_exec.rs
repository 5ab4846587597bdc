//! [`OnlineLookupExec`]: the physical plan of a key lookup answered from a view's online index, which
//! `EXPLAIN` shows.

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, ScalarValue, internal_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};

use super::online::OnlineIndex;

/// Answers a key lookup from an online index: no Delta, no files, one batch.
#[derive(Debug)]
pub struct OnlineLookupExec {
    view: String,
    index: Arc<OnlineIndex>,
    keys: Vec<Vec<ScalarValue>>,
    projection: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
}

impl OnlineLookupExec {
    pub fn new(
        view: String,
        index: Arc<OnlineIndex>,
        keys: Vec<Vec<ScalarValue>>,
        projection: Option<Vec<usize>>,
    ) -> Result<Self> {
        let schema = match &projection {
            Some(p) => Arc::new(index.schema().project(p)?),
            None => index.schema().clone(),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            view,
            index,
            keys,
            projection,
            properties: Arc::new(properties),
        })
    }
}

impl DisplayAs for OnlineLookupExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        const SHOWN: usize = 5;
        let keys: Vec<String> = self
            .keys
            .iter()
            .take(SHOWN)
            .map(|key| {
                let values: Vec<String> = key.iter().map(ToString::to_string).collect();
                values.join(", ")
            })
            .collect();
        let more = if self.keys.len() > SHOWN { ", ..." } else { "" };
        write!(
            f,
            "OnlineLookupExec: view={}, version={}, keys={} [{}{more}]",
            self.view,
            self.index.version,
            self.keys.len(),
            keys.join("; ")
        )
    }
}

impl ExecutionPlan for OnlineLookupExec {
    fn name(&self) -> &'static str {
        "OnlineLookupExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !children.is_empty() {
            return internal_err!("OnlineLookupExec has no children");
        }
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("OnlineLookupExec has one partition, asked for {partition}");
        }
        let now_us = chrono::Utc::now().timestamp_micros();
        let batch = self
            .index
            .lookup(&self.keys, self.projection.as_deref(), now_us)?;
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            batch.schema(),
            futures::stream::iter([Ok(batch)]),
        )))
    }
}
