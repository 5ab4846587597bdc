//! Source definitions kept in the warehouse, and what running sources report.
//!
//! `CREATE SOURCE` writes `<warehouse>/_quiver/sources/<name>.json` (put-if-absent: two replicas
//! creating one name race safely), `ALTER SOURCE ... PAUSE | RESUME` rewrites it, `DROP SOURCE`
//! deletes it; every server runs the definitions it lists (see `crate::sources`), so a definition
//! survives restarts and every replica sees it. [`SourceBoard`] holds the state of the sources this
//! server runs, for `system.sources`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::warehouse::{Warehouse, valid_name};

/// The `system` table of running sources.
pub const SOURCES_TABLE: &str = "sources";
const DEFAULT_MAX_LATENCY: Duration = Duration::from_secs(1);
const DEFAULT_MAX_MESSAGES: usize = 100_000;

/// A source as `CREATE SOURCE` defined it, stored as JSON in the warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceDefinition {
    pub name: String,
    /// `kafka`.
    pub kind: String,
    pub schema: String,
    pub table: String,
    /// The `( key 'value', ... )` options as written (names lower-cased).
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub paused: bool,
    pub created_at: DateTime<Utc>,
}

/// A Kafka source's settings, read from its definition's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSource {
    pub name: String,
    /// `bootstrap.servers`.
    pub brokers: String,
    pub topic: String,
    /// The consumer group (default `quiver-<name>`): members of one group share the partitions.
    pub group: String,
    pub schema: String,
    pub table: String,
    /// A batch closes this long after its first message (default 1 s)...
    pub max_latency: Duration,
    /// ...or at this many messages, whichever comes first (default 100,000).
    pub max_messages: usize,
    /// Where a partition the table has no offset for starts: `earliest` (default) or `latest`.
    pub start_latest: bool,
    /// Options with a `.` in their name, passed to librdkafka as they are: `security.protocol`,
    /// `ssl.ca.location`, `sasl.mechanism`, `sasl.username`, ...
    pub options: BTreeMap<String, String>,
}

/// The options a Kafka source takes besides librdkafka's own (names with a `.`).
const KAFKA_OPTIONS: &str =
    "brokers, topic, format, group, start (earliest | latest), max_latency, max_messages";

impl KafkaSource {
    /// The settings `definition` gives, or an error naming the option that is wrong.
    pub fn from_definition(definition: &SourceDefinition) -> Result<Self> {
        if definition.kind != "kafka" {
            return Err(Error::Unsupported(format!(
                "sources of kind '{}' (only KAFKA)",
                definition.kind
            )));
        }
        let options = &definition.options;
        let bad =
            |message: String| Error::InvalidInput(format!("source {}: {message}", definition.name));
        let required = |key: &str| {
            options
                .get(key)
                .filter(|v| !v.trim().is_empty())
                .cloned()
                .ok_or_else(|| bad(format!("option '{key}' is required")))
        };
        let mut passed = BTreeMap::new();
        for (key, value) in options {
            match key.as_str() {
                "brokers" | "topic" | "format" | "group" | "start" | "max_latency"
                | "max_messages" => {}
                "bootstrap.servers" | "group.id" | "enable.auto.commit" => {
                    return Err(bad(format!(
                        "'{key}' is set by Quiver (use brokers / group; offsets live in the table)"
                    )));
                }
                other if other.contains('.') => {
                    passed.insert(other.to_string(), value.clone());
                }
                other => {
                    return Err(bad(format!(
                        "unknown option '{other}' (known: {KAFKA_OPTIONS}, and librdkafka's \
                         settings such as security.protocol or sasl.mechanism)"
                    )));
                }
            }
        }
        match options.get("format").map(|f| f.to_ascii_lowercase()) {
            None => {}
            Some(f) if f == "json" => {}
            Some(other) => {
                return Err(bad(format!(
                    "format '{other}' is not supported (only 'json': one object per message)"
                )));
            }
        }
        let start_latest = match options.get("start").map(|s| s.to_ascii_lowercase()) {
            None => false,
            Some(s) if s == "earliest" => false,
            Some(s) if s == "latest" => true,
            Some(other) => {
                return Err(bad(format!(
                    "start is 'earliest' or 'latest', not '{other}'"
                )));
            }
        };
        let max_latency = match options.get("max_latency") {
            None => DEFAULT_MAX_LATENCY,
            Some(text) => humantime::parse_duration(text)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    bad(format!(
                        "max_latency is a duration such as '1s' or '250ms', not '{text}'"
                    ))
                })?,
        };
        let max_messages =
            match options.get("max_messages") {
                None => DEFAULT_MAX_MESSAGES,
                Some(text) => text.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    bad(format!("max_messages is a positive number, not '{text}'"))
                })?,
            };
        Ok(Self {
            name: definition.name.clone(),
            brokers: required("brokers")?,
            topic: required("topic")?,
            group: options
                .get("group")
                .cloned()
                .unwrap_or_else(|| format!("quiver-{}", definition.name)),
            schema: definition.schema.clone(),
            table: definition.table.clone(),
            max_latency,
            max_messages,
            start_latest,
            options: passed,
        })
    }

    /// The app id a partition's offsets are recorded under in the table's Delta log.
    pub fn app_id(&self, partition: i32) -> String {
        format!("kafka/{}/{}/{partition}", self.name, self.topic)
    }
}

