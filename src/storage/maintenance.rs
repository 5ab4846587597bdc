//! Keeping a table healthy and changing its definition, through delta-rs's own operations: OPTIMIZE
//! (compaction, Z-order), VACUUM, RESTORE, added columns, table properties, and reading its history.
//!
//! Operations that commit take the table's write turn (except OPTIMIZE, which only rewrites files
//! and commits through Delta's conflict checks, so appends go on while it runs) and leave their
//! checkpoint to [`upkeep`].

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::Field;
use datafusion::execution::context::SessionState;
use deltalake::DeltaTable;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::partitions::FilterLiteral;
use deltalake::kernel::transaction::TransactionError;
use deltalake::kernel::{CommitInfo, StructField};
use deltalake::operations::optimize::OptimizeType;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::table::config::TablePropertiesExt as _;
use futures::TryStreamExt;

use crate::error::{Error, Result};
use crate::storage::AsOf;
use crate::storage::upkeep;
use crate::storage::write::take_turn;

/// What one OPTIMIZE did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OptimizeReport {
    pub files_removed: u64,
    pub files_added: u64,
    pub bytes_removed: i64,
    pub bytes_added: i64,
    pub partitions_optimized: u64,
    pub files_considered: u64,
    pub files_skipped: u64,
    pub duration: Duration,
    /// The table's version after it (unchanged when there was nothing to compact).
    pub version: u64,
}

/// Attempts of an OPTIMIZE whose commit lost to a conflicting writer (a DELETE or UPDATE that
/// removed a file it compacted): each attempt plans afresh on the newer version.
const OPTIMIZE_ATTEMPTS: u32 = 5;

