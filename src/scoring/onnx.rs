//! The tract runtime: an ONNX file loaded into an optimized plan with a symbolic batch dimension, and
//! the conversion between Arrow columns and its tensors.
//!
//! Plans are immutable and `Send + Sync`; every call spawns its own state, so one plan serves all
//! queries at once. Calls run wherever DataFusion polls the query: on the executor runtime, never on
//! the gRPC IO threads.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, Float64Array, Int32Array,
    Int64Array, StructArray,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use tract_onnx::prelude::*;

use crate::error::{Error, Result};
use crate::scoring::spec::{ElementType, TensorSpec};

/// A runnable ONNX model whose inputs and outputs are those its `model.toml` declares, in that order.
#[derive(Debug)]
pub struct OnnxModel {
    plan: Arc<TypedRunnableModel>,
    /// Rows per tract call: a larger batch is scored in slices of this many rows (see [`Self::run`]).
    rows_per_run: usize,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl OnnxModel {
    /// Loads `path`, fixes its inputs to the declared types and shapes (the batch symbolic), and
    /// checks that the optimized outputs have the declared shapes.
    pub fn load(path: &Path, inputs: &[TensorSpec], outputs: &[TensorSpec]) -> Result<Self> {
        let fail = |e: TractError| Error::InvalidInput(format!("{}: {e:#}", path.display()));
        let mut model = tract_onnx::onnx().model_for_path(path).map_err(fail)?;
        let declared =
            |specs: &[TensorSpec]| specs.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        let onnx_inputs = outlet_names(&model, model.input_outlets().map_err(fail)?);
        let onnx_outputs = outlet_names(&model, model.output_outlets().map_err(fail)?);
        let inputs = &only_one_named(inputs, &onnx_inputs);
        let outputs = &only_one_named(outputs, &onnx_outputs);
        for (kind, wanted, found) in [
            ("input", declared(inputs), &onnx_inputs),
            ("output", declared(outputs), &onnx_outputs),
        ] {
            if let Some(missing) = wanted.iter().find(|w| !found.contains(w)) {
                return Err(Error::InvalidInput(format!(
                    "{}: model.toml declares {kind} '{missing}', the ONNX graph's {kind}s are {}",
                    path.display(),
                    found.join(", ")
                )));
            }
        }
        if onnx_inputs.len() != inputs.len() {
            return Err(Error::InvalidInput(format!(
                "{}: the ONNX graph has inputs {}, model.toml declares {}",
                path.display(),
                onnx_inputs.join(", "),
                declared(inputs).join(", ")
            )));
        }
        model.set_input_names(declared(inputs)).map_err(fail)?;
        model
            .select_outputs_by_name(declared(outputs))
            .map_err(fail)?;
        let batch = model.symbols.sym("N");
        for (i, spec) in inputs.iter().enumerate() {
            let shape: TVec<TDim> = spec
                .shape
                .iter()
                .map(|d| match usize::try_from(*d) {
                    Ok(d) => d.to_dim(),
                    Err(_) => batch.to_dim(),
                })
                .collect();
            model
                .set_input_fact(i, InferenceFact::dt_shape(datum(spec.element), shape))
                .map_err(fail)?;
        }
        let typed = model.into_optimized().map_err(fail)?;
        for (i, spec) in outputs.iter().enumerate() {
            let fact = typed.output_fact(i).map_err(fail)?;
            check_output(spec, fact).map_err(|m| {
                Error::InvalidInput(format!("{}: output '{}': {m}", path.display(), spec.name))
            })?;
        }
        let rows_per_run = rows_per_run(&typed);
        let plan = typed.into_runnable().map_err(fail)?;
        Ok(Self {
            plan,
            rows_per_run,
            inputs: inputs.to_vec(),
            outputs: outputs.to_vec(),
        })
    }

    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// The model over a whole batch: rows along the first axis of every input and output, as
    /// model.toml's shapes declare them (`-1` first).
    ///
    /// A batch of more than [`Self::rows_per_run`] rows is scored in slices of that many, their
    /// outputs stacked: the activations of a slice stay in the core's cache, where a whole
    /// 8,192-row batch of a 64 -> 256 -> 128 -> 1 MLP (8 MiB of hidden values) does not. Rows are
    /// independent, so the result is the same.
    ///
    /// Some tract operators panic on input the graph cannot take instead of returning an error: a
    /// `Gather` (an embedding table) indexed past its end, e.g. a user id the tower was not trained
    /// on. That is bad input, not a server fault, so a panic is the same `InvalidInput` as an error.
    /// Unwinding through the call is safe: the plan is shared read-only, and each run has its own
    /// state, dropped with the panic.
    pub fn run(&self, inputs: TVec<TValue>) -> Result<TVec<TValue>> {
        let rows = inputs
            .first()
            .map_or(0, |t| t.shape().first().copied().unwrap_or(0));
        if rows <= self.rows_per_run {
            return self.run_once(inputs);
        }
        let slice = |t: &TValue, start: usize, end: usize| {
            t.slice(0, start, end)
                .map(IntoTValue::into_tvalue)
                .map_err(|e| Error::Internal(format!("rows {start}..{end} of an input: {e:#}")))
        };
        let mut slices: Vec<TVec<TValue>> = Vec::new();
        for start in (0..rows).step_by(self.rows_per_run) {
            let end = (start + self.rows_per_run).min(rows);
            let inputs = inputs
                .iter()
                .map(|t| slice(t, start, end))
                .collect::<Result<TVec<_>>>()?;
            slices.push(self.run_once(inputs)?);
        }
        (0..self.outputs.len())
            .map(|i| {
                let parts: Vec<&Tensor> = slices.iter().map(|s| &*s[i]).collect();
                Tensor::stack_tensors(0, &parts)
                    .map(IntoTValue::into_tvalue)
                    .map_err(|e| Error::Internal(format!("stacking output {i}: {e:#}")))
            })
            .collect()
    }

    /// Rows per tract call (see [`Self::run`]).
    pub fn rows_per_run(&self) -> usize {
        self.rows_per_run
    }

    /// One tract call.
    fn run_once(&self, inputs: TVec<TValue>) -> Result<TVec<TValue>> {
        let run = std::panic::AssertUnwindSafe(|| self.plan.run(inputs));
        match std::panic::catch_unwind(run) {
            Ok(result) => {
                result.map_err(|e| Error::InvalidInput(format!("model evaluation failed: {e:#}")))
            }
            Err(panic) => {
                let message = crate::error::panic_message(panic.as_ref());
                Err(Error::InvalidInput(format!(
                    "model evaluation failed (an input out of the model's range?): {message}"
                )))
            }
        }
    }
}

/// A lone spec with an empty name stands for the graph's only input or output (item towers, whose
/// names model.toml does not give).
/// Bytes of one slice's widest value per row that should fit a core's cache: half of the 1–2 MiB
/// L2 of current x86 and ARM server cores.
const SLICE_BYTES: usize = 512 * 1024;

/// Rows per tract call: [`SLICE_BYTES`] over the widest per-row value of the optimized graph (a
/// value whose shape has the batch symbol; weights do not), between 256 rows and all of them.
fn rows_per_run(model: &TypedModel) -> usize {
    let widest = model
        .nodes()
        .iter()
        .flat_map(|node| &node.outputs)
        .filter(|outlet| !outlet.fact.shape.is_concrete())
        .map(|outlet| {
            let per_row: usize = outlet
                .fact
                .shape
                .iter()
                .filter_map(|d| usize::try_from(d.as_i64()?).ok())
                .product();
            per_row * outlet.fact.datum_type.size_of()
        })
        .max()
        .unwrap_or(0);
    match SLICE_BYTES.checked_div(widest) {
        Some(rows) => rows.max(256),
        None => usize::MAX,
    }
}

fn only_one_named(specs: &[TensorSpec], found: &[String]) -> Vec<TensorSpec> {
    match (specs, found) {
        ([spec], [name]) if spec.name.is_empty() => vec![TensorSpec {
            name: name.clone(),
            ..spec.clone()
        }],
        _ => specs.to_vec(),
    }
}

fn outlet_names(model: &InferenceModel, outlets: &[OutletId]) -> Vec<String> {
    outlets
        .iter()
        .map(|o| {
            model
                .outlet_label(*o)
                .map_or_else(|| model.node(o.node).name.clone(), str::to_string)
        })
        .collect()
}

fn check_output(spec: &TensorSpec, fact: &TypedFact) -> std::result::Result<(), String> {
    if fact.datum_type != datum(spec.element) {
        return Err(format!(
            "the model produces {:?}, model.toml declares {}",
            fact.datum_type,
            spec.element.as_str()
        ));
    }
    let dims = fact.shape.dims();
    let matches = dims.len() == spec.shape.len()
        && dims
            .iter()
            .zip(&spec.shape)
            .skip(1)
            .all(|(d, s)| d.to_i64().ok() == Some(*s));
    if !matches {
        return Err(format!(
            "the model produces shape {:?}, model.toml declares {:?}",
            fact.shape, spec.shape
        ));
    }
    Ok(())
}

fn datum(element: ElementType) -> DatumType {
    match element {
        ElementType::Float32 => f32::datum_type(),
        ElementType::Float64 => f64::datum_type(),
        ElementType::Int64 => i64::datum_type(),
        ElementType::Int32 => i32::datum_type(),
    }
}

/// The Arrow type of one output column: a scalar per row for `[N]`/`[N, 1]`, else a fixed-size list.
pub fn output_type(spec: &TensorSpec) -> DataType {
    match spec.width() {
        1 => spec.element.arrow(),
        width => DataType::FixedSizeList(
            Arc::new(Field::new("item", spec.element.arrow(), false)),
            width as i32,
        ),
    }
}

/// The Arrow type of `predict`'s result: the one output, or a struct of all of them.
pub fn result_type(outputs: &[TensorSpec]) -> DataType {
    match outputs {
        [one] => output_type(one),
        many => DataType::Struct(struct_fields(many)),
    }
}

fn struct_fields(outputs: &[TensorSpec]) -> Fields {
    outputs
        .iter()
        .map(|o| Field::new(&o.name, output_type(o), true))
        .collect()
}

/// Packs `width` values per row for one input: either one list column of `width` values per row, or
/// `width` scalar columns. `valid` is cleared for rows with a null anywhere (they are fed zeros).
pub fn pack_input(
    spec: &TensorSpec,
    columns: &[ArrayRef],
    rows: usize,
    valid: &mut [bool],
) -> Result<TValue> {
    let width = spec.width();
    let target = spec.element.arrow();
    let flat: ArrayRef = match columns {
        [list]
            if matches!(
                list.data_type(),
                DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _)
            ) =>
        {
            flatten_list(spec, list, width, valid)?
        }
        // Nulls are read after the cast: a value the input type cannot hold becomes NULL there.
        [scalar] if width == 1 => {
            let column = cast(scalar, &target)?;
            mark_nulls(column.logical_nulls().as_ref(), valid);
            column
        }
        scalars => {
            let mut interleaved = Vec::with_capacity(scalars.len());
            for column in scalars {
                let column = cast(column, &target)?;
                mark_nulls(column.logical_nulls().as_ref(), valid);
                interleaved.push(column);
            }
            interleave_columns(&interleaved, rows)?
        }
    };
    let flat = cast(&flat, &target)?;
    let mut shape: Vec<usize> = vec![rows];
    shape.extend(spec.shape.iter().skip(1).map(|d| *d as usize));
    let tensor = match spec.element {
        ElementType::Float32 => tensor_of(
            &shape,
            flat.as_primitive::<datafusion::arrow::datatypes::Float32Type>()
                .values(),
        )?,
        ElementType::Float64 => tensor_of(
            &shape,
            flat.as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                .values(),
        )?,
        ElementType::Int64 => tensor_of(
            &shape,
            flat.as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .values(),
        )?,
        ElementType::Int32 => tensor_of(
            &shape,
            flat.as_primitive::<datafusion::arrow::datatypes::Int32Type>()
                .values(),
        )?,
    };
    Ok(tensor.into_tvalue())
}

