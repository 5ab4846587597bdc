//! `system.models`: every model directory, what serves from it and why a newer file did not load.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::Result;
use datafusion::datasource::TableProvider;

use crate::scoring::spec::TensorSpec;
use crate::scoring::{ModelRegistry, ModelStatus};
use crate::storage::system::snapshot_table;

pub const MODELS_TABLE: &str = "models";

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("version", DataType::Utf8, true),
        Field::new("kind", DataType::Utf8, true),
        Field::new("inputs", DataType::Utf8, true),
        Field::new("outputs", DataType::Utf8, true),
        Field::new("items", DataType::Int64, true),
        Field::new("path", DataType::Utf8, false),
        Field::new(
            "loaded_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("status", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
    ]))
}

/// `loaded`; `stale` when the newest files failed and an older version serves; `failed` when none does.
fn status(s: &ModelStatus) -> &'static str {
    match (&s.model, &s.error) {
        (Some(_), None) => "loaded",
        (Some(_), Some(_)) => "stale",
        (None, _) => "failed",
    }
}

fn describe(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(TensorSpec::describe)
        .collect::<Vec<_>>()
        .join(", ")
}

fn batch(statuses: &[ModelStatus]) -> Result<RecordBatch> {
    let mut name = StringBuilder::new();
    let mut version = StringBuilder::new();
    let mut kind = StringBuilder::new();
    let mut inputs = StringBuilder::new();
    let mut outputs = StringBuilder::new();
    let mut items = Int64Builder::new();
    let mut path = StringBuilder::new();
    let mut loaded_at = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut state = StringBuilder::new();
    let mut error = StringBuilder::new();
    for s in statuses {
        name.append_value(&s.name);
        let model = s.model.as_deref();
        version.append_option(model.map(|m| m.spec.version.as_str()));
        kind.append_option(model.map(|m| m.spec.kind.as_str()));
        inputs.append_option(model.map(|m| describe(&m.spec.inputs)));
        outputs.append_option(model.map(|m| describe(&m.spec.outputs)));
        items.append_option(
            model
                .and_then(|m| m.retrieval.as_ref())
                .map(|r| r.items() as i64),
        );
        path.append_value(s.path.display().to_string());
        loaded_at.append_option(model.map(|m| m.loaded_at.timestamp_micros()));
        state.append_value(status(s));
        error.append_option(s.error.as_deref());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(name.finish()),
        Arc::new(version.finish()),
        Arc::new(kind.finish()),
        Arc::new(inputs.finish()),
        Arc::new(outputs.finish()),
        Arc::new(items.finish()),
        Arc::new(path.finish()),
        Arc::new(loaded_at.finish()),
        Arc::new(state.finish()),
        Arc::new(error.finish()),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

/// `system.models`: read from the registry each time a query scans it.
pub fn models_table(models: Arc<ModelRegistry>) -> Result<Arc<dyn TableProvider>> {
    snapshot_table(schema(), move |_| batch(&models.statuses()))
}
