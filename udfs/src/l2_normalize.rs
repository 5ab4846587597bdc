//! `l2_normalize(a)`: an embedding scaled to unit length.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, Float64Builder, ListBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

use crate::DOC_SECTION;
use crate::args::{Arg, args, result, rows};
use crate::vectors::{Vectors, float_list, norm};

pub const NAME: &str = "l2_normalize";

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_SECTION,
        "The vector divided by its Euclidean norm, so that `dot(l2_normalize(a), l2_normalize(a)) = \
         1`. A zero vector is returned unchanged (as scikit-learn's `normalize` does). Returns a \
         List of Float32 for Float32 input and of Float64 otherwise. NULL if the vector is NULL or \
         holds a NULL.",
        "l2_normalize(a)",
    )
    .with_sql_example("```sql\nSELECT l2_normalize([3.0, 4.0]);  -- [0.6, 0.8]\n```")
    .with_argument("a", "List or FixedSizeList of numbers.")
    .build()
});

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct L2Normalize {
    signature: Signature,
}

pub fn udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(L2Normalize {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

fn list_of(element: DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(element, true)))
}

impl ScalarUDFImpl for L2Normalize {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types.first().cloned().unwrap_or_else(float_list))
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [a] = arg_types else {
            return plan_err!("{NAME} takes 1 argument (a), got {}", arg_types.len());
        };
        match a {
            DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _)
                if *f.data_type() == DataType::Float32 =>
            {
                Ok(vec![list_of(DataType::Float32)])
            }
            DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _)
                if f.data_type().is_numeric() || f.data_type().is_null() =>
            {
                Ok(vec![float_list()])
            }
            DataType::Null => Ok(vec![float_list()]),
            other => plan_err!("{NAME}: a must be a list of numbers, got {other}"),
        }
    }

    fn invoke_with_args(&self, call: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (args, all_scalar) = args(&call.args)?;
        let [a] = args.as_slice() else {
            return exec_err!("{NAME} takes 1 argument");
        };
        let output_type = a.array.data_type().clone();
        // Computed in Float64 whatever the input, then cast back: Float32 in, Float32 out.
        let wide = Arg::like(a, cast(&a.array, &float_list())?);
        let vectors = Vectors::new(&wide);
        let rows = rows(call.number_rows, all_scalar);
        let mut out = ListBuilder::new(Float64Builder::new());
        for row in 0..rows {
            match vectors.get(row) {
                Some(v) => {
                    let n = norm(v);
                    let n = if n > 0.0 { n } else { 1.0 };
                    out.values().extend(v.iter().map(|x| Some(x / n)));
                    out.append(true);
                }
                None => out.append_null(),
            }
        }
        let normalized: ArrayRef = Arc::new(out.finish());
        result(cast(&normalized, &output_type)?, all_scalar)
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}