fn tensor_of<T: Datum + Copy>(shape: &[usize], values: &[T]) -> Result<Tensor> {
    Tensor::from_shape(shape, values)
        .map_err(|e| Error::Internal(format!("tensor of shape {shape:?}: {e}")))
}

fn mark_nulls(nulls: Option<&NullBuffer>, valid: &mut [bool]) {
    if let Some(nulls) = nulls {
        for (row, ok) in valid.iter_mut().enumerate() {
            *ok &= nulls.is_valid(row);
        }
    }
}

/// A list column's values and where each row's are in them (`offsets[r]..offsets[r + 1]`, so one
/// more offset than rows); `None` when the column is not a list.
pub(crate) fn list_rows(list: &ArrayRef) -> Option<(Vec<usize>, ArrayRef)> {
    Some(match list.data_type() {
        DataType::List(_) => {
            let l = list.as_list::<i32>();
            let offsets = l.offsets().iter().map(|o| *o as usize).collect();
            (offsets, l.values().clone())
        }
        DataType::LargeList(_) => {
            let l = list.as_list::<i64>();
            let offsets = l.offsets().iter().map(|o| *o as usize).collect();
            (offsets, l.values().clone())
        }
        DataType::FixedSizeList(_, size) => {
            let l = list.as_fixed_size_list();
            let size = *size as usize;
            let offsets = (0..=l.len()).map(|i| (i + l.offset()) * size).collect();
            (offsets, l.values().clone())
        }
        _ => return None,
    })
}

