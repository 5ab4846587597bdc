//! The warehouse as DataFusion's catalog `quiver`: schemas are warehouse directories, tables Delta tables.
//!
//! Table lookups go to storage every time (a new version committed by another writer is seen by the next
//! query), reading only the commits since the table was last read ([`Snapshots`]). Only the name
//! listings that DataFusion asks for synchronously (`information_schema`, `SHOW TABLES`) are cached,
//! and [`WarehouseCatalog::refresh`] renews them before such a statement.
//!
//! The layers above add what storage does not know about, through the composition root
//! (`session`): schemas of their own (`system`) and tables served in place of a warehouse table at
//! its latest version (materialized feature views, answered from memory), see [`ServedTables`].

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::common::exec_err;
use datafusion::datasource::TableType;
use datafusion::error::Result as DFResult;
use datafusion::execution::context::SessionState;

use crate::error::Result;
use crate::storage::snapshots::Snapshots;
use crate::storage::warehouse::{TableLocation, Warehouse, valid_name};
use crate::storage::{AsOf, DeltaTableProvider};

pub const CATALOG: &str = "quiver";

/// Separates a table name from a time-travel suffix in the names the SQL front end rewrites
/// `t VERSION AS OF 3` into (`"t@v3"`, `"t@t2026-01-01T00:00:00Z"`).
pub const AS_OF_SEPARATOR: char = '@';

/// Cached name listing: schema -> table names.
type Listing = BTreeMap<String, Vec<String>>;

/// Tables a higher layer serves in place of one warehouse schema's Delta tables, when they are
/// read at their latest version (time travel always reads the Delta table).
pub trait ServedTables: Debug + Send + Sync {
    /// The table served for `table`, or `None` to read the Delta table. `settings` is the session
    /// with Quiver's scan settings.
    fn latest(&self, table: &str, settings: &Arc<SessionState>) -> Option<Arc<dyn TableProvider>>;
}

#[derive(Debug)]
pub struct WarehouseCatalog {
    warehouse: Arc<Warehouse>,
    listing: Arc<ArcSwap<Listing>>,
    settings: Arc<SessionState>,
    snapshots: Arc<Snapshots>,
    /// Schemas not in the warehouse (`system`), by name.
    extra: BTreeMap<String, Arc<dyn SchemaProvider>>,
    /// Tables served in place of a warehouse schema's, by schema name.
    served: HashMap<String, Arc<dyn ServedTables>>,
}

impl WarehouseCatalog {
    /// `settings` is a session with Quiver's configuration (no catalogs): delta-rs reads its scan
    /// options from it.
    pub fn new(warehouse: Arc<Warehouse>, settings: Arc<SessionState>) -> Self {
        Self {
            warehouse,
            listing: Arc::default(),
            settings,
            snapshots: Arc::default(),
            extra: BTreeMap::new(),
            served: HashMap::new(),
        }
    }

    /// This catalog with a schema of its own under `name` (not a warehouse directory).
    pub fn with_schema(mut self, name: &str, schema: Arc<dyn SchemaProvider>) -> Self {
        self.extra.insert(name.to_string(), schema);
        self
    }

    /// This catalog with `tables` served in place of schema `name`'s Delta tables at their latest
    /// version.
    pub fn with_served_tables(mut self, name: &str, tables: Arc<dyn ServedTables>) -> Self {
        self.served.insert(name.to_string(), tables);
        self
    }

    pub fn warehouse(&self) -> &Arc<Warehouse> {
        &self.warehouse
    }

    /// The session with Quiver's scan settings that delta-rs reads them from.
    pub fn settings(&self) -> &Arc<SessionState> {
        &self.settings
    }

    /// Opens a table by location for reading, with Quiver's scan settings.
    pub async fn provider(
        &self,
        name: String,
        location: &TableLocation,
        as_of: &AsOf,
    ) -> Result<DeltaTableProvider> {
        open_provider(name, location, as_of, &self.settings, &self.snapshots).await
    }

    /// Forgets the tables' kept snapshots: after DDL, which may drop a table and create another in
    /// its place.
    pub fn forget_snapshots(&self) {
        self.snapshots.clear();
    }

    /// Re-reads the schema and table names from storage.
    pub async fn refresh(&self) -> Result<()> {
        let mut listing = Listing::new();
        for schema in self.warehouse.schemas().await? {
            let tables = self.warehouse.tables(&schema).await?;
            listing.insert(schema, tables.into_iter().map(|(name, _)| name).collect());
        }
        self.listing.store(Arc::new(listing));
        Ok(())
    }
}

