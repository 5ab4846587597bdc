//! Feature views: SQL files in `<sql-dir>/features/` materialized into Delta tables in schema
//! `features`, and the online ones served from memory.
//!
//! `definition` parses a view file, `refresh` materializes a view (incrementally where the sources
//! only had appends), `online` is the in-memory index and its lookup operator, `table` is the table
//! provider SQL sees for `features.<view>`.

pub mod definition;
pub mod online;
pub mod refresh;
pub mod table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use datafusion::arrow::datatypes::SchemaRef;
use futures::TryStreamExt;
use url::Url;

pub use definition::{DefinitionError, FEATURES_SCHEMA, FeatureView};
pub use online::{OnlineIndex, OnlineLookupExec};
pub use table::FeatureViewTable;

use crate::error::{Error, Result};
use crate::session::QuiverSession;
use crate::storage::{AsOf, DeltaTableProvider};

/// The subdirectory of `--sql-dir` holding feature views.
pub const FEATURES_DIR: &str = "features";

/// Every feature view of the server, loaded once at start.
#[derive(Debug, Default)]
pub struct FeatureStore {
    views: BTreeMap<String, Arc<ViewState>>,
    /// Files that failed to load, by view name: reported again when the view is used.
    invalid: BTreeMap<String, DefinitionError>,
    /// Bumped each time any view's materialized table or index is swapped.
    generation: Arc<AtomicU64>,
}

/// One view: its definition and what is materialized of it.
#[derive(Debug)]
pub struct ViewState {
    pub definition: FeatureView,
    materialized: RwLock<Option<Arc<Materialized>>>,
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
}

impl FeatureStore {
    /// Loads every `*.sql` file under `<sql_dir>/features/` (recursively). A file that does not parse
    /// is logged with its path and line and left out; the others load. A missing directory means no
    /// views.
    pub fn load(sql_dir: &Path) -> Result<Self> {
        let dir = sql_dir.join(FEATURES_DIR);
        let mut store = Self::default();
        if !dir.is_dir() {
            tracing::info!(dir = %dir.display(), "no feature view directory");
            return Ok(store);
        }
        let mut files = Vec::new();
        collect_sql_files(&dir, &mut files)?;
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path)?;
            match FeatureView::parse(&path, &text) {
                Ok(view) => {
                    if let Some(other) = store.views.get(&view.name) {
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
                    store.views.insert(
                        view.name.clone(),
                        Arc::new(ViewState {
                            definition: view,
                            materialized: RwLock::new(None),
                            refresh_lock: tokio::sync::Mutex::new(()),
                            generation: store.generation.clone(),
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
                    store.invalid.insert(name, error);
                }
            }
        }
        tracing::info!(
            dir = %dir.display(),
            loaded = store.views.len(),
            invalid = store.invalid.len(),
            "feature views"
        );
        Ok(store)
    }

    /// Changes each time a view is materialized again, so whatever was planned against the views
    /// can tell it is out of date (see [`crate::query::prepared`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn views(&self) -> impl Iterator<Item = &Arc<ViewState>> {
        self.views.values()
    }

    /// The views with an offline table, in name order: what `REFRESH FEATURE VIEWS` refreshes.
    pub fn materialized_views(&self) -> Vec<Arc<ViewState>> {
        self.views
            .values()
            .filter(|v| v.definition.offline)
            .cloned()
            .collect()
    }

    /// The view called `name`; an unknown name or a file that failed to load is an error saying so.
    pub fn view(&self, name: &str) -> Result<&Arc<ViewState>> {
        if let Some(view) = self.views.get(name) {
            return Ok(view);
        }
        if let Some(error) = self.invalid.get(name) {
            return Err(Error::InvalidInput(format!(
                "feature view {name} did not load: {error}"
            )));
        }
        let known: Vec<&str> = self.views.keys().map(String::as_str).collect();
        Err(Error::TableNotFound(format!(
            "feature view {name} (views: {})",
            if known.is_empty() {
                "none loaded; they are read from <sql-dir>/features/*.sql".to_string()
            } else {
                known.join(", ")
            }
        )))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ViewState>> {
        self.views.get(name)
    }

    /// Opens the materialized table of every view that has one and builds the online indexes.
    /// A view that fails is logged and stays unmaterialized; the others open.
    pub async fn open_all(&self, session: &QuiverSession) {
        for view in self.views.values() {
            if let Err(e) = view.reload(session).await {
                tracing::error!(view = %view.definition.name, "cannot open feature view: {e}");
            }
        }
    }
}

impl ViewState {
    pub fn materialized(&self) -> Option<Arc<Materialized>> {
        self.materialized.read().ok().and_then(|m| m.clone())
    }

    /// Reads the view's table at its latest version and swaps in its schema and online index.
    pub async fn reload(&self, session: &QuiverSession) -> Result<()> {
        let name = &self.definition.name;
        let Some(location) = session.warehouse().locate(FEATURES_SCHEMA, name).await? else {
            return Ok(());
        };
        let url = location.url().clone();
        let provider = session
            .catalog()
            .provider(
                format!("{FEATURES_SCHEMA}.{name}"),
                &location,
                &AsOf::Latest,
            )
            .await?;
        let version = provider.delta_table().version().unwrap_or_default();
        let schema = datafusion::catalog::TableProvider::schema(&provider);
        let index = if self.definition.online {
            Some(Arc::new(
                self.build_index(session, provider, version).await?,
            ))
        } else {
            None
        };
        if let Some(index) = &index {
            tracing::info!(view = %name, version, keys = index.len(), "online index loaded");
        }
        let materialized = Arc::new(Materialized {
            location: url,
            schema,
            version,
            index,
        });
        if let Ok(mut held) = self.materialized.write() {
            *held = Some(materialized);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    async fn build_index(
        &self,
        session: &QuiverSession,
        provider: DeltaTableProvider,
        version: u64,
    ) -> Result<OnlineIndex> {
        let schema = datafusion::catalog::TableProvider::schema(&provider);
        let batches: Vec<_> = session
            .ctx()
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
