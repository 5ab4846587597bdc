//! The `system` schema's shape: a fixed set of read-only tables about the server, given by whoever
//! assembles the catalog (the session registers `system.models`, `system.queries`, ...).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::SchemaProvider;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::{Result, exec_err};
use datafusion::datasource::TableProvider;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;

/// The schema of the server's own tables (`system.models`, `system.queries`).
pub const SYSTEM_SCHEMA: &str = "system";

/// A schema of read-only tables, fixed when it is built.
#[derive(Debug, Default)]
pub struct ReadOnlySchema {
    name: &'static str,
    tables: BTreeMap<&'static str, Arc<dyn TableProvider>>,
}

impl ReadOnlySchema {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            tables: BTreeMap::new(),
        }
    }

    pub fn with_table(mut self, name: &'static str, table: Arc<dyn TableProvider>) -> Self {
        self.tables.insert(name, table);
        self
    }
}

#[async_trait]
impl SchemaProvider for ReadOnlySchema {
    fn table_names(&self) -> Vec<String> {
        self.tables.keys().map(|t| t.to_string()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(self.tables.get(name).cloned())
    }

    fn register_table(
        &self,
        name: String,
        _table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        exec_err!(
            "cannot create table {name} in schema {}: it is read-only",
            self.name
        )
    }

    fn deregister_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        exec_err!(
            "cannot drop table {name} in schema {}: it is read-only",
            self.name
        )
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.contains_key(name)
    }
}

/// A system table read fresh at each scan: `read` makes its one batch from the scan's task context
/// (whose session config may say who is asking).
pub fn snapshot_table(
    schema: SchemaRef,
    read: impl Fn(&TaskContext) -> Result<RecordBatch> + Send + Sync + 'static,
) -> Result<Arc<dyn TableProvider>> {
    let partition = Snapshot {
        schema: schema.clone(),
        read: Box::new(read),
    };
    Ok(Arc::new(StreamingTable::try_new(
        schema,
        vec![Arc::new(partition)],
    )?))
}

type Read = Box<dyn Fn(&TaskContext) -> Result<RecordBatch> + Send + Sync>;

struct Snapshot {
    schema: SchemaRef,
    read: Read,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").finish_non_exhaustive()
    }
}

impl PartitionStream for Snapshot {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batch = (self.read)(&ctx);
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter([batch]),
        ))
    }
}
