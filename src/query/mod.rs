//! SQL statements: Quiver's extensions rewritten, then planned by DataFusion over the warehouse catalog.
//!
//! `plan_sql` turns text into a [`Planned`] (no side effects), `execute` runs it as a stream.

pub mod admin;
pub mod command_sql;
pub mod conform;
pub mod ddl;
pub mod dml;
pub mod prepared;
pub mod rewrite;
pub mod settings;
pub mod sources;
pub mod statement;
pub mod table_ops;
pub mod update;

pub use statement::{
    Command, Planned, direct_answer, execute, plan_sql, run_sql, schema_and_table,
};

use datafusion::arrow::array::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::memory::MemoryStream;

use crate::error::Result;

/// A command's answer: one batch, as a stream.
pub fn one_batch(batch: RecordBatch) -> Result<SendableRecordBatchStream> {
    let schema = batch.schema();
    Ok(Box::pin(MemoryStream::try_new(vec![batch], schema, None)?))
}
