//! The one session builder: the warehouse catalog plus DataFusion's settings, used by the server,
//! the `quiver sql` command and every test.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::execution::context::SessionState;
use datafusion::execution::memory_pool::{FairSpillPool, MemoryLimit};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use url::Url;

use crate::error::Result;
use crate::features::{FEATURES_SCHEMA, FeatureStore};
use crate::history::{self, QueryHistory, Viewer};
use crate::planning::{AsofRelationPlanner, QuiverPlanner};
use crate::scoring::{self, ModelRegistry};
use crate::storage::sources::{self, SOURCES_TABLE, SourceBoard};
use crate::storage::system::{ReadOnlySchema, SYSTEM_SCHEMA, snapshot_table};
use crate::storage::{CATALOG, DEFAULT_SCHEMA, Warehouse, WarehouseCatalog};

/// Everything a query needs: the DataFusion context over the warehouse.
///
/// One is shared by all connections: it holds no per-client state, and tables are resolved against
/// storage at planning time, so it never serves stale data.
#[derive(Clone)]
pub struct QuiverSession {
    ctx: SessionContext,
    warehouse: Arc<Warehouse>,
    catalog: Arc<WarehouseCatalog>,
    features: Arc<FeatureStore>,
    models: Arc<ModelRegistry>,
    history: Arc<QueryHistory>,
    /// The sources this server runs (`system.sources`).
    sources: Arc<SourceBoard>,
}

/// Settings of query execution (`quiver serve` / `quiver sql` flags).
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Bytes all queries may hold at once; operators that can spill (sorts, hash aggregates and
    /// joins, the ASOF join's sorts) spill to the OS temp directory beyond it. `None`: unlimited.
    pub memory_limit: Option<usize>,
    /// Where feature views are read from (`<sql_dir>/features/*.sql`). `None`: no views.
    pub sql_dir: Option<PathBuf>,
    /// Where models are read from (`<models_dir>/<name>/model.toml`). `None`: no models.
    pub models_dir: Option<PathBuf>,
    /// Models are not loaded when the session opens: the caller loads them (`models().reload`)
    /// once the tables they read exist (the demo writes its tables first).
    pub defer_models: bool,
    /// Statements `system.queries` keeps (`--query-history`); `None`: the default, 0: none.
    pub query_history: Option<usize>,
    /// Every statement is also kept until an audit table's writer takes it (`--audit-table`).
    pub audit: bool,
}

impl QuiverSession {
    /// Opens the warehouse at `root` and builds the session over it, with default options.
    pub async fn open(root: Url) -> Result<Self> {
        Self::open_with(root, SessionOptions::default()).await
    }

    pub async fn open_with(root: Url, options: SessionOptions) -> Result<Self> {
        let warehouse = Warehouse::open(root).await?;
        Self::new(warehouse, options).await
    }

