//! List arguments of numbers (embeddings, bucket boundaries) read as `f64` slices per row.
//!
//! Every numeric list type (List, LargeList, FixedSizeList of any integer or float) is coerced at
//! planning to `List(Float64)`, so the kernels below see one layout.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, AsArray, Float64Array, Float64Builder, ListArray};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

use crate::args::{Arg, args, result, rows};

/// `List(Float64)`, the planning-time target of every numeric list argument.
pub fn float_list() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)))
}

/// The coercion of one list-of-numbers argument, or a planning error naming the function and argument.
pub fn coerce_numeric_list(function: &str, name: &str, data_type: &DataType) -> Result<DataType> {
    match data_type {
        DataType::Null => Ok(float_list()),
        DataType::List(field) | DataType::LargeList(field) | DataType::FixedSizeList(field, _)
            if field.data_type().is_numeric() || field.data_type().is_null() =>
        {
            Ok(float_list())
        }
        other => plan_err!("{function}: {name} must be a list of numbers, got {other}"),
    }
}

/// A `List(Float64)` argument.
pub struct Vectors<'a> {
    arg: &'a Arg,
    list: &'a ListArray,
    values: &'a Float64Array,
}

impl<'a> Vectors<'a> {
    pub fn new(arg: &'a Arg) -> Self {
        let list = arg.array.as_list::<i32>();
        Self {
            arg,
            list,
            values: list.values().as_primitive::<Float64Type>(),
        }
    }

    /// Row `row`'s numbers; `None` when the list is NULL or holds a NULL element.
    pub fn get(&self, row: usize) -> Option<&'a [f64]> {
        let index = self.arg.index(row);
        if self.list.is_null(index) {
            return None;
        }
        let offsets = self.list.value_offsets();
        let (start, end) = (offsets[index] as usize, offsets[index + 1] as usize);
        if self.values.null_count() > 0 && (start..end).any(|i| self.values.is_null(i)) {
            return None;
        }
        Some(&self.values.values()[start..end])
    }
}

/// Both vectors of a row, checked to have the same length.
pub fn pair<'a>(
    function: &str,
    a: &Vectors<'a>,
    b: &Vectors<'a>,
    row: usize,
) -> Result<Option<(&'a [f64], &'a [f64])>> {
    let (Some(x), Some(y)) = (a.get(row), b.get(row)) else {
        return Ok(None);
    };
    if x.len() != y.len() {
        return exec_err!(
            "{function}: vectors must have the same length, got {} and {} (row {row})",
            x.len(),
            y.len()
        );
    }
    Ok(Some((x, y)))
}

pub fn dot(x: &[f64], y: &[f64]) -> f64 {
    // fold from +0.0: `Sum` for floats starts at -0.0, which would print as "-0" for empty vectors.
    x.iter().zip(y).fold(0.0, |acc, (a, b)| acc + a * b)
}

pub fn norm(x: &[f64]) -> f64 {
    dot(x, x).sqrt()
}

/// A function of two vectors returning a number per row (`dot`, `cosine_similarity`): the files of
/// those functions hold their documentation and kernel; this holds the planning and the loop.
pub struct Pairwise {
    pub name: &'static str,
    pub documentation: &'static LazyLock<Documentation>,
    /// The value for one row's pair of equal-length vectors; `None` for NULL.
    pub kernel: fn(&[f64], &[f64]) -> Option<f64>,
    pub signature: Signature,
}

impl Pairwise {
    pub fn udf(
        name: &'static str,
        documentation: &'static LazyLock<Documentation>,
        kernel: fn(&[f64], &[f64]) -> Option<f64>,
    ) -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            name,
            documentation,
            kernel,
            signature: Signature::user_defined(Volatility::Immutable),
        })
    }
}

crate::args::identified_by_name!(Pairwise);

impl ScalarUDFImpl for Pairwise {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [a, b] = arg_types else {
            return plan_err!(
                "{} takes 2 arguments (a, b), got {}",
                self.name,
                arg_types.len()
            );
        };
        Ok(vec![
            coerce_numeric_list(self.name, "a", a)?,
            coerce_numeric_list(self.name, "b", b)?,
        ])
    }

    fn invoke_with_args(&self, call: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (args, all_scalar) = args(&call.args)?;
        let [a, b] = args.as_slice() else {
            return exec_err!("{} takes 2 arguments", self.name);
        };
        let (a, b) = (Vectors::new(a), Vectors::new(b));
        let rows = rows(call.number_rows, all_scalar);
        let mut out = Float64Builder::with_capacity(rows);
        for row in 0..rows {
            let value = pair(self.name, &a, &b, row)?.and_then(|(x, y)| (self.kernel)(x, y));
            out.append_option(value);
        }
        result(Arc::new(out.finish()), all_scalar)
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(self.documentation)
    }
}