/// Where definitions live under the warehouse root.
const SOURCES_DIR: [&str; 2] = ["_quiver", "sources"];

fn definition_path(name: &str) -> Vec<String> {
    let mut parts: Vec<String> = SOURCES_DIR.iter().map(|p| p.to_string()).collect();
    parts.push(format!("{name}.json"));
    parts
}

/// Stores a new definition; fails if one of that name exists.
pub async fn create(warehouse: &Warehouse, definition: &SourceDefinition) -> Result<()> {
    if !valid_name(&definition.name) {
        return Err(Error::InvalidInput(format!(
            "'{}' is not a source name (letters, digits, '_' and '-')",
            definition.name
        )));
    }
    KafkaSource::from_definition(definition)?;
    let created = warehouse
        .put_own_new(&definition_path(&definition.name), json(definition)?)
        .await?;
    if !created {
        return Err(Error::AlreadyExists {
            kind: "source",
            name: definition.name.clone(),
        });
    }
    Ok(())
}

/// Replaces a stored definition (`ALTER SOURCE`).
pub async fn replace(warehouse: &Warehouse, definition: &SourceDefinition) -> Result<()> {
    warehouse
        .put_own(&definition_path(&definition.name), json(definition)?)
        .await
}

/// The definition named `name`, if stored.
pub async fn get(warehouse: &Warehouse, name: &str) -> Result<Option<SourceDefinition>> {
    match warehouse.get_own(&definition_path(name)).await? {
        Some(bytes) => Ok(Some(parse(name, &bytes)?)),
        None => Ok(None),
    }
}

/// Deletes a definition; `false` if there was none.
pub async fn delete(warehouse: &Warehouse, name: &str) -> Result<bool> {
    warehouse.delete_own(&definition_path(name)).await
}

/// Every stored definition, by name. A file that cannot be read is skipped with a warning (one bad
/// file must not stop the others).
pub async fn list(warehouse: &Warehouse) -> Result<Vec<SourceDefinition>> {
    let mut definitions = Vec::new();
    for (file, bytes) in warehouse.list_own(&SOURCES_DIR).await? {
        let Some(name) = file.strip_suffix(".json") else {
            continue;
        };
        match parse(name, &bytes) {
            Ok(definition) => definitions.push(definition),
            Err(e) => tracing::warn!(file, error = %e, "skipping a source definition"),
        }
    }
    definitions.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(definitions)
}

fn json(definition: &SourceDefinition) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(definition)
        .map_err(|e| Error::Internal(format!("serializing source {}: {e}", definition.name)))
}

fn parse(name: &str, bytes: &[u8]) -> Result<SourceDefinition> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Corrupt(format!("the definition of source {name} is not valid: {e}")))
}

/// What a running source reports.
#[derive(Debug, Clone, Default)]
pub struct SourceStatus {
    /// Per assigned partition.
    pub partitions: BTreeMap<i32, PartitionStatus>,
    pub rows: u64,
    pub rejected: u64,
    pub batches: u64,
    pub last_version: Option<u64>,
    pub last_commit: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// When the source started on this server (for rows/s).
    pub started: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionStatus {
    /// The last offset the table records for the partition.
    pub recorded: Option<i64>,
    /// The offset the next message produced will get, when last asked.
    pub high_watermark: Option<i64>,
}

impl PartitionStatus {
    /// Messages in the partition the table does not hold yet.
    pub fn lag(&self) -> Option<i64> {
        let high = self.high_watermark?;
        Some((high - self.recorded.map_or(0, |r| r + 1)).max(0))
    }
}

/// A source's shared status: written by its consumer, read by `system.sources`.
pub type SharedStatus = Arc<Mutex<SourceStatus>>;

/// The sources this server runs, as `system.sources` shows them.
#[derive(Debug, Default)]
pub struct SourceBoard {
    running: Mutex<BTreeMap<String, (String, SharedStatus)>>,
}

impl SourceBoard {
    /// Shows `status` as source `name` into `table` until [`SourceBoard::remove`].
    pub fn insert(&self, name: &str, table: &str, status: SharedStatus) {
        self.lock()
            .insert(name.to_string(), (table.to_string(), status));
    }

    pub fn remove(&self, name: &str) {
        self.lock().remove(name);
    }

    /// The named source's status, if it runs here.
    pub fn status(&self, name: &str) -> Option<SourceStatus> {
        self.lock()
            .get(name)
            .map(|(_, s)| s.lock().unwrap_or_else(PoisonError::into_inner).clone())
    }

