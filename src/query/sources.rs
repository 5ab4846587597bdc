//! The answers of the source statements: `CREATE SOURCE` and `ALTER SOURCE` write the definition
//! to the warehouse, `DROP SOURCE` deletes it (every server then starts or stops its consumer, see
//! `crate::sources`), `SHOW SOURCES` lists the definitions.

use std::sync::Arc;

use chrono::Utc;
use datafusion::arrow::array::{BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::execution::SendableRecordBatchStream;

use crate::error::{Error, Result};
use crate::query::command_sql::{SourceStatement, object_name_reference};
use crate::query::one_batch;
use crate::query::statement::schema_and_table;
use crate::session::QuiverSession;
use crate::storage::sources::{self, SourceDefinition};

/// Option names whose values `SHOW SOURCES` does not show.
const SECRET_WORDS: [&str; 4] = ["password", "secret", "key", "token"];

pub async fn run(
    session: &QuiverSession,
    statement: SourceStatement,
) -> Result<Option<SendableRecordBatchStream>> {
    let warehouse = session.warehouse();
    match statement {
        SourceStatement::Create {
            name,
            kind,
            options,
            into,
            if_not_exists,
        } => {
            let (schema, table) = schema_and_table(&object_name_reference(&into))?;
            if warehouse.locate(&schema, &table).await?.is_none() {
                return Err(Error::TableNotFound(format!("{schema}.{table}")));
            }
            let definition = SourceDefinition {
                name,
                kind,
                schema,
                table,
                options: options.into_iter().collect(),
                paused: false,
                created_at: Utc::now(),
            };
            match sources::create(warehouse, &definition).await {
                Err(Error::AlreadyExists { .. }) if if_not_exists => {}
                other => other?,
            }
        }
        SourceStatement::Show => {
            return Ok(Some(one_batch(show(&sources::list(warehouse).await?)?)?));
        }
        SourceStatement::Alter { name, pause } => {
            let mut definition = sources::get(warehouse, &name)
                .await?
                .ok_or_else(|| not_found(&name))?;
            definition.paused = pause;
            sources::replace(warehouse, &definition).await?;
        }
        SourceStatement::Drop { name, if_exists } => {
            if !sources::delete(warehouse, &name).await? && !if_exists {
                return Err(not_found(&name));
            }
        }
    }
    Ok(None)
}

fn not_found(name: &str) -> Error {
    Error::NotFound {
        kind: "source",
        name: name.to_string(),
    }
}

/// `SHOW SOURCES`' columns.
pub fn show_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("target_table", DataType::Utf8, false),
        Field::new("paused", DataType::Boolean, false),
        Field::new("options", DataType::Utf8, false),
        Field::new(
            "created_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]))
}

fn show(definitions: &[SourceDefinition]) -> Result<RecordBatch> {
    let options = definitions.iter().map(|d| {
        d.options
            .iter()
            .map(|(k, v)| {
                let secret = SECRET_WORDS.iter().any(|w| k.contains(w));
                format!("{k} '{}'", if secret { "***" } else { v.as_str() })
            })
            .collect::<Vec<_>>()
            .join(", ")
    });
    Ok(RecordBatch::try_new(
        show_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                definitions.iter().map(|d| d.name.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                definitions.iter().map(|d| d.kind.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                definitions
                    .iter()
                    .map(|d| format!("{}.{}", d.schema, d.table)),
            )),
            Arc::new(BooleanArray::from_iter(
                definitions.iter().map(|d| Some(d.paused)),
            )),
            Arc::new(StringArray::from_iter_values(options)),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    definitions.iter().map(|d| d.created_at.timestamp_micros()),
                )
                .with_timezone("UTC"),
            ),
        ],
    )?)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::AsArray;

    use super::*;

    #[test]
    fn show_sources_hides_secrets() {
        let definition = SourceDefinition {
            name: "s".into(),
            kind: "kafka".into(),
            schema: "public".into(),
            table: "t".into(),
            options: [
                ("brokers", "k:9092"),
                ("sasl.password", "hunter2"),
                ("ssl.key.password", "pw"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            paused: true,
            created_at: Utc::now(),
        };
        let batch = show(&[definition]).expect("batch");
        let options = batch.column(4).as_string::<i32>().value(0);
        assert!(options.contains("brokers 'k:9092'"), "{options}");
        assert!(
            !options.contains("hunter2") && !options.contains("'pw'"),
            "{options}"
        );
    }
}
