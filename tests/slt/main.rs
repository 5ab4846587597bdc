//! sqllogictest runner: every `tests/slt/*.slt` file runs against a fresh warehouse twice:
//!
//! 1. in-process, through the production session builder and statement path
//!    (`quiver::query::run_sql`);
//! 2. through the ADBC Flight SQL driver (the Go driver that the Python wheel
//!    `adbc-driver-flightsql` ships, loaded here with `adbc_driver_manager`) against a Quiver server
//!    on a real gRPC socket: each statement is prepared and executed as the Python DB-API and JDBC
//!    do (CreatePreparedStatement, GetFlightInfo, DoGet), and each query is also run unprepared
//!    (CommandStatementQuery) and must give the same rows, as must arrow-flight's Rust Flight SQL
//!    client and plain Flight with the SQL as the command (the calls pyarrow.flight makes). The
//!    driver refuses a stream whose schema differs from the one GetFlightInfo announced; the Rust
//!    clients check every batch against it. A mismatch fails the file.
//!
//! Both passes compare with the same expected output. An answer with gRPC status Internal or
//! Unknown fails the file even where the `.slt` expects an error.
//!
//! The driver is found at `QUIVER_ADBC_DRIVER`, else in the venv `tests/run.sh` builds
//! (`QUIVER_VENV`, default `.venv`). Without one the ADBC pass is skipped, with a message; with
//! `QUIVER_ADBC_DRIVER` set, a missing driver is a failure.

mod adbc;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use adbc_driver_manager::ManagedDriver;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::arrow::util::display::array_value_to_string;
use futures::TryStreamExt;
use quiver::session::QuiverSession;
use sqllogictest::{DBOutput, DefaultColumnType};

struct QuiverDb {
    session: QuiverSession,
    broken: Broken,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SltError(String);

#[async_trait]
impl sqllogictest::AsyncDB for QuiverDb {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let result = async {
            let stream = quiver::query::run_sql(&self.session, sql).await?;
            let schema = stream.schema();
            let batches: Vec<RecordBatch> = stream.try_collect().await?;
            Ok::<_, quiver::error::Error>((schema, batches))
        }
        .await;
        match result {
            Ok((schema, batches)) => Ok(output(sql, &schema, &batches)),
            Err(e) => {
                if matches!(e.code(), tonic::Code::Internal | tonic::Code::Unknown) {
                    note_broken(&self.broken, sql, format!("{:?}: {e}", e.code()));
                }
                Err(SltError(e.to_string()))
            }
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "quiver"
    }
}

/// What a statement returned, as the `.slt` files write it.
fn output(sql: &str, schema: &Schema, batches: &[RecordBatch]) -> DBOutput<DefaultColumnType> {
    let is_statement = schema.fields().is_empty()
        || (schema.fields().len() == 1 && schema.field(0).name() == "count" && !is_query(sql));
    if is_statement {
        return DBOutput::StatementComplete(count(batches));
    }
    let types = schema
        .fields()
        .iter()
        .map(|f| column_type(f.data_type()))
        .collect();
    let mut rows = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = batch
                .columns()
                .iter()
                .map(|c| cell(c.as_ref(), row))
                .collect();
            rows.extend(split_lines(cells));
        }
    }
    DBOutput::Rows { types, rows }
}

fn is_query(sql: &str) -> bool {
    let head = sql.trim_start().to_ascii_uppercase();
    ["SELECT", "WITH", "VALUES", "SHOW", "DESCRIBE", "EXPLAIN"]
        .iter()
        .any(|k| head.starts_with(k))
}

fn count(batches: &[RecordBatch]) -> u64 {
    batches
        .iter()
        .filter(|b| b.num_columns() == 1)
        .filter_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::UInt64Array>()
        })
        .flat_map(|a| a.iter().flatten())
        .sum()
}

fn column_type(data_type: &DataType) -> DefaultColumnType {
    if data_type.is_integer() {
        DefaultColumnType::Integer
    } else if data_type.is_floating()
        || matches!(
            data_type,
            DataType::Decimal128(..) | DataType::Decimal256(..)
        )
    {
        DefaultColumnType::FloatingPoint
    } else {
        DefaultColumnType::Text
    }
}

