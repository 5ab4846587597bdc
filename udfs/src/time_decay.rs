//! `time_decay(ts, now, half_life)`: the weight of an event that decays by half every `half_life`.

use std::sync::LazyLock;

use datafusion::arrow::array::{ArrayRef, AsArray, Float64Builder};
use datafusion::arrow::datatypes::{
    DataType, DurationMicrosecondType, IntervalMonthDayNanoType, IntervalUnit, TimeUnit,
    TimestampMicrosecondType,
};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

use crate::DOC_SECTION;
use crate::args::{Arg, args, result, rows};

pub const NAME: &str = "time_decay";

const MICROS_PER_DAY: f64 = 86_400_000_000.0;

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_SECTION,
        "Exponential decay weight of an event's age: `0.5 ^ ((now - ts) / half_life)`. An event at \
         `now` weighs 1, one half-life older 0.5. Events after `now` weigh more than 1 (filter them \
         with `ts <= now` for point-in-time features). Timestamps without a time zone are read as \
         UTC. NULL if any argument is NULL. `half_life` must be positive and must not contain months \
         (a month has no fixed length); days count as 24 hours.",
        "time_decay(ts, now, half_life)",
    )
    .with_sql_example(
        "```sql\nSELECT user_id, sum(time_decay(ts, TIMESTAMP '2024-06-01', INTERVAL '7 days')) AS decayed_clicks\nFROM events GROUP BY user_id;\n```",
    )
    .with_argument("ts", "Timestamp of the event.")
    .with_argument("now", "Timestamp the age is measured at, e.g. `now()` or a label's time.")
    .with_argument("half_life", "Interval or duration after which the weight halves.")
    .build()
});

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TimeDecay {
    signature: Signature,
}

pub fn udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(TimeDecay {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

impl ScalarUDFImpl for TimeDecay {
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
        let [ts, now, half_life] = arg_types else {
            return plan_err!(
                "{NAME} takes 3 arguments (ts, now, half_life), got {}",
                arg_types.len()
            );
        };
        Ok(vec![
            timestamp(ts, "ts")?,
            timestamp(now, "now")?,
            match half_life {
                DataType::Interval(_) => DataType::Interval(IntervalUnit::MonthDayNano),
                DataType::Duration(_) => DataType::Duration(TimeUnit::Microsecond),
                DataType::Null => DataType::Interval(IntervalUnit::MonthDayNano),
                other => {
                    return plan_err!(
                        "{NAME}: half_life must be an interval (e.g. INTERVAL '7 days'), got {other}"
                    );
                }
            },
        ])
    }

    fn invoke_with_args(&self, call: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (args, all_scalar) = args(&call.args)?;
        let [ts, now, half_life] = args.as_slice() else {
            return exec_err!("{NAME} takes 3 arguments");
        };
        let rows = rows(call.number_rows, all_scalar);
        let mut out = Float64Builder::with_capacity(rows);
        let ts_values = ts.array.as_primitive::<TimestampMicrosecondType>();
        let now_values = now.array.as_primitive::<TimestampMicrosecondType>();
        for row in 0..rows {
            if ts.is_null(row) || now.is_null(row) || half_life.is_null(row) {
                out.append_null();
                continue;
            }
            let half_life = half_life_micros(half_life, row)?;
            let age = (now_values.value(now.index(row)) - ts_values.value(ts.index(row))) as f64;
            out.append_value((-age / half_life).exp2());
        }
        result(std::sync::Arc::new(out.finish()) as ArrayRef, all_scalar)
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

/// Any timestamp becomes microseconds, keeping its time zone (the stored values are UTC instants).
fn timestamp(data_type: &DataType, name: &str) -> Result<DataType> {
    match data_type {
        DataType::Timestamp(_, tz) => Ok(DataType::Timestamp(TimeUnit::Microsecond, tz.clone())),
        // Dates and string literals ('2024-06-01 12:00') are read as UTC.
        DataType::Date32
        | DataType::Date64
        | DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Null => Ok(DataType::Timestamp(TimeUnit::Microsecond, None)),
        other => plan_err!("{NAME}: {name} must be a timestamp, got {other}"),
    }
}

fn half_life_micros(half_life: &Arg, row: usize) -> Result<f64> {
    let index = half_life.index(row);
    let micros = match half_life.array.data_type() {
        DataType::Duration(_) => half_life
            .array
            .as_primitive::<DurationMicrosecondType>()
            .value(index) as f64,
        _ => {
            let interval = half_life
                .array
                .as_primitive::<IntervalMonthDayNanoType>()
                .value(index);
            if interval.months != 0 {
                return exec_err!(
                    "{NAME}: half_life must not contain months (a month has no fixed length); use days"
                );
            }
            interval.days as f64 * MICROS_PER_DAY + interval.nanoseconds as f64 / 1000.0
        }
    };
    if micros <= 0.0 {
        return exec_err!("{NAME}: half_life must be positive");
    }
    Ok(micros)
}
