//! Feature views: SQL files in `<sql-dir>/features/` materialized into Delta tables in schema
//! `features`, and the online ones served from memory.
//!
//! `definition` parses a view file, `refresh` materializes a view (incrementally where the sources
//! only had appends), `online` is the in-memory index, `keys` reads which keys a statement's filters
//! pin, `lookup_exec` is the lookup operator, `table` is the table provider SQL sees for
//! `features.<view>`.

pub mod definition;
pub mod keys;
pub mod lookup_exec;
pub mod online;
pub mod refresh;
pub mod table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use url::Url;

pub use definition::{DefinitionError, FEATURES_SCHEMA, FeatureView};
pub use lookup_exec::OnlineLookupExec;
pub use online::OnlineIndex;
pub use table::FeatureViewTable;

use crate::error::{Error, Result};
use crate::storage::{AsOf, DeltaTableProvider, WarehouseCatalog};

/// The subdirectory of `--sql-dir` holding feature views.
pub const FEATURES_DIR: &str = "features";

/// Every feature view of the server: read at start, and again on `RELOAD FEATURE VIEWS`.
#[derive(Debug, Default)]
pub struct FeatureStore {
    /// `<sql-dir>/features`; `None` without `--sql-dir` (no views, nothing to reload).
    dir: Option<PathBuf>,
    /// The views as last read, swapped whole by a reload.
    loaded: ArcSwap<Loaded>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    /// Bumped each time any view's materialized table or index is swapped, or the views are.
    generation: Arc<AtomicU64>,
}

/// The views read from the directory, and the files that failed.
#[derive(Debug, Default)]
struct Loaded {
    views: BTreeMap<String, Arc<ViewState>>,
    /// Files that failed to load, by view name: reported again when the view is used (unless an
    /// earlier version of the view still serves).
    invalid: BTreeMap<String, DefinitionError>,
}

/// What `RELOAD FEATURE VIEWS` did to one view (views it left as they were are not listed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewReload {
    pub view: String,
    /// `loaded` (a new file), `reloaded` (a changed file), `removed`, or `failed` (the file does
    /// not parse; an earlier version keeps serving).
    pub action: &'static str,
    pub error: Option<String>,
}

/// One view: its definition and what is materialized of it.
#[derive(Debug)]
pub struct ViewState {
    pub definition: FeatureView,
    materialized: ArcSwapOption<Materialized>,
    /// One refresh of a view at a time.
    refresh_lock: tokio::sync::Mutex<()>,
    /// The store's [`FeatureStore::generation`].
    generation: Arc<AtomicU64>,
}

/// The view's Delta table as of its last refresh (or start), and its online index.
#[derive(Debug)]
pub struct Materialized {
    pub location: Url,
    pub schema: SchemaRef,
    pub version: u64,
    pub index: Option<Arc<OnlineIndex>>,
    /// When these rows were read from the view's table (after its refresh, or at start).
    pub loaded_at: std::time::Instant,
}

impl FeatureStore {
    /// Loads every `*.sql` file under `<sql_dir>/features/` (recursively). A file that does not parse
    /// is logged with its path and line and left out; the others load. A missing directory means no
    /// views.
    pub fn load(sql_dir: &Path) -> Result<Self> {
        let store = Self {
            dir: Some(sql_dir.join(FEATURES_DIR)),
            ..Self::default()
        };
        let files = match &store.dir {
            Some(dir) => sql_files(dir)?,
            None => Vec::new(),
        };
        let loaded = store.parse_files(files);
        store.loaded.store(Arc::new(loaded));
        Ok(store)
    }

    /// The directory's files read again, on tokio's blocking pool (reading files blocks).
    async fn read_files(&self) -> Result<Loaded> {
        let Some(dir) = self.dir.clone() else {
            return Ok(Loaded::default());
        };
        let files = tokio::task::spawn_blocking(move || sql_files(&dir))
            .await
            .map_err(|e| Error::Internal(format!("reading the feature view files: {e}")))??;
        Ok(self.parse_files(files))
    }

