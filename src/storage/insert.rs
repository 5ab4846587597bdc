//! `INSERT INTO` / `INSERT OVERWRITE` a Delta table: DataFusion's `DataSinkExec` over [`write_stream`].
//!
//! delta-rs's own sink commits without the table's write turn and with its inline checkpoint and
//! log cleanup; Quiver's sink sends the rows through the same write path as uploads and
//! `CREATE TABLE AS`, so every commit this server makes is made, checkpointed and coordinated one way.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::context::SessionState;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use deltalake::DeltaTable;

use crate::storage::write::{WriteKind, WriteRequest, write_stream};

/// The sink of one `INSERT` statement into one table.
pub struct DeltaInsertSink {
    table: DeltaTable,
    schema: SchemaRef,
    kind: WriteKind,
    state: SessionState,
}

impl fmt::Debug for DeltaInsertSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeltaInsertSink")
            .field("table", &self.table.table_url().as_str())
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl DisplayAs for DeltaInsertSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DeltaInsertSink: {:?}", self.kind)
    }
}

/// The plan that writes `input` into `table` when executed (nothing is written at planning).
pub fn insert_plan(
    table: &DeltaTable,
    schema: SchemaRef,
    state: &dyn datafusion::catalog::Session,
    input: Arc<dyn ExecutionPlan>,
    insert_op: InsertOp,
) -> DFResult<Arc<dyn ExecutionPlan>> {
    let kind = match insert_op {
        InsertOp::Append => WriteKind::Append,
        InsertOp::Overwrite | InsertOp::Replace => WriteKind::Overwrite,
    };
    let state = state
        .as_any()
        .downcast_ref::<SessionState>()
        .cloned()
        .ok_or_else(|| DataFusionError::Internal("INSERT planned outside a SessionState".into()))?;
    let sink = DeltaInsertSink {
        table: table.clone(),
        schema,
        kind,
        state,
    };
    Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
}

#[async_trait]
impl DataSink for DeltaInsertSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> DFResult<u64> {
        let request = WriteRequest {
            table: self.table.clone(),
            kind: self.kind,
            partition_by: Vec::new(),
            data,
            transactions: Vec::new(),
            merge_schema: false,
        };
        write_stream(&self.state, request)
            .await
            .map_err(DataFusionError::from)
    }
}
