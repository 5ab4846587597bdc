//! What a Delta table's commits since a version did, and reading only the rows they added.
//!
//! Shared by what keeps state derived from a table up to date without recomputing it: feature view
//! refresh ([`crate::features::refresh`]) and the `[exclude]` index of two-tower models
//! ([`crate::scoring::exclusion`]). Only appends can be applied that way; anything else (a delete, an
//! overwrite, a schema change, a commit already cleaned up) is named, and the caller starts over.

use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::Transformed;
use datafusion::datasource::{DefaultTableSource, provider_as_source};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{LogicalPlan, TableScan, TableScanBuilder};
use deltalake::DeltaTable;
use deltalake::kernel::Action;
use deltalake::logstore::get_actions;

use crate::error::Result;
use crate::storage::DeltaTableProvider;

/// The data files the commits of `table` (`name` in messages) after `since` up to `until` added, if
/// they only appended rows; otherwise why not.
pub async fn appended_files(
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
