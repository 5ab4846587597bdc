//! Streams record batches into a Delta table as exactly one commit.
//!
//! Parquet files are written while the batches arrive (nothing is buffered whole), and the commit that
//! makes them visible is written last: a failure or a disconnect before it leaves only unreferenced
//! files, never a half-visible write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use datafusion::catalog::streaming::StreamingTable;
use datafusion::datasource::provider_as_source;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SessionState;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use futures::StreamExt;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::storage::per_table::PerTable;
use crate::storage::storable::storable_stream;
use crate::storage::table::OnceStream;
use crate::storage::{group_commit, upkeep};

/// How a write treats the data already in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// Create the table; fails if it exists.
    Create,
    /// Create the table, or add the rows if another writer created it first (ADBC's
    /// create_append, racing another upload to a new table).
    CreateOrAppend,
    /// Add rows (the table is created first if it does not exist).
    Append,
    /// Replace all rows and the schema (the table is created first if it does not exist).
    Replace,
    /// Replace all rows, keeping the schema and partitioning (`INSERT OVERWRITE`).
    Overwrite,
}

pub struct WriteRequest {
    /// The table: loaded if it exists, uninitialized (`DeltaTable::try_from_url`) if not.
    pub table: DeltaTable,
    pub kind: WriteKind,
    pub partition_by: Vec<String>,
    pub data: SendableRecordBatchStream,
    /// Delta application transactions (`txn` actions) committed with the rows.
    pub transactions: Vec<Transaction>,
    /// An append that adds the data's new columns to the table in the same commit, and writes
    /// nulls for the table's columns the data lacks (delta-rs's `SchemaMode::Merge`).
    pub merge_schema: bool,
}

/// Write coordination for tables this process writes: one writer per table at a time, on the
/// table's latest version. Without it, concurrent writers inside one server race for each commit
/// version: delta-rs's conflict checker treats an append as having read the whole table (so an append
/// racing a DELETE fails although the two commute), and many appends racing each other exhaust its
/// 15 commit attempts (seen with 64 clients in `tests/bench/load.rs`). Readers never wait. Writers in
/// other processes still meet Delta's optimistic concurrency: statements are retried (see
/// `flight::planner`), an upload that loses is `Aborted`.
///
/// Returns once `table` is this process's writer: the guard ends the turn. A loaded table is brought
/// to its latest version; a handle never loaded is a table being created and has none.
pub async fn take_turn(table: &mut DeltaTable) -> Result<OwnedMutexGuard<()>> {
    let guard = turn(table).lock_owned().await;
    to_latest(table).await?;
    Ok(guard)
}

/// The lock whose holder is `table`'s writer in this process.
pub(crate) fn turn(table: &DeltaTable) -> Arc<AsyncMutex<()>> {
    static TURNS: PerTable<Arc<AsyncMutex<()>>> = PerTable::new();
    TURNS.get(table)
}

/// Brings a loaded table to its latest version (a handle never loaded stays as it is).
pub(crate) async fn to_latest(table: &mut DeltaTable) -> Result<()> {
    if table.version().is_some() {
        table.update_state().await?;
    }
    Ok(())
}

