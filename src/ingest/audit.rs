//! The audit table (`--audit-table schema.table`, off by default): every statement `system.queries`
//! records, appended to a Delta table in the warehouse every few seconds and once more at
//! shutdown, kept as long as the table is (the in-memory history keeps only the newest).

use std::time::Duration;

use crate::error::{Error, Result};
use crate::history;
use crate::ingest::{IngestMode, IngestOptions, ingest};
use crate::session::QuiverSession;
use crate::storage::DEFAULT_SCHEMA;

/// How often the statements recorded since the last append are appended (one commit each time).
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Where the audit rows go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditTable {
    pub schema: String,
    pub table: String,
}

impl AuditTable {
    /// `schema.table`, or `table` in the default schema.
    pub fn parse(raw: &str) -> Result<Self> {
        let (schema, table) = raw.split_once('.').unwrap_or((DEFAULT_SCHEMA, raw));
        let valid = |name: &str| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if !valid(schema) || !valid(table) {
            return Err(Error::Config {
                setting: "--audit-table",
                message: format!("'{raw}' is not schema.table (letters, digits and _)"),
            });
        }
        Ok(Self {
            schema: schema.to_string(),
            table: table.to_string(),
        })
    }
}

/// Appends the statements recorded since the last call (creating the table the first time);
/// returns how many. On failure they are kept for the next call.
pub async fn flush(session: &QuiverSession, target: &AuditTable) -> Result<usize> {
    let records = session.history().drain_audit();
    if records.is_empty() {
        return Ok(0);
    }
    let append = || async {
        let rows = crate::query::one_batch(history::batch(&records)?)?;
        let options = IngestOptions::default();
        ingest(
            session,
            &target.schema,
            &target.table,
            IngestMode::CreateAppend,
            options,
            rows,
        )
        .await
    };
    let appended = match append().await {
        // The first append into a schema of its own creates the schema.
        Err(Error::SchemaNotFound(_)) => match session
            .warehouse()
            .create_schema(&target.schema, true)
            .await
        {
            Ok(()) => append().await,
            Err(e) => Err(e),
        },
        other => other,
    };
    match appended {
        Ok(_) => Ok(records.len()),
        Err(e) => {
            session.history().requeue_audit(records);
            Err(e)
        }
    }
}

/// Flushes every [`INTERVAL`] until the task is dropped; failures are logged and retried.
pub async fn flush_every(session: QuiverSession, target: AuditTable) {
    let mut every = tokio::time::interval(INTERVAL);
    every.tick().await;
    loop {
        every.tick().await;
        if let Err(e) = flush(&session, &target).await {
            tracing::warn!(table = %format!("{}.{}", target.schema, target.table), error = %e,
                "could not append to the audit table; will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            AuditTable::parse("audit.queries").expect("ok").schema,
            "audit"
        );
        assert_eq!(
            AuditTable::parse("queries").expect("ok").schema,
            DEFAULT_SCHEMA
        );
        assert!(AuditTable::parse("a.b.c").is_err());
        assert!(AuditTable::parse("").is_err());
    }
}