    /// The definitions in `files` (path and text), each with nothing materialized yet.
    fn parse_files(&self, files: Vec<(PathBuf, String)>) -> Loaded {
        let mut loaded = Loaded::default();
        for (path, text) in files {
            match FeatureView::parse(&path, &text) {
                Ok(view) => {
                    if let Some(other) = loaded.views.get(&view.name) {
                        let error = DefinitionError {
                            path: path.clone(),
                            line: 1,
                            message: format!(
                                "view {} is already defined in {}",
                                view.name,
                                other.definition.path.display()
                            ),
                        };
                        tracing::error!("feature view not loaded: {error}");
                        continue;
                    }
                    loaded.views.insert(
                        view.name.clone(),
                        Arc::new(ViewState {
                            definition: view,
                            materialized: ArcSwapOption::empty(),
                            refresh_lock: tokio::sync::Mutex::new(()),
                            generation: self.generation.clone(),
                        }),
                    );
                }
                Err(error) => {
                    tracing::error!("feature view not loaded: {error}");
                    let name = path
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .unwrap_or_default()
                        .to_string();
                    loaded.invalid.insert(name, error);
                }
            }
        }
        tracing::info!(
            loaded = loaded.views.len(),
            invalid = loaded.invalid.len(),
            "feature views"
        );
        loaded
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.loaded.load_full()
    }

    /// Changes each time a view is materialized again or the views are reloaded, so whatever was
    /// planned against the views can tell it is out of date (see [`crate::query::prepared`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn views(&self) -> Vec<Arc<ViewState>> {
        self.loaded().views.values().cloned().collect()
    }

    /// The views with an offline table, in name order: what `REFRESH FEATURE VIEWS` refreshes.
    pub fn materialized_views(&self) -> Vec<Arc<ViewState>> {
        self.loaded()
            .views
            .values()
            .filter(|v| v.definition.offline)
            .cloned()
            .collect()
    }

    /// The view called `name`; an unknown name or a file that failed to load is an error saying so.
    pub fn view(&self, name: &str) -> Result<Arc<ViewState>> {
        let loaded = self.loaded();
        if let Some(view) = loaded.views.get(name) {
            return Ok(view.clone());
        }
        if let Some(error) = loaded.invalid.get(name) {
            return Err(Error::InvalidInput(format!(
                "feature view {name} did not load: {error}"
            )));
        }
        let known: Vec<&str> = loaded.views.keys().map(String::as_str).collect();
        Err(Error::TableNotFound(format!(
            "feature view {name} (views: {})",
            if known.is_empty() {
                "none loaded; they are read from <sql-dir>/features/*.sql".to_string()
            } else {
                known.join(", ")
            }
        )))
    }

    pub fn get(&self, name: &str) -> Option<Arc<ViewState>> {
        self.loaded().views.get(name).cloned()
    }

    /// Opens the materialized table of every view that has one and builds the online indexes.
    /// A view that fails is logged and stays unmaterialized; the others open.
    pub async fn open_all(&self, ctx: &SessionContext, catalog: &WarehouseCatalog) {
        for view in self.views() {
            if let Err(e) = view.reload(ctx, catalog).await {
                tracing::error!(view = %view.definition.name, "cannot open feature view: {e}");
            }
        }
    }

    /// `RELOAD FEATURE VIEWS`: reads the directory again and swaps in the new set of views at once.
    /// A view whose file is unchanged keeps its state (table, index); a new or changed one opens
    /// its table as it is (a changed definition is materialized by the next refresh, which is
    /// full: the definition's fingerprint differs); a removed file's view goes (its table stays).
    /// A file that no longer parses is reported and its previous version keeps serving.
    pub async fn reload(
        &self,
        ctx: &SessionContext,
        catalog: &WarehouseCatalog,
    ) -> Result<Vec<ViewReload>> {
        if self.dir.is_none() {
            return Err(Error::InvalidInput(
                "RELOAD FEATURE VIEWS: no SQL directory is configured (--sql-dir)".into(),
            ));
        }
        let _one = self.reloading.lock().await;
        let old = self.loaded();
        let fresh = self.read_files().await?;
        let mut next = Loaded::default();
        let mut report = Vec::new();
        let outcome = |view: &str, action, error: Option<String>| ViewReload {
            view: view.to_string(),
            action,
            error,
        };
        for (name, view) in fresh.views {
            let kept = old.views.get(&name);
            if let Some(kept) = kept
                && kept.definition == view.definition
            {
                next.views.insert(name, kept.clone());
                continue;
            }
            let action = if kept.is_some() { "reloaded" } else { "loaded" };
            // As at start, a table that does not fit the definition (a renamed key column) leaves
            // the view unmaterialized: its table reads from Delta until a refresh rewrites it.
            let error = view
                .reload(ctx, catalog)
                .await
                .err()
                .map(|e| format!("not served online until the next REFRESH of the view: {e}"));
            report.push(outcome(&name, action, error));
            next.views.insert(name, view);
        }
        for (name, error) in &fresh.invalid {
            if let Some(kept) = old.views.get(name)
                && !next.views.contains_key(name)
            {
                next.views.insert(name.clone(), kept.clone());
            }
            if old.invalid.get(name) != Some(error) {
                report.push(outcome(name, "failed", Some(error.to_string())));
            }
        }
        next.invalid = fresh.invalid;
        for name in old.views.keys() {
            if !next.views.contains_key(name) {
                report.push(outcome(name, "removed", None));
            }
        }
        report.sort_by(|a, b| a.view.cmp(&b.view));
        for r in &report {
            tracing::info!(view = %r.view, action = r.action, error = ?r.error, "feature view reload");
        }
        self.loaded.store(Arc::new(next));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(report)
    }
}

