//! `predict('model', arg, ...)`: a model scoring every row, one tract call per record batch.
//!
//! SQL arguments fill the model's inputs in `model.toml` order. An input with one value per row
//! (`[-1]`, `[-1, 1]`) takes one numeric argument; a wider one (`[-1, 64]`) takes either one list of
//! 64 numbers or 64 numeric arguments. Values are cast to the input's type. A row with a NULL anywhere
//! scores NULL. One output is the result column; several are a struct with a field per output.
//!
//! The version is pinned when the query is planned for execution: the result field carries the
//! model's load generation, and [`ModelRegistry::version`] finds that version even after a reload.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, new_empty_array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue, exec_datafusion_err, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
};

use crate::scoring::spec::TensorSpec;
use crate::scoring::tensors::{pack_input, result_column, result_type};
use crate::scoring::{Model, ModelRegistry};

pub const NAME: &str = "predict";

/// Field metadata naming the model version a planned call runs.
pub const GENERATION_KEY: &str = "quiver.model.generation";

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        datafusion::logical_expr::DocSection {
            include: true,
            label: "Quiver models",
            description: Some("Scoring with the ONNX models of --models-dir"),
        },
        "Scores each row with the ONNX model named by the first argument (a string literal; see \
         system.models). The other arguments fill the model's inputs in model.toml order: an input \
         of one value per row takes one number; an input of width n takes a list of n numbers or n \
         numeric arguments. Values are cast to the input type. NULL anywhere in a row gives a NULL \
         result. One output is returned as its column (a number, or a fixed-size list for wider \
         outputs); several as a struct with one field per output.",
        "predict('model', arg1[, arg2, ...])",
    )
    .with_sql_example(
        "```sql\nSELECT item_id, predict('ranker', features) AS score FROM candidates;\n```",
    )
    .with_argument("model", "Name of the model directory under --models-dir.")
    .with_argument(
        "args",
        "Values for the model's inputs, in model.toml order.",
    )
    .build()
});

/// What a scalar function that runs models holds: the registry it finds them in, and its signature.
/// Two are equal when they read the same registry.
#[derive(Debug)]
pub(crate) struct ModelFunction {
    pub(crate) registry: Arc<ModelRegistry>,
    pub(crate) signature: Signature,
}

impl ModelFunction {
    pub(crate) fn new(registry: Arc<ModelRegistry>) -> Self {
        Self {
            registry,
            // Volatile, not Stable: a constant call must not be folded at planning, which would
            // run the model there (on the caller's thread) and give the result a schema of its own.
            signature: Signature::user_defined(Volatility::Volatile),
        }
    }
}

impl PartialEq for ModelFunction {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.registry, &other.registry)
    }
}

impl Eq for ModelFunction {}

impl std::hash::Hash for ModelFunction {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.registry).hash(state);
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Predict(ModelFunction);

pub fn udf(registry: Arc<ModelRegistry>) -> ScalarUDF {
    ScalarUDF::new_from_impl(Predict(ModelFunction::new(registry)))
}

/// The model name in a call's first argument, which must be a string literal.
pub fn model_name<'a>(function: &str, scalar: Option<&'a ScalarValue>) -> Result<&'a str> {
    match scalar {
        Some(
            ScalarValue::Utf8(Some(name))
            | ScalarValue::Utf8View(Some(name))
            | ScalarValue::LargeUtf8(Some(name)),
        ) => Ok(name),
        _ => plan_err!(
            "{function}'s first argument must be the model name as a string literal, e.g. {function}('ranker', ...)"
        ),
    }
}

/// The pinned version a planned call recorded in its result field, else the serving one.
pub fn pinned_model(registry: &ModelRegistry, name: &str, field: &Field) -> Result<Arc<Model>> {
    let generation = field
        .metadata()
        .get(GENERATION_KEY)
        .and_then(|g| g.parse::<u64>().ok());
    Ok(registry.version(name, generation)?)
}

/// A result field stamped with the model version it was planned with.
pub fn pinned_field(name: &str, data_type: DataType, model: &Model) -> FieldRef {
    let metadata = HashMap::from([(GENERATION_KEY.to_string(), model.generation.to_string())]);
    Arc::new(Field::new(name, data_type, true).with_metadata(metadata))
}

