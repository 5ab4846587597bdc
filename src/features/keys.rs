//! Key analysis for online lookups: which entity keys a statement's filters pin (`key = literal`,
//! `key IN (...)`, `key = ANY(list)`, ORs of those, literals or parameters), read by the view's table
//! provider (`table.rs`) to decide between the online index and a Delta scan.

use std::collections::HashSet;

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::expr::Placeholder;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};

/// Most key combinations one statement may look up in the index; beyond it the query scans Delta.
pub const MAX_LOOKUP_KEYS: usize = 10_000;

/// What a key filter allows: a literal, the statement's parameter `$n` (at index `n - 1`), known
/// when a prepared statement runs, or the elements of such a parameter when it is a list
/// (`key = ANY($n)`).
#[derive(Debug, Clone, PartialEq)]
pub enum KeyTerm {
    Value(ScalarValue),
    Parameter(usize),
    Elements(usize),
}

impl KeyTerm {
    /// The values this term allows, `params` giving those of the parameters (one row).
    pub fn values(&self, params: Option<&RecordBatch>) -> Result<Vec<ScalarValue>> {
        let parameter = |i: usize| match params.filter(|p| i < p.num_columns() && p.num_rows() > 0)
        {
            Some(params) => ScalarValue::try_from_array(params.column(i), 0),
            None => plan_err!("No value found for placeholder with id ${}", i + 1),
        };
        match self {
            KeyTerm::Value(v) => Ok(vec![v.clone()]),
            KeyTerm::Parameter(i) => Ok(vec![parameter(*i)?]),
            KeyTerm::Elements(i) => {
                let list = parameter(*i)?;
                match elements(&list) {
                    Some(values) => values,
                    None => plan_err!(
                        "parameter ${} of = ANY(${}) is {}, expected a list of keys",
                        i + 1,
                        i + 1,
                        list.data_type()
                    ),
                }
            }
        }
    }
}

/// The elements of a list value (none for a NULL list); `None` if it is not a list.
fn elements(list: &ScalarValue) -> Option<Result<Vec<ScalarValue>>> {
    let array: &dyn Array = match list {
        ScalarValue::List(a) => a.as_ref(),
        ScalarValue::LargeList(a) => a.as_ref(),
        ScalarValue::FixedSizeList(a) => a.as_ref(),
        _ => return None,
    };
    Some(
        ScalarValue::convert_array_to_scalar_vec(array)
            .map(|rows| rows.into_iter().flatten().flatten().collect()),
    )
}

/// The column a filter constrains and the terms it allows, if it is `column = term`,
/// `term = column`, `column IN (terms)`, `column = ANY(list)` (DataFusion's `array_has(list,
/// column)`, the list a literal or a parameter) or an `OR` of those on one column (DataFusion turns
/// short IN lists into ORs); a term is a literal or a placeholder `$n`.
pub fn key_terms(filter: &Expr) -> Option<(String, Vec<KeyTerm>)> {
    let parameter = |p: &Placeholder| crate::parameters::index(&p.id);
    let term = |e: &Expr| match e {
        Expr::Literal(v, _) => Some(KeyTerm::Value(v.clone())),
        Expr::Placeholder(p) => parameter(p).map(KeyTerm::Parameter),
        _ => None,
    };
    match filter {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => {
            let (column, mut terms) = key_terms(left)?;
            let (other, more) = key_terms(right)?;
            (column == other).then(|| {
                terms.extend(more);
                (column, terms)
            })
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), value) | (value, Expr::Column(c)) => {
                Some((c.name.clone(), vec![term(value)?]))
            }
            _ => None,
        },
        Expr::InList(in_list) if !in_list.negated => {
            let Expr::Column(c) = in_list.expr.as_ref() else {
                return None;
            };
            let terms = in_list.list.iter().map(term).collect::<Option<Vec<_>>>()?;
            Some((c.name.clone(), terms))
        }
        Expr::ScalarFunction(call) if call.name() == "array_has" => {
            let [list, Expr::Column(c)] = call.args.as_slice() else {
                return None;
            };
            let terms = match list {
                Expr::Placeholder(p) => vec![KeyTerm::Elements(parameter(p)?)],
                Expr::Literal(list, _) => elements(list)?
                    .ok()?
                    .into_iter()
                    .map(KeyTerm::Value)
                    .collect(),
                Expr::ScalarFunction(make) if make.name() == "make_array" => {
                    make.args.iter().map(term).collect::<Option<Vec<_>>>()?
                }
                _ => return None,
            };
            Some((c.name.clone(), terms))
        }
        _ => None,
    }
}

