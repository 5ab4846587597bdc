//! Group commit: appends to one table that arrive together become one Delta commit.
//!
//! Each append writes its Parquet files on its own, concurrently with the others and without the
//! table's write turn (delta-rs's `RecordBatchWriter`, which streams them to storage and rolls at
//! the target file size). Only its `add` actions queue for the commit: whichever waiting append
//! gets the turn next commits everything queued by then in one commit and answers every caller in
//! it. A batch that fails fails while its own files are written, so only its caller; each caller
//! is acknowledged only once the commit holding its files exists. Under load, commits are as many
//! as the turns taken, not as the appends, and the log stays short. An append whose files another
//! caller committed never takes the turn; the commit itself is a task of its own, so a caller that
//! disconnects does not stop the commit the others wait for.
//!
//! An append may carry Delta application transactions (`txn`: an app id and its version, a Kafka
//! partition's offset or an HTTP request's idempotency key). The leader, holding the turn on the
//! latest version, drops an append whose version the table (or an earlier append of the same group)
//! already records for its app id, and answers it [`Appended::duplicate`]: what a writer sends twice
//! lands once, across restarts and across servers (a concurrent commit of the same app id in another
//! process is a conflict Delta detects).

use std::sync::{Arc, Mutex};

use datafusion::execution::SendableRecordBatchStream;
use deltalake::DeltaTable;
use deltalake::kernel::transaction::{CommitBuilder, FinalizedCommit, TableReference};
use deltalake::kernel::{Action, Add, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt as _;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use futures::StreamExt;
use tokio::sync::{OwnedMutexGuard, oneshot};

use crate::error::{Error, Result};
use crate::storage::per_table::PerTable;
use crate::storage::upkeep;
use crate::storage::write::{conflict_error, to_latest, turn};

/// An append waiting for its commit.
struct Pending {
    adds: Vec<Add>,
    transactions: Vec<Transaction>,
    /// The version that holds the append, or `None` if its transactions were already recorded.
    done: PendingDone,
}

/// What became of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Rows written (0 for a duplicate).
    pub rows: u64,
    /// The table version holding them; `None` when nothing was committed (no rows and no
    /// transactions, or a duplicate).
    pub version: Option<u64>,
    /// The append's transactions were already recorded: nothing of it was committed.
    pub duplicate: bool,
}

/// A failed group commit as each of its callers sees it.
#[derive(Debug, Clone)]
struct Shared {
    conflict: bool,
    message: String,
}

/// Appends whose files are written and whose commit has not been made, of one table.
type Queue = Arc<Mutex<Vec<Pending>>>;

/// The queue of each table appended to.
static QUEUES: PerTable<Queue> = PerTable::new();

fn queue(table: &DeltaTable) -> Queue {
    QUEUES.get(table)
}

/// Whether appends to `table` can take this path: a loaded table delta-rs's `RecordBatchWriter`
/// writes (not one with column mapping).
pub fn supports(table: &DeltaTable) -> bool {
    RecordBatchWriter::for_table(table).is_ok()
}

/// Appends `data` to `table` (loaded, existing) and returns the rows written once the commit
/// holding them exists.
pub async fn append(table: DeltaTable, data: SendableRecordBatchStream) -> Result<u64> {
    Ok(append_once(table, data, Vec::new()).await?.rows)
}

/// Appends `data` to `table` (loaded, existing) with `transactions` in the same commit, unless the
/// table already records each app id at the version given or later (then nothing is committed and
/// the answer says `duplicate`). With transactions, a commit is made even for no rows: it records
/// that the writer got this far (a batch of only rejected messages still moves its offsets).
pub async fn append_once(
    table: DeltaTable,
    data: SendableRecordBatchStream,
    transactions: Vec<Transaction>,
) -> Result<Appended> {
    let (adds, rows) = write_files(&table, data).await?;
    if adds.is_empty() && transactions.is_empty() {
        return Ok(Appended {
            rows: 0,
            version: None,
            duplicate: false,
        });
    }
    Ok(match commit(&table, adds, transactions).await? {
        Some(version) => Appended {
            rows,
            version: Some(version),
            duplicate: false,
        },
        None => Appended {
            rows: 0,
            version: None,
            duplicate: true,
        },
    })
}