/// The values of a list column, `width` per row; a null or short row is zero-filled and marked invalid.
fn flatten_list(
    spec: &TensorSpec,
    list: &ArrayRef,
    width: usize,
    valid: &mut [bool],
) -> Result<ArrayRef> {
    mark_nulls(list.logical_nulls().as_ref(), valid);
    // The common case, a fixed-size list of the right width without NULLs, is already row-major.
    if let DataType::FixedSizeList(_, size) = list.data_type()
        && *size as usize == width
        && list.logical_null_count() == 0
        && list.as_fixed_size_list().values().null_count() == 0
    {
        return Ok(list.as_fixed_size_list().values().clone());
    }
    let Some((offsets, values)) = list_rows(list) else {
        return Err(Error::Internal(format!(
            "input '{}' was taken for a list column, it is {}",
            spec.name,
            list.data_type()
        )));
    };
    mark_value_nulls(&values, &offsets, valid);
    // Lengths first, so a wrong row is reported before anything is allocated for the batch.
    for (row, ok) in valid.iter().enumerate() {
        let length = offsets[row + 1] - offsets[row];
        if *ok && length != width {
            return Err(Error::InvalidInput(format!(
                "input '{}' takes {width} values per row, row {row} has {length}",
                spec.name
            )));
        }
    }
    let values = cast(&values, &DataType::Float64)?;
    let values = values.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
    let mut out = vec![0f64; valid.len() * width];
    for (row, ok) in valid.iter().enumerate() {
        let (start, end) = (offsets[row], offsets[row + 1]);
        if *ok {
            out[row * width..(row + 1) * width].copy_from_slice(&values.values()[start..end]);
        }
    }
    Ok(Arc::new(Float64Array::from(out)))
}