/// The columns of `RELOAD FEATURE VIEWS`' answer: one row per view it changed.
pub fn reload_report_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("view", DataType::Utf8, false),
        Field::new("action", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
    ]))
}

/// A reload's report as the rows of [`reload_report_schema`].
pub fn reload_report_batch(report: &[ViewReload]) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(
        reload_report_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                report.iter().map(|r| &r.view),
            )),
            Arc::new(StringArray::from_iter_values(
                report.iter().map(|r| r.action),
            )),
            Arc::new(StringArray::from_iter(
                report.iter().map(|r| r.error.as_deref()),
            )),
        ],
    )?)
}

impl ViewState {
    pub fn materialized(&self) -> Option<Arc<Materialized>> {
        self.materialized.load_full()
    }

    /// Reads the view's table at its latest version and swaps in its schema and online index.
    pub async fn reload(&self, ctx: &SessionContext, catalog: &WarehouseCatalog) -> Result<()> {
        let name = &self.definition.name;
        let Some(location) = catalog.warehouse().locate(FEATURES_SCHEMA, name).await? else {
            return Ok(());
        };
        let url = location.url().clone();
        let provider = catalog
            .provider(
                format!("{FEATURES_SCHEMA}.{name}"),
                &location,
                &AsOf::Latest,
            )
            .await?;
        let version = provider.delta_table().version().unwrap_or_default();
        let schema = datafusion::catalog::TableProvider::schema(&provider);
        let index = if self.definition.online {
            Some(Arc::new(self.build_index(ctx, provider, version).await?))
        } else {
            None
        };
        if let Some(index) = &index {
            tracing::info!(view = %name, version, keys = index.len(), "online index loaded");
        }
        let materialized = Arc::new(Materialized {
            loaded_at: std::time::Instant::now(),
            location: url,
            schema,
            version,
            index,
        });
        self.materialized.store(Some(materialized));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    async fn build_index(
        &self,
        ctx: &SessionContext,
        provider: DeltaTableProvider,
        version: u64,
    ) -> Result<OnlineIndex> {
        let schema = datafusion::catalog::TableProvider::schema(&provider);
        let batches: Vec<_> = ctx
            .read_table(Arc::new(provider))?
            .execute_stream()
            .await?
            .try_collect()
            .await?;
        let definition = &self.definition;
        Ok(OnlineIndex::build(
            schema,
            batches,
            &definition.entity,
            &definition.event_time,
            definition.ttl,
            version,
        )?)
    }
}

/// The `.sql` files under `dir` (in subdirectories too) and their text, in path order; none when
/// the directory does not exist.
fn sql_files(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    if !dir.is_dir() {
        tracing::info!(dir = %dir.display(), "no feature view directory");
        return Ok(Vec::new());
    }
    let mut paths = Vec::new();
    collect_sql_files(dir, &mut paths)?;
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)?;
            Ok((path, text))
        })
        .collect()
}

fn collect_sql_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_sql_files(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "sql") {
            files.push(path);
        }
    }
    Ok(())
}
