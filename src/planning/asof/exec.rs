//! The ASOF join operator: a streaming merge of two inputs sorted by (keys, time).
//!
//! DataFusion's optimizer gives both inputs what [`AsofJoinExec`] asks for: the same hash
//! partitioning on the keys (so partitions join in parallel) and a sort by keys then time within each
//! partition (a spilling sort under the session's memory pool). The merge then walks both sides once:
//! per left row it keeps at most one right row (the current candidate), so its memory does not depend
//! on the size of either input. Output batches follow the left input's batches.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, new_null_array};
use datafusion::arrow::compute::{SortOptions, interleave};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{Row, RowConverter, Rows, SortField};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, internal_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{
    Distribution, EquivalenceProperties, LexOrdering, OrderingRequirements, PhysicalExpr,
    PhysicalSortExpr,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    InputDistributionRequirements, Partitioning, PlanProperties,
};
use futures::StreamExt;
use futures::stream::Fuse;

use super::plan::AsofMatch;

#[derive(Debug)]
pub struct AsofJoinExec {
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    /// Key expressions over the left and right inputs, pairwise of one type.
    on: Vec<(Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>)>,
    times: (Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>),
    matching: AsofMatch,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl AsofJoinExec {
    pub fn new(
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        on: Vec<(Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>)>,
        times: (Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>),
        matching: AsofMatch,
        schema: SchemaRef,
    ) -> Self {
        let partitions = left.output_partitioning().partition_count();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            left,
            right,
            on,
            times,
            matching,
            schema,
            properties: Arc::new(properties),
        }
    }

    /// Keys then time, ascending, NULLs first: the order the merge walks (and the row format encodes).
    fn ordering(keys: Vec<Arc<dyn PhysicalExpr>>, time: &Arc<dyn PhysicalExpr>) -> LexOrdering {
        let exprs = keys
            .into_iter()
            .chain([time.clone()])
            .map(|expr| PhysicalSortExpr::new(expr, SORT));
        LexOrdering::new(exprs).expect("an ASOF ordering has at least the time expression")
    }
}

const SORT: SortOptions = SortOptions {
    descending: false,
    nulls_first: true,
};

impl DisplayAs for AsofJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let on: Vec<String> = self.on.iter().map(|(l, r)| format!("({l}, {r})")).collect();
        write!(
            f,
            "AsofJoinExec: match=({} {} {}), on=[{}]",
            self.times.0,
            self.matching.operator(),
            self.times.1,
            on.join(", ")
        )
    }
}