fn mark_value_nulls(values: &ArrayRef, offsets: &[usize], valid: &mut [bool]) {
    if values.null_count() == 0 {
        return;
    }
    for (row, ok) in valid.iter_mut().enumerate() {
        if (offsets[row]..offsets[row + 1]).any(|i| values.is_null(i)) {
            *ok = false;
        }
    }
}

/// Row-major interleaving of same-typed columns: row 0's values, then row 1's, ...
fn interleave_columns(columns: &[ArrayRef], rows: usize) -> Result<ArrayRef> {
    let width = columns.len();
    let as_f64: Vec<ArrayRef> = columns
        .iter()
        .map(|c| cast(c, &DataType::Float64))
        .collect::<std::result::Result<_, _>>()?;
    let mut out = vec![0f64; rows * width];
    for (j, column) in as_f64.iter().enumerate() {
        let values = column.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
        for (row, v) in values.values().iter().enumerate() {
            out[row * width + j] = *v;
        }
    }
    Ok(Arc::new(Float64Array::from(out)))
}

/// One output tensor as an Arrow column, null where `valid` is false.
pub fn unpack_output(spec: &TensorSpec, tensor: &Tensor, valid: &[bool]) -> Result<ArrayRef> {
    let rows = valid.len();
    let width = spec.width();
    if tensor.len() != rows * width {
        return Err(Error::InvalidInput(format!(
            "output '{}' has shape {:?}, expected {rows} rows of {width}",
            spec.name,
            tensor.shape()
        )));
    }
    let nulls = NullBuffer::from(valid.to_vec());
    let nulls = (nulls.null_count() > 0).then_some(nulls);
    let bad = |e: TractError| Error::Internal(format!("output '{}': {e}", spec.name));
    let values: ArrayRef = match spec.element {
        ElementType::Float32 => Arc::new(Float32Array::from_iter_values(
            tensor
                .to_plain_array_view::<f32>()
                .map_err(bad)?
                .iter()
                .copied(),
        )),
        ElementType::Float64 => Arc::new(Float64Array::from_iter_values(
            tensor
                .to_plain_array_view::<f64>()
                .map_err(bad)?
                .iter()
                .copied(),
        )),
        ElementType::Int64 => Arc::new(Int64Array::from_iter_values(
            tensor
                .to_plain_array_view::<i64>()
                .map_err(bad)?
                .iter()
                .copied(),
        )),
        ElementType::Int32 => Arc::new(Int32Array::from_iter_values(
            tensor
                .to_plain_array_view::<i32>()
                .map_err(bad)?
                .iter()
                .copied(),
        )),
    };
    if width == 1 {
        let data = values.to_data().into_builder().nulls(nulls).build()?;
        return Ok(datafusion::arrow::array::make_array(data));
    }
    let field = Arc::new(Field::new("item", spec.element.arrow(), false));
    Ok(Arc::new(FixedSizeListArray::try_new(
        field,
        width as i32,
        values,
        nulls,
    )?))
}

