//! Runs the warehouse commands: schemas, Delta tables (managed and external).

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use deltalake::DeltaTable;
use url::Url;

use crate::error::{Error, Result};
use crate::query::statement::Command;
use crate::query::{admin, one_batch};
use crate::session::QuiverSession;
use crate::storage::table::count_batch;
use crate::storage::{AsOf, WriteKind, WriteRequest, open_delta, write_stream};
use datafusion::arrow::array::RecordBatch;
use datafusion::logical_expr::LogicalPlan;
use futures::StreamExt;

pub async fn run(session: &QuiverSession, command: Command) -> Result<SendableRecordBatchStream> {
    let warehouse = session.warehouse();
    match command {
        Command::RefreshFeatureViews { name } => {
            return admin::refresh_views(session, name.as_deref()).await;
        }
        Command::ReloadModels => return admin::reload_models(session).await,
        Command::ReloadFeatureViews => return admin::reload_feature_views(session).await,
        Command::Source(statement) => {
            if let Some(answer) = crate::query::sources::run(session, statement).await? {
                return Ok(answer);
            }
        }
        Command::Table {
            schema,
            table,
            operation,
        } => return crate::query::table_ops::run(session, &schema, &table, operation).await,
        // A session setting lives with the client (flight::guard's cookie); here, where there is
        // no client session (`quiver sql`), it is only checked.
        Command::Set { name, value } => {
            crate::query::settings::Settings::default().with(&name, &value)?;
        }
        Command::Reset { name } => {
            crate::query::settings::Settings::default().without(name.as_deref())?;
        }
        Command::CreateSchema {
            name,
            if_not_exists,
        } => {
            warehouse.create_schema(&name, if_not_exists).await?;
        }
        Command::DropSchema {
            name,
            if_exists,
            cascade,
        } => warehouse.drop_schema(&name, if_exists, cascade).await?,
        Command::CreateTable {
            schema,
            table,
            input,
            partition_by,
            if_not_exists,
            or_replace,
        } => {
            let rows = create_table(
                session,
                &schema,
                &table,
                input,
                partition_by,
                if_not_exists,
                or_replace,
            )
            .await?;
            refresh_listing(session).await;
            return one_batch(count_batch(rows)?);
        }
        Command::CreateExternal {
            schema,
            table,
            location,
            if_not_exists,
        } => {
            if warehouse.locate(&schema, &table).await?.is_some() {
                if !if_not_exists {
                    return Err(Error::AlreadyExists {
                        kind: "table",
                        name: format!("{schema}.{table}"),
                    });
                }
            } else {
                let url = location_url(&location)?;
                // Build the full reader now: a table using a Delta feature delta-rs cannot read is
                // refused here rather than failing every later listing.
                let probe = crate::storage::TableLocation::External(url.clone());
                session
                    .catalog()
                    .provider(format!("{schema}.{table}"), &probe, &AsOf::Latest)
                    .await
                    .map_err(|e| {
                        Error::InvalidInput(format!("no readable Delta table at '{location}': {e}"))
                    })?;
                warehouse.register_external(&schema, &table, &url).await?;
            }
        }
        Command::DropTable {
            schema,
            table,
            if_exists,
        } => match warehouse.drop_table(&schema, &table).await {
            Ok(_) => {}
            Err(Error::TableNotFound(_)) if if_exists => {}
            Err(e) => return Err(e),
        },
    }
    refresh_listing(session).await;
    empty()
}

async fn create_table(
    session: &QuiverSession,
    schema: &str,
    table: &str,
    input: datafusion::logical_expr::LogicalPlan,
    partition_by: Vec<String>,
    if_not_exists: bool,
    or_replace: bool,
) -> Result<u64> {
    let columns = input.schema().as_arrow().clone();
    for column in &partition_by {
        if columns.field_with_name(column).is_err() {
            return Err(Error::InvalidInput(format!(
                "PARTITIONED BY column '{column}' is not a column of {schema}.{table}"
            )));
        }
    }
    let (delta, kind) = match session.warehouse().locate(schema, table).await? {
        Some(_) if if_not_exists => return Ok(0),
        Some(location) if or_replace => (
            open_delta(location.url(), &AsOf::Latest).await?,
            WriteKind::Replace,
        ),
        Some(_) => {
            return Err(Error::AlreadyExists {
                kind: "table",
                name: format!("{schema}.{table}"),
            });
        }
        None => {
            let url = session.warehouse().new_table_url(schema, table).await?;
            (DeltaTable::try_from_url(url).await?, WriteKind::Create)
        }
    };
    // As in Spark, CREATE TABLE AS SELECT makes nullable columns: the query's literals being non-null
    // says nothing about the rows inserted later. Declared columns keep their NOT NULL.
    let ctas = !matches!(input, LogicalPlan::EmptyRelation(_));
    let df = session.ctx().execute_logical_plan(input).await?;
    let data = df.execute_stream().await?;
    let data = if ctas { nullable(data) } else { data };
    let request = WriteRequest {
        table: delta,
        kind,
        partition_by,
        data,
        transactions: Vec::new(),
        merge_schema: false,
    };
    write_stream(&session.state(), request).await
}

/// Renews the cached name listing after a change, and forgets the kept table snapshots (a dropped
/// table's place may hold a new one). The change is committed by then, so a listing
/// failure is logged rather than reported as the statement's error (a retry would then collide).
async fn refresh_listing(session: &QuiverSession) {
    session.catalog().forget_snapshots();
    if let Err(e) = session.catalog().refresh().await {
        tracing::warn!(error = %e, "could not refresh the table listing after a change");
    }
}

fn nullable(data: SendableRecordBatchStream) -> SendableRecordBatchStream {
    let schema = data.schema();
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    let relaxed = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    let target = relaxed.clone();
    let batches = data.map(move |batch| {
        batch.and_then(|b| Ok(RecordBatch::try_new(target.clone(), b.columns().to_vec())?))
    });
    Box::pin(RecordBatchStreamAdapter::new(relaxed, batches))
}

/// A LOCATION as given: a URL, or a local path (relative to the server's working directory).
fn location_url(location: &str) -> Result<Url> {
    match Url::parse(location) {
        Ok(url) if url.scheme().len() > 1 => Ok(url),
        _ => {
            let path = std::fs::canonicalize(Path::new(location))
                .map_err(|e| Error::InvalidInput(format!("no Delta table at '{location}': {e}")))?;
            Url::from_directory_path(&path)
                .map_err(|()| Error::InvalidInput(format!("'{location}' is not a usable path")))
        }
    }
}

fn empty() -> Result<SendableRecordBatchStream> {
    Ok(Box::pin(MemoryStream::try_new(
        Vec::new(),
        Arc::new(Schema::empty()),
        None,
    )?))
}