    /// Every running source's status, by name.
    pub fn statuses(&self) -> Vec<(String, SourceStatus)> {
        self.lock()
            .iter()
            .map(|(name, (_, s))| {
                let status = s.lock().unwrap_or_else(PoisonError::into_inner).clone();
                (name.clone(), status)
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (String, SharedStatus)>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `system.sources`: one row per source and assigned partition (a source with no partition
    /// yet has one row with a null partition).
    pub fn batch(&self) -> Result<RecordBatch> {
        let now = Utc::now();
        let mut source = Vec::new();
        let mut table = Vec::new();
        let mut partition = Vec::new();
        let mut recorded = Vec::new();
        let mut high = Vec::new();
        let mut lag = Vec::new();
        let mut rows = Vec::new();
        let mut rate = Vec::new();
        let mut rejected = Vec::new();
        let mut version = Vec::new();
        let mut committed = Vec::new();
        let mut error = Vec::new();
        for (name, (target, status)) in self.lock().iter() {
            let status = status
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let seconds = status
                .started
                .map_or(0.0, |s| (now - s).num_milliseconds() as f64 / 1000.0);
            let per_second = if seconds > 0.0 {
                status.rows as f64 / seconds
            } else {
                0.0
            };
            let parts: Vec<(Option<i32>, PartitionStatus)> = if status.partitions.is_empty() {
                vec![(None, PartitionStatus::default())]
            } else {
                status
                    .partitions
                    .iter()
                    .map(|(p, s)| (Some(*p), *s))
                    .collect()
            };
            for (p, s) in parts {
                source.push(name.clone());
                table.push(target.clone());
                partition.push(p);
                recorded.push(s.recorded);
                high.push(s.high_watermark);
                lag.push(s.lag());
                rows.push(status.rows);
                rate.push(per_second as i64);
                rejected.push(status.rejected);
                version.push(status.last_version);
                committed.push(status.last_commit.map(|t| t.timestamp_micros()));
                error.push(status.last_error.clone());
            }
        }
        Ok(RecordBatch::try_new(
            board_schema(),
            vec![
                Arc::new(StringArray::from(source)),
                Arc::new(StringArray::from(table)),
                Arc::new(Int32Array::from(partition)),
                Arc::new(Int64Array::from(recorded)),
                Arc::new(Int64Array::from(high)),
                Arc::new(Int64Array::from(lag)),
                Arc::new(UInt64Array::from(rows)),
                Arc::new(Int64Array::from(rate)),
                Arc::new(UInt64Array::from(rejected)),
                Arc::new(UInt64Array::from(version)),
                Arc::new(TimestampMicrosecondArray::from(committed).with_timezone("UTC")),
                Arc::new(StringArray::from(error)),
            ],
        )?)
    }
}

/// `system.sources`' columns.
pub fn board_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("target_table", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, true),
        Field::new("recorded_offset", DataType::Int64, true),
        Field::new("high_watermark", DataType::Int64, true),
        Field::new("lag", DataType::Int64, true),
        Field::new("rows", DataType::UInt64, false),
        Field::new("rows_per_second", DataType::Int64, false),
        Field::new("rejected", DataType::UInt64, false),
        Field::new("last_version", DataType::UInt64, true),
        Field::new(
            "last_commit",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("last_error", DataType::Utf8, true),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(options: &[(&str, &str)]) -> SourceDefinition {
        SourceDefinition {
            name: "clicks_in".into(),
            kind: "kafka".into(),
            schema: "public".into(),
            table: "clicks".into(),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            paused: false,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn kafka_options_read_with_defaults_and_pass_librdkafkas_through() {
        let source = KafkaSource::from_definition(&definition(&[
            ("brokers", "k1:9092,k2:9092"),
            ("topic", "clicks"),
            ("format", "JSON"),
            ("max_latency", "250ms"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
        ]))
        .expect("valid");
        assert_eq!(source.group, "quiver-clicks_in");
        assert_eq!(source.max_latency, Duration::from_millis(250));
        assert_eq!(source.max_messages, DEFAULT_MAX_MESSAGES);
        assert!(!source.start_latest);
        assert_eq!(source.options.len(), 2);
        assert_eq!(source.app_id(2), "kafka/clicks_in/clicks/2");
    }

    #[test]
    fn wrong_options_are_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("topic", "t")], "'brokers' is required"),
            (&[("brokers", "b")], "'topic' is required"),
            (
                &[("brokers", "b"), ("topic", "t"), ("format", "avro")],
                "avro",
            ),
            (
                &[("brokers", "b"), ("topic", "t"), ("start", "middle")],
                "middle",
            ),
            (
                &[("brokers", "b"), ("topic", "t"), ("max_latency", "soon")],
                "soon",
            ),
            (
                &[("brokers", "b"), ("topic", "t"), ("batch", "1")],
                "unknown option 'batch'",
            ),
            (
                &[("brokers", "b"), ("topic", "t"), ("group.id", "g")],
                "'group.id' is set by Quiver",
            ),
        ];
        for (options, expected) in cases {
            let err = KafkaSource::from_definition(&definition(options)).unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
    }
}
