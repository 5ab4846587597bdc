//! The shared shape of the per-row ranking metrics (`precision_at_k`, `recall_at_k`, `ndcg_at_k`,
//! `average_precision_at_k`): a list of recommended ids in rank order, a list of relevant ids, and a
//! cut-off `k`. Each metric's file holds its documentation and formula over [`Hits`].
//!
//! Ids may be any type both lists share (integers of different widths meet as Int64, strings as
//! Utf8); they are compared through Arrow's row format, so every type compares the same way.
//! NULL ids are ignored, a relevant id counts once however often it is recommended, and a NULL list
//! or NULL `k` gives NULL.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, AsArray, Float64Builder};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

use crate::DOC_SECTION;
use crate::args::{Arg, args, is_integer, positive, result, rows};

/// What a metric sees of one row.
pub struct Hits<'a> {
    pub k: usize,
    /// 0-based ranks, below `k`, of the recommended ids that are relevant (first occurrence only).
    pub ranks: &'a [usize],
    /// Number of distinct relevant ids.
    pub relevant: usize,
}

/// A metric's documentation: its own definition, then what all four share.
pub fn documentation(name: &str, definition: &str, example: &str) -> Documentation {
    Documentation::builder(
        DOC_SECTION,
        format!(
            "{definition} Ids are compared by value (any type both lists share); NULL ids are \
             ignored and a relevant id counts once. NULL if a list or `k` is NULL; `k` must be \
             positive."
        ),
        format!("{name}(predicted, relevant, k)"),
    )
    .with_sql_example(format!("```sql\nSELECT {example}\n```"))
    .with_argument("predicted", "Recommended ids, best first.")
    .with_argument(
        "relevant",
        "Ids the user actually interacted with (order ignored).",
    )
    .with_argument("k", "Cut-off: only the first k recommended ids count.")
    .build()
}

/// Discount of a hit at 0-based `rank` in DCG: `1 / log2(rank + 2)`.
pub fn discount(rank: usize) -> f64 {
    1.0 / ((rank + 2) as f64).log2()
}

pub struct RankingMetric {
    pub name: &'static str,
    pub documentation: &'static LazyLock<Documentation>,
    /// The metric for one row; `None` (NULL) where it is undefined, e.g. no relevant ids.
    pub metric: fn(&Hits) -> Option<f64>,
    signature: Signature,
}

impl RankingMetric {
    pub fn udf(
        name: &'static str,
        documentation: &'static LazyLock<Documentation>,
        metric: fn(&Hits) -> Option<f64>,
    ) -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            name,
            documentation,
            metric,
            signature: Signature::user_defined(Volatility::Immutable),
        })
    }
}

crate::args::identified_by_name!(RankingMetric);

fn element(data_type: &DataType) -> Option<&DataType> {
    match data_type {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            Some(f.data_type())
        }
        DataType::Null => Some(&DataType::Null),
        _ => None,
    }
}

/// The id type both lists are cast to.
fn common_id_type(name: &str, predicted: &DataType, relevant: &DataType) -> Result<DataType> {
    let (Some(p), Some(r)) = (element(predicted), element(relevant)) else {
        return plan_err!(
            "{name}: predicted and relevant must be lists of ids, got {predicted} and {relevant}"
        );
    };
    let string = |t: &DataType| t.is_string() || t.is_null();
    Ok(match (p, r) {
        (p, r) if p == r && !p.is_null() => p.clone(),
        (p, r) if is_integer(p) && is_integer(r) => DataType::Int64,
        (p, r) if string(p) && string(r) => DataType::Utf8,
        _ => {
            return plan_err!(
                "{name}: predicted and relevant must hold the same kind of ids, got {p} and {r}"
            );
        }
    })
}

impl ScalarUDFImpl for RankingMetric {
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
        let [predicted, relevant, k] = arg_types else {
            return plan_err!(
                "{} takes 3 arguments (predicted, relevant, k), got {}",
                self.name,
                arg_types.len()
            );
        };
        if !is_integer(k) {
            return plan_err!("{}: k must be an integer, got {k}", self.name);
        }
        let ids = common_id_type(self.name, predicted, relevant)?;
        let list = DataType::List(Arc::new(Field::new_list_field(ids, true)));
        Ok(vec![list.clone(), list, DataType::Int64])
    }

    fn invoke_with_args(&self, call: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (args, all_scalar) = args(&call.args)?;
        let [predicted, relevant, k] = args.as_slice() else {
            return exec_err!("{} takes 3 arguments", self.name);
        };
        let predicted = Ids::new(predicted)?;
        let relevant = Ids::new(relevant)?;
        let rows = rows(call.number_rows, all_scalar);
        let mut out = Float64Builder::with_capacity(rows);
        let mut wanted = HashSet::new();
        let mut ranks = Vec::new();
        for row in 0..rows {
            let Some(k) = positive(self.name, "k", k, row)? else {
                out.append_null();
                continue;
            };
            let (Some(recommended), Some(relevant_ids)) = (predicted.get(row), relevant.get(row))
            else {
                out.append_null();
                continue;
            };
            wanted.clear();
            wanted.extend(relevant_ids.filter_map(|i| relevant.id(i)));
            let relevant_count = wanted.len();
            ranks.clear();
            for (rank, i) in recommended.take(k as usize).enumerate() {
                if predicted.id(i).is_some_and(|id| wanted.remove(&id)) {
                    ranks.push(rank);
                }
            }
            let hits = Hits {
                k: k as usize,
                ranks: &ranks,
                relevant: relevant_count,
            };
            out.append_option((self.metric)(&hits));
        }
        result(Arc::new(out.finish()), all_scalar)
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(self.documentation)
    }
}

/// A list-of-ids argument with its elements in Arrow's row format (hashable, comparable).
struct Ids<'a> {
    arg: &'a Arg,
    offsets: OffsetBuffer<i32>,
    values: Arc<dyn Array>,
    rows: Rows,
}

impl<'a> Ids<'a> {
    fn new(arg: &'a Arg) -> Result<Self> {
        let list = arg.array.as_list::<i32>();
        let values = list.values().clone();
        let converter = RowConverter::new(vec![SortField::new(values.data_type().clone())])?;
        let rows = converter.convert_columns(std::slice::from_ref(&values))?;
        Ok(Self {
            arg,
            offsets: list.offsets().clone(),
            values,
            rows,
        })
    }

    /// Positions in the values of row `row`'s ids; `None` when the list is NULL.
    fn get(&self, row: usize) -> Option<std::ops::Range<usize>> {
        let index = self.arg.index(row);
        if self.arg.array.is_null(index) {
            return None;
        }
        Some(self.offsets[index] as usize..self.offsets[index + 1] as usize)
    }

    /// The id at value position `i`; `None` for a NULL id.
    fn id(&self, i: usize) -> Option<datafusion::arrow::row::Row<'_>> {
        (!self.values.is_null(i)).then(|| self.rows.row(i))
    }
}