/// A row whose cells hold several lines (EXPLAIN plans) becomes its first lines as one row, then one
/// row per further line, so .slt files can list plans line by line.
fn split_lines(cells: Vec<String>) -> Vec<Vec<String>> {
    let lines: Vec<Vec<&str>> = cells.iter().map(|c| c.lines().collect()).collect();
    let height = lines.iter().map(Vec::len).max().unwrap_or(1).max(1);
    (0..height)
        .map(|i| {
            let parts = lines.iter().filter_map(|cell| cell.get(i).copied());
            if i == 0 {
                parts.map(str::to_string).collect()
            } else {
                vec![parts.collect::<Vec<_>>().join(" ")]
            }
        })
        .collect()
}

fn cell(column: &dyn Array, row: usize) -> String {
    if column.is_null(row) {
        return "NULL".to_string();
    }
    match array_value_to_string(column, row) {
        Ok(s) if s.is_empty() => "(empty)".to_string(),
        Ok(s) => s,
        Err(e) => format!("<error: {e}>"),
    }
}

/// Where a file's statements run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    InProcess,
    Adbc,
}

/// Statements answered Internal or Unknown (shared with the connection the runner owns).
type Broken = Arc<Mutex<Vec<String>>>;

fn note_broken(broken: &Broken, sql: &str, answer: String) {
    if let Ok(mut list) = broken.lock() {
        list.push(format!("{}\n  answered {answer}", sql.trim()));
    }
}

/// A fresh warehouse with the repository's example feature views (sql/features), as `quiver serve`
/// loads them, and the committed test models (tests/models).
async fn open_session() -> Result<(QuiverSession, tempfile::TempDir), String> {
    let warehouse = tempfile::tempdir().map_err(|e| e.to_string())?;
    let url =
        url::Url::from_directory_path(warehouse.path()).map_err(|()| "bad path".to_string())?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let options = quiver::session::SessionOptions {
        sql_dir: Some(root.join("sql")),
        models_dir: Some(root.join("tests").join("models")),
        ..Default::default()
    };
    let session = QuiverSession::open_with(url, options)
        .await
        .map_err(|e| e.to_string())?;
    Ok((session, warehouse))
}

async fn run_file(path: &Path, pass: Pass, driver: Option<&ManagedDriver>) -> Result<(), String> {
    let (session, _warehouse) = open_session().await?;
    let broken = Broken::default();
    let result = match (pass, driver) {
        (Pass::Adbc, Some(driver)) => {
            let server = adbc::Server::start(session).await?;
            let db = adbc::AdbcDb::connect(driver, server, broken.clone()).await?;
            run_with(path, db).await
        }
        _ => {
            let db = QuiverDb {
                session,
                broken: broken.clone(),
            };
            run_with(path, db).await
        }
    };
    let broken = broken.lock().map(|b| b.clone()).unwrap_or_default();
    match (result, broken.is_empty()) {
        (Ok(()), true) => Ok(()),
        (result, _) => Err(format!(
            "{}{}",
            result.err().unwrap_or_default(),
            broken
                .iter()
                .map(|b| format!(
                    "\nInternal/Unknown answer (a bug, whatever the file expects): {b}"
                ))
                .collect::<String>()
        )),
    }
}

async fn run_with<D>(path: &Path, db: D) -> Result<(), String>
where
    D: sqllogictest::AsyncDB<Error = SltError, ColumnType = DefaultColumnType> + Send + 'static,
{
    let mut db = Some(db);
    let mut runner = sqllogictest::Runner::new(move || {
        let db = db.take();
        async move { db.ok_or_else(|| SltError("one connection per file".into())) }
    });
    runner
        .run_file_async(path)
        .await
        .map_err(|e| e.display(true).to_string())
}

fn slt_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "slt"));
    files.sort();
    files
}

#[tokio::main]
async fn main() {
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let driver = match adbc::load_driver() {
        Ok(driver) => driver,
        Err(e) => {
            println!("FAILED adbc: {e}");
            std::process::exit(1);
        }
    };
    let mut passed = 0;
    let mut failed = 0;
    for file in slt_files() {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        for pass in [Pass::InProcess, Pass::Adbc] {
            let label = match pass {
                Pass::InProcess => name.clone(),
                Pass::Adbc if driver.is_none() => continue,
                Pass::Adbc => format!("{name} (ADBC)"),
            };
            match run_file(&file, pass, driver.as_ref()).await {
                Ok(()) => {
                    passed += 1;
                    println!("ok     {label}");
                }
                Err(e) => {
                    failed += 1;
                    println!("FAILED {label}\n{e}");
                }
            }
        }
    }
    println!("slt: {passed} passed, {failed} failed");
    if failed > 0 || passed == 0 {
        std::process::exit(1);
    }
}
