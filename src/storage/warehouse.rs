//! The warehouse: an object-store root where each schema is a directory and each table a Delta table.
//!
//! `<root>/<schema>/<table>/_delta_log/...` is a managed table. `<root>/<schema>/<table>.external` is a
//! small object holding the URI of a Delta table outside the warehouse (`CREATE EXTERNAL TABLE`).
//! Nothing is cached here: every listing reads the store, so tables other writers add show up at once.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

use super::stores;
use crate::error::{Error, Result};

pub const DEFAULT_SCHEMA: &str = "public";
/// Marks a schema directory on stores without real directories (S3, GCS, Azure).
const SCHEMA_MARKER: &str = ".quiver-schema";
const EXTERNAL_SUFFIX: &str = ".external";

/// Where a table's Delta log lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableLocation {
    Managed(Url),
    External(Url),
}

impl TableLocation {
    pub fn url(&self) -> &Url {
        match self {
            TableLocation::Managed(url) | TableLocation::External(url) => url,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            TableLocation::Managed(_) => "TABLE",
            TableLocation::External(_) => "EXTERNAL TABLE",
        }
    }
}

#[derive(Debug)]
pub struct Warehouse {
    root: Url,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl Warehouse {
    /// Opens the warehouse at `root` (a URL ending in '/') and makes sure the default schema exists.
    pub async fn open(root: Url) -> Result<Arc<Self>> {
        stores::register_with_delta();
        let (store, prefix) = stores::open(&root, &HashMap::new()).map_err(|e| Error::Config {
            setting: "--warehouse",
            message: format!("cannot open object store for '{root}': {e}"),
        })?;
        let warehouse = Arc::new(Self {
            root,
            store,
            prefix,
        });
        // The first request to the store: a wrong bucket, endpoint or credential shows up here.
        if let Err(e) = warehouse.create_schema(DEFAULT_SCHEMA, true).await {
            return Err(Error::Config {
                setting: "--warehouse",
                message: format!("cannot use the warehouse at '{}': {e}", warehouse.root),
            });
        }
        Ok(warehouse)
    }

    pub fn root(&self) -> &Url {
        &self.root
    }

    pub async fn schemas(&self) -> Result<Vec<String>> {
        let listing = self.store.list_with_delimiter(Some(&self.prefix)).await?;
        let mut names: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .filter(|name| valid_name(name))
            .collect();
        names.sort();
        Ok(names)
    }

    pub async fn schema_exists(&self, schema: &str) -> Result<bool> {
        Ok(valid_name(schema) && self.schemas().await?.iter().any(|s| s == schema))
    }

    pub async fn create_schema(&self, schema: &str, if_not_exists: bool) -> Result<()> {
        check_name("schema", schema)?;
        if self.schema_exists(schema).await? {
            return if if_not_exists {
                Ok(())
            } else {
                Err(Error::AlreadyExists {
                    kind: "schema",
                    name: schema.to_string(),
                })
            };
        }
        let marker = self.path(&[schema, SCHEMA_MARKER]);
        self.store.put(&marker, PutPayload::default()).await?;
        Ok(())
    }

    /// Drops an empty schema (or, with `cascade`, the schema and every table in it).
    pub async fn drop_schema(&self, schema: &str, if_exists: bool, cascade: bool) -> Result<()> {
        if !self.schema_exists(schema).await? {
            return if if_exists {
                Ok(())
            } else {
                Err(Error::SchemaNotFound(schema.to_string()))
            };
        }
        let tables = self.tables(schema).await?;
        if !tables.is_empty() && !cascade {
            return Err(Error::InvalidInput(format!(
                "schema {schema} is not empty ({} tables); use DROP SCHEMA {schema} CASCADE",
                tables.len()
            )));
        }
        self.delete_prefix(&self.path(&[schema])).await
    }

    /// Table names in a schema with their locations, sorted by name.
    pub async fn tables(&self, schema: &str) -> Result<Vec<(String, TableLocation)>> {
        check_name("schema", schema)?;
        let dir = self.path(&[schema]);
        let listing = self.store.list_with_delimiter(Some(&dir)).await?;
        let mut tables = Vec::new();
        for prefix in &listing.common_prefixes {
            let Some(name) = prefix.filename() else {
                continue;
            };
            if valid_name(name) && self.is_delta_dir(prefix).await? {
                tables.push((
                    name.to_string(),
                    TableLocation::Managed(self.dir_url(&[schema, name])),
                ));
            }
        }
        for object in &listing.objects {
            let Some(name) = object
                .location
                .filename()
                .and_then(|f| f.strip_suffix(EXTERNAL_SUFFIX))
            else {
                continue;
            };
            if valid_name(name) {
                tables.push((
                    name.to_string(),
                    TableLocation::External(self.read_link(&object.location).await?),
                ));
            }
        }
        tables.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(tables)
    }

    /// The location of one table, or `None` if there is no such table.
    pub async fn locate(&self, schema: &str, table: &str) -> Result<Option<TableLocation>> {
        if !valid_name(schema) || !valid_name(table) {
            return Ok(None);
        }
        let link = self.path(&[schema, &format!("{table}{EXTERNAL_SUFFIX}")]);
        match self.read_link(&link).await {
            Ok(url) => return Ok(Some(TableLocation::External(url))),
            Err(Error::ObjectStore(object_store::Error::NotFound { .. })) => {}
            Err(e) => return Err(e),
        }
        let dir = self.path(&[schema, table]);
        if self.is_delta_dir(&dir).await? {
            Ok(Some(TableLocation::Managed(self.dir_url(&[schema, table]))))
        } else {
            Ok(None)
        }
    }

    /// Where a new managed table would live. Fails if the schema does not exist or the name is taken.
    pub async fn new_table_url(&self, schema: &str, table: &str) -> Result<Url> {
        check_name("table", table)?;
        if !self.schema_exists(schema).await? {
            return Err(Error::SchemaNotFound(schema.to_string()));
        }
        let url = self.dir_url(&[schema, table]);
        // delta-rs refuses a local table path that does not exist yet; object stores have no directories.
        if let Ok(path) = url.to_file_path() {
            std::fs::create_dir_all(&path)?;
        }
        Ok(url)
    }

    pub async fn register_external(&self, schema: &str, table: &str, location: &Url) -> Result<()> {
        check_name("table", table)?;
        if !self.schema_exists(schema).await? {
            return Err(Error::SchemaNotFound(schema.to_string()));
        }
        let link = self.path(&[schema, &format!("{table}{EXTERNAL_SUFFIX}")]);
        let payload = PutPayload::from(location.to_string().into_bytes());
        self.store.put(&link, payload).await?;
        Ok(())
    }

    /// Drops a table: a managed table's files are deleted, an external table is only unlinked.
    pub async fn drop_table(&self, schema: &str, table: &str) -> Result<TableLocation> {
        let location = self
            .locate(schema, table)
            .await?
            .ok_or_else(|| Error::TableNotFound(format!("{schema}.{table}")))?;
        match &location {
            TableLocation::External(_) => {
                let link = self.path(&[schema, &format!("{table}{EXTERNAL_SUFFIX}")]);
                self.store.delete(&link).await?;
            }
            TableLocation::Managed(_) => {
                // The log goes first so a crash half-way leaves no readable table behind.
                self.delete_prefix(&self.path(&[schema, table, "_delta_log"]))
                    .await?;
                self.delete_prefix(&self.path(&[schema, table])).await?;
            }
        }
        Ok(location)
    }

    async fn is_delta_dir(&self, dir: &Path) -> Result<bool> {
        let log = dir.clone().join("_delta_log");
        let mut entries = self.store.list(Some(&log));
        Ok(entries.try_next().await?.is_some())
    }

    async fn read_link(&self, link: &Path) -> Result<Url> {
        let bytes = self.store.get(link).await?.bytes().await?;
        let text = String::from_utf8_lossy(&bytes);
        Url::parse(text.trim()).map_err(|e| {
            Error::Internal(format!("external table link {link} holds a bad URI: {e}"))
        })
    }

    async fn delete_prefix(&self, prefix: &Path) -> Result<()> {
        let locations = self
            .store
            .list(Some(prefix))
            .map_ok(|meta| meta.location)
            .boxed();
        self.store
            .delete_stream(locations)
            .try_collect::<Vec<_>>()
            .await?;
        // A local directory outlives the files deleted from it and would still list as a schema.
        if let Ok(root) = self.root.to_file_path() {
            let relative = prefix
                .as_ref()
                .strip_prefix(self.prefix.as_ref())
                .unwrap_or(prefix.as_ref());
            let dir = root.join(relative.trim_start_matches('/'));
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn path(&self, parts: &[&str]) -> Path {
        parts
            .iter()
            .fold(self.prefix.clone(), |path, part| path.join(*part))
    }

    fn dir_url(&self, parts: &[&str]) -> Url {
        let mut url = self.root.clone();
        let mut path = url.path().to_string();
        for part in parts {
            path.push_str(part);
            path.push('/');
        }
        url.set_path(&path);
        url
    }

    /// Quiver's own object `<root>/<parts...>` (under a `_`-prefixed directory no schema can
    /// have), or `None` if absent.
    pub async fn get_own(&self, parts: &[String]) -> Result<Option<Vec<u8>>> {
        let path = self.own_path(parts);
        match self.store.get(&path).await {
            Ok(found) => Ok(Some(found.bytes().await?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes Quiver's own object, replacing it.
    pub async fn put_own(&self, parts: &[String], bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(&self.own_path(parts), PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    /// Writes Quiver's own object only if absent (atomically, as Delta commits are); `false` if
    /// it existed.
    pub async fn put_own_new(&self, parts: &[String], bytes: Vec<u8>) -> Result<bool> {
        let options = object_store::PutOptions::from(object_store::PutMode::Create);
        match self
            .store
            .put_opts(&self.own_path(parts), PutPayload::from(bytes), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes Quiver's own object; `false` if it was absent.
    pub async fn delete_own(&self, parts: &[String]) -> Result<bool> {
        let path = self.own_path(parts);
        match self.store.head(&path).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        self.store.delete(&path).await?;
        Ok(true)
    }

    /// Every object directly in Quiver's own directory `<root>/<dir...>`: (file name, contents).
    pub async fn list_own(&self, dir: &[&str]) -> Result<Vec<(String, Vec<u8>)>> {
        let parts: Vec<String> = dir.iter().map(|p| p.to_string()).collect();
        let listing = match self
            .store
            .list_with_delimiter(Some(&self.own_path(&parts)))
            .await
        {
            Ok(listing) => listing,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut found = Vec::new();
        for object in listing.objects {
            let Some(name) = object.location.filename().map(str::to_string) else {
                continue;
            };
            match self.store.get(&object.location).await {
                Ok(got) => found.push((name, got.bytes().await?.to_vec())),
                // Deleted between the listing and the read.
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(found)
    }

    fn own_path(&self, parts: &[String]) -> Path {
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        self.path(&parts)
    }
}

/// Schema and table names: letters, digits, '_' and '-', not starting with '_' or '.'
/// (those are Delta's and Quiver's own files).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(['_', '.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn check_name(kind: &str, name: &str) -> Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "invalid {kind} name '{name}': use letters, digits, '_' and '-', not starting with '_', '-' or '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn warehouse() -> (tempfile::TempDir, Arc<Warehouse>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = Url::from_directory_path(dir.path()).expect("url");
        let wh = Warehouse::open(url).await.expect("open");
        (dir, wh)
    }

    #[tokio::test]
    async fn default_schema_exists_and_schemas_list() {
        let (_dir, wh) = warehouse().await;
        wh.create_schema("features", false).await.expect("create");
        assert_eq!(
            wh.schemas().await.expect("list"),
            vec!["features", "public"]
        );
        let err = wh.create_schema("features", false).await.unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }));
        wh.drop_schema("features", false, false)
            .await
            .expect("drop");
        assert_eq!(wh.schemas().await.expect("list"), vec!["public"]);
    }

    #[tokio::test]
    async fn external_links_round_trip() {
        let (_dir, wh) = warehouse().await;
        let target = Url::parse("file:///somewhere/else/").expect("url");
        wh.register_external("public", "ext", &target)
            .await
            .expect("register");
        let found = wh.locate("public", "ext").await.expect("locate");
        assert_eq!(found, Some(TableLocation::External(target)));
        assert_eq!(wh.tables("public").await.expect("tables").len(), 1);
        wh.drop_table("public", "ext").await.expect("drop");
        assert_eq!(wh.locate("public", "ext").await.expect("locate"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("user_events-2"));
        assert!(!valid_name("_delta_log"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("t@v3"));
    }
}
