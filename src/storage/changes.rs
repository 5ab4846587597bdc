//! Following a Delta table from a version: where its log stands against a version read before
//! ([`LogMark`]), what the commits since did ([`changes_since`]), and reading only the rows they
//! added ([`limited_to`]).
//!
//! The one way everything that keeps state derived from a table follows it: kept snapshots
//! ([`crate::storage::snapshots`]), feature view refresh ([`crate::features::refresh`]) and the
//! `[exclude]` index of two-tower models ([`crate::scoring::exclusion`]). Only appends can be applied
//! incrementally; anything else (a delete, an overwrite, a schema change, a commit already cleaned up,
//! a table written again from scratch) is named, and the caller starts over.

use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::Transformed;
use datafusion::datasource::{DefaultTableSource, provider_as_source};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{LogicalPlan, TableScan, TableScanBuilder};
use deltalake::DeltaTable;
use deltalake::kernel::Action;
use deltalake::logstore::{ObjectStoreRef, get_actions};
use object_store::{ObjectMeta, ObjectStoreExt};

use crate::error::Result;
use crate::storage::DeltaTableProvider;

/// A version of a table as it was read: its number and what its commit file looked like then (size,
/// modification time, entity tag). A table deleted and written again at the same place has a new log
/// starting over at version 0, in which the version may exist again; the commit file tells them
/// apart.
#[derive(Debug, Clone)]
pub struct LogMark {
    store: ObjectStoreRef,
    version: u64,
    commit: ObjectMeta,
}

/// Where a table's log stands against a [`LogMark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogState {
    /// The version's commit file is the one read and no commit follows it.
    Unchanged,
    /// The version's commit file is the one read and later commits exist.
    Advanced,
    /// The version's commit file is gone or another: the table was deleted, perhaps written again
    /// with a new log.
    Replaced,
}

impl LogMark {
    /// The mark of the version `table` is at; `None` when it has none or its commit file cannot be
    /// read.
    pub async fn of(table: &DeltaTable) -> Option<LogMark> {
        let version = table.version()?;
        let store = table.object_store();
        let commit = commit_file(&store, version).await?;
        Some(LogMark {
            store,
            version,
            commit,
        })
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Where the log stands now: two `head`s, made concurrently, without listing the log.
    pub async fn state(&self) -> LogState {
        let (now, next) = futures::join!(
            commit_file(&self.store, self.version),
            commit_file(&self.store, self.version + 1)
        );
        match (now, next) {
            (Some(now), _) if now != self.commit => LogState::Replaced,
            (None, _) => LogState::Replaced,
            (_, None) => LogState::Unchanged,
            (_, Some(_)) => LogState::Advanced,
        }
    }

    /// What the commits after this mark did, up to the version `table` (the same table, read later)
    /// is at.
    pub async fn changes_to(&self, table: &DeltaTable, name: &str) -> Result<Changes> {
        if commit_file(&self.store, self.version).await.as_ref() != Some(&self.commit) {
            return Ok(Changes::Other(format!(
                "{name} was written again from scratch since version {}",
                self.version
            )));
        }
        changes_since(table, name, self.version).await
    }
}

/// What the commit file of `version` looks like in `store` (rooted at a table, as
/// [`DeltaTable::object_store`] is); `None` if it is not there or cannot be read.
async fn commit_file(store: &ObjectStoreRef, version: u64) -> Option<ObjectMeta> {
    let path = deltalake::logstore::commit_uri_from_version(Some(version));
    ObjectStoreExt::head(store, &path).await.ok()
}

/// What a table's commits since a version did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// No commit since.
    None,
    /// They only appended rows, in these data files (paths as the log names them).
    Appended(Vec<String>),
    /// Anything else, and what: the caller starts over.
    Other(String),
}

/// What the commits of `table` (`name` in messages) after version `since` did, up to the version it
/// is at.
pub async fn changes_since(table: &DeltaTable, name: &str, since: u64) -> Result<Changes> {
    let Some(until) = table.version() else {
        return Ok(Changes::Other(format!("{name} has no version")));
    };
    if since == until {
        return Ok(Changes::None);
    }
    if since > until {
        return Ok(Changes::Other(format!(
            "{name} is at version {until}, older than the {since} followed (was it recreated?)"
        )));
    }
    Ok(match appended_files(table, name, since, until).await? {
        Ok(files) => Changes::Appended(files),
        Err(reason) => Changes::Other(reason),
    })
}

/// The data files the commits of `table` (`name` in messages) after `since` up to `until` added, if
/// they only appended rows; otherwise why not.
async fn appended_files(
    table: &DeltaTable,
    name: &str,
    since: u64,
    until: u64,
) -> Result<std::result::Result<Vec<String>, String>> {
    let log_store = table.log_store();
    let mut files = Vec::new();
    for version in since + 1..=until {
        let Some(bytes) = log_store.read_commit_entry(version).await? else {
            return Ok(Err(format!(
                "commit {version} of {name} is no longer in its log"
            )));
        };
        for action in get_actions(version, &bytes)? {
            match action {
                Action::Add(add) if add.data_change => files.push(add.path),
                Action::Remove(remove) if remove.data_change => {
                    return Ok(Err(format!(
                        "{name} had rows deleted or replaced at version {version}"
                    )));
                }
                Action::Metadata(_) => {
                    return Ok(Err(format!(
                        "{name} changed its schema or settings at version {version}"
                    )));
                }
                _ => {}
            }
        }
    }
    Ok(Ok(files))
}

/// The warehouse Delta table a scan reads, if it reads one.
pub fn delta_read(scan: &TableScan) -> Option<&DeltaTableProvider> {
    scan.source
        .downcast_ref::<DefaultTableSource>()?
        .table_provider
        .downcast_ref::<DeltaTableProvider>()
}

