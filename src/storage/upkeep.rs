//! What happens after each commit Quiver makes: checkpoints and expired-log cleanup, off the writer's path.
//!
//! delta-rs would write a checkpoint inside the commit itself (every 100 commits) and list the whole
//! log for expired files at every commit, both before the writer is acknowledged. Quiver's commits
//! turn both off ([`commit_properties`]) and call [`after_commit`], which checkpoints every
//! `delta.checkpointInterval` commits (Spark's default of 10 when the table does not say) and then
//! removes log files older than `delta.logRetentionDuration` (30 days by default) that the new
//! checkpoint makes unnecessary, as Spark does: in a task of its own, on the runtime that made the
//! commit (the query runtime), at most one per table at a time. Tables with
//! `delta.autoOptimize.autoCompact` on are compacted the same way once they hold
//! `quiver.autoCompact.minNumFiles` (50) small files.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use deltalake::DeltaTable;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::checkpoints::{cleanup_metadata, create_checkpoint};
use deltalake::table::config::TablePropertiesExt as _;

use crate::storage::maintenance;
use crate::storage::per_table::PerTable;

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

/// The table property that turns automatic compaction on (Databricks's name; `true`, `auto` or
/// `legacy` turn it on, as there). Off unless the table says so.
const AUTO_COMPACT: &str = "delta.autoOptimize.autoCompact";

/// The table property with the number of small files (smaller than `delta.targetFileSize`) that
/// starts an automatic compaction.
const AUTO_COMPACT_MIN_FILES: &str = "quiver.autoCompact.minNumFiles";

/// Small files that start an automatic compaction when the table does not say (Databricks's
/// default for `spark.databricks.delta.autoCompact.minNumFiles`).
pub const DEFAULT_AUTO_COMPACT_MIN_FILES: usize = 50;

/// Background work after a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Job {
    Checkpoint,
    Compaction,
}

/// The background tasks started, by table and job: at most one running per table and job. A
/// finished task stays until the next of its kind replaces it or [`finish`] collects it.
type Tasks = HashMap<(String, Job), tokio::task::JoinHandle<()>>;

static TASKS: LazyLock<Mutex<Tasks>> = LazyLock::new(Mutex::default);

/// Waits for the checkpoints being written, and stops compactions (their commit is atomic: one
/// stopped leaves only unreferenced files, which VACUUM removes): before a one-shot process
/// (`quiver sql`) or a server that is shutting down exits, so a due checkpoint is not lost with it.
/// Repeats until no task is left (a compaction that committed meanwhile may have started one).
pub async fn finish() {
    loop {
        let tasks = std::mem::take(&mut *TASKS.lock().unwrap_or_else(|p| p.into_inner()));
        if tasks.is_empty() {
            return;
        }
        for ((table, job), task) in tasks {
            if job == Job::Compaction {
                task.abort();
            }
            match task.await {
                Err(e) if !e.is_cancelled() => {
                    tracing::warn!(table = %table, ?job, error = %e, "a background task failed");
                }
                _ => {}
            }
        }
    }
}

/// Starts `work` for the table unless the same job is running for it already.
fn spawn(table: &DeltaTable, job: Job, work: impl Future<Output = ()> + Send + 'static) {
    let key = (table.table_url().to_string(), job);
    let mut tasks = TASKS.lock().unwrap_or_else(|p| p.into_inner());
    if tasks.get(&key).is_some_and(|task| !task.is_finished()) {
        return;
    }
    tasks.retain(|_, task| !task.is_finished());
    tasks.insert(key, tokio::spawn(work));
}

/// Called with the table a commit returned (loaded at the version it wrote), on the runtime that
/// made the commit (the query runtime); returns at once. When that version is due a checkpoint,
/// writes it (and cleans up expired log files) in a background task; a failure is logged (the
/// table stays readable from its JSON commits; the next interval tries again). When the table has
/// automatic compaction on, a background task compacts it once it holds enough small files.
pub fn after_commit(table: &DeltaTable) {
    let Some(version) = table.version() else {
        return;
    };
    let label = crate::metrics::table(table.table_url().as_str());
    metrics::counter!(crate::metrics::DELTA_COMMITS, "table" => label).increment(1);
    if checkpoint_due(version, checkpoint_interval(table)) {
        let loaded = table.clone();
        spawn(table, Job::Checkpoint, async move {
            if let Err(e) = checkpoint(&loaded).await {
                let table = loaded.table_url();
                tracing::warn!(%table, version, error = %e, "could not write a checkpoint");
            }
        });
    }
    if let Some(min_files) = auto_compact_min_files(table) {
        let loaded = table.clone();
        spawn(table, Job::Compaction, async move {
            if let Err(e) = auto_compact(loaded.clone(), min_files).await {
                let table = loaded.table_url();
                tracing::warn!(%table, error = %e, "automatic compaction failed");
            }
        });
    }
}

