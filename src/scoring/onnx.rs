//! The tract runtime: an ONNX file loaded into an optimized plan with a symbolic batch dimension
//! (the conversion between Arrow columns and its tensors is in `tensors.rs`).
//!
//! Plans are immutable and `Send + Sync`; every call spawns its own state, so one plan serves all
//! queries at once. Calls run wherever DataFusion polls the query: on the executor runtime, never on
//! the gRPC IO threads.
use std::path::Path;
use std::sync::Arc;

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
