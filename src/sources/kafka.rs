//! A Kafka source: a consumer-group member that appends a topic's JSON messages to a Delta table in
//! micro-batches, exactly once.
//!
//! The offsets a batch consumed are written as Delta application transactions (`txn`, one per
//! partition: app id `kafka/<source>/<topic>/<partition>`, version = the partition's last offset in
//! the batch) in the same commit as its rows, through the table's group commit, with the rule that
//! each must follow exactly the offset the table records ([`Follows::Exactly`]). Kafka's committed
//! offsets are never read or written: on every assignment (start, rebalance) the consumer seeks to
//! the offsets the table records. A batch the table refuses (another member or a zombie committed
//! those offsets first), or that fails to commit, is dropped and the partitions are sought back to the
//! table's offsets; so a member killed at any point, or two members racing after a rebalance,
//! neither lose nor duplicate a message.
//!
//! The consumer runs on a thread of its own (librdkafka's poll and rebalance callbacks are blocking
//! calls); each batch is decoded and written on the query runtime and the thread waits for it. A
//! message that does not fit the table goes to `<schema>.dead_letters` with its topic, partition and
//! offset, committed before the batch with the same offsets (those already recorded there are not
//! written again).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use datafusion::catalog::TableProvider;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use deltalake::kernel::Transaction;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;

use crate::error::{Error, Result};
use crate::ingest::dead_letters::{self, Origin};
use crate::ingest::{json, latest_table};
use crate::session::QuiverSession;
use crate::storage::group_commit::{self, AppTransaction, Follows, Outcome};
use crate::storage::sources::{KafkaSource, PartitionStatus, SharedStatus, SourceStatus};

/// How long a poll waits before the loop looks at its stop flag and batch deadline.
const POLL: Duration = Duration::from_millis(100);
/// Wait after a failed batch before reading again (doubling up to [`MAX_BACKOFF`]).
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often an idle consumer asks the brokers for its partitions' high watermarks.
const WATERMARKS_EVERY: Duration = Duration::from_secs(1);

impl KafkaSource {
    fn origin(&self) -> String {
        format!("kafka:{}", self.name)
    }
}

/// A running source: stopped when dropped.
pub struct RunningSource {
    stop: Arc<AtomicBool>,
    status: SharedStatus,
    thread: Option<JoinHandle<()>>,
}

impl RunningSource {
    /// What the source reports (shared with `system.sources`).
    pub fn shared_status(&self) -> SharedStatus {
        self.status.clone()
    }

    pub fn status(&self) -> SourceStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops consuming (a batch being written is finished first) and waits for the thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningSource {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Starts consuming `source` into its table; batches are written on `runtime`.
pub fn start(
    session: QuiverSession,
    source: KafkaSource,
    runtime: Handle,
) -> Result<RunningSource> {
    let stop = Arc::new(AtomicBool::new(false));
    let status = Arc::new(Mutex::new(SourceStatus {
        started: Some(chrono::Utc::now()),
        ..SourceStatus::default()
    }));
    let context = SourceContext {
        session: session.clone(),
        source: source.clone(),
        runtime: runtime.clone(),
        positions: Mutex::default(),
        rebalanced: AtomicBool::new(false),
        status: status.clone(),
    };
    let consumer = consumer(&source, context)?;
    consumer.subscribe(&[&source.topic]).map_err(kafka_error)?;
    let thread = std::thread::Builder::new()
        .name(format!("source-{}", source.name))
        .spawn({
            let stop = stop.clone();
            move || consume(consumer, stop)
        })?;
    Ok(RunningSource {
        stop,
        status,
        thread: Some(thread),
    })
}

fn consumer(source: &KafkaSource, context: SourceContext) -> Result<BaseConsumer<SourceContext>> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &source.brokers)
        .set("group.id", &source.group)
        .set("client.id", format!("quiver-{}", source.name))
        // Offsets live in the Delta table, never in Kafka.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            if source.start_latest {
                "latest"
            } else {
                "earliest"
            },
        )
        // Eager rebalancing: every assignment starts from the table's offsets for all partitions.
        .set("partition.assignment.strategy", "range,roundrobin");
    for (key, value) in &source.options {
        config.set(key, value);
    }
    config.create_with_context(context).map_err(|e| {
        Error::InvalidInput(format!(
            "source {}: the Kafka client refused its settings: {e}",
            source.name
        ))
    })
}