impl ExecutionPlan for AsofJoinExec {
    fn name(&self) -> &'static str {
        "AsofJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.left, &self.right]
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        if self.on.is_empty() {
            return InputDistributionRequirements::new(vec![
                Distribution::SinglePartition,
                Distribution::SinglePartition,
            ]);
        }
        let (left, right) = self.on.iter().cloned().unzip();
        InputDistributionRequirements::co_partitioned(vec![
            Distribution::KeyPartitioned(left),
            Distribution::KeyPartitioned(right),
        ])
    }

    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        let (left, right): (Vec<_>, Vec<_>) = self.on.iter().cloned().unzip();
        vec![
            Some(OrderingRequirements::from(Self::ordering(
                left,
                &self.times.0,
            ))),
            Some(OrderingRequirements::from(Self::ordering(
                right,
                &self.times.1,
            ))),
        ]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true, false]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        let keys = self.on.iter().flat_map(|(l, r)| [l, r]);
        for expr in keys.chain([&self.times.0, &self.times.1]) {
            if f(expr)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [left, right]: [Arc<dyn ExecutionPlan>; 2] = match children.try_into() {
            Ok(children) => children,
            Err(_) => return internal_err!("AsofJoinExec takes two children"),
        };
        Ok(Arc::new(Self::new(
            left,
            right,
            self.on.clone(),
            self.times.clone(),
            self.matching,
            self.schema.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let left = self.left.execute(partition, context.clone())?;
        let right = self.right.execute(partition, context)?;
        let (left_keys, right_keys): (Vec<_>, Vec<_>) = self.on.iter().cloned().unzip();
        let mut key_fields = left_keys
            .iter()
            .map(|k| {
                Ok(SortField::new_with_options(
                    k.data_type(&left.schema())?,
                    SORT,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        if key_fields.is_empty() {
            key_fields.push(SortField::new_with_options(DataType::Boolean, SORT));
        }
        let time_field = SortField::new_with_options(self.times.0.data_type(&left.schema())?, SORT);
        let right_schema = right.schema();
        let merge = Merge {
            left_side: Side::new(left_keys, self.times.0.clone()),
            right_side: Side::new(right_keys, self.times.1.clone()),
            keys: RowConverter::new(key_fields)?,
            time: RowConverter::new(vec![time_field])?,
            matching: self.matching,
            right: right.fuse(),
            current: None,
            position: 0,
            candidate: None,
            nulls: RecordBatch::try_new(
                right_schema.clone(),
                right_schema
                    .fields()
                    .iter()
                    .map(|f| new_null_array(f.data_type(), 1))
                    .collect(),
            )?,
            schema: self.schema.clone(),
        };
        let stream = futures::stream::unfold((left, merge), |(mut left, mut merge)| async move {
            let batch = left.next().await?;
            let joined = match batch {
                Ok(batch) => merge.join(batch).await,
                Err(e) => Err(e),
            };
            Some((joined, (left, merge)))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}

/// How one input's keys and time are computed from its batches.
struct Side {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    time: Arc<dyn PhysicalExpr>,
}

/// A batch's keys and times in the row format, and which rows can match at all (no NULL key/time).
struct Encoded {
    keys: Rows,
    times: Rows,
    usable: Vec<bool>,
}

impl Side {
    fn new(keys: Vec<Arc<dyn PhysicalExpr>>, time: Arc<dyn PhysicalExpr>) -> Self {
        Self { keys, time }
    }

    fn encode(
        &self,
        batch: &RecordBatch,
        keys: &RowConverter,
        time: &RowConverter,
    ) -> Result<Encoded> {
        let rows = batch.num_rows();
        let mut key_columns = self
            .keys
            .iter()
            .map(|k| k.evaluate(batch)?.into_array(rows))
            .collect::<Result<Vec<ArrayRef>>>()?;
        if key_columns.is_empty() {
            // Without ON every row has the same key.
            key_columns.push(Arc::new(BooleanArray::from(vec![true; rows])));
        }
        let time_column = self.time.evaluate(batch)?.into_array(rows)?;
        let usable = (0..rows)
            .map(|i| time_column.is_valid(i) && key_columns.iter().all(|k| k.is_valid(i)))
            .collect();
        Ok(Encoded {
            keys: keys.convert_columns(&key_columns)?,
            times: time.convert_columns(&[time_column])?,
            usable,
        })
    }
}

/// A right batch with its keys and times encoded.
struct RightBatch {
    batch: RecordBatch,
    encoded: Encoded,
}

/// A right row: its batch and index.
type RightRow = (Arc<RightBatch>, usize);

struct Merge {
    left_side: Side,
    right_side: Side,
    keys: RowConverter,
    time: RowConverter,
    matching: AsofMatch,
    right: Fuse<SendableRecordBatchStream>,
    /// The right batch being read and the position of the next right row in it.
    current: Option<Arc<RightBatch>>,
    position: usize,
    /// The latest right row passed that a later left row may still match (backward matches only).
    candidate: Option<RightRow>,
    /// One row of NULLs in the right schema, for left rows without a match.
    nulls: RecordBatch,
    schema: SchemaRef,
}

impl Merge {
    /// Joins one left batch: every row once, with its right match or NULLs.
    async fn join(&mut self, left: RecordBatch) -> Result<RecordBatch> {
        let encoded = self.left_side.encode(&left, &self.keys, &self.time)?;
        // Right batches the output reads from, after the row of NULLs (source 0).
        let mut sources: Vec<Arc<RightBatch>> = Vec::new();
        let mut picks = Vec::with_capacity(left.num_rows());
        for row in 0..left.num_rows() {
            let matched = if encoded.usable[row] {
                self.find(encoded.keys.row(row), encoded.times.row(row))
                    .await?
            } else {
                None
            };
            picks.push(match matched {
                None => (0, 0),
                Some((batch, index)) => {
                    let source = match sources.iter().position(|s| Arc::ptr_eq(s, &batch)) {
                        Some(source) => source,
                        None => {
                            sources.push(batch);
                            sources.len() - 1
                        }
                    };
                    (source + 1, index)
                }
            });
        }
        let mut columns = left.columns().to_vec();
        for column in 0..self.nulls.num_columns() {
            let arrays: Vec<&dyn Array> = std::iter::once(&self.nulls)
                .chain(sources.iter().map(|s| &s.batch))
                .map(|batch| batch.column(column).as_ref())
                .collect();
            columns.push(interleave(&arrays, &picks)?);
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// The right row matching a left row with `key` and `time`, advancing the right input.
    async fn find(&mut self, key: Row<'_>, time: Row<'_>) -> Result<Option<RightRow>> {
        let backward = matches!(self.matching, AsofMatch::AtOrBefore | AsofMatch::Before);
        while let Some(current) = self.fill_current().await? {
            let at = self.position;
            if !current.encoded.usable[at] {
                self.position += 1;
                continue;
            }
            match current.encoded.keys.row(at).cmp(&key) {
                std::cmp::Ordering::Less => self.position += 1,
                std::cmp::Ordering::Greater => break,
                std::cmp::Ordering::Equal => {
                    let right_time = current.encoded.times.row(at);
                    let passed = match self.matching {
                        AsofMatch::AtOrBefore => right_time <= time,
                        AsofMatch::Before => right_time < time,
                        AsofMatch::AtOrAfter => right_time < time,
                        AsofMatch::After => right_time <= time,
                    };
                    if !passed {
                        break;
                    }
                    if backward {
                        self.candidate = Some((current, at));
                    }
                    self.position += 1;
                }
            }
        }
        let same_key = |(batch, index): &RightRow| batch.encoded.keys.row(*index) == key;
        if backward {
            return Ok(self.candidate.clone().filter(same_key));
        }
        // Forward: the first right row not passed (the loop stopped on a usable one), if its key matches.
        Ok(self
            .current
            .clone()
            .map(|batch| (batch, self.position))
            .filter(|(batch, index)| *index < batch.batch.num_rows())
            .filter(same_key))
    }

    /// The right batch holding the next right row, reading the next non-empty batch when the current
    /// one is used up; `None` once the right input is exhausted.
    async fn fill_current(&mut self) -> Result<Option<Arc<RightBatch>>> {
        loop {
            if let Some(current) = &self.current
                && self.position < current.batch.num_rows()
            {
                return Ok(Some(current.clone()));
            }
            let Some(batch) = self.right.next().await else {
                self.current = None;
                return Ok(None);
            };
            let batch = batch?;
            let encoded = self.right_side.encode(&batch, &self.keys, &self.time)?;
            self.current = Some(Arc::new(RightBatch { batch, encoded }));
            self.position = 0;
        }
    }
}
