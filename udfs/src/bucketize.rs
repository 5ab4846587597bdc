//! `bucketize(x, boundaries)`: the index of the bucket `x` falls in, for sorted boundaries.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{AsArray, Int32Builder};
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

use crate::DOC_SECTION;
use crate::args::{args, result, rows};
use crate::vectors::{Vectors, coerce_numeric_list};

pub const NAME: &str = "bucketize";

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_SECTION,
        "Index of the bucket `x` falls in: the number of boundaries less than or equal to `x`, so \
         values below the first boundary are bucket 0 and values at or above the last are bucket \
         `cardinality(boundaries)` (numpy's `searchsorted(boundaries, x, side='right')`, Python's \
         `bisect_right`). Boundaries must be sorted ascending (an error names the first pair out of \
         order). NULL if `x` is NULL or NaN, or if `boundaries` is NULL or holds a NULL.",
        "bucketize(x, boundaries)",
    )
    .with_sql_example(
        "```sql\nSELECT bucketize(price, [10, 50, 100]) AS price_bucket FROM items;\n```",
    )
    .with_argument("x", "Number to place.")
    .with_argument("boundaries", "Ascending list of bucket boundaries.")
    .build()
});

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Bucketize {
    signature: Signature,
}

pub fn udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(Bucketize {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

impl ScalarUDFImpl for Bucketize {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int32)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [x, boundaries] = arg_types else {
            return plan_err!(
                "{NAME} takes 2 arguments (x, boundaries), got {}",
                arg_types.len()
            );
        };
        if !(x.is_numeric() || x.is_null()) {
            return plan_err!("{NAME}: x must be a number, got {x}");
        }
        Ok(vec![
            DataType::Float64,
            coerce_numeric_list(NAME, "boundaries", boundaries)?,
        ])
    }

    fn invoke_with_args(&self, call: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (args, all_scalar) = args(&call.args)?;
        let [x, boundaries] = args.as_slice() else {
            return exec_err!("{NAME} takes 2 arguments");
        };
        let rows = rows(call.number_rows, all_scalar);
        let values = x.array.as_primitive::<Float64Type>();
        let lists = Vectors::new(boundaries);
        let mut checked = None;
        let mut out = Int32Builder::with_capacity(rows);
        for row in 0..rows {
            let (Some(bounds), false) = (lists.get(row), x.is_null(row)) else {
                out.append_null();
                continue;
            };
            // A literal list is one value for every row: check its order once.
            if checked != Some(boundaries.index(row)) {
                check_sorted(bounds, row)?;
                checked = Some(boundaries.index(row));
            }
            let value = values.value(x.index(row));
            if value.is_nan() {
                out.append_null();
            } else {
                out.append_value(bounds.partition_point(|b| *b <= value) as i32);
            }
        }
        result(Arc::new(out.finish()), all_scalar)
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

fn check_sorted(bounds: &[f64], row: usize) -> Result<()> {
    match bounds
        .windows(2)
        .position(|w| w[0].partial_cmp(&w[1]).is_none_or(|o| o.is_gt()))
    {
        Some(i) => exec_err!(
            "{NAME}: boundaries must be sorted ascending, but {} comes before {} (row {row})",
            bounds[i],
            bounds[i + 1]
        ),
        None => Ok(()),
    }
}
