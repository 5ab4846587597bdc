//! Collecting JSON records into a table: the write path of the HTTP collector (and of Kafka
//! sources' micro-batches): decode into the table's schema, send what does not fit to the
//! dead-letter table, append the rest through the table's group commit.
//!
//! An idempotency key becomes a Delta application transaction (`txn`, app id
//! `quiver-http/<key>`) committed with the rows, and with the rejected records in the dead-letter
//! table: a request sent again with the same key lands at most once, across restarts and servers.
//! The target table's log is the authority: a key it records makes the whole request a duplicate.

use datafusion::catalog::TableProvider;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

use crate::error::{Error, Result};
use crate::ingest::dead_letters::{self, Origin};
use crate::ingest::{json, latest_table};
use crate::session::QuiverSession;
use crate::storage::group_commit::{self, AppTransaction, Outcome};

/// Longest idempotency key accepted.
const MAX_KEY_LEN: usize = 256;

/// What a collected body became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// The table version holding the rows (`None` for a duplicate, or a body with no records).
    pub version: Option<u64>,
    /// Rows appended to the table.
    pub rows: u64,
    /// Records sent to the dead-letter table.
    pub rejected: u64,
    /// The idempotency key was already recorded: nothing was written.
    pub duplicate: bool,
}

/// A request to collect one body of JSON records.
#[derive(Debug, Clone, Copy)]
pub struct Collect<'a> {
    pub schema: &'a str,
    pub table: &'a str,
    /// NDJSON, or a JSON array of objects (uncompressed).
    pub body: &'a [u8],
    pub idempotency_key: Option<&'a str>,
    /// Recorded with each rejected record (`http`).
    pub source: &'a str,
}

/// Appends the records of `request.body` to its table; see the module documentation.
pub async fn collect(session: &QuiverSession, request: Collect<'_>) -> Result<Collected> {
    let qualified = format!("{}.{}", request.schema, request.table);
    let provider = latest_table(session, request.schema, request.table)
        .await?
        .ok_or_else(|| Error::TableNotFound(qualified.clone()))?;
    let table = provider.delta_table().clone();
    if !group_commit::supports(&table) {
        return Err(Error::Unsupported(format!(
            "collecting into {qualified}: its columns are mapped by id (column mapping), which \
             the group-commit writer does not write"
        )));
    }
    let transactions = match request.idempotency_key {
        Some(key) => {
            let app_id = idempotency_app_id(key)?;
            if group_commit::recorded_version(&table, &app_id)
                .await?
                .is_some()
            {
                return Ok(duplicate());
            }
            vec![AppTransaction::once(app_id, 0)]
        }
        None => Vec::new(),
    };
    let schema = TableProvider::schema(&provider);
    let records = json::records(request.body)?;
    let decoded = json::decode(&records, &schema)?;
    let rejected = decoded.rejected.len() as u64;
    if !decoded.rejected.is_empty() {
        let origin = Origin {
            source: request.source.to_string(),
            ..Origin::default()
        };
        let rejected: Vec<_> = decoded
            .rejected
            .into_iter()
            .map(|r| (r, origin.clone()))
            .collect();
        dead_letters::append(
            session,
            request.schema,
            &qualified,
            &rejected,
            transactions.clone(),
        )
        .await?;
    }
    let bytes = decoded.rows.get_array_memory_size() as u64;
    let data = RecordBatchStreamAdapter::new(
        decoded.rows.schema(),
        futures::stream::iter([Ok(decoded.rows)]),
    );
    let appended = group_commit::append_with(table, Box::pin(data), transactions).await?;
    if appended.outcome == Outcome::Duplicate {
        return Ok(duplicate());
    }
    let label = crate::metrics::table(&qualified);
    metrics::counter!(crate::metrics::ROWS_INGESTED, "table" => label.clone())
        .increment(appended.rows);
    metrics::counter!(crate::metrics::BYTES_INGESTED, "table" => label).increment(bytes);
    Ok(Collected {
        version: appended.version(),
        rows: appended.rows,
        rejected,
        duplicate: false,
    })
}

fn duplicate() -> Collected {
    Collected {
        version: None,
        rows: 0,
        rejected: 0,
        duplicate: true,
    }
}

/// The app id an idempotency key is recorded under; a key must be printable ASCII, at most
/// [`MAX_KEY_LEN`] long.
fn idempotency_app_id(key: &str) -> Result<String> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidInput(format!(
            "an idempotency key is 1 to {MAX_KEY_LEN} printable ASCII characters without spaces"
        )));
    }
    Ok(format!("quiver-http/{key}"))
}
