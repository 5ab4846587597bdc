//! `quiver demo`: `quiver serve` with a recommender ready to query. Before serving it writes a
//! synthetic shop into the warehouse (users, items, interactions; see [`dataset`]) unless the tables
//! are already there, materializes the feature views of `sql/`, and loads the models of
//! `models/demo/`, which `models/train_demo.py` trained on the default dataset.

pub mod dataset;

use std::time::{Duration, Instant};

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::error::DataFusionError;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::DemoArgs;
use crate::error::{Error, Result};
use crate::features::refresh::Mode;
use crate::ingest::{IngestMode, IngestOptions, ingest};
use crate::session::{QuiverSession, SessionOptions};
use crate::storage::DEFAULT_SCHEMA;
use dataset::{Spec, World};

/// Prepares the demo in the configured warehouse, then serves it like `quiver serve`.
pub async fn run(args: DemoArgs) -> Result<()> {
    let config = args.serve.validate()?;
    let spec = args.dataset.spec()?;
    let started = Instant::now();
    // The models read the demo's tables: loaded once they are written (`load_models`), so a fresh
    // warehouse does not greet a newcomer with "model failed to load: table not found".
    let options = SessionOptions {
        defer_models: true,
        ..config.session.clone()
    };
    // Live from the start, ready once the demo is prepared.
    let http = crate::server::start_http(&config).await?;
    let session = QuiverSession::open_with(config.warehouse.clone(), options).await?;
    println!("preparing the demo in {}", config.warehouse);
    write_tables(&session, &spec).await?;
    materialize_views(&session).await?;
    load_models(&session, &spec).await?;
    println!("demo ready in {:.1} s", started.elapsed().as_secs_f64());
    crate::server::serve_session(config, http, session, snippets).await
}

