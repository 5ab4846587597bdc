//! The online store: a feature view's materialized rows in memory, indexed by entity key.
//!
//! An [`OnlineIndex`] is built from one version of the view's Delta table and never changes; a refresh
//! builds the next one and swaps it in, so a lookup sees one version whole. Lookups come from ordinary
//! SQL: the view's table provider (`table.rs`) claims `key = literal`, `key IN (...)` and
//! `key = ANY(list)` filters and plans an `OnlineLookupExec` (`lookup_exec.rs`), which `EXPLAIN` shows; a prepared
//! lookup is answered from its parameters without a plan (`table::Lookup`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, TimestampMicrosecondArray};
use datafusion::arrow::compute::{CastOptions, cast, cast_with_options, interleave};
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{Result, ScalarValue, exec_datafusion_err, internal_err};
use foldhash::fast::RandomState;

/// Where one entity's row is.
#[derive(Debug, Clone, Copy)]
struct Slot {
    batch: u32,
    row: u32,
    /// The row's event time in microseconds since the epoch (`None`: NULL, never fresh under a TTL).
    event_us: Option<i64>,
}

/// Entities' slots by key: a key of one integer column by its value (most views: `user_id`,
/// `item_id`), any other key by its bytes in Arrow's row format.
enum Slots {
    Integer(HashMap<i64, Slot, RandomState>),
    Rows(RowConverter, HashMap<Box<[u8]>, Slot, RandomState>),
}

impl Slots {
    /// For keys of `types`: by value when it is one integer type that fits in an i64.
    fn for_types(types: &[&DataType]) -> Result<Self> {
        Ok(match types {
            [t] if t.is_signed_integer()
                || matches!(t, DataType::UInt8 | DataType::UInt16 | DataType::UInt32) =>
            {
                Slots::Integer(HashMap::default())
            }
            _ => Slots::Rows(
                RowConverter::new(types.iter().map(|&t| SortField::new(t.clone())).collect())?,
                HashMap::default(),
            ),
        })
    }

    fn len(&self) -> usize {
        match self {
            Slots::Integer(slots) => slots.len(),
            Slots::Rows(_, slots) => slots.len(),
        }
    }

    /// Bytes of the hash table (its allocated buckets; row-format keys' own bytes not counted).
    fn memory_bytes(&self) -> usize {
        match self {
            Slots::Integer(slots) => slots.capacity() * size_of::<(i64, Slot)>(),
            Slots::Rows(_, slots) => slots.capacity() * size_of::<(Box<[u8]>, Slot)>(),
        }
    }

    /// Calls `each` with the slot of every row of `keys` (one array per key column, of the key
    /// columns' types) that has one, and `None` for the others: rows with a NULL key never have one.
    fn probe(&self, keys: &[ArrayRef], mut each: impl FnMut(usize, Option<&Slot>)) -> Result<()> {
        let rows = keys.first().map_or(0, |k| k.len());
        let valid = |row: usize| keys.iter().all(|k| k.is_valid(row));
        match self {
            Slots::Integer(slots) => {
                let values = cast(&keys[0], &DataType::Int64)?;
                let values = values.as_primitive::<Int64Type>();
                for row in 0..rows {
                    each(
                        row,
                        valid(row).then(|| slots.get(&values.value(row))).flatten(),
                    );
                }
            }
            Slots::Rows(converter, slots) => {
                let converted = converter.convert_columns(keys)?;
                for row in 0..rows {
                    let slot = valid(row).then(|| slots.get(converted.row(row).as_ref()));
                    each(row, slot.flatten());
                }
            }
        }
        Ok(())
    }

    /// Indexes the rows of `keys` at `batch`; where a key repeats, the row with the later event
    /// time wins.
    fn insert(
        &mut self,
        keys: &[ArrayRef],
        batch: u32,
        times: &TimestampMicrosecondArray,
    ) -> Result<()> {
        let valid = |row: usize| keys.iter().all(|k| k.is_valid(row));
        let slot = |row: usize| Slot {
            batch,
            row: u32::try_from(row).unwrap_or(u32::MAX),
            event_us: times.is_valid(row).then(|| times.value(row)),
        };
        let rows = times.len();
        match self {
            Slots::Integer(slots) => {
                let values = cast(&keys[0], &DataType::Int64)?;
                let values = values.as_primitive::<Int64Type>();
                for row in (0..rows).filter(|&r| valid(r)) {
                    keep_latest(slots, values.value(row), slot(row));
                }
            }
            Slots::Rows(converter, slots) => {
                let converted = converter.convert_columns(keys)?;
                for row in (0..rows).filter(|&r| valid(r)) {
                    keep_latest(slots, converted.row(row).as_ref().into(), slot(row));
                }
            }
        }
        Ok(())
    }
}

