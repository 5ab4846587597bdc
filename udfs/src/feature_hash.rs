//! `feature_hash(value, num_buckets)`: the hashing trick, with a hash any language can reproduce.

use std::io::Cursor;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, AsArray, Int64Builder};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

use crate::DOC_SECTION;
use crate::args::{Arg, args, is_integer, positive, result, rows};

pub const NAME: &str = "feature_hash";

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_SECTION,
        "Bucket of `value` under the hashing trick: MurmurHash3 x86 32-bit, seed 0, of the value's \
         bytes, read as an unsigned 32-bit integer, modulo `num_buckets`. Strings hash their UTF-8 \
         bytes, binary values their bytes, integers the bytes of their decimal text (so \
         `feature_hash(42, n) = feature_hash('42', n)`). The result is the same on every platform \
         and release; Python reproduces it with \
         `sklearn.utils.murmurhash3_32(value, seed=0, positive=True) % num_buckets` (or the `mmh3` \
         package: `mmh3.hash(value, 0, signed=False) % num_buckets`). NULL if either argument is \
         NULL; `num_buckets` must be positive.",
        "feature_hash(value, num_buckets)",
    )
    .with_sql_example(
        "```sql\nSELECT feature_hash(item_id, 1048576) AS item_bucket FROM events;\n```",
    )
    .with_argument("value", "String, integer or binary value to hash.")
    .with_argument("num_buckets", "Number of buckets, a positive integer.")
    .build()
});

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct FeatureHash {
    signature: Signature,
}

pub fn udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(FeatureHash {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

impl ScalarUDFImpl for FeatureHash {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [value, buckets] = arg_types else {
            return plan_err!(
                "{NAME} takes 2 arguments (value, num_buckets), got {}",
                arg_types.len()
            );
        };
        let value = match value {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => {
                DataType::Utf8
            }
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
            DataType::Dictionary(_, inner) if inner.is_string() => DataType::Utf8,
            t if t.is_integer() => DataType::Int64,
            other => {
                return plan_err!(
                    "{NAME}: value must be a string, integer or binary, got {other} (cast it explicitly)"
                );
            }
        };
        if !is_integer(buckets) {
            return plan_err!("{NAME}: num_buckets must be an integer, got {buckets}");
        }
        Ok(vec![value, DataType::Int64])
    }

    fn invoke_with_args(&self, call: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (args, all_scalar) = args(&call.args)?;
        let [value, buckets] = args.as_slice() else {
            return exec_err!("{NAME} takes 2 arguments");
        };
        let rows = rows(call.number_rows, all_scalar);
        let mut out = Int64Builder::with_capacity(rows);
        let mut text = String::new();
        for row in 0..rows {
            let Some(buckets) = positive(NAME, "num_buckets", buckets, row)? else {
                out.append_null();
                continue;
            };
            match bytes_of(value, row, &mut text) {
                Some(bytes) => out.append_value(i64::from(murmur3(bytes)?) % buckets),
                None => out.append_null(),
            }
        }
        result(Arc::new(out.finish()), all_scalar)
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

/// The bytes hashed for row `row`; integers are written as decimal text into `text`.
fn bytes_of<'a>(value: &'a Arg, row: usize, text: &'a mut String) -> Option<&'a [u8]> {
    let index = value.index(row);
    let array = &value.array;
    if array.is_null(index) {
        return None;
    }
    Some(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(index).as_bytes(),
        DataType::Binary => array.as_binary::<i32>().value(index),
        _ => {
            use std::fmt::Write;
            text.clear();
            let _ = write!(text, "{}", array.as_primitive::<Int64Type>().value(index));
            text.as_bytes()
        }
    })
}

/// MurmurHash3 x86 32-bit with seed 0.
pub fn murmur3(bytes: &[u8]) -> Result<u32> {
    murmur3::murmur3_32(&mut Cursor::new(bytes), 0)
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::murmur3;

    /// Published MurmurHash3_x86_32 vectors (seed 0), as also produced by sklearn's murmurhash3_32.
    #[test]
    fn matches_reference_vectors() {
        assert_eq!(murmur3(b"").unwrap(), 0);
        assert_eq!(murmur3(b"hello").unwrap(), 0x248b_fa47);
        assert_eq!(
            murmur3(b"The quick brown fox jumps over the lazy dog").unwrap(),
            0x2e4f_f723
        );
    }
}