/// Writes `users`, `items` and `interactions`, each as one Delta commit, skipping tables that exist:
/// a second run on the same warehouse reuses the data.
async fn write_tables(session: &QuiverSession, spec: &Spec) -> Result<()> {
    // Every table is checked before anything is written: a warehouse holding another `items`
    // is refused whole, not half-filled.
    let mut missing = Vec::new();
    for (table, schema) in [
        ("users", World::users_schema()),
        ("items", World::items_schema()),
        ("interactions", World::interactions_schema()),
    ] {
        if !reuse(session, table, &schema).await? {
            missing.push(table);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "  generating {}: {} users, {} items, {} events over {} days up to {} UTC (--end {}), \
         seed {}",
        missing.join(", "),
        spec.users,
        spec.items,
        spec.events,
        spec.days,
        spec.end,
        spec.end.format("%Y-%m-%dT%H:%M:%S"),
        spec.seed
    );
    let world = World::new(spec.clone())?;
    if missing.contains(&"users") {
        write_batch(session, "users", world.users()?).await?;
    }
    if missing.contains(&"items") {
        write_batch(session, "items", world.items()?).await?;
    }
    if missing.contains(&"interactions") {
        write_interactions(session, world).await?;
    }
    session.catalog().refresh().await?;
    Ok(())
}

/// Whether `table` exists already, with the demo's columns; says so, with its row count. A table
/// of the same name with other columns is an error naming both.
async fn reuse(session: &QuiverSession, table: &str, expected: &SchemaRef) -> Result<bool> {
    if session
        .warehouse()
        .locate(DEFAULT_SCHEMA, table)
        .await?
        .is_none()
    {
        return Ok(false);
    }
    let found = crate::query::run_sql(session, &format!("SELECT * FROM {table} LIMIT 0"))
        .await?
        .schema();
    let columns = |schema: &SchemaRef| {
        schema
            .fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if columns(&found) != columns(expected) {
        return Err(Error::Config {
            setting: "--warehouse",
            message: format!(
                "it has a table {table} ({}) that is not the demo's ({}): give the demo a \
                 warehouse of its own",
                columns(&found),
                columns(expected)
            ),
        });
    }
    let sql = format!("SELECT count(*) FROM {table}");
    let batches: Vec<RecordBatch> = crate::query::run_sql(session, &sql)
        .await?
        .try_collect()
        .await?;
    let rows = batches
        .first()
        .map(|b| b.column(0).as_primitive::<Int64Type>().value(0))
        .unwrap_or(0);
    println!("  {table}: exists ({rows} rows), reused");
    Ok(true)
}

async fn write_batch(session: &QuiverSession, table: &str, batch: RecordBatch) -> Result<()> {
    let rows = batch.num_rows();
    let started = Instant::now();
    let schema = batch.schema();
    let data = Box::pin(RecordBatchStreamAdapter::new(
        schema,
        futures::stream::iter([Ok(batch)]),
    ));
    ingest(
        session,
        DEFAULT_SCHEMA,
        table,
        IngestMode::Create,
        IngestOptions::default(),
        data,
    )
    .await?;
    println!(
        "  {table}: {rows} rows written in {}",
        seconds(started.elapsed())
    );
    Ok(())
}

/// Generates the interactions on a blocking thread, a few batches ahead of the Delta writer, with a
/// progress bar on a terminal.
async fn write_interactions(session: &QuiverSession, world: World) -> Result<()> {
    let started = Instant::now();
    let batches = world.interactions();
    let total = batches.total();
    let bar = bar(total, "interactions");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch>>(2);
    let generator = tokio::task::spawn_blocking(move || {
        for batch in batches {
            if tx.blocking_send(batch).is_err() {
                break; // the writer failed and hung up
            }
        }
    });
    let progress = bar.clone();
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |batch| {
        let batch = batch.map_err(|e| DataFusionError::External(Box::new(e)))?;
        progress.inc(batch.num_rows() as u64);
        Ok(batch)
    });
    let schema: SchemaRef = World::interactions_schema();
    let data = Box::pin(RecordBatchStreamAdapter::new(schema, stream));
    let written = ingest(
        session,
        DEFAULT_SCHEMA,
        "interactions",
        IngestMode::Create,
        IngestOptions::default(),
        data,
    )
    .await;
    bar.finish_and_clear();
    generator
        .await
        .map_err(|e| Error::Internal(format!("demo data generator failed: {e}")))?;
    let rows = written?;
    let elapsed = started.elapsed();
    println!(
        "  interactions: {rows} rows generated and written in {} ({:.0} rows/s)",
        seconds(elapsed),
        rows as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// Refreshes every materialized feature view (incrementally where it was refreshed before).
async fn materialize_views(session: &QuiverSession) -> Result<()> {
    for view in session.features().materialized_views() {
        let name = view.definition.name.clone();
        let spinner = ProgressBar::new_spinner().with_message(format!("features.{name}"));
        spinner.enable_steady_tick(Duration::from_millis(120));
        let report =
            crate::features::refresh::refresh(session.ctx(), session.catalog(), &view).await;
        spinner.finish_and_clear();
        let report = report?;
        if report.mode == Mode::Unchanged {
            println!("  features.{name}: up to date");
            continue;
        }
        println!(
            "  features.{name}: {} refresh, {} rows, in {}",
            report.mode.as_str(),
            report.rows,
            seconds(report.elapsed)
        );
    }
    Ok(())
}

/// Loads the models now that their tables exist, and says which serve.
async fn load_models(session: &QuiverSession, spec: &Spec) -> Result<()> {
    session.models().reload(session.ctx()).await?;
    let statuses = session.models().statuses();
    if statuses.is_empty() {
        println!("  no models found (--models-dir): recommend() has nothing to serve");
    }
    for status in statuses {
        match (&status.model, &status.error) {
            (_, Some(error)) => println!("  model {}: FAILED: {error}", status.name),
            (Some(model), None) => println!(
                "  model {}: {} version {}, {}",
                status.name,
                model.spec.kind.as_str(),
                model.spec.version,
                model.spec.description
            ),
            (None, None) => {}
        }
    }
    if *spec != Spec::default_for(spec.end) {
        println!(
            "  note: models/demo was trained on the default dataset; for this one, retrain with \
             `python models/train_demo.py` (see models/README.md)"
        );
    }
    Ok(())
}

/// What the demo prints once it listens: three snippets to paste into Python.
fn snippets(uri: &str) -> String {
    format!(
        r#"
Try it from Python (pip install adbc-driver-flightsql pyarrow):

# 1. SQL over the Delta tables
import adbc_driver_flightsql.dbapi as flightsql
cur = flightsql.connect("{uri}", autocommit=True).cursor()
cur.execute("SELECT event, count(*) AS n FROM interactions GROUP BY event ORDER BY n DESC")
print(cur.fetch_arrow_table())

# 2. An online feature lookup (answered from memory, not Delta)
cur.execute("SELECT * FROM features.user_activity WHERE user_id = ?", parameters=(42,))
print(cur.fetch_arrow_table().to_pylist())

# 3. Recommendations: top 10 of the two-tower model, with the items' attributes
cur.execute("""SELECT r.rank, r.item_id, i.category, i.price, r.score
               FROM recommend('recs', 42, 10) r JOIN items i USING (item_id) ORDER BY r.rank""")
print(cur.fetch_arrow_table())

Ctrl-C stops the server; running `quiver demo` again reuses the data.
"#
    )
}

fn bar(total: u64, name: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "  {msg}: [{bar:30}] {human_pos}/{human_len} rows, {per_sec}, eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(total)
        .with_style(style)
        .with_message(name.to_string())
}

fn seconds(elapsed: Duration) -> String {
    format!("{:.1} s", elapsed.as_secs_f64())
}