/// The name (`schema.table`) of the Delta table a scan reads, if it reads one.
pub fn read_of(scan: &TableScan) -> Option<String> {
    Some(delta_read(scan)?.name().to_string())
}

/// `table`'s snapshot reading only `files` (paths as the log names them, e.g. the ones
/// [`appended_files`] found), with the scan options of `settings`.
pub async fn limited_to(
    table: &DeltaTable,
    settings: Arc<SessionState>,
    files: Vec<String>,
) -> Result<Arc<dyn TableProvider>> {
    Ok(table
        .table_provider()
        .with_session(settings)
        .with_file_paths(files)
        .await?)
}

/// `query` with its `occurrence`-th read of `source` (in traversal order) reading `provider`
/// instead, typically the same table limited to the files [`appended_files`] named.
pub fn replace_read(
    query: LogicalPlan,
    source: &str,
    occurrence: usize,
    provider: &Arc<dyn TableProvider>,
) -> Result<LogicalPlan> {
    let mut seen = 0;
    let replaced = query.transform_down_with_subqueries(|node| {
        let LogicalPlan::TableScan(scan) = node else {
            return Ok(Transformed::no(node));
        };
        if read_of(&scan).as_deref() != Some(source) {
            return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
        }
        seen += 1;
        if seen - 1 != occurrence {
            return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
        }
        let scan = TableScanBuilder::new(scan.table_name, provider_as_source(provider.clone()))
            .with_projection(scan.projection)
            .with_filters(scan.filters)
            .with_fetch(scan.fetch)
            .build()?;
        Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
    })?;
    Ok(replaced.data)
}

#[cfg(test)]
pub(crate) mod tests {
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
    use url::Url;

    use super::*;
    use crate::storage::write::{WriteKind, WriteRequest, write_stream};
    use crate::storage::{AsOf, open_delta};

    /// Writes `ids` to the Delta table at `url` (`kind`: append, replace...) and returns the table
    /// at its new version.
    pub(crate) async fn write(url: &Url, kind: WriteKind, ids: Vec<i64>) -> DeltaTable {
        let batch = RecordBatch::try_from_iter([(
            "id",
            Arc::new(Int64Array::from(ids)) as datafusion::arrow::array::ArrayRef,
        )])
        .expect("batch");
        let schema = batch.schema();
        let data = Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::iter([Ok(batch)]),
        ));
        let table = match open_delta(url, &AsOf::Latest).await {
            Ok(table) => table,
            Err(_) => DeltaTable::try_from_url(url.clone())
                .await
                .expect("new table"),
        };
        let request = WriteRequest {
            table,
            kind,
            partition_by: Vec::new(),
            data,
            transactions: Vec::new(),
            merge_schema: false,
        };
        // delta-rs's own session: it plans the write's nodes (the server's planner sits above storage).
        let state = deltalake::delta_datafusion::create_session()
            .into_inner()
            .state();
        write_stream(&state, request).await.expect("write");
        open_delta(url, &AsOf::Latest).await.expect("open")
    }

    /// Why following the table had to start over.
    fn started_over(changes: Changes) -> String {
        match changes {
            Changes::Other(reason) => reason,
            other => panic!("expected to start over, got {other:?}"),
        }
    }

    pub(crate) fn table_url(dir: &tempfile::TempDir, name: &str) -> Url {
        let path = dir.path().join(name);
        std::fs::create_dir_all(&path).expect("table dir");
        Url::from_directory_path(path).expect("url")
    }

    #[tokio::test]
    async fn appends_are_followed_file_by_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = table_url(&dir, "t");
        let first = write(&url, WriteKind::Append, vec![1, 2]).await;
        let mark = LogMark::of(&first).await.expect("mark");
        assert_eq!(mark.state().await, LogState::Unchanged);
        assert_eq!(
            changes_since(&first, "t", mark.version())
                .await
                .expect("changes"),
            Changes::None
        );

        let second = write(&url, WriteKind::Append, vec![3]).await;
        assert_eq!(mark.state().await, LogState::Advanced);
        let Changes::Appended(files) = mark.changes_to(&second, "t").await.expect("changes") else {
            panic!("an append is followed as its files");
        };
        assert_eq!(files.len(), 1);
        assert!(
            second
                .get_file_uris()
                .expect("files")
                .any(|f| f.ends_with(&files[0]))
        );
    }

    #[tokio::test]
    async fn anything_but_an_append_starts_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = table_url(&dir, "t");
        let first = write(&url, WriteKind::Append, vec![1, 2]).await;
        let mark = LogMark::of(&first).await.expect("mark");
        let replaced = write(&url, WriteKind::Replace, vec![9]).await;
        let reason = started_over(mark.changes_to(&replaced, "t").await.expect("changes"));
        assert!(
            reason.contains("had rows deleted or replaced at version 1"),
            "{reason}"
        );
        // A version behind the one followed: the table was made again.
        let reason = started_over(changes_since(&first, "t", 1).await.expect("changes"));
        assert!(reason.contains("was it recreated?"), "{reason}");
    }

    #[tokio::test]
    async fn a_table_written_again_from_scratch_is_told_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = table_url(&dir, "t");
        let first = write(&url, WriteKind::Append, (0..100).collect()).await;
        let mark = LogMark::of(&first).await.expect("mark");
        std::fs::remove_dir_all(dir.path().join("t")).expect("drop the table");
        let again = write(&table_url(&dir, "t"), WriteKind::Append, vec![7]).await;
        assert_eq!(again.version(), Some(0), "a new log starts over");
        assert_eq!(mark.state().await, LogState::Replaced);
        let reason = started_over(mark.changes_to(&again, "t").await.expect("changes"));
        assert!(reason.contains("written again from scratch"), "{reason}");
    }
}