/// The version `table` (loaded) records for application `app_id`, if any.
pub async fn recorded_version(table: &DeltaTable, app_id: &str) -> Result<Option<i64>> {
    Ok(table
        .snapshot()?
        .transaction_version(table.log_store().as_ref(), app_id)
        .await?)
}

/// Writes the Parquet files of `data` (nothing committed) and returns their `add` actions and the
/// rows in them. On an error the files written so far are left unreferenced (VACUUM removes them).
async fn write_files(
    table: &DeltaTable,
    mut data: SendableRecordBatchStream,
) -> Result<(Vec<Add>, u64)> {
    let target = table.snapshot()?.table_config().target_file_size().get();
    let mut writer = RecordBatchWriter::for_table(table)?.with_target_file_size(target);
    let schema = writer.arrow_schema();
    let mut rows = 0u64;
    while let Some(batch) = data.next().await {
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                writer.reset();
                return Err(e.into());
            }
        };
        if batch.num_rows() == 0 {
            continue;
        }
        rows += batch.num_rows() as u64;
        // As delta-rs's own write does: the batch in the table's types (an INSERT's NULL
        // parameters arrive as type Null, its literals as narrower decimals).
        let batch = match deltalake::kernel::cast_record_batch(&batch, schema.clone(), false, false)
        {
            Ok(batch) => batch,
            Err(e) => {
                writer.reset();
                return Err(e.into());
            }
        };
        if let Err(e) = writer.write(batch).await {
            writer.reset();
            return Err(e.into());
        }
    }
    let adds = writer.flush().await?;
    Ok((adds, rows))
}

/// Queues `adds` for the table's next commit and returns its version once it exists (`None`: a
/// duplicate, not committed).
async fn commit(
    table: &DeltaTable,
    adds: Vec<Add>,
    transactions: Vec<Transaction>,
) -> Result<Option<u64>> {
    let queue = queue(table);
    let (done, mut answer) = oneshot::channel();
    queue
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Pending {
            adds,
            transactions,
            done,
        });
    // Either a caller that has the turn commits these files with its own (most appends under load
    // end here, without ever taking the turn or reading the log), or this one gets the turn first
    // and commits everything queued by then.
    let turn = turn(table);
    let turn = tokio::select! {
        biased;
        answered = &mut answer => return answered_with(table, answered),
        guard = turn.lock_owned() => guard,
    };
    if let Ok(answered) = answer.try_recv() {
        return answered.map_err(|e| shared_error(table, e));
    }
    // The group's commit runs as a task of its own: a caller that goes away (a client that
    // disconnects) must not stop a commit that answers the other callers in it.
    tokio::spawn(commit_group(table.clone(), queue, turn));
    answered_with(table, answer.await)
}

/// Commits every append queued on `table` (the turn is held) and answers each of their callers.
async fn commit_group(mut table: DeltaTable, queue: Queue, _turn: OwnedMutexGuard<()>) {
    // Whatever happens next answers every append taken here, so none is committed after its
    // caller was told it failed.
    let latest = to_latest(&mut table).await;
    let group = std::mem::take(&mut *queue.lock().unwrap_or_else(|p| p.into_inner()));
    let group = match latest {
        Ok(()) => without_duplicates(&table, group).await,
        Err(e) => Err((e, group)),
    };
    let (group, duplicates) = match group {
        Ok(split) => split,
        Err((e, group)) => {
            let shared = Shared::from(&e);
            for pending in group {
                let _ = pending.done.send(Err(shared.clone()));
            }
            return;
        }
    };
    for done in duplicates {
        let _ = done.send(Ok(None));
    }
    if group.is_empty() {
        return;
    }
    let mut actions = Vec::new();
    let mut transactions: Vec<Transaction> = Vec::new();
    let mut waiting = Vec::with_capacity(group.len());
    for pending in group {
        actions.extend(pending.adds.into_iter().map(Action::Add));
        for txn in pending.transactions {
            // One `txn` per app id in a commit: the highest version of the group.
            match transactions.iter_mut().find(|t| t.app_id == txn.app_id) {
                Some(kept) if kept.version >= txn.version => {}
                Some(kept) => *kept = txn,
                None => transactions.push(txn),
            }
        }
        waiting.push(pending.done);
    }
    actions.extend(transactions.into_iter().map(Action::Txn));
    let appends = waiting.len();
    let result = commit_actions(&table, actions).await;
    let shared = result
        .as_ref()
        .map(|c| Some(c.version()))
        .map_err(Shared::from);
    for done in waiting {
        let _ = done.send(shared.clone());
    }
    if let Ok(committed) = result {
        tracing::debug!(table = %table.table_url(), version = committed.version(), appends, "group commit");
        // The state after the commit, as delta-rs's own operations keep it: reading the log
        // again would replay every live file once more.
        table.state = Some(committed.snapshot());
        upkeep::after_commit(&table);
    }
}