/// All outputs as `predict`'s result column.
pub fn result_column(
    outputs: &[TensorSpec],
    tensors: &[TValue],
    valid: &[bool],
) -> Result<ArrayRef> {
    let columns = outputs
        .iter()
        .zip(tensors)
        .map(|(spec, t)| unpack_output(spec, t, valid))
        .collect::<Result<Vec<_>>>()?;
    match (outputs, columns.as_slice()) {
        ([_], [one]) => Ok(one.clone()),
        _ => {
            let nulls = NullBuffer::from(valid.to_vec());
            let nulls = (nulls.null_count() > 0).then_some(nulls);
            Ok(Arc::new(StructArray::try_new(
                struct_fields(outputs),
                columns,
                nulls,
            )?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoring::spec::ModelSpec;

    #[test]
    fn an_id_past_an_embedding_table_is_invalid_input_not_a_panic() {
        // tests/models/mf's user tower is an embedding table of 50 users.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/models/mf");
        let spec = ModelSpec::read(&dir, "mf").expect("model.toml");
        let model =
            OnnxModel::load(&dir.join("model.onnx"), &spec.inputs, &spec.outputs).expect("loads");
        let known = Tensor::from_shape(&[1], &[3i64]).expect("tensor");
        assert!(model.run(tvec![known.into_tvalue()]).is_ok());
        let unknown = Tensor::from_shape(&[2], &[3i64, 1_000_000]).expect("tensor");
        match model.run(tvec![unknown.into_tvalue()]) {
            Err(Error::InvalidInput(message)) => {
                assert!(message.starts_with("model evaluation failed"), "{message}")
            }
            other => panic!("expected InvalidInput, got {other:?}"),
        }
        let again = Tensor::from_shape(&[1], &[3i64]).expect("tensor");
        assert!(model.run(tvec![again.into_tvalue()]).is_ok());
    }

    #[test]
    fn a_batch_scored_in_slices_equals_one_call() {
        // tests/models/multi: two inputs, two outputs (a struct in SQL).
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/models/multi");
        let spec = ModelSpec::read(&dir, "multi").expect("model.toml");
        let mut model =
            OnnxModel::load(&dir.join("model.onnx"), &spec.inputs, &spec.outputs).expect("loads");
        assert!(model.rows_per_run() >= 256, "{}", model.rows_per_run());
        let rows = 1000;
        let inputs: TVec<TValue> = spec
            .inputs
            .iter()
            .map(|input| {
                let width = input.width();
                let mut shape = vec![rows];
                shape.extend(input.shape.iter().skip(1).map(|d| *d as usize));
                let tensor = match input.element {
                    ElementType::Int64 => {
                        let values: Vec<i64> = (0..rows * width).map(|i| (i % 4) as i64).collect();
                        Tensor::from_shape(&shape, &values)
                    }
                    _ => {
                        let values: Vec<f32> =
                            (0..rows * width).map(|i| (i % 97) as f32 / 97.0).collect();
                        Tensor::from_shape(&shape, &values)
                    }
                };
                tensor.expect("tensor").into_tvalue()
            })
            .collect();
        let whole = model.run_once(inputs.clone()).expect("one call");
        model.rows_per_run = 7;
        let sliced = model.run(inputs).expect("in slices of 7 rows");
        assert_eq!(whole.len(), sliced.len());
        for (a, b) in whole.iter().zip(&sliced) {
            assert_eq!(a.shape(), b.shape());
            assert_eq!(**a, **b);
        }
    }
}
