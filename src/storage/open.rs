//! Opening a Delta table at a snapshot (latest, `VERSION AS OF`, `TIMESTAMP AS OF`), with the
//! failures said in the table's terms: a version past the end of the log, a corrupt commit file, a
//! timestamp before the table existed, files VACUUM removed.

use deltalake::{DeltaTable, DeltaTableBuilder};
use object_store::{ObjectMeta, ObjectStoreExt};
use url::Url;

use crate::error::{Error, Result};

/// Which snapshot of a table to read: the latest, or one chosen with `VERSION AS OF` / `TIMESTAMP AS OF`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsOf {
    Latest,
    Version(u64),
    /// An RFC 3339 timestamp: the latest version committed at or before it.
    Timestamp(String),
}

/// Loads a Delta table at the requested snapshot.
pub async fn open_delta(url: &Url, as_of: &AsOf) -> Result<DeltaTable> {
    let builder = DeltaTableBuilder::from_url(url.clone())?;
    let builder = match as_of {
        AsOf::Latest => builder,
        AsOf::Version(v) => builder.with_version(*v),
        AsOf::Timestamp(ts) => builder.with_datestring(ts)?,
    };
    let table = match builder.load().await {
        Ok(table) => table,
        Err(e) => return Err(explain_load_error(url, as_of, e).await),
    };
    if let AsOf::Timestamp(ts) = as_of {
        check_not_before_creation(&table, ts).await?;
    }
    if *as_of != AsOf::Latest {
        check_files_present(&table, as_of).await?;
    }
    Ok(table)
}

/// A failed load, said in the table's terms where the Delta kernel's message would not: a version
/// past the end of the log (which versions exist), or a commit file that is not JSON (which one).
async fn explain_load_error(url: &Url, as_of: &AsOf, error: deltalake::DeltaTableError) -> Error {
    if matches!(
        error,
        deltalake::DeltaTableError::KernelError(_) | deltalake::DeltaTableError::Kernel { .. }
    ) && let Some(corrupt) = find_corrupt_commit(url).await
    {
        return corrupt;
    }
    let AsOf::Version(requested) = as_of else {
        return error.into();
    };
    match unloaded(url) {
        Some(table) => match table.get_latest_version().await {
            Ok(latest) if *requested > latest => Error::InvalidInput(format!(
                "VERSION AS OF {requested}: the table's latest version is {latest}"
            )),
            _ => error.into(),
        },
        None => error.into(),
    }
}

/// The table at `url` with nothing of its log read: its store, to look at the log by hand.
fn unloaded(url: &Url) -> Option<DeltaTable> {
    DeltaTableBuilder::from_url(url.clone()).ok()?.build().ok()
}

/// Commit files read when looking for a corrupt one, newest first.
const COMMITS_CHECKED: usize = 100;

/// The newest of the table's last [`COMMITS_CHECKED`] commit files that is not JSON lines, as
/// [`Error::Corrupt`]; `None` when they all parse (or the log cannot be listed).
async fn find_corrupt_commit(url: &Url) -> Option<Error> {
    use futures::TryStreamExt;
    let store = unloaded(url)?.object_store();
    let log = object_store::path::Path::from("_delta_log");
    let listed: Vec<ObjectMeta> = store.list(Some(&log)).try_collect().await.ok()?;
    let mut commits: Vec<(u64, ObjectMeta)> = listed
        .into_iter()
        .filter_map(|meta| {
            let name = meta.location.filename().filter(|n| n.ends_with(".json"))?;
            let version = deltalake::logstore::extract_version_from_filename(name)?;
            Some((version, meta))
        })
        .collect();
    commits.sort_by_key(|c| std::cmp::Reverse(c.0));
    for (version, meta) in commits.into_iter().take(COMMITS_CHECKED) {
        let bytes = ObjectStoreExt::get(&store, &meta.location)
            .await
            .ok()?
            .bytes()
            .await
            .ok()?;
        let bad = bytes
            .split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.trim_ascii().is_empty())
            .find_map(|(i, line)| {
                serde_json::from_slice::<serde_json::Value>(line)
                    .err()
                    .map(|e| (i + 1, e))
            });
        if let Some((line, e)) = bad {
            let earlier = match version {
                0 => String::new(),
                v => format!("; earlier versions still read with VERSION AS OF {}", v - 1),
            };
            return Some(Error::Corrupt(format!(
                "the Delta log of {url} is corrupt: commit {version} ({}) is not JSON at line \
                 {line}: {e}. The table cannot be read or written until that file is repaired{earlier}",
                meta.location
            )));
        }
    }
    None
}

/// Checks that the data files of a time-travel snapshot are still there (one listing of the table),
/// so reading a version VACUUM removed files of is an error naming it, not a failed Parquet read.
async fn check_files_present(table: &DeltaTable, as_of: &AsOf) -> Result<()> {
    use futures::{StreamExt, TryStreamExt};
    use std::collections::HashSet;
    let snapshot = table.snapshot()?;
    let store = table.object_store();
    let present: HashSet<String> = store
        .list(None)
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await?;
    let mut views = snapshot.snapshot().file_views(&table.log_store(), None);
    while let Some(view) = views.next().await {
        let view = view?;
        let path = view.object_store_path().to_string();
        if !present.contains(&path) {
            return Err(Error::VersionGone(format!(
                "{} of {} cannot be read: VACUUM removed its data file {path}. Versions inside \
                 the table's delta.deletedFileRetentionDuration can be read",
                describe(as_of),
                table.table_url()
            )));
        }
    }
    Ok(())
}

fn describe(as_of: &AsOf) -> String {
    match as_of {
        AsOf::Latest => "the latest version".into(),
        AsOf::Version(v) => format!("version {v}"),
        AsOf::Timestamp(ts) => format!("the version at {ts}"),
    }
}

/// delta-rs answers a timestamp older than the table with its first version; Spark and Databricks
/// reject it, and so does Quiver: there was no data then.
async fn check_not_before_creation(table: &DeltaTable, ts: &str) -> Result<()> {
    let requested = chrono::DateTime::parse_from_rfc3339(ts)
        .map_err(|e| Error::InvalidInput(format!("bad timestamp '{ts}': {e}")))?
        .timestamp_millis();
    // delta-rs picks the latest version committed at or before the timestamp, falling back to the
    // first version; the pick is only newer than the timestamp in that fallback.
    let committed = table
        .version()
        .and_then(|v| table.snapshot().ok().and_then(|s| s.version_timestamp(v)));
    if let Some(committed) = committed
        && committed > requested
    {
        return Err(Error::InvalidInput(format!(
            "TIMESTAMP AS OF {ts} is before the earliest version available (committed at {})",
            chrono::DateTime::from_timestamp_millis(committed)
                .map_or_else(|| committed.to_string(), |t| t.to_rfc3339())
        )));
    }
    Ok(())
}