/// The group without the appends whose transactions `table` (at its latest version, the turn held)
/// or an earlier append of the group already records; those are returned apart. On an error
/// reading the log the whole group is given back, to be failed.
async fn without_duplicates(
    table: &DeltaTable,
    group: Vec<Pending>,
) -> std::result::Result<(Vec<Pending>, Vec<PendingDone>), (Error, Vec<Pending>)> {
    let mut recorded: Vec<(String, Option<i64>)> = Vec::new();
    for app_id in group
        .iter()
        .flat_map(|p| &p.transactions)
        .map(|t| &t.app_id)
    {
        if recorded.iter().any(|(id, _)| id == app_id) {
            continue;
        }
        match recorded_version(table, app_id).await {
            Ok(version) => recorded.push((app_id.clone(), version)),
            Err(e) => return Err((e, group)),
        }
    }
    let mut kept = Vec::with_capacity(group.len());
    let mut duplicates = Vec::new();
    for pending in group {
        let seen = |txn: &Transaction| {
            recorded
                .iter()
                .find(|(id, _)| *id == txn.app_id)
                .and_then(|(_, v)| *v)
                .is_some_and(|v| v >= txn.version)
        };
        if pending.transactions.iter().any(seen) {
            duplicates.push(pending.done);
            continue;
        }
        for txn in &pending.transactions {
            if let Some((_, version)) = recorded.iter_mut().find(|(id, _)| *id == txn.app_id) {
                *version = Some(version.map_or(txn.version, |v| v.max(txn.version)));
            }
        }
        kept.push(pending);
    }
    Ok((kept, duplicates))
}

type PendingDone = oneshot::Sender<std::result::Result<Option<u64>, Shared>>;

impl From<&Error> for Shared {
    fn from(e: &Error) -> Self {
        Shared {
            conflict: e.is_write_conflict(),
            message: e.to_string(),
        }
    }
}

/// One commit of appended files on the table's latest version (the caller holds the turn).
async fn commit_actions(table: &DeltaTable, actions: Vec<Action>) -> Result<FinalizedCommit> {
    let snapshot = table.snapshot()?;
    let partition_by = snapshot.metadata().partition_columns().to_vec();
    let operation = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: (!partition_by.is_empty()).then_some(partition_by),
        predicate: None,
    };
    CommitBuilder::from(upkeep::commit_properties())
        .with_actions(actions)
        .build(
            Some(snapshot as &dyn TableReference),
            table.log_store(),
            operation,
        )
        .await
        .map_err(|e| conflict_error(table.table_url().to_string(), e))
}

fn answered_with(
    table: &DeltaTable,
    answered: std::result::Result<
        std::result::Result<Option<u64>, Shared>,
        oneshot::error::RecvError,
    >,
) -> Result<Option<u64>> {
    match answered {
        Ok(answer) => answer.map_err(|e| shared_error(table, e)),
        // Only a group commit that panicked drops its callers unanswered.
        Err(_) => Err(Error::Internal(
            "the group commit holding this append was abandoned".into(),
        )),
    }
}

fn shared_error(table: &DeltaTable, e: Shared) -> Error {
    if e.conflict {
        crate::storage::write::conflicted(table.table_url().as_str());
        Error::Conflict {
            table: table.table_url().to_string(),
            message: e.message,
        }
    } else {
        Error::Internal(format!("the commit of this append failed: {}", e.message))
    }
}
