//! State this process keeps per table, by the table's URL: its write turn, its group-commit queue,
//! what its last automatic compaction left. Shared by every handle of the table in the process.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};

use deltalake::DeltaTable;

/// One value per table, made on first use.
pub(crate) struct PerTable<T>(LazyLock<Mutex<HashMap<String, T>>>);

impl<T: Default + Clone> PerTable<T> {
    pub(crate) const fn new() -> Self {
        Self(LazyLock::new(Mutex::default))
    }

    /// `table`'s value (a default one the first time). A panic elsewhere while the map was locked
    /// leaves it whole: each change is one call.
    pub(crate) fn get(&self, table: &DeltaTable) -> T {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(table.table_url().to_string())
            .or_default()
            .clone()
    }

    pub(crate) fn set(&self, table: &DeltaTable, value: T) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(table.table_url().to_string(), value);
    }
}