/// Which arguments (after the model name) feed each input, from the argument types.
pub fn bind_arguments(model: &Model, arg_types: &[DataType]) -> Result<Vec<Range<usize>>> {
    let inputs = model.onnx.inputs();
    let usage = || {
        let list: Vec<String> = inputs.iter().map(TensorSpec::describe).collect();
        format!("predict('{}') fills inputs {}", model.name, list.join(", "))
    };
    let mut ranges = Vec::with_capacity(inputs.len());
    let mut next = 0;
    for input in inputs {
        let Some(first) = arg_types.get(next) else {
            return plan_err!("{}: no argument left for input '{}'", usage(), input.name);
        };
        let width = input.width();
        let taken = match list_element(first) {
            Some(element) if element.is_numeric() => 1,
            Some(element) => {
                return plan_err!(
                    "{}: argument {} for input '{}' is a list of {element}, not of numbers",
                    usage(),
                    next + 2,
                    input.name
                );
            }
            None => width,
        };
        let range = next..next + taken;
        if range.end > arg_types.len() {
            return plan_err!(
                "{}: input '{}' takes a list of {width} numbers or {width} numeric arguments, \
                 {} argument(s) are left",
                usage(),
                input.name,
                arg_types.len() - next
            );
        }
        if (taken > 1 || list_element(first).is_none())
            && let Some((i, bad)) = arg_types[range.clone()]
                .iter()
                .enumerate()
                .find(|(_, t)| !t.is_numeric() && !t.is_null())
        {
            return plan_err!(
                "{}: argument {} for input '{}' ({}) must be numeric, it is {bad}",
                usage(),
                range.start + i + 2,
                input.name,
                input.element.as_str()
            );
        }
        next = range.end;
        ranges.push(range);
    }
    if next != arg_types.len() {
        return plan_err!(
            "{}: {} argument(s) after the model name, {} used",
            usage(),
            arg_types.len(),
            next
        );
    }
    Ok(ranges)
}

fn list_element(data_type: &DataType) -> Option<&DataType> {
    match data_type {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            Some(f.data_type())
        }
        _ => None,
    }
}

impl ScalarUDFImpl for Predict {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.0.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.is_empty() {
            return plan_err!("predict takes the model name and the model's inputs");
        }
        Ok(arg_types.to_vec())
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        plan_err!("predict's return type depends on its model: use return_field_from_args")
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let name = model_name(NAME, args.scalar_arguments.first().copied().flatten())?;
        let model = self.0.registry.get(name)?;
        let types: Vec<DataType> = args.arg_fields[1..]
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        bind_arguments(&model, &types)?;
        Ok(pinned_field(
            NAME,
            result_type(model.onnx.outputs()),
            &model,
        ))
    }

    fn invoke_with_args(&self, call: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some(ColumnarValue::Scalar(name)) = call.args.first() else {
            return exec_err!("predict's first argument must be the model name");
        };
        let name = model_name(NAME, Some(name))?;
        let model = pinned_model(&self.0.registry, name, &call.return_field)?;
        let rows = call.number_rows;
        // Constant arguments become full-length columns: a batch has `rows` rows to score.
        let columns = call.args[1..]
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<Result<Vec<_>>>()?;
        let types: Vec<DataType> = columns.iter().map(|c| c.data_type().clone()).collect();
        let ranges = bind_arguments(&model, &types)?;
        let started = std::time::Instant::now();
        let scored = score(&model, &columns, &ranges, rows)?;
        metrics::histogram!(crate::metrics::PREDICT_SECONDS, "model" => model.name.clone())
            .record(started.elapsed().as_secs_f64());
        Ok(ColumnarValue::Array(scored))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

/// One tract call over a batch: pack the inputs, run, unpack the outputs.
fn score(
    model: &Model,
    columns: &[ArrayRef],
    ranges: &[Range<usize>],
    rows: usize,
) -> Result<ArrayRef> {
    let outputs = model.onnx.outputs();
    if rows == 0 {
        return Ok(new_empty_array(&result_type(outputs)));
    }
    let mut valid = vec![true; rows];
    let inputs = model
        .onnx
        .inputs()
        .iter()
        .zip(ranges)
        .map(|(spec, range)| pack_input(spec, &columns[range.clone()], rows, &mut valid))
        .collect::<crate::error::Result<_>>()
        .map_err(|e| exec_datafusion_err!("predict('{}'): {e}", model.name))?;
    let tensors = model.onnx.run(inputs).map_err(|e| {
        datafusion::error::DataFusionError::Execution(format!("predict('{}'): {e}", model.name))
    })?;
    result_column(outputs, &tensors, &valid).map_err(|e| {
        datafusion::error::DataFusionError::Execution(format!("predict('{}'): {e}", model.name))
    })
}
