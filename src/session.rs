//! The one session builder: the warehouse catalog plus DataFusion's settings, used by the server,
//! the `quiver sql` command and every test.

use std::sync::Arc;

use datafusion::execution::context::SessionState;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use url::Url;

use crate::error::Result;
use crate::query::asof::AsofRelationPlanner;
use crate::query::planner::QuiverPlanner;
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
}

impl QuiverSession {
    /// Opens the warehouse at `root` and builds the session over it.
    pub async fn open(root: Url) -> Result<Self> {
        let warehouse = Warehouse::open(root).await?;
        Self::new(warehouse).await
    }

    pub async fn new(warehouse: Arc<Warehouse>) -> Result<Self> {
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
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(config)
            .with_query_planner(Arc::new(QuiverPlanner))
            .with_relation_planners(vec![Arc::new(AsofRelationPlanner)])
            .build();
        let ctx = SessionContext::new_with_state(state);
        quiver_udfs::register(&ctx);
        let catalog = Arc::new(WarehouseCatalog::new(warehouse.clone(), settings));
        ctx.register_catalog(CATALOG, catalog.clone());
        catalog.refresh().await?;
        Ok(Self {
            ctx,
            warehouse,
            catalog,
        })
    }

    pub fn ctx(&self) -> &SessionContext {
        &self.ctx
    }

    pub fn state(&self) -> SessionState {
        self.ctx.state()
    }

    pub fn warehouse(&self) -> &Arc<Warehouse> {
        &self.warehouse
    }

    pub fn catalog(&self) -> &WarehouseCatalog {
        &self.catalog
    }
}
