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
//! partition's last offset or an HTTP request's idempotency key), each with what the table must
//! record for its app id before it ([`Follows`]). The leader, holding the turn on the latest
//! version, checks them against the table and the earlier appends of its group: an append whose
//! version is already recorded is answered [`Outcome::Duplicate`], one that does not follow what is
//! recorded (a Kafka batch that does not start where the table left the partition)
//! [`Outcome::OutOfOrder`]; neither is committed. What a writer sends twice lands once, across
//! restarts and across servers (a concurrent commit of the same app id in another process is a
//! conflict Delta detects).

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
    transactions: Vec<AppTransaction>,
    done: PendingDone,
}

/// An application transaction committed with an append, and what must precede it.
#[derive(Debug, Clone)]
pub struct AppTransaction {
    pub txn: Transaction,
    pub follows: Follows,
}

/// What the table must record for an app id before an append's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follows {
    /// Anything lower than the append's version (an idempotency key: at most once).
    Anything,
    /// Exactly this version (`None`: nothing): a stream's next batch, which must start where the
    /// last one committed ended. A version at or past the append's makes it a duplicate; anything
    /// else, out of order.
    Exactly(Option<i64>),
}

impl AppTransaction {
    /// At most once: a recorded version at or past `version` makes the append a duplicate.
    pub fn once(app_id: impl ToString, version: i64) -> Self {
        Self {
            txn: Transaction::new(app_id, version),
            follows: Follows::Anything,
        }
    }
}

/// What became of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Rows written (0 unless committed).
    pub rows: u64,
    pub outcome: Outcome,
}

/// Whether an append was committed, and if not why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// In this table version.
    Committed(u64),
    /// No rows and no transactions: nothing to commit.
    Empty,
    /// Its transactions were already recorded: nothing of it was committed.
    Duplicate,
    /// A transaction did not follow what the table records (the message says which).
    OutOfOrder(String),
}

impl Appended {
    /// The version holding the rows, if they were committed.
    pub fn version(&self) -> Option<u64> {
        match self.outcome {
            Outcome::Committed(version) => Some(version),
            _ => None,
        }
    }
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
    Ok(append_with(table, data, Vec::new()).await?.rows)
}

