//! sqllogictest runner: every `tests/slt/*.slt` file runs against a fresh warehouse through the
//! production session builder and statement path (`quiver::query::run_sql`).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::array_value_to_string;
use futures::TryStreamExt;
use quiver::session::QuiverSession;
use sqllogictest::{DBOutput, DefaultColumnType};

struct QuiverDb {
    session: QuiverSession,
    _warehouse: tempfile::TempDir,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SltError(String);

#[async_trait]
impl sqllogictest::AsyncDB for QuiverDb {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let stream = quiver::query::run_sql(&self.session, sql)
            .await
            .map_err(|e| SltError(e.to_string()))?;
        let schema = stream.schema();
        let batches: Vec<RecordBatch> = stream
            .try_collect()
            .await
            .map_err(|e| SltError(quiver::error::Error::from(e).to_string()))?;
        let is_statement = schema.fields().is_empty()
            || (schema.fields().len() == 1 && schema.field(0).name() == "count" && !is_query(sql));
        if is_statement {
            return Ok(DBOutput::StatementComplete(count(&batches)));
        }
        let types = schema
            .fields()
            .iter()
            .map(|f| column_type(f.data_type()))
            .collect();
        let mut rows = Vec::new();
        for batch in &batches {
            for row in 0..batch.num_rows() {
                let cells: Vec<String> = batch
                    .columns()
                    .iter()
                    .map(|c| cell(c.as_ref(), row))
                    .collect();
                rows.extend(split_lines(cells));
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "quiver"
    }
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

async fn run_file(path: &Path) -> Result<(), String> {
    let warehouse = tempfile::tempdir().map_err(|e| e.to_string())?;
    let url =
        url::Url::from_directory_path(warehouse.path()).map_err(|()| "bad path".to_string())?;
    // The repository's example feature views (sql/features) are loaded, as `quiver serve` does, and
    // the committed test models (tests/models).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let options = quiver::session::SessionOptions {
        sql_dir: Some(root.join("sql")),
        models_dir: Some(root.join("tests").join("models")),
        ..Default::default()
    };
    let session = QuiverSession::open_with(url, options)
        .await
        .map_err(|e| e.to_string())?;
    let mut db = Some(QuiverDb {
        session,
        _warehouse: warehouse,
    });
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
        match run_file(&file).await {
            Ok(()) => {
                passed += 1;
                println!("ok     {name}");
            }
            Err(e) => {
                failed += 1;
                println!("FAILED {name}\n{e}");
            }
        }
    }
    println!("slt: {passed} passed, {failed} failed");
    if failed > 0 || passed == 0 {
        std::process::exit(1);
    }
}