/// Checks a table property this module reads, as it is set (`ALTER TABLE ... SET TBLPROPERTIES`):
/// a value it could not read, or a `quiver.` property that does not exist, is refused rather than
/// silently meaning the default.
pub fn check_property(key: &str, value: &str) -> crate::error::Result<()> {
    let refused = |why: &str| {
        Err(crate::error::Error::InvalidInput(format!(
            "table property refused: '{key}' = '{value}': {why}"
        )))
    };
    if key == AUTO_COMPACT {
        if auto_compact_on(value).is_none() {
            return refused("it is true, false, auto or legacy");
        }
    } else if key == AUTO_COMPACT_MIN_FILES {
        if min_files(value).is_none() {
            return refused("it is a whole number of files, at least 2");
        }
    } else if key.starts_with("quiver.") {
        return refused(&format!(
            "Quiver's table properties are {AUTO_COMPACT_MIN_FILES}"
        ));
    }
    Ok(())
}

/// `quiver.autoCompact.minNumFiles`'s value: a whole number of files, at least 2.
fn min_files(value: &str) -> Option<usize> {
    value.trim().parse::<usize>().ok().filter(|n| *n > 1)
}

/// `delta.autoOptimize.autoCompact`'s values as Databricks reads them; `None`: not one of them.
fn auto_compact_on(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "auto" | "legacy" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// The small-file count that starts a compaction of this table, when it has automatic compaction
/// on (`delta.autoOptimize.autoCompact`).
fn auto_compact_min_files(table: &DeltaTable) -> Option<usize> {
    let snapshot = table.snapshot().ok()?;
    let configuration = snapshot.metadata().configuration();
    let on = configuration
        .get(AUTO_COMPACT)
        .and_then(|v| auto_compact_on(v))
        .unwrap_or(false);
    on.then(|| {
        configuration
            .get(AUTO_COMPACT_MIN_FILES)
            .and_then(|v| min_files(v))
            .unwrap_or(DEFAULT_AUTO_COMPACT_MIN_FILES)
    })
}

/// Small files each table kept after its last automatic compaction (alone in their partition,
/// or too big to combine within the target size): compaction starts again only once
/// `min_files` more have arrived, not after every commit.
static LEFT_AFTER_COMPACTION: PerTable<usize> = PerTable::new();

/// One automatic compaction at a time in the process, each rewriting one file at a time: it
/// shares the query runtime with queries and writers.
static COMPACTION: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

fn small_files(table: &DeltaTable) -> crate::error::Result<usize> {
    let snapshot = table.snapshot()?;
    let target =
        i64::try_from(snapshot.table_config().target_file_size().get()).unwrap_or(i64::MAX);
    Ok(snapshot
        .log_data()
        .iter()
        .filter(|file| file.size() < target)
        .count())
}

/// Compacts the table (as `OPTIMIZE`, which never blocks writers) when it holds at least
/// `min_files` more files smaller than its target size than its last compaction left.
async fn auto_compact(mut table: DeltaTable, min_files: usize) -> crate::error::Result<()> {
    if small_files(&table)? < LEFT_AFTER_COMPACTION.get(&table) + min_files {
        return Ok(());
    }
    let _one_at_a_time = COMPACTION
        .acquire()
        .await
        .map_err(|e| crate::error::Error::Internal(e.to_string()))?;
    // A session of its own: the statement that made the commit has ended by now.
    let state = datafusion::prelude::SessionContext::new().state();
    let report = maintenance::optimize(table.clone(), &state, &[], Vec::new(), Some(1)).await?;
    table.update_incremental(Some(report.version)).await?;
    let remaining = small_files(&table)?;
    LEFT_AFTER_COMPACTION.set(&table, remaining);
    tracing::info!(
        table = %table.table_url(),
        files_removed = report.files_removed,
        files_added = report.files_added,
        small_files_left = remaining,
        version = report.version,
        elapsed = ?report.duration,
        "automatic compaction"
    );
    Ok(())
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
