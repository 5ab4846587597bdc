//! What happens after each commit Quiver makes: checkpoints and expired-log cleanup, off the writer's path.
//!
//! delta-rs would write a checkpoint inside the commit itself (every 100 commits) and list the whole
//! log for expired files at every commit, both before the writer is acknowledged. Quiver's commits
//! turn both off ([`commit_properties`]) and call [`after_commit`], which checkpoints every
//! `delta.checkpointInterval` commits (Spark's default of 10 when the table does not say) and then
//! removes log files older than `delta.logRetentionDuration` (30 days by default) that the new
//! checkpoint makes unnecessary, as Spark does: in a task of its own, on the runtime that made the
//! commit (the query runtime), at most one per table at a time.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};

use deltalake::DeltaTable;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::checkpoints::{cleanup_metadata, create_checkpoint};
use deltalake::table::config::TablePropertiesExt as _;

/// Commits between checkpoints when the table has no `delta.checkpointInterval` (Spark's default).
pub const DEFAULT_CHECKPOINT_INTERVAL: u64 = 10;

/// The table property Spark and delta-rs read for the checkpoint interval.
const CHECKPOINT_INTERVAL: &str = "delta.checkpointInterval";

/// Properties for every commit Quiver makes: no checkpoint and no log cleanup inside the commit
/// ([`after_commit`] does both, after the writer has its answer).
pub fn commit_properties() -> CommitProperties {
    CommitProperties::default()
        .with_create_checkpoint(false)
        .with_cleanup_expired_logs(Some(false))
}

/// The table's checkpoint interval: its `delta.checkpointInterval`, else [`DEFAULT_CHECKPOINT_INTERVAL`].
pub fn checkpoint_interval(table: &DeltaTable) -> u64 {
    table
        .snapshot()
        .ok()
        .and_then(|s| {
            s.metadata()
                .configuration()
                .get(CHECKPOINT_INTERVAL)
                .cloned()
        })
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|v| *v > 0)
        .unwrap_or(DEFAULT_CHECKPOINT_INTERVAL)
}

/// Whether the commit of `version` is one a checkpoint follows: every `interval` versions, as
/// Spark writes them (10, 20, ... for an interval of 10).
pub fn checkpoint_due(version: u64, interval: u64) -> bool {
    version > 0 && interval > 0 && version.is_multiple_of(interval)
}

/// Tables with a checkpoint being written now.
static RUNNING: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Mutex::default);

/// The checkpoint tasks started and not yet awaited by [`finish`].
static TASKS: LazyLock<Mutex<Vec<tokio::task::JoinHandle<()>>>> = LazyLock::new(Mutex::default);

/// Waits for the checkpoints being written: before a one-shot process (`quiver sql`) or a
/// server that is shutting down exits, so a due checkpoint is not lost with it.
pub async fn finish() {
    let tasks = std::mem::take(&mut *TASKS.lock().unwrap_or_else(|p| p.into_inner()));
    for task in tasks {
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "a checkpoint task failed");
        }
    }
}

/// Called with the table a commit returned (loaded at the version it wrote). When that version is
/// due a checkpoint, writes it (and cleans up expired log files) in a background task and returns
/// at once; a failure is logged (the table stays readable from its JSON commits; the next interval
/// tries again).
pub fn after_commit(table: &DeltaTable) {
    let Some(version) = table.version() else {
        return;
    };
    if !checkpoint_due(version, checkpoint_interval(table)) {
        return;
    }
    let key = table.table_url().to_string();
    {
        let mut running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        if !running.insert(key.clone()) {
            return;
        }
    }
    let table = table.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = checkpoint(&table).await {
            tracing::warn!(table = %key, version, error = %e, "could not write a checkpoint");
        }
        RUNNING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    });
    let mut tasks = TASKS.lock().unwrap_or_else(|p| p.into_inner());
    tasks.retain(|t| !t.is_finished());
    tasks.push(task);
}

/// Writes the checkpoint of the table's loaded version and then removes expired log files (when the
/// table allows it: `delta.enableExpiredLogCleanup`, on by default). Returns the log files removed.
pub async fn checkpoint(table: &DeltaTable) -> crate::error::Result<usize> {
    let started = std::time::Instant::now();
    create_checkpoint(table, None).await?;
    let cleanup = table
        .snapshot()
        .is_ok_and(|s| s.table_config().enable_expired_log_cleanup());
    let removed = if cleanup {
        cleanup_metadata(table, None).await?
    } else {
        0
    };
    tracing::info!(
        table = %table.table_url(),
        version = table.version(),
        removed_log_files = removed,
        elapsed = ?started.elapsed(),
        "checkpoint written"
    );
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_follow_every_interval_as_spark_writes_them() {
        let due: Vec<u64> = (0..=30).filter(|v| checkpoint_due(*v, 10)).collect();
        assert_eq!(due, vec![10, 20, 30]);
        assert!(checkpoint_due(1, 1));
        assert!(!checkpoint_due(0, 1));
        assert!(!checkpoint_due(5, 0));
    }
}
