//! The latest snapshot of each table read, kept between statements and brought up to date at every
//! open (the catalog's read path).

use deltalake::DeltaTable;
use quick_cache::sync::Cache;
use url::Url;

use crate::error::Result;
use crate::storage::changes::{LogMark, LogState};
use crate::storage::open::{AsOf, open_delta};

/// Tables kept at most in [`Snapshots`]; past it, the least used are dropped and loaded again when
/// next read.
const MAX_SNAPSHOTS: usize = 1024;

/// The latest snapshot of each table read, brought up to date at every open: only the commits since
/// the kept version are read (when there are none, one look for the next commit's file), instead of
/// replaying the whole log and rebuilding its file list for every statement. Reads stay fresh: a
/// commit another writer made is seen by the next open.
///
/// A table deleted and written again at the same place has a new log starting over at version 0, in
/// which the kept version may exist again: so each open first checks that the kept version's commit
/// file is the one read then (its size, modification time and entity tag), and loads the table
/// afresh when it is gone or another. Quiver's own DDL forgets every table ([`Snapshots::clear`]).
pub struct Snapshots {
    latest: Cache<Url, Kept>,
}

/// A table's snapshot and the mark of its version, to check the kept copy against the log.
#[derive(Clone)]
struct Kept {
    table: DeltaTable,
    mark: LogMark,
}

impl Default for Snapshots {
    fn default() -> Self {
        Self {
            latest: Cache::new(MAX_SNAPSHOTS),
        }
    }
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots")
            .field("tables", &self.latest.len())
            .finish()
    }
}

impl Snapshots {
    /// The table at `as_of`; the latest version from the kept snapshot when there is one.
    pub async fn open(&self, url: &Url, as_of: &AsOf) -> Result<DeltaTable> {
        if *as_of != AsOf::Latest {
            return open_delta(url, as_of).await;
        }
        let updated = match self.latest.get(url) {
            Some(kept) => brought_up_to_date(kept).await,
            None => None,
        };
        let kept = match updated {
            Some(kept) => kept,
            None => {
                let table = open_delta(url, as_of).await?;
                match LogMark::of(&table).await {
                    Some(mark) => Kept { table, mark },
                    // Nothing to check a kept copy against: not kept.
                    None => return Ok(table),
                }
            }
        };
        self.latest.insert(url.clone(), kept.clone());
        Ok(kept.table)
    }

    /// Forgets every table: after DDL, which may drop a table and create another in its place.
    pub fn clear(&self) {
        self.latest.clear();
    }
}

/// The kept table with the commits since its version applied. `None` when its last commit file is
/// gone or not the one read (the table was deleted, perhaps written again), or the update fails:
/// the caller loads the table from scratch.
async fn brought_up_to_date(kept: Kept) -> Option<Kept> {
    let Kept { mut table, mark } = kept;
    match mark.state().await {
        LogState::Replaced => return None,
        LogState::Unchanged => return Some(Kept { table, mark }),
        LogState::Advanced => {}
    }
    table.update_incremental(None).await.ok()?;
    let mark = if table.version() == Some(mark.version()) {
        mark
    } else {
        LogMark::of(&table).await?
    };
    Some(Kept { table, mark })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::changes::tests::{table_url, write};
    use crate::storage::write::WriteKind;

    #[tokio::test]
    async fn kept_snapshots_follow_commits_and_tables_made_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = table_url(&dir, "t");
        let snapshots = Snapshots::default();
        write(&url, WriteKind::Append, vec![1, 2]).await;
        assert_eq!(
            snapshots
                .open(&url, &AsOf::Latest)
                .await
                .expect("open")
                .version(),
            Some(0)
        );

        // Another writer's commit is seen by the next open.
        write(&url, WriteKind::Append, vec![3]).await;
        let kept = snapshots.open(&url, &AsOf::Latest).await.expect("open");
        assert_eq!(kept.version(), Some(1));
        assert_eq!(kept.get_file_uris().expect("files").count(), 2);

        // Dropped and written again at the same place: its new log, not the kept one.
        std::fs::remove_dir_all(dir.path().join("t")).expect("drop the table");
        write(&table_url(&dir, "t"), WriteKind::Append, vec![4, 5, 6]).await;
        let fresh = snapshots.open(&url, &AsOf::Latest).await.expect("open");
        assert_eq!(fresh.version(), Some(0));
        assert_eq!(fresh.get_file_uris().expect("files").count(), 1);

        // Time travel is read from the log, never from what is kept.
        let old = snapshots.open(&url, &AsOf::Version(0)).await.expect("open");
        assert_eq!(old.version(), Some(0));
    }
}