/// Writes `request.data` as one Delta commit and returns the number of rows written.
pub async fn write_stream(state: &SessionState, request: WriteRequest) -> Result<u64> {
    let WriteRequest {
        mut table,
        kind,
        partition_by,
        data,
        transactions,
        merge_schema,
    } = request;
    let table_name = table.table_url().to_string();
    let data = storable_stream(data)?;
    if kind == WriteKind::Append
        && transactions.is_empty()
        && !merge_schema
        && partition_by.is_empty()
        && table.version().is_some()
        && group_commit::supports(&table)
    {
        return group_commit::append(table, data).await;
    }
    let _turn = take_turn(&mut table).await?;
    let kind = settle_new_table(&mut table, kind).await?;
    let rows = Arc::new(AtomicU64::new(0));
    // delta-rs flattens an error from the input into a string; the original (a limit, a bad upload)
    // is kept here so the client gets its status.
    let input_error: Arc<Mutex<Option<DataFusionError>>> = Arc::default();
    let counted = {
        let rows = rows.clone();
        let input_error = input_error.clone();
        let schema = data.schema();
        let stream = data.map(move |batch| match batch {
            Ok(b) => {
                rows.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                Ok(b)
            }
            Err(e) => {
                let message = e.to_string();
                input_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert(e);
                Err(DataFusionError::Execution(message))
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, stream))
    };
    let source =
        StreamingTable::try_new(counted.schema(), vec![Arc::new(OnceStream::new(counted))])?;
    let plan =
        LogicalPlanBuilder::scan("ingest", provider_as_source(Arc::new(source)), None)?.build()?;

    let mut builder = table
        .write(Vec::new())
        .with_input_plan(plan)
        .with_session_state(Arc::new(state.clone()));
    builder = match kind {
        WriteKind::Create | WriteKind::CreateOrAppend => {
            builder.with_save_mode(SaveMode::ErrorIfExists)
        }
        WriteKind::Append if merge_schema => builder
            .with_save_mode(SaveMode::Append)
            .with_schema_mode(SchemaMode::Merge),
        WriteKind::Append => builder.with_save_mode(SaveMode::Append),
        WriteKind::Replace => builder
            .with_save_mode(SaveMode::Overwrite)
            .with_schema_mode(SchemaMode::Overwrite),
        WriteKind::Overwrite => builder.with_save_mode(SaveMode::Overwrite),
    };
    builder = builder.with_commit_properties(
        upkeep::commit_properties().with_application_transactions(transactions),
    );
    if !partition_by.is_empty() {
        builder = builder.with_partition_columns(partition_by);
    }
    let written = match builder
        .into_future()
        .instrument(tracing::info_span!("commit", table = %table_name))
        .await
    {
        Ok(written) => written,
        Err(e) => return Err(write_error(table_name, e, &input_error)),
    };
    upkeep::after_commit(&written);
    Ok(rows.load(Ordering::Relaxed))
}

/// A write that creates the table may find it created by another writer once it has the turn (the
/// handle it was given may even have been loaded already): `CreateOrAppend` then appends to it
/// (ADBC's create_append, racing another upload to a new table), and `Create` fails cleanly.
async fn settle_new_table(table: &mut DeltaTable, kind: WriteKind) -> Result<WriteKind> {
    if !matches!(kind, WriteKind::Create | WriteKind::CreateOrAppend) {
        return Ok(kind);
    }
    if table.version().is_none() {
        // Still no table, or none readable: the create then says why.
        let _ = table.load().await;
    }
    match (table.version(), kind) {
        (None, kind) => Ok(kind),
        (Some(_), WriteKind::CreateOrAppend) => Ok(WriteKind::Append),
        (Some(_), _) => Err(Error::AlreadyExists {
            kind: "table",
            name: table.table_url().to_string(),
        }),
    }
}

/// A failed write as the client should see it: the input's own error when the input failed (a
/// limit, a bad upload), a lost commit race as [`Error::Conflict`].
fn write_error(
    table_name: String,
    e: deltalake::DeltaTableError,
    input_error: &Mutex<Option<DataFusionError>>,
) -> Error {
    let original = input_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(original) = original {
        return Error::DataFusion(original);
    }
    conflict_error(table_name, e)
}

/// A commit's error as the client should see it: a lost commit race (delta-rs gave up after its
/// commit attempts) as [`Error::Conflict`], the rest as they are.
pub(crate) fn conflict_error(table_name: String, e: deltalake::DeltaTableError) -> Error {
    match e {
        deltalake::DeltaTableError::Transaction {
            source: deltalake::kernel::transaction::TransactionError::MaxCommitAttempts(n),
        } => {
            conflicted(&table_name);
            Error::Conflict {
                table: table_name,
                message: format!(
                    "other writers committed first {n} times in a row; nothing was written, send the \
                 data again"
                ),
            }
        }
        other => other.into(),
    }
}

/// Counts a commit of `table` lost to a concurrent writer.
pub(crate) fn conflicted(table: &str) {
    metrics::counter!(crate::metrics::DELTA_CONFLICTS, "table" => crate::metrics::table(table))
        .increment(1);
}