/// The values a filter allows for one column, if it is a key filter ([`key_terms`]) of literals
/// only. NULL literals match nothing.
pub fn key_values(filter: &Expr) -> Option<(String, Vec<ScalarValue>)> {
    let (column, terms) = key_terms(filter)?;
    let values = terms
        .into_iter()
        .map(|t| match t {
            KeyTerm::Value(v) => Some(v),
            KeyTerm::Parameter(_) | KeyTerm::Elements(_) => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some((column, non_null(values)))
}

pub fn non_null(values: Vec<ScalarValue>) -> Vec<ScalarValue> {
    values.into_iter().filter(|v| !v.is_null()).collect()
}

/// The key combinations `filters` select for the `entity` columns: every entity column must be
/// constrained (values of several filters on one column intersect). `None` when they do not pin the
/// key or would select more than [`MAX_LOOKUP_KEYS`].
pub fn lookup_keys(entity: &[String], filters: &[Expr]) -> Option<Vec<Vec<ScalarValue>>> {
    key_combinations(entity, filters.iter().filter_map(key_values))
}

/// [`lookup_keys`] of filters already taken apart: (column, the values it allows).
pub fn key_combinations<C: AsRef<str>>(
    entity: &[String],
    filters: impl IntoIterator<Item = (C, Vec<ScalarValue>)>,
) -> Option<Vec<Vec<ScalarValue>>> {
    let mut allowed: Vec<Option<Vec<ScalarValue>>> = vec![None; entity.len()];
    for (column, values) in filters {
        let column = column.as_ref();
        let Some(k) = entity.iter().position(|e| e == column) else {
            continue;
        };
        allowed[k] = Some(match allowed[k].take() {
            None => dedup(values),
            Some(held) => held.into_iter().filter(|v| values.contains(v)).collect(),
        });
    }
    let allowed = allowed.into_iter().collect::<Option<Vec<_>>>()?;
    let combinations = allowed
        .iter()
        .try_fold(1usize, |n, values| n.checked_mul(values.len()))?;
    if combinations > MAX_LOOKUP_KEYS {
        return None;
    }
    let mut keys: Vec<Vec<ScalarValue>> = vec![Vec::new()];
    for values in allowed {
        keys = keys
            .into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut key = prefix.clone();
                    key.push(v.clone());
                    key
                })
            })
            .collect();
    }
    Some(keys)
}

fn dedup(values: Vec<ScalarValue>) -> Vec<ScalarValue> {
    let mut seen = HashSet::with_capacity(values.len());
    values
        .into_iter()
        .filter(|v| seen.insert(v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Int64Array};
    use datafusion::prelude::{col, lit};

    use super::*;

    #[test]
    fn key_filters_may_take_their_values_from_parameters() {
        use datafusion::logical_expr::expr::Placeholder;
        let param = |id: &str| Expr::Placeholder(Placeholder::new_with_field(id.into(), None));
        let within = col("user_id").in_list(vec![param("$2"), lit(7i64), param("$1")], false);
        assert_eq!(
            key_terms(&within),
            Some((
                "user_id".to_string(),
                vec![
                    KeyTerm::Parameter(1),
                    KeyTerm::Value(ScalarValue::Int64(Some(7))),
                    KeyTerm::Parameter(0)
                ]
            ))
        );
        assert!(key_values(&within).is_none(), "not bound yet");
        assert!(key_terms(&col("user_id").eq(param("$name"))).is_none());
        assert!(key_terms(&col("user_id").eq(col("other"))).is_none());
        let params =
            RecordBatch::try_from_iter([("0", Arc::new(Int64Array::from(vec![42])) as ArrayRef)])
                .expect("params");
        assert_eq!(
            KeyTerm::Parameter(0).values(Some(&params)).expect("bound"),
            [ScalarValue::Int64(Some(42))]
        );
        let missing = KeyTerm::Parameter(1).values(Some(&params)).expect_err("$2");
        assert!(
            missing.to_string().contains("placeholder with id $2"),
            "{missing}"
        );
    }

    #[test]
    fn filters_pin_keys() {
        let entity = vec!["user_id".to_string()];
        let eq = col("user_id").eq(lit(5i64));
        let keys = lookup_keys(&entity, std::slice::from_ref(&eq)).expect("eq");
        assert_eq!(keys, vec![vec![ScalarValue::Int64(Some(5))]]);
        let within = col("user_id").in_list(vec![lit(5i64), lit(6i64), lit(5i64)], false);
        assert_eq!(
            lookup_keys(&entity, std::slice::from_ref(&within))
                .expect("in")
                .len(),
            2
        );
        assert_eq!(lookup_keys(&entity, &[within, eq]).expect("both").len(), 1);
        assert!(lookup_keys(&entity, &[col("user_id").gt(lit(5i64))]).is_none());
        let either = col("user_id")
            .eq(lit(5i64))
            .or(col("user_id").eq(lit(7i64)));
        assert_eq!(lookup_keys(&entity, &[either]).expect("or").len(), 2);
        let mixed = col("user_id").eq(lit(5i64)).or(col("other").eq(lit(7i64)));
        assert!(lookup_keys(&entity, &[mixed]).is_none());
        assert!(lookup_keys(&entity, &[col("other").eq(lit(5i64))]).is_none());
        let pair = vec!["user_id".to_string(), "item_id".to_string()];
        let both = [
            col("user_id").eq(lit(1i64)),
            col("item_id").in_list(vec![lit(7i64), lit(8i64)], false),
        ];
        assert_eq!(lookup_keys(&pair, &both).expect("pair").len(), 2);
        assert!(lookup_keys(&pair, &both[..1]).is_none());
    }
}