    pub async fn new(warehouse: Arc<Warehouse>, session_options: SessionOptions) -> Result<Self> {
        let mut config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, DEFAULT_SCHEMA)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true);
        // Plain Utf8/Binary rather than view types: every Flight, ADBC and JDBC client reads them.
        let options = config.options_mut();
        options.execution.parquet.schema_force_view_types = false;
        options.sql_parser.map_string_types_to_utf8view = false;
        // delta-rs's workaround: hash-join IN-list pushdown can panic on dictionary-encoded join keys
        // (partition columns come back dictionary-encoded).
        options.optimizer.hash_join_inlist_pushdown_max_size = 0;
        options
            .optimizer
            .hash_join_inlist_pushdown_max_distinct_values = 0;

        // delta-rs plans its writes, and Quiver its ASOF joins, with extension nodes only their planners
        // turn into execution plans.
        let settings = Arc::new(
            SessionStateBuilder::new()
                .with_config(config.clone())
                .build(),
        );
        let mut runtime = RuntimeEnvBuilder::new();
        if let Some(limit) = session_options.memory_limit {
            // Fair: a spilling operator gets its share of the pool, so one big sort cannot starve
            // every other query.
            runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(limit)));
        }
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_runtime_env(runtime.build_arc()?)
            .with_config(config)
            .with_query_planner(Arc::new(QuiverPlanner))
            .with_relation_planners(vec![Arc::new(AsofRelationPlanner)])
            .build();
        let ctx = SessionContext::new_with_state(state);
        quiver_udfs::register(&ctx);
        let models = Arc::new(ModelRegistry::new(session_options.models_dir.clone()));
        ctx.register_udf(scoring::predict::udf(models.clone()));
        ctx.register_udf(scoring::recommend_items::recommend_items_udf(
            models.clone(),
        ));
        ctx.register_udtf(
            scoring::recommend::TABLE_FUNCTION,
            Arc::new(scoring::recommend::Recommend {
                registry: models.clone(),
            }),
        );
        let features = Arc::new(match &session_options.sql_dir {
            Some(dir) => FeatureStore::load(dir)?,
            None => FeatureStore::default(),
        });
        // The warehouse's catalog, with what the layers above storage serve in it: `system`'s
        // tables about the server, and materialized feature views from memory.
        let history = QueryHistory::new(
            session_options
                .query_history
                .unwrap_or(history::DEFAULT_CAPACITY),
        );
        let history = Arc::new(match session_options.audit {
            true => history.with_audit(),
            false => history,
        });
        let sources = Arc::new(SourceBoard::default());
        let board = sources.clone();
        let sources_table = snapshot_table(sources::board_schema(), move |_| {
            board
                .batch()
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
        })?;
        let recorded = history.clone();
        let queries = snapshot_table(history::schema(), move |ctx| {
            history::batch_for(&recorded, ctx)
        })?;
        let system = Arc::new(
            ReadOnlySchema::new(SYSTEM_SCHEMA)
                .with_table(
                    scoring::system::MODELS_TABLE,
                    scoring::system::models_table(models.clone())?,
                )
                .with_table(history::QUERIES_TABLE, queries)
                .with_table(SOURCES_TABLE, sources_table),
        );
        let catalog = Arc::new(
            WarehouseCatalog::new(warehouse.clone(), settings)
                .with_schema(SYSTEM_SCHEMA, system)
                .with_served_tables(FEATURES_SCHEMA, features.clone()),
        );
        ctx.register_catalog(CATALOG, catalog.clone());
        catalog.refresh().await?;
        let session = Self {
            ctx,
            warehouse,
            catalog,
            features,
            models,
            history,
            sources,
        };
        session
            .features
            .open_all(&session.ctx, &session.catalog)
            .await;
        // Models come last: a two-tower model reads its items with SQL, possibly from feature views.
        if !session_options.defer_models {
            session.models.reload(&session.ctx).await?;
        }
        Ok(session)
    }

    pub fn ctx(&self) -> &SessionContext {
        &self.ctx
    }

    /// Changes whenever a feature view is materialized again or models are reloaded: what was planned
    /// at another generation may read a swapped-out index or model.
    pub fn generation(&self) -> u64 {
        // Both only grow, so their sum changes whenever either does.
        self.features.generation() + self.models.generation()
    }

    /// This session with some DataFusion settings changed, for one client's statements (see
    /// `query::settings`): the same warehouse, views, models and functions, another configuration.
    pub fn with_settings<'a>(
        &self,
        settings: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self> {
        let mut settings = settings.into_iter().peekable();
        if settings.peek().is_none() {
            return Ok(self.clone());
        }
        let mut state = self.ctx.state();
        for (name, value) in settings {
            state.config_mut().options_mut().set(name, value)?;
        }
        Ok(Self {
            ctx: SessionContext::new_with_state(state),
            ..self.clone()
        })
    }

    /// This session as `viewer` queries it: `system.queries` shows only their statements.
    pub fn viewed_by(&self, viewer: Viewer) -> Self {
        let mut state = self.ctx.state();
        state.config_mut().set_extension(Arc::new(viewer));
        Self {
            ctx: SessionContext::new_with_state(state),
            ..self.clone()
        }
    }

    /// Sets the gauges read at scrape time: the query memory pool, and each materialized view's
    /// age and online index.
    pub fn record_gauges(&self) {
        use ::metrics::gauge;

        use crate::metrics::{
            MEMORY_LIMIT, MEMORY_USED, ONLINE_BYTES, ONLINE_ENTRIES, VIEW_AGE, bounded,
        };
        let pool = &self.ctx.runtime_env().memory_pool;
        gauge!(MEMORY_USED).set(pool.reserved() as f64);
        if let MemoryLimit::Finite(limit) = pool.memory_limit() {
            gauge!(MEMORY_LIMIT).set(limit as f64);
        }
        for view in self.features.materialized_views() {
            let Some(materialized) = view.materialized() else {
                continue;
            };
            let name = bounded(&view.definition.name);
            gauge!(VIEW_AGE, "view" => name.clone())
                .set(materialized.loaded_at.elapsed().as_secs_f64());
            if let Some(index) = &materialized.index {
                gauge!(ONLINE_ENTRIES, "view" => name.clone()).set(index.len() as f64);
                gauge!(ONLINE_BYTES, "view" => name).set(index.memory_bytes() as f64);
            }
        }
        for (source, status) in self.sources.statuses() {
            let lag: i64 = status.partitions.values().filter_map(|p| p.lag()).sum();
            gauge!(crate::metrics::SOURCE_LAG, "source" => bounded(&source)).set(lag as f64);
        }
    }

    /// The sources this server runs, as `system.sources` shows them.
    pub fn sources(&self) -> &Arc<SourceBoard> {
        &self.sources
    }

    /// The statements this server ran (`system.queries`).
    pub fn history(&self) -> &Arc<QueryHistory> {
        &self.history
    }

    pub fn state(&self) -> SessionState {
        self.ctx.state()
    }

    pub fn warehouse(&self) -> &Arc<Warehouse> {
        &self.warehouse
    }

    pub fn catalog(&self) -> &Arc<WarehouseCatalog> {
        &self.catalog
    }

    pub fn features(&self) -> &Arc<FeatureStore> {
        &self.features
    }

    pub fn models(&self) -> &Arc<ModelRegistry> {
        &self.models
    }
}
