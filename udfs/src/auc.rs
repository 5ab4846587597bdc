//! `auc(score, label)`: area under the ROC curve, an aggregate.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, Signature, Volatility,
};

use crate::DOC_SECTION;

pub const NAME: &str = "auc";

static DOCUMENTATION: LazyLock<Documentation> =
    LazyLock::new(|| {
        Documentation::builder(
        DOC_SECTION,
        "Area under the ROC curve of `score` against a binary `label`: the probability that a \
         random positive row scores higher than a random negative one, ties counting one half \
         (scikit-learn's `roc_auc_score`). A row is positive when `label` is true or greater than \
         0. Rows with a NULL label or a NULL or NaN score are ignored. NULL when a group has no \
         positive or no negative rows. Exact: it keeps every score of the group (8 bytes a row) \
         and sorts them once.",
        "auc(score, label)",
    )
    .with_sql_example(
        "```sql\nSELECT model, auc(predicted_ctr, clicked) FROM impressions GROUP BY model;\n```",
    )
    .with_argument("score", "Predicted score; higher means more likely positive.")
    .with_argument("label", "Boolean or number; true / > 0 is positive.")
    .build()
    });

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Auc {
    signature: Signature,
}

pub fn udaf() -> AggregateUDF {
    AggregateUDF::new_from_impl(Auc {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

fn score_list(name: &str) -> FieldRef {
    let item = Arc::new(Field::new_list_field(DataType::Float64, true));
    Arc::new(Field::new(name, DataType::List(item), true))
}

impl AggregateUDFImpl for Auc {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [score, label] = arg_types else {
            return plan_err!(
                "{NAME} takes 2 arguments (score, label), got {}",
                arg_types.len()
            );
        };
        if !(score.is_numeric() || score.is_null()) {
            return plan_err!("{NAME}: score must be a number, got {score}");
        }
        let label = match label {
            DataType::Boolean | DataType::Null => DataType::Boolean,
            t if t.is_numeric() => DataType::Float64,
            other => return plan_err!("{NAME}: label must be a boolean or a number, got {other}"),
        };
        Ok(vec![DataType::Float64, label])
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::<AucAccumulator>::default())
    }

    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![score_list("positives"), score_list("negatives")])
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

/// The scores of a group's positive and negative rows.
#[derive(Debug, Default)]
struct AucAccumulator {
    positives: Vec<f64>,
    negatives: Vec<f64>,
}

impl Accumulator for AucAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let [scores, labels] = values else {
            return exec_err!("{NAME} takes 2 arguments");
        };
        let scores = scores.as_primitive::<Float64Type>();
        let positive: Box<dyn Fn(usize) -> bool> = match labels.data_type() {
            DataType::Boolean => {
                let labels = labels.as_boolean();
                Box::new(move |i| labels.value(i))
            }
            _ => {
                let labels = labels.as_primitive::<Float64Type>();
                Box::new(move |i| labels.value(i) > 0.0)
            }
        };
        for i in 0..scores.len() {
            if scores.is_null(i) || labels.is_null(i) || scores.value(i).is_nan() {
                continue;
            }
            if positive(i) {
                self.positives.push(scores.value(i));
            } else {
                self.negatives.push(scores.value(i));
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        if self.positives.is_empty() || self.negatives.is_empty() {
            return Ok(ScalarValue::Float64(None));
        }
        self.positives.sort_unstable_by(f64::total_cmp);
        self.negatives.sort_unstable_by(f64::total_cmp);
        // For each positive (ascending), count the negatives below it and those tied with it.
        let (mut below, mut at_or_below, mut wins) = (0usize, 0usize, 0.0);
        for p in &self.positives {
            while below < self.negatives.len() && self.negatives[below] < *p {
                below += 1;
            }
            at_or_below = at_or_below.max(below);
            while at_or_below < self.negatives.len() && self.negatives[at_or_below] <= *p {
                at_or_below += 1;
            }
            wins += below as f64 + 0.5 * (at_or_below - below) as f64;
        }
        let pairs = self.positives.len() as f64 * self.negatives.len() as f64;
        Ok(ScalarValue::Float64(Some(wins / pairs)))
    }

    fn size(&self) -> usize {
        size_of_val(self) + (self.positives.capacity() + self.negatives.capacity()) * 8
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let list = |scores: &[f64]| {
            let values: ArrayRef = Arc::new(Float64Array::from(scores.to_vec()));
            ScalarValue::List(Arc::new(datafusion::arrow::array::ListArray::new(
                Arc::new(Field::new_list_field(DataType::Float64, true)),
                datafusion::arrow::buffer::OffsetBuffer::from_lengths([scores.len()]),
                values,
                None,
            )))
        };
        Ok(vec![list(&self.positives), list(&self.negatives)])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let [positives, negatives] = states else {
            return exec_err!("{NAME}: expected 2 state columns");
        };
        for (state, into) in [
            (positives, &mut self.positives),
            (negatives, &mut self.negatives),
        ] {
            let lists = state.as_list::<i32>();
            for i in 0..lists.len() {
                if lists.is_valid(i) {
                    into.extend(lists.value(i).as_primitive::<Float64Type>().values());
                }
            }
        }
        Ok(())
    }
}
