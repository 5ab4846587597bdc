//! Arrow columns to tract tensors and back: a model input packed from one list column or several
//! scalar columns (NULL rows fed zeros and marked), an output tensor unpacked into a column.

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
