//! `recommend_items('model', user_id, k)`: the top k of each row's user as a list of
//! struct(item_id, score), for batch scoring (`SELECT user_id, recommend_items(...) FROM users`).
//!
//! The users of a batch go through the user tower in one call ([`Pipeline::recommend`]); unlike the
//! `recommend` table function it does not apply `[exclude]`.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, Int64Builder, ListArray, StructArray,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Int64Type};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};

use crate::scoring::ModelRegistry;
use crate::scoring::pipeline::{Pipeline, item_count};
use crate::scoring::predict::{ModelFunction, model_name, pinned_field, pinned_model};
use crate::scoring::retrieval::Scored;

pub const NAME: &str = "recommend_items";

fn item_fields() -> Fields {
    Fields::from(vec![
        Field::new("item_id", DataType::Int64, false),
        Field::new("score", DataType::Float64, true),
    ])
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        datafusion::logical_expr::DocSection {
            include: true,
            label: "Quiver models",
            description: Some("Scoring with the ONNX models of --models-dir"),
        },
        "The top k items for each user of a two_tower model, as a list of struct(item_id, score), \
         best first (unnest-able). Unknown users (outside the model's [users] query) get the \
         model's [fallback] list, or an empty list without one. NULL user: NULL. Unlike the \
         recommend(...) table function it does not apply [exclude]. Users of one batch go through \
         the user tower in one call.",
        "recommend_items('model', user_id, k)",
    )
    .with_sql_example(
        "```sql\nSELECT user_id, recommend_items('mf', user_id, 10) AS items FROM users;\n```",
    )
    .with_argument("model", "A two_tower model.")
    .with_argument("user_id", "The user (integer).")
    .with_argument("k", "How many items (0 to 10000).")
    .build()
});

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RecommendItems(ModelFunction);

pub fn recommend_items_udf(registry: Arc<ModelRegistry>) -> ScalarUDF {
    ScalarUDF::new_from_impl(RecommendItems(ModelFunction::new(registry)))
}

/// Per row a list of struct(item_id, score), NULL where the row had no result.
fn items_list(results: Vec<Option<Vec<Scored>>>) -> Result<ArrayRef> {
    let mut ids = Int64Builder::new();
    let mut scores = Float64Builder::new();
    let mut lengths = Vec::with_capacity(results.len());
    for items in &results {
        let items = items.as_deref().unwrap_or_default();
        for item in items {
            ids.append_value(item.item_id);
            scores.append_option(item.score);
        }
        lengths.push(items.len());
    }
    let valid: Vec<bool> = results.iter().map(Option::is_some).collect();
    let entries = StructArray::try_new(
        item_fields(),
        vec![
            Arc::new(ids.finish()) as ArrayRef,
            Arc::new(scores.finish()),
        ],
        None,
    )?;
    Ok(Arc::new(ListArray::try_new(
        Arc::new(Field::new("item", DataType::Struct(item_fields()), true)),
        OffsetBuffer::from_lengths(lengths),
        Arc::new(entries),
        Some(NullBuffer::from(valid)),
    )?))
}

fn items_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(item_fields()),
        true,
    )))
}

impl ScalarUDFImpl for RecommendItems {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.0.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [model, user, k] = arg_types else {
            return plan_err!(
                "recommend_items('model', user_id, k) takes 3 arguments, got {}",
                arg_types.len()
            );
        };
        for (what, t) in [("user_id", user), ("k", k)] {
            if !t.is_integer() && !t.is_null() {
                return plan_err!("recommend_items: {what} must be an integer, it is {t}");
            }
        }
        Ok(vec![model.clone(), DataType::Int64, DataType::Int64])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(items_type())
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<Arc<Field>> {
        let name = model_name(NAME, args.scalar_arguments.first().copied().flatten())?;
        let model = self.0.registry.get(name)?;
        Pipeline::resolve(&self.0.registry, model.clone())?;
        Ok(pinned_field(NAME, items_type(), &model))
    }

    fn invoke_with_args(&self, call: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some(ColumnarValue::Scalar(name)) = call.args.first() else {
            return exec_err!("recommend_items' first argument must be the model name");
        };
        let model = pinned_model(
            &self.0.registry,
            model_name(NAME, Some(name))?,
            &call.return_field,
        )?;
        let pipeline = Pipeline::resolve(&self.0.registry, model)?;
        let columns = call.args[1..]
            .iter()
            .map(|a| a.to_array(call.number_rows))
            .collect::<Result<Vec<_>>>()?;
        let users = columns[0].as_primitive::<Int64Type>();
        let ks = columns[1].as_primitive::<Int64Type>();
        // Rows are grouped by k so each group's known users share one user-tower call.
        let mut k_values: Vec<i64> = ks.iter().flatten().collect();
        k_values.sort_unstable();
        k_values.dedup();
        let mut results: Vec<Option<Vec<Scored>>> = vec![None; users.len()];
        for k in k_values {
            let rows: Vec<usize> = (0..users.len())
                .filter(|r| ks.is_valid(*r) && ks.value(*r) == k)
                .collect();
            let group: Vec<Option<i64>> = rows
                .iter()
                .map(|r| users.is_valid(*r).then(|| users.value(*r)))
                .collect();
            let scored = pipeline.recommend(&group, item_count(NAME, k)?, &HashSet::new())?;
            for (row, items) in rows.into_iter().zip(scored) {
                results[row] = items;
            }
        }
        Ok(ColumnarValue::Array(items_list(results)?))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}