fn keep_latest<K: Hash + Eq>(slots: &mut HashMap<K, Slot, RandomState>, key: K, slot: Slot) {
    slots
        .entry(key)
        .and_modify(|held| {
            if slot.event_us > held.event_us {
                *held = slot;
            }
        })
        .or_insert(slot);
}

/// One version of a view's rows, by entity key.
pub struct OnlineIndex {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    key_columns: Vec<usize>,
    slots: Slots,
    ttl: Option<Duration>,
    /// The Delta version of the view's table the rows come from.
    pub version: u64,
}

impl fmt::Debug for OnlineIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnlineIndex")
            .field("rows", &self.slots.len())
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl OnlineIndex {
    /// Indexes `batches` (the view's table at `version`) by the `entity` columns. Rows with a NULL key
    /// are left out (no lookup can match them); if a key repeats, the row with the latest event time wins.
    pub fn build(
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        entity: &[String],
        event_time: &str,
        ttl: Option<Duration>,
        version: u64,
    ) -> Result<Self> {
        let key_columns = entity
            .iter()
            .map(|name| schema.index_of(name))
            .collect::<Result<Vec<_>, _>>()?;
        let time_column = schema.index_of(event_time)?;
        let types: Vec<&DataType> = key_columns
            .iter()
            .map(|&c| schema.field(c).data_type())
            .collect();
        let mut slots = Slots::for_types(&types)?;
        for (b, batch) in batches.iter().enumerate() {
            let keys: Vec<ArrayRef> = key_columns
                .iter()
                .map(|&c| batch.column(c).clone())
                .collect();
            let times = micros(batch.column(time_column))?;
            slots.insert(&keys, u32::try_from(b).unwrap_or(u32::MAX), &times)?;
        }
        Ok(Self {
            schema,
            batches,
            key_columns,
            slots,
            ttl,
            version,
        })
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.len() == 0
    }

    /// Memory held: the rows' Arrow buffers and the key table.
    pub fn memory_bytes(&self) -> usize {
        let rows: usize = self
            .batches
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum();
        rows + self.slots.memory_bytes()
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The rows for `keys` (one value per entity column each), in key order, each at most once,
    /// leaving out keys not present and rows older than the TTL at `now_us`.
    pub fn lookup(
        &self,
        keys: &[Vec<ScalarValue>],
        projection: Option<&[usize]>,
        now_us: i64,
    ) -> Result<RecordBatch> {
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let columns: Vec<usize> = match projection {
            Some(p) => p.to_vec(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let mut found = Vec::with_capacity(keys.len());
        if !keys.is_empty() {
            let arrays = self
                .key_columns
                .iter()
                .enumerate()
                .map(|(k, &c)| {
                    let values = keys.iter().map(|key| key[k].clone());
                    let array = ScalarValue::iter_to_array(values)?;
                    // A key that is not a value of the column ('one' for a BIGINT key) is an error,
                    // as it is in SQL, not a silent miss.
                    let field = self.schema.field(c);
                    let strict = CastOptions {
                        safe: false,
                        ..Default::default()
                    };
                    cast_with_options(&array, field.data_type(), &strict)
                        .map_err(|e| exec_datafusion_err!("key {}: {e}", field.name()))
                })
                .collect::<Result<Vec<_>>>()?;
            let oldest = self.ttl.map(|ttl| {
                now_us.saturating_sub(i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX))
            });
            let mut seen = HashSet::with_capacity_and_hasher(keys.len(), RandomState::default());
            self.slots.probe(&arrays, |_, slot| {
                let Some(slot) = slot else {
                    return;
                };
                let fresh = match oldest {
                    None => true,
                    Some(oldest) => slot.event_us.is_some_and(|t| t >= oldest),
                };
                if fresh && seen.insert((slot.batch, slot.row)) {
                    found.push((slot.batch as usize, slot.row as usize));
                }
            })?;
        }
        let output = columns
            .iter()
            .map(|&c| {
                let sources: Vec<&dyn Array> =
                    self.batches.iter().map(|b| b.column(c).as_ref()).collect();
                if sources.is_empty() {
                    return Ok(datafusion::arrow::array::new_empty_array(
                        self.schema.field(c).data_type(),
                    ));
                }
                Ok(interleave(&sources, &found)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new_with_options(
            schema,
            output,
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(found.len())),
        )?)
    }
}

/// A timestamp column as microseconds since the epoch.
fn micros(column: &ArrayRef) -> Result<TimestampMicrosecondArray> {
    let as_micros = cast(column, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    match as_micros
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
    {
        Some(array) => Ok(array.clone()),
        None => internal_err!("event time column did not cast to microseconds"),
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    const HOUR_US: i64 = 3_600_000_000;

    fn index(ttl: Option<Duration>) -> OnlineIndex {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]));
        let batch = |ids: Vec<Option<i64>>, names: Vec<&str>, ts: Vec<i64>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(ids)),
                    Arc::new(StringArray::from(names)),
                    Arc::new(TimestampMicrosecondArray::from(ts)),
                ],
            )
            .expect("batch")
        };
        let batches = vec![
            batch(
                vec![Some(1), Some(2)],
                vec!["a", "b"],
                vec![10 * HOUR_US, 2 * HOUR_US],
            ),
            batch(
                vec![None, Some(1)],
                vec!["null", "a2"],
                vec![HOUR_US, 11 * HOUR_US],
            ),
        ];
        OnlineIndex::build(schema, batches, &["user_id".into()], "ts", ttl, 3).expect("index")
    }

    fn names(batch: &RecordBatch) -> Vec<String> {
        let column = batch
            .column_by_name("name")
            .expect("name")
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("utf8");
        column.iter().map(|v| v.unwrap_or("").to_string()).collect()
    }

    #[test]
    fn lookups_find_latest_row_per_key_once() {
        let index = index(None);
        assert_eq!(index.len(), 2);
        let keys = vec![
            vec![ScalarValue::Int64(Some(1))],
            vec![ScalarValue::Int64(Some(3))],
            vec![ScalarValue::Int64(Some(2))],
            vec![ScalarValue::Int64(Some(1))],
        ];
        let found = index.lookup(&keys, None, 0).expect("lookup");
        assert_eq!(names(&found), ["a2", "b"]);
        let projected = index.lookup(&keys[..1], Some(&[1]), 0).expect("projected");
        assert_eq!(projected.num_columns(), 1);
        // A key of another integer type is cast to the key column's type.
        let found = index
            .lookup(&[vec![ScalarValue::Int32(Some(2))]], None, 0)
            .expect("cast");
        assert_eq!(names(&found), ["b"]);
    }

    #[test]
    fn ttl_hides_expired_rows() {
        let index = index(Some(Duration::from_secs(3600 * 5)));
        let keys = vec![
            vec![ScalarValue::Int64(Some(1))],
            vec![ScalarValue::Int64(Some(2))],
        ];
        // At hour 12, user 1 (hour 11) is fresh and user 2 (hour 2) expired.
        let found = index.lookup(&keys, None, 12 * HOUR_US).expect("lookup");
        assert_eq!(names(&found), ["a2"]);
    }

    #[test]
    fn keys_other_than_one_integer_column_are_indexed_by_their_rows() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::UInt64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(datafusion::arrow::array::UInt64Array::from(vec![
                    Some(u64::MAX),
                    Some(1),
                    None,
                ])),
                Arc::new(StringArray::from(vec!["max", "one", "null"])),
                Arc::new(TimestampMicrosecondArray::from(vec![1, 2, 3])),
            ],
        )
        .expect("batch");
        // By the unsigned key, whose values do not all fit in an i64.
        let by_id = OnlineIndex::build(
            schema.clone(),
            vec![batch.clone()],
            &["user_id".into()],
            "ts",
            None,
            0,
        )
        .expect("index");
        assert!(matches!(by_id.slots, Slots::Rows(..)));
        let keys = [
            vec![ScalarValue::UInt64(Some(u64::MAX))],
            vec![ScalarValue::UInt64(Some(1))],
        ];
        assert_eq!(
            names(&by_id.lookup(&keys, None, 0).expect("lookup")),
            ["max", "one"]
        );
        // By two columns, one a string.
        let by_pair = OnlineIndex::build(
            schema,
            vec![batch],
            &["user_id".into(), "name".into()],
            "ts",
            None,
            0,
        )
        .expect("index");
        assert_eq!(by_pair.len(), 2, "the row with a NULL key is left out");
        let keys = [
            vec![ScalarValue::UInt64(Some(1)), ScalarValue::from("one")],
            vec![ScalarValue::UInt64(Some(1)), ScalarValue::from("max")],
        ];
        assert_eq!(
            names(&by_pair.lookup(&keys, None, 0).expect("lookup")),
            ["one"]
        );
    }
}