/// Appends `data` to `table` (loaded, existing) with `transactions` in the same commit, if each
/// follows what the table records for its app id (see [`Follows`]); otherwise nothing is committed
/// and the outcome says why. With transactions, a commit is made even for no rows: it records that
/// the writer got this far (a batch of only rejected messages still moves its offsets).
pub async fn append_with(
    table: DeltaTable,
    data: SendableRecordBatchStream,
    transactions: Vec<AppTransaction>,
) -> Result<Appended> {
    let (adds, rows) = write_files(&table, data).await?;
    if adds.is_empty() && transactions.is_empty() {
        return Ok(Appended {
            rows: 0,
            outcome: Outcome::Empty,
        });
    }
    let outcome = commit(&table, adds, transactions).await?;
    let rows = if matches!(outcome, Outcome::Committed(_)) {
        rows
    } else {
        0
    };
    Ok(Appended { rows, outcome })
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

/// Queues `adds` for the table's next commit and answers once it exists (or once the append is
/// found a duplicate or out of order, not committed).
async fn commit(
    table: &DeltaTable,
    adds: Vec<Add>,
    transactions: Vec<AppTransaction>,
) -> Result<Outcome> {
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
        Ok(()) => admitted(&table, group).await,
        Err(e) => Err((e, group)),
    };
    let (group, transactions) = match group {
        Ok(admitted) => admitted,
        Err((e, group)) => {
            let shared = Shared::from(&e);
            for pending in group {
                let _ = pending.done.send(Err(shared.clone()));
            }
            return;
        }
    };
    if group.is_empty() {
        return;
    }
    let mut actions = Vec::new();
    let mut waiting = Vec::with_capacity(group.len());
    for pending in group {
        actions.extend(pending.adds.into_iter().map(Action::Add));
        waiting.push(pending.done);
    }
    actions.extend(transactions.into_iter().map(Action::Txn));
    let appends = waiting.len();
    let result = commit_actions(&table, actions).await;
    let shared = result
        .as_ref()
        .map(|c| Outcome::Committed(c.version()))
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

/// The appends of `group` whose transactions follow what `table` (at its latest version, the turn
/// held) and the earlier appends of the group record, with one `txn` per app id for their commit
/// (the highest version); the others are answered here. On an error reading the log the whole
/// group is given back, to be failed.
async fn admitted(
    table: &DeltaTable,
    group: Vec<Pending>,
) -> std::result::Result<(Vec<Pending>, Vec<Transaction>), (Error, Vec<Pending>)> {
    let mut recorded: Vec<(String, Option<i64>)> = Vec::new();
    for app_id in group
        .iter()
        .flat_map(|p| &p.transactions)
        .map(|t| &t.txn.app_id)
    {
        if recorded.iter().any(|(id, _)| id == app_id) {
            continue;
        }
        match recorded_version(table, app_id).await {
            Ok(version) => recorded.push((app_id.clone(), version)),
            Err(e) => return Err((e, group)),
        }
    }
    let mut kept: Vec<Pending> = Vec::with_capacity(group.len());
    for pending in group {
        let refused = pending.transactions.iter().find_map(|t| {
            let now = recorded
                .iter()
                .find(|(id, _)| *id == t.txn.app_id)
                .and_then(|(_, v)| *v);
            refusal(t, now)
        });
        if let Some(outcome) = refused {
            let _ = pending.done.send(Ok(outcome));
            continue;
        }
        for t in &pending.transactions {
            if let Some((_, version)) = recorded.iter_mut().find(|(id, _)| *id == t.txn.app_id) {
                *version = Some(version.map_or(t.txn.version, |v| v.max(t.txn.version)));
            }
        }
        kept.push(pending);
    }
    let transactions = recorded
        .into_iter()
        .filter(|(id, _)| {
            kept.iter()
                .any(|p| p.transactions.iter().any(|t| t.txn.app_id == *id))
        })
        .filter_map(|(id, version)| version.map(|v| Transaction::new(id, v)))
        .collect();
    Ok((kept, transactions))
}

/// Why `t` cannot be committed on a table recording `now` for its app id, if it cannot.
fn refusal(t: &AppTransaction, now: Option<i64>) -> Option<Outcome> {
    if now.is_some_and(|v| v >= t.txn.version) {
        return Some(Outcome::Duplicate);
    }
    match t.follows {
        Follows::Anything => None,
        Follows::Exactly(expected) if expected == now => None,
        Follows::Exactly(expected) => Some(Outcome::OutOfOrder(format!(
            "{} is at {} in the table, not at {} where this batch starts",
            t.txn.app_id,
            now.map_or("nothing".into(), |v| v.to_string()),
            expected.map_or("nothing".into(), |v| v.to_string()),
        ))),
    }
}

type PendingDone = oneshot::Sender<std::result::Result<Outcome, Shared>>;

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
    answered: std::result::Result<std::result::Result<Outcome, Shared>, oneshot::error::RecvError>,
) -> Result<Outcome> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn after(version: i64, previous: Option<i64>) -> AppTransaction {
        AppTransaction {
            txn: Transaction::new("p0", version),
            follows: Follows::Exactly(previous),
        }
    }

    #[test]
    fn a_stream_batch_must_start_where_the_table_left_off() {
        assert_eq!(refusal(&after(10, None), None), None);
        assert_eq!(refusal(&after(20, Some(10)), Some(10)), None);
        assert_eq!(
            refusal(&after(20, Some(10)), Some(20)),
            Some(Outcome::Duplicate)
        );
        assert_eq!(
            refusal(&after(20, Some(10)), Some(25)),
            Some(Outcome::Duplicate)
        );
        assert!(matches!(
            refusal(&after(20, Some(10)), Some(15)),
            Some(Outcome::OutOfOrder(_))
        ));
        assert!(matches!(
            refusal(&after(20, Some(10)), None),
            Some(Outcome::OutOfOrder(_))
        ));
    }

    #[test]
    fn an_idempotency_key_lands_at_most_once() {
        let key = AppTransaction::once("key", 0);
        assert_eq!(refusal(&key, None), None);
        assert_eq!(refusal(&key, Some(0)), Some(Outcome::Duplicate));
    }
}
