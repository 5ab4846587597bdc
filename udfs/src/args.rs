//! Arguments as arrays without copying literals: a scalar argument (`now()`, a literal boundary
//! list, a constant `k`) stays one value that every row reads, instead of being repeated per row.

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::ColumnarValue;

/// One argument of a call, as an array of one value (a scalar) or of one value per row.
pub struct Arg {
    pub array: ArrayRef,
    scalar: bool,
}

impl Arg {
    /// Another array read the same way as `arg` (one value for all rows if `arg` is a scalar).
    pub fn like(arg: &Arg, array: ArrayRef) -> Self {
        Self {
            array,
            scalar: arg.scalar,
        }
    }

    /// The index in `array` holding row `row`'s value.
    pub fn index(&self, row: usize) -> usize {
        if self.scalar { 0 } else { row }
    }

    pub fn is_null(&self, row: usize) -> bool {
        self.array.is_null(self.index(row))
    }
}

/// The arguments of one call, and whether every one is a scalar (then so is the result).
pub fn args(values: &[ColumnarValue]) -> Result<(Vec<Arg>, bool)> {
    let all_scalar = values.iter().all(|v| matches!(v, ColumnarValue::Scalar(_)));
    let args = values
        .iter()
        .map(|value| {
            Ok(match value {
                ColumnarValue::Array(array) => Arg {
                    array: array.clone(),
                    scalar: false,
                },
                ColumnarValue::Scalar(scalar) => Arg {
                    array: scalar.to_array()?,
                    scalar: true,
                },
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((args, all_scalar))
}

/// Wraps a result computed for `rows` rows (one row when every argument was a scalar).
pub fn result(array: ArrayRef, all_scalar: bool) -> Result<ColumnarValue> {
    if all_scalar {
        Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
            &array, 0,
        )?))
    } else {
        Ok(ColumnarValue::Array(array))
    }
}

/// Number of rows to compute: one when every argument is a scalar.
pub fn rows(number_rows: usize, all_scalar: bool) -> usize {
    if all_scalar { 1 } else { number_rows }
}

/// The `k` of a ranking metric or the bucket count of a hash, coerced to Int64: `None` for NULL,
/// an execution error naming the function when it is not positive.
pub fn positive(function: &str, what: &str, arg: &Arg, row: usize) -> Result<Option<i64>> {
    if arg.is_null(row) {
        return Ok(None);
    }
    let value = arg.array.as_primitive::<Int64Type>().value(arg.index(row));
    if value <= 0 {
        return exec_err!("{function}: {what} must be positive, got {value}");
    }
    Ok(Some(value))
}

/// Integer types accepted for `k`-like arguments; they are cast to Int64.
pub fn is_integer(data_type: &datafusion::arrow::datatypes::DataType) -> bool {
    data_type.is_integer() || data_type.is_null()
}

/// Debug, equality and hashing by the `name` field, for function structs that hold a `fn` pointer
/// (comparing those is unreliable): two instances with one name are the same SQL function.
macro_rules! identified_by_name {
    ($type:ty) => {
        impl std::fmt::Debug for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($type))
                    .field("name", &self.name)
                    .finish()
            }
        }

        impl PartialEq for $type {
            fn eq(&self, other: &Self) -> bool {
                self.name == other.name
            }
        }

        impl Eq for $type {}

        impl std::hash::Hash for $type {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.name.hash(state);
            }
        }
    };
}
pub(crate) use identified_by_name;