/// Compacts the table's small files (in the partitions `filters` select, all when empty) into files
/// of `delta.targetFileSize`, or rewrites them ordered by the Z-order curve of `zorder`. Readers see
/// the same rows before and after (the files it adds carry `dataChange: false`), and appends made
/// meanwhile are kept: Delta's conflict check lets an append and a compaction commit in either
/// order; a compaction that lost to a DELETE or UPDATE of its files is planned again.
pub async fn optimize(
    table: DeltaTable,
    state: &SessionState,
    filters: &[FilterLiteral<'_>],
    zorder: Vec<String>,
    concurrency: Option<usize>,
) -> Result<OptimizeReport> {
    let started = Instant::now();
    let mut attempt = 1;
    let mut table = table;
    loop {
        table.update_state().await?;
        let target = table.snapshot()?.table_config().target_file_size();
        let mut builder = table
            .clone()
            .optimize()
            .with_filters(filters)
            .with_target_size(NonZeroU64::from(target))
            .with_session_state(Arc::new(state.clone()))
            .with_commit_properties(upkeep::commit_properties());
        if !zorder.is_empty() {
            builder = builder.with_type(OptimizeType::ZOrder(zorder.clone()));
        }
        if let Some(tasks) = concurrency {
            builder = builder.with_max_concurrent_tasks(tasks.max(1));
        }
        match builder.await {
            Ok((optimized, metrics)) => {
                upkeep::after_commit(&optimized);
                return Ok(OptimizeReport {
                    files_removed: metrics.num_files_removed,
                    files_added: metrics.num_files_added,
                    bytes_removed: metrics.files_removed.total_size,
                    bytes_added: metrics.files_added.total_size,
                    partitions_optimized: metrics.partitions_optimized,
                    files_considered: metrics.total_considered_files as u64,
                    files_skipped: metrics.total_files_skipped as u64,
                    duration: started.elapsed(),
                    version: optimized.version().unwrap_or_default(),
                });
            }
            Err(deltalake::DeltaTableError::Transaction { source })
                if attempt < OPTIMIZE_ATTEMPTS && is_conflict(&source) =>
            {
                tracing::info!(attempt, error = %source, "OPTIMIZE lost a commit race; planning it again");
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn is_conflict(error: &TransactionError) -> bool {
    matches!(
        error,
        TransactionError::CommitConflict(_) | TransactionError::MaxCommitAttempts(_)
    )
}

/// What one VACUUM removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VacuumReport {
    pub dry_run: bool,
    /// Paths relative to the table root.
    pub files: Vec<String>,
}

/// Removes the data files no version inside the retention window needs: files removed by commits
/// older than `retain` (the table's `delta.deletedFileRetentionDuration`, 7 days, when `None`) and
/// files no commit references (left by writes that failed before their commit). A retention
/// shorter than the table's is refused unless `check_retention` is off: readers of versions
/// inside the window, and writes still in flight, could lose files they need.
pub async fn vacuum(
    mut table: DeltaTable,
    retain: Option<Duration>,
    dry_run: bool,
    check_retention: bool,
) -> Result<VacuumReport> {
    let _turn = take_turn(&mut table).await?;
    let configured = table
        .snapshot()?
        .table_config()
        .deleted_file_retention_duration();
    if let Some(retain) = retain
        && check_retention
        && retain < configured
    {
        return Err(Error::InvalidInput(format!(
            "VACUUM RETAIN {} HOURS is shorter than the table's delta.deletedFileRetentionDuration \
             ({} hours): files that readers of recent versions or writes in flight still need \
             could be removed. Add WITHOUT RETENTION CHECK to the statement to vacuum anyway, or \
             lower the table property",
            hours(retain),
            hours(configured)
        )));
    }
    let mut builder = table
        .vacuum()
        .with_mode(VacuumMode::Full)
        .with_dry_run(dry_run)
        .with_enforce_retention_duration(false)
        .with_commit_properties(upkeep::commit_properties());
    let retention = chrono::TimeDelta::from_std(retain.unwrap_or(configured))
        .map_err(|e| Error::InvalidInput(format!("VACUUM RETAIN: {e}")))?;
    builder = builder.with_retention_period(retention);
    let (vacuumed, metrics) = builder.await?;
    if !dry_run {
        upkeep::after_commit(&vacuumed);
    }
    Ok(VacuumReport {
        dry_run: metrics.dry_run,
        files: metrics.files_deleted,
    })
}

fn hours(d: Duration) -> String {
    let h = d.as_secs_f64() / 3600.0;
    if h.fract() == 0.0 {
        format!("{h:.0}")
    } else {
        format!("{h}")
    }
}

/// What one RESTORE did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestoreReport {
    /// The version the table now has (a new commit with the restored version's files).
    pub version: u64,
    pub files_restored: u64,
    pub files_removed: u64,
}

/// Makes the table's latest version read as `to` did, as a new commit (history is kept: time
/// travel to the versions in between still works). Refused, naming the version, when VACUUM
/// removed files that version needs.
pub async fn restore(mut table: DeltaTable, to: &AsOf) -> Result<RestoreReport> {
    // Opening the version checks its files are still there.
    crate::storage::open_delta(table.table_url(), to).await?;
    let _turn = take_turn(&mut table).await?;
    let mut builder = table
        .restore()
        .with_commit_properties(upkeep::commit_properties());
    builder = match to {
        AsOf::Version(v) => builder.with_version_to_restore(*v),
        AsOf::Timestamp(ts) => builder.with_datetime_to_restore(
            chrono::DateTime::parse_from_rfc3339(ts)
                .map_err(|e| Error::InvalidInput(format!("bad timestamp '{ts}': {e}")))?
                .to_utc(),
        ),
        AsOf::Latest => return Err(Error::InvalidInput("RESTORE needs a version".into())),
    };
    let (restored, metrics) = builder.await?;
    upkeep::after_commit(&restored);
    Ok(RestoreReport {
        version: restored.version().unwrap_or_default(),
        files_restored: metrics.num_restored_file as u64,
        files_removed: metrics.num_removed_file as u64,
    })
}

/// The table's commits, newest first (the latest `limit` when given), with their versions: as far
/// back as the log goes (`delta.logRetentionDuration`).
pub async fn history(table: &DeltaTable, limit: Option<usize>) -> Result<Vec<(u64, CommitInfo)>> {
    let latest = table.version().unwrap_or_default();
    let infos: Vec<CommitInfo> = table.history(limit).try_collect().await?;
    // delta-rs reads the commit files newest first; every commit Spark, delta-rs and Quiver write
    // carries a commitInfo, so the n-th is version latest - n.
    Ok(infos
        .into_iter()
        .enumerate()
        .map(|(i, info)| (latest.saturating_sub(i as u64), info))
        .collect())
}

/// `DESCRIBE DETAIL`'s facts about the table's latest version.
#[derive(Debug, Clone)]
pub struct Detail {
    pub location: String,
    pub version: u64,
    pub created_at: Option<i64>,
    pub files: u64,
    pub bytes: i64,
    pub partition_columns: Vec<String>,
    pub properties: Vec<(String, String)>,
    pub min_reader_version: i32,
    pub min_writer_version: i32,
    pub reader_features: Vec<String>,
    pub writer_features: Vec<String>,
    pub name: Option<String>,
    pub description: Option<String>,
}

pub async fn detail(table: &DeltaTable) -> Result<Detail> {
    use futures::StreamExt;
    let snapshot = table.snapshot()?;
    let metadata = snapshot.metadata();
    let protocol = snapshot.protocol();
    let mut files = 0u64;
    let mut bytes = 0i64;
    let mut views = snapshot.snapshot().file_views(&table.log_store(), None);
    while let Some(view) = views.next().await {
        let view = view?;
        files += 1;
        bytes += view.size();
    }
    let mut properties: Vec<(String, String)> = metadata
        .configuration()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    properties.sort();
    Ok(Detail {
        location: table.table_url().to_string(),
        version: snapshot.version(),
        created_at: metadata.created_time(),
        files,
        bytes,
        partition_columns: metadata.partition_columns().to_vec(),
        properties,
        min_reader_version: protocol.min_reader_version(),
        min_writer_version: protocol.min_writer_version(),
        reader_features: feature_names(protocol.reader_features()),
        writer_features: feature_names(protocol.writer_features()),
        name: metadata.name().map(str::to_string),
        description: metadata.description().map(str::to_string),
    })
}

fn feature_names<T: std::fmt::Display>(features: Option<&[T]>) -> Vec<String> {
    features
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Adds nullable columns (Delta cannot add a non-null column to rows that exist), as one commit.
pub async fn add_columns(mut table: DeltaTable, columns: &[Field]) -> Result<u64> {
    let _turn = take_turn(&mut table).await?;
    let existing = table.snapshot()?.schema();
    let mut fields: Vec<StructField> = Vec::with_capacity(columns.len());
    for column in columns {
        if existing.field(column.name()).is_some() {
            return Err(Error::AlreadyExists {
                kind: "column",
                name: column.name().clone(),
            });
        }
        if !column.is_nullable() {
            return Err(Error::InvalidInput(format!(
                "column '{}' is NOT NULL: columns added to a table with rows must be nullable",
                column.name()
            )));
        }
        let field: StructField = column.try_into_kernel().map_err(|e| {
            Error::InvalidInput(format!(
                "column '{}' has type {}, which a Delta table cannot store: {e}",
                column.name(),
                column.data_type()
            ))
        })?;
        fields.push(field);
    }
    let changed = table
        .add_columns()
        .with_fields(fields)
        .with_commit_properties(upkeep::commit_properties())
        .await?;
    upkeep::after_commit(&changed);
    Ok(changed.version().unwrap_or_default())
}

/// Sets table properties (`delta.checkpointInterval`, `delta.logRetentionDuration`, ...), as one
/// commit. As Spark: a `delta.` property Delta does not define is refused, any other name (a user's
/// own, `quiver.autoCompact.minNumFiles`) is kept as given; delta-rs refuses a value it cannot read.
pub async fn set_properties(
    mut table: DeltaTable,
    properties: HashMap<String, String>,
) -> Result<u64> {
    for (key, value) in &properties {
        upkeep::check_property(key, value)?;
    }
    if let Some(unknown) = properties.keys().find(|k| {
        k.starts_with("delta.")
            && k.parse::<deltalake::table::config::TableProperty>()
                .is_err()
    }) {
        return Err(Error::InvalidInput(format!(
            "table property refused: '{unknown}' is not a Delta table property"
        )));
    }
    let _turn = take_turn(&mut table).await?;
    let changed = table
        .set_tbl_properties()
        .with_properties(properties)
        .with_raise_if_not_exists(false)
        .with_commit_properties(upkeep::commit_properties())
        .await
        .map_err(|e| match e {
            // The kernel reads the new configuration: what fails there is a property it refuses.
            deltalake::DeltaTableError::KernelError(_)
            | deltalake::DeltaTableError::Kernel { .. } => {
                Error::InvalidInput(format!("table property refused: {e}"))
            }
            other => other.into(),
        })?;
    upkeep::after_commit(&changed);
    Ok(changed.version().unwrap_or_default())
}