impl CatalogProvider for WarehouseCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.listing.load().keys().cloned().collect();
        names.extend(self.extra.keys().cloned());
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if let Some(schema) = self.extra.get(name) {
            return Some(schema.clone());
        }
        // Any well-formed name resolves: a schema made by another writer since the last listing must
        // still be queryable. Missing tables are then reported by `table()`.
        valid_name(name).then(|| {
            Arc::new(WarehouseSchema {
                warehouse: self.warehouse.clone(),
                name: name.to_string(),
                listing: self.listing.clone(),
                settings: self.settings.clone(),
                snapshots: self.snapshots.clone(),
                served: self.served.get(name).cloned(),
            }) as Arc<dyn SchemaProvider>
        })
    }
}

#[derive(Debug)]
pub struct WarehouseSchema {
    warehouse: Arc<Warehouse>,
    name: String,
    listing: Arc<ArcSwap<Listing>>,
    settings: Arc<SessionState>,
    snapshots: Arc<Snapshots>,
    served: Option<Arc<dyn ServedTables>>,
}

#[async_trait]
impl SchemaProvider for WarehouseSchema {
    fn table_names(&self) -> Vec<String> {
        self.listing
            .load()
            .get(&self.name)
            .cloned()
            .unwrap_or_default()
    }

    async fn table(&self, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
        let (table, as_of) = split_as_of(name)?;
        // A table a higher layer serves (a materialized feature view, from memory) without
        // opening the Delta table at planning. Time travel reads the Delta table.
        if as_of == AsOf::Latest
            && let Some(served) = &self.served
            && let Some(provider) = served.latest(table, &self.settings)
        {
            return Ok(Some(provider));
        }
        let Some(location) = self.warehouse.locate(&self.name, table).await? else {
            return Ok(None);
        };
        let qualified = format!("{}.{table}", self.name);
        let provider = open_provider(
            qualified,
            &location,
            &as_of,
            &self.settings,
            &self.snapshots,
        )
        .await?;
        Ok(Some(Arc::new(provider)))
    }

    /// Without opening the table: every warehouse table is a base table, so listing them
    /// (`information_schema.tables`) reads no Delta log, and one unreadable table does not stop
    /// the others being listed.
    async fn table_type(&self, name: &str) -> DFResult<Option<TableType>> {
        if self.table_exist(name) {
            return Ok(Some(TableType::Base));
        }
        Ok(self.table(name).await?.map(|t| t.table_type()))
    }

    fn register_table(
        &self,
        name: String,
        _table: Arc<dyn TableProvider>,
    ) -> DFResult<Option<Arc<dyn TableProvider>>> {
        exec_err!("cannot register table {name} in the warehouse: use CREATE TABLE")
    }

    fn table_exist(&self, name: &str) -> bool {
        self.table_names().iter().any(|t| t == name)
    }
}

async fn open_provider(
    name: String,
    location: &TableLocation,
    as_of: &AsOf,
    settings: &Arc<SessionState>,
    snapshots: &Snapshots,
) -> Result<DeltaTableProvider> {
    let delta = snapshots.open(location.url(), as_of).await?;
    DeltaTableProvider::try_new(name, delta, as_of, settings).await
}

/// Splits `t@v3` / `t@t<timestamp>` into the table name and the snapshot to read.
pub fn split_as_of(name: &str) -> DFResult<(&str, AsOf)> {
    let Some((table, suffix)) = name.rsplit_once(AS_OF_SEPARATOR) else {
        return Ok((name, AsOf::Latest));
    };
    if let Some(version) = suffix.strip_prefix('v') {
        match version.parse::<u64>() {
            Ok(v) => return Ok((table, AsOf::Version(v))),
            _ => return exec_err!("bad table version '{version}' for {table}"),
        }
    }
    if let Some(ts) = suffix.strip_prefix('t') {
        return Ok((table, AsOf::Timestamp(ts.to_string())));
    }
    exec_err!("bad time travel suffix '{suffix}' for {table}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_of_suffixes_parse() {
        assert_eq!(split_as_of("t").expect("plain"), ("t", AsOf::Latest));
        assert_eq!(
            split_as_of("t@v3").expect("version"),
            ("t", AsOf::Version(3))
        );
        assert_eq!(
            split_as_of("t@t2026-01-01T00:00:00Z").expect("ts"),
            ("t", AsOf::Timestamp("2026-01-01T00:00:00Z".into()))
        );
        assert!(split_as_of("t@v-1").is_err());
        assert!(split_as_of("t@x").is_err());
    }
}