fn kafka_error(e: rdkafka::error::KafkaError) -> Error {
    Error::Unavailable(format!("Kafka: {e}"))
}

/// The consumer's state its callbacks and its loop share.
struct SourceContext {
    session: QuiverSession,
    source: KafkaSource,
    runtime: Handle,
    /// The offset the table records for each assigned partition (`None`: nothing yet).
    positions: Mutex<BTreeMap<i32, Option<i64>>>,
    /// Set by a rebalance: the batch being gathered is dropped (its partitions may have moved, and
    /// those that stay are read again from the table's offsets).
    rebalanced: AtomicBool,
    status: SharedStatus,
}

impl ClientContext for SourceContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(source = %self.source.name, %error, reason, "Kafka client error");
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_error = Some(format!("{error}: {reason}"));
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance {
            self.rebalanced.store(true, Ordering::Release);
            self.positions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
    }

    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr::*;
        match err {
            RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.rebalanced.store(true, Ordering::Release);
                // Every assigned partition starts after the offset the table records.
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                match self.runtime.block_on(recorded_offsets(
                    &self.session,
                    &self.source,
                    &partitions,
                )) {
                    Ok(recorded) => {
                        for (partition, offset) in &recorded {
                            let start = start_after(&self.source, *offset);
                            let _ = tpl.set_partition_offset(&self.source.topic, *partition, start);
                        }
                        *self
                            .positions
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner) =
                            recorded.iter().copied().collect();
                        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
                        status.partitions.clear();
                        for (partition, offset) in recorded {
                            status.partitions.insert(
                                partition,
                                PartitionStatus {
                                    recorded: offset,
                                    high_watermark: None,
                                },
                            );
                        }
                        if let Err(e) = consumer.assign(tpl) {
                            tracing::error!(source = %self.source.name, error = %e, "assigning partitions failed");
                        }
                        tracing::info!(source = %self.source.name, ?partitions, "partitions assigned at the table's offsets");
                    }
                    Err(e) => {
                        // Without the table's offsets nothing may be read: take no partitions; the
                        // group gives them to a member that can read the table.
                        tracing::error!(source = %self.source.name, error = %e, "cannot read the table's offsets; leaving the partitions unassigned");
                        self.status
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .last_error = Some(e.to_string());
                        let _ = consumer.assign(&TopicPartitionList::new());
                    }
                }
            }
            RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.pre_rebalance(consumer, &Rebalance::Revoke(tpl));
                let _ = consumer.unassign();
            }
            other => {
                tracing::warn!(source = %self.source.name, error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}

/// Where a partition is read from when the table records `recorded` as its last offset: the next
/// one, or the source's `start` for a partition the table has nothing of.
fn start_after(source: &KafkaSource, recorded: Option<i64>) -> Offset {
    match recorded {
        Some(last) => Offset::Offset(last + 1),
        None if source.start_latest => Offset::End,
        None => Offset::Beginning,
    }
}

/// The offsets `table` records for `partitions`.
async fn recorded_offsets(
    session: &QuiverSession,
    source: &KafkaSource,
    partitions: &[i32],
) -> Result<Vec<(i32, Option<i64>)>> {
    let provider = latest_table(session, &source.schema, &source.table)
        .await?
        .ok_or_else(|| Error::TableNotFound(format!("{}.{}", source.schema, source.table)))?;
    let table = provider.delta_table();
    let mut recorded = Vec::with_capacity(partitions.len());
    for &partition in partitions {
        let offset = group_commit::recorded_version(table, &source.app_id(partition)).await?;
        recorded.push((partition, offset));
    }
    Ok(recorded)
}

/// One message of a batch.
struct Received {
    partition: i32,
    offset: i64,
    payload: Vec<u8>,
}

/// The consumer loop: gather a batch, write it, repeat, until stopped.
fn consume(consumer: BaseConsumer<SourceContext>, stop: Arc<AtomicBool>) {
    let context = consumer.context();
    let source = context.source.clone();
    let mut batch: Vec<Received> = Vec::new();
    let mut deadline: Option<Instant> = None;
    let mut backoff = FIRST_BACKOFF;
    let mut watermarks_read = Instant::now();
    while !stop.load(Ordering::Acquire) {
        let wait = deadline.map_or(POLL, |d| {
            d.saturating_duration_since(Instant::now()).min(POLL)
        });
        let polled = consumer.poll(wait);
        if context.rebalanced.swap(false, Ordering::AcqRel) {
            batch.clear();
            deadline = None;
        }
        match polled {
            Some(Ok(message)) => {
                if batch.is_empty() {
                    deadline = Some(Instant::now() + source.max_latency);
                }
                batch.push(Received {
                    partition: message.partition(),
                    offset: message.offset(),
                    payload: message.payload().unwrap_or_default().to_vec(),
                });
            }
            Some(Err(e)) => {
                tracing::warn!(source = %source.name, error = %e, "Kafka consumer error");
                context
                    .status
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .last_error = Some(e.to_string());
            }
            None => {}
        }
        // Idle: the lag `system.sources` shows stays current (a broker round trip, once a second).
        if batch.is_empty() && watermarks_read.elapsed() >= WATERMARKS_EVERY {
            refresh_watermarks(&consumer, &source);
            watermarks_read = Instant::now();
        }
        let due = deadline.is_some_and(|d| Instant::now() >= d);
        if batch.is_empty() || !(due || batch.len() >= source.max_messages) {
            continue;
        }
        deadline = None;
        let taken = std::mem::take(&mut batch);
        let positions = context
            .positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let written =
            context
                .runtime
                .block_on(write_batch(&context.session, &source, taken, &positions));
        match written {
            Ok(Written::Committed {
                version,
                rows,
                rejected,
                ends,
            }) => {
                backoff = FIRST_BACKOFF;
                let mut kept = context
                    .positions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let mut status = context
                    .status
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                for (partition, end) in ends {
                    kept.insert(partition, Some(end));
                    status.partitions.entry(partition).or_default().recorded = Some(end);
                }
                status.rows += rows;
                status.rejected += rejected;
                status.batches += 1;
                status.last_version = Some(version);
                status.last_commit = Some(chrono::Utc::now());
                status.last_error = None;
                drop((kept, status));
                metrics::counter!(crate::metrics::ROWS_INGESTED, "table" => crate::metrics::table(&format!("{}.{}", source.schema, source.table))).increment(rows);
                refresh_watermarks(&consumer, &source);
                watermarks_read = Instant::now();
            }
            Ok(Written::Refused(why)) => {
                tracing::info!(source = %source.name, %why, "batch not committed; reading again from the table's offsets");
                rewind(&consumer);
            }
            Err(e) => {
                tracing::warn!(source = %source.name, error = %e, ?backoff, "writing a batch failed; reading again from the table's offsets");
                context
                    .status
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .last_error = Some(e.to_string());
                sleep_unless_stopped(backoff, &stop);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                rewind(&consumer);
            }
        }
    }
    consumer.unsubscribe();
}

fn sleep_unless_stopped(wait: Duration, stop: &AtomicBool) {
    let until = Instant::now() + wait;
    while !stop.load(Ordering::Acquire) && Instant::now() < until {
        std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
    }
}

/// Seeks every assigned partition back to the offset after the one the table records.
fn rewind(consumer: &BaseConsumer<SourceContext>) {
    let context = consumer.context();
    let source = &context.source;
    let partitions: Vec<i32> = match consumer.assignment() {
        Ok(tpl) => tpl.elements().iter().map(|e| e.partition()).collect(),
        Err(_) => return,
    };
    let recorded = match context.runtime.block_on(recorded_offsets(
        &context.session,
        source,
        &partitions,
    )) {
        Ok(recorded) => recorded,
        Err(e) => {
            tracing::warn!(source = %source.name, error = %e, "cannot read the table's offsets");
            return;
        }
    };
    let mut positions = context
        .positions
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for (partition, offset) in recorded {
        let to = start_after(source, offset);
        if let Err(e) = consumer.seek(&source.topic, partition, to, Duration::from_secs(10)) {
            tracing::warn!(source = %source.name, partition, error = %e, "seek failed");
        }
        positions.insert(partition, offset);
    }
}

/// Asks the brokers for the high watermark of each assigned partition (for the lag).
fn refresh_watermarks(consumer: &BaseConsumer<SourceContext>, source: &KafkaSource) {
    let context = consumer.context();
    let partitions: Vec<i32> = context
        .status
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .partitions
        .keys()
        .copied()
        .collect();
    for partition in partitions {
        let high: KafkaResult<(i64, i64)> =
            consumer.fetch_watermarks(&source.topic, partition, Duration::from_secs(1));
        if let Ok((_, high)) = high {
            context
                .status
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .partitions
                .entry(partition)
                .or_default()
                .high_watermark = Some(high);
        }
    }
}

/// What became of a batch.
enum Written {
    Committed {
        version: u64,
        rows: u64,
        rejected: u64,
        /// The last offset of each partition in the batch, now recorded.
        ends: Vec<(i32, i64)>,
    },
    /// The table's offsets moved past or away from where the batch starts.
    Refused(String),
}

/// Decodes `batch` into the table's schema and appends it with its offsets; messages that do not
/// fit go to the dead-letter table first.
async fn write_batch(
    session: &QuiverSession,
    source: &KafkaSource,
    batch: Vec<Received>,
    positions: &BTreeMap<i32, Option<i64>>,
) -> Result<Written> {
    let qualified = format!("{}.{}", source.schema, source.table);
    let provider = latest_table(session, &source.schema, &source.table)
        .await?
        .ok_or_else(|| Error::TableNotFound(qualified.clone()))?;
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    for message in &batch {
        let end = ends.entry(message.partition).or_insert(message.offset);
        *end = (*end).max(message.offset);
    }
    let records: Vec<&[u8]> = batch.iter().map(|m| m.payload.as_slice()).collect();
    let schema = TableProvider::schema(&provider);
    let decoded = json::decode(&records, &schema)?;
    let rejected = decoded.rejected.len() as u64;
    if !decoded.rejected.is_empty() {
        let letters: Vec<_> = decoded
            .rejected
            .into_iter()
            .map(|r| {
                let message = &batch[r.index];
                let origin = Origin {
                    source: source.origin(),
                    topic: Some(source.topic.clone()),
                    partition: Some(message.partition),
                    offset: Some(message.offset),
                };
                (r, origin)
            })
            .collect();
        dead_letters::append_once(session, &source.schema, &qualified, letters, |partition| {
            source.app_id(partition)
        })
        .await?;
    }
    let transactions = ends
        .iter()
        .map(|(&partition, &end)| AppTransaction {
            txn: Transaction::new(source.app_id(partition), end),
            follows: Follows::Exactly(positions.get(&partition).copied().flatten()),
        })
        .collect();
    let rows = decoded.rows;
    let data = RecordBatchStreamAdapter::new(rows.schema(), futures::stream::iter([Ok(rows)]));
    let appended =
        group_commit::append_with(provider.delta_table().clone(), Box::pin(data), transactions)
            .await?;
    Ok(match appended.outcome {
        Outcome::Committed(version) => Written::Committed {
            version,
            rows: appended.rows,
            rejected,
            ends: ends.into_iter().collect(),
        },
        Outcome::Duplicate => Written::Refused("the table already holds these offsets".into()),
        Outcome::OutOfOrder(why) => Written::Refused(why),
        Outcome::Empty => Written::Refused("nothing to commit".into()),
    })
}
