//! DoPut uploads: Flight SQL bulk ingest, plain-Flight uploads to a path, and parameter batches.

use arrow_flight::FlightData;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{CommandStatementIngest, TableExistsOption, TableNotExistOption};
use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use futures::{Stream, StreamExt, TryStreamExt};
use std::pin::Pin;
use tonic::Status;

use crate::error::{Error, Result};
use crate::flight::metadata::path_to_table;
use crate::flight::parameters;
use crate::flight::stream::{collect_upload, decode_optional_upload, decode_upload, ipc_stream};
use crate::ingest::{IngestMode, IngestOptions, ingest};
use crate::session::QuiverSession;
use crate::storage::{CATALOG, DEFAULT_SCHEMA};

/// The prefix of the request headers that set ingest options on any upload, e.g.
/// `x-quiver-ingest-merge-schema: true`. ADBC clients send one with the statement option
/// `adbc.flight.sql.rpc.call_header.x-quiver-ingest-merge-schema`, pyarrow.flight with
/// `FlightCallOptions(headers=...)`.
const OPTION_HEADER: &str = "x-quiver-ingest-";

/// The ingest options of an upload: its `x-quiver-ingest-*` headers, then the options of the Flight
/// SQL command (which win). A header that is not text is refused.
pub fn upload_options(
    headers: &tonic::metadata::MetadataMap,
    command_options: &std::collections::HashMap<String, String>,
) -> Result<IngestOptions> {
    let mut pairs = Vec::new();
    for entry in headers.iter() {
        let tonic::metadata::KeyAndValueRef::Ascii(key, value) = entry else {
            continue;
        };
        let Some(name) = key.as_str().strip_prefix(OPTION_HEADER) else {
            continue;
        };
        let value = value
            .to_str()
            .map_err(|_| Error::InvalidInput(format!("header '{}' is not text", key.as_str())))?;
        pairs.push((name, value));
    }
    pairs.extend(
        command_options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    IngestOptions::parse(pairs)
}

/// CommandStatementIngest (ADBC's `adbc_ingest`): one Delta commit per call.
pub async fn ingest_command(
    session: &QuiverSession,
    command: CommandStatementIngest,
    options: IngestOptions,
    upload: PeekableFlightDataStream,
    max_bytes: u64,
) -> Result<i64> {
    if command.transaction_id.is_some() {
        return Err(Error::Unsupported("ingest inside a transaction".into()));
    }
    if command.temporary {
        return Err(Error::Unsupported(
            "temporary tables: warehouse tables are Delta tables".into(),
        ));
    }
    if let Some(catalog) = command
        .catalog
        .as_deref()
        .filter(|c| !c.is_empty() && *c != CATALOG)
    {
        return Err(Error::CatalogNotFound(format!(
            "'{catalog}': the only catalog is '{CATALOG}'"
        )));
    }
    let mode = ingest_mode(&command)?;
    let schema = command
        .schema
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_SCHEMA);
    let data = decode_upload(bounded(upload, max_bytes)).await?;
    let rows = ingest(session, schema, &command.table, mode, options, data).await?;
    Ok(i64::try_from(rows).unwrap_or(i64::MAX))
}

fn ingest_mode(command: &CommandStatementIngest) -> Result<IngestMode> {
    let Some(options) = &command.table_definition_options else {
        return Ok(IngestMode::CreateAppend);
    };
    let if_not_exist = TableNotExistOption::try_from(options.if_not_exist)
        .unwrap_or(TableNotExistOption::Unspecified);
    let if_exists =
        TableExistsOption::try_from(options.if_exists).unwrap_or(TableExistsOption::Unspecified);
    use TableExistsOption as E;
    use TableNotExistOption as N;
    match (if_not_exist, if_exists) {
        (N::Create, E::Fail | E::Unspecified) => Ok(IngestMode::Create),
        (N::Fail | N::Unspecified, E::Append) => Ok(IngestMode::Append),
        (N::Create, E::Append) => Ok(IngestMode::CreateAppend),
        (_, E::Replace) => Ok(IngestMode::Replace),
        (n, e) => Err(Error::InvalidInput(format!(
            "ingest options if_not_exist={} if_exists={} leave nothing to do",
            n.as_str_name(),
            e.as_str_name()
        ))),
    }
}

/// Plain Flight DoPut with a PATH descriptor `[table]` or `[schema, table]`: appends, creating the
/// table if it does not exist.
pub async fn ingest_path(
    session: &QuiverSession,
    options: IngestOptions,
    mut upload: PeekableFlightDataStream,
    command_type: &str,
    max_bytes: u64,
) -> Result<i64> {
    let first = Pin::new(&mut upload)
        .peek()
        .await
        .cloned()
        .ok_or_else(|| Error::InvalidInput("empty DoPut: no descriptor and no data".into()))?
        .map_err(|s| Error::InvalidInput(format!("upload failed: {}", s.message())))?;
    let descriptor = first
        .flight_descriptor
        .ok_or_else(|| Error::InvalidInput("DoPut without a flight descriptor".into()))?;
    if descriptor.r#type() != DescriptorType::Path {
        return Err(Error::Unsupported(format!(
            "DoPut with command '{command_type}': upload to a PATH descriptor [table] or [schema, table], or use Flight SQL ingest"
        )));
    }
    let (schema, table) = path_to_table(&descriptor.path)?;
    let data = decode_upload(bounded(upload, max_bytes)).await?;
    let rows = ingest(
        session,
        &schema,
        &table,
        IngestMode::CreateAppend,
        options,
        data,
    )
    .await?;
    Ok(i64::try_from(rows).unwrap_or(i64::MAX))
}

/// The upload (rows to ingest, or a prepared statement's parameters), failing with ResourceExhausted
/// once it has carried more than `max_bytes` of Arrow data (`--max-upload-size`). The write it feeds
/// is then abandoned before its commit: nothing is visible.
pub fn bounded<S>(
    upload: S,
    max_bytes: u64,
) -> impl Stream<Item = Result<FlightData, Status>> + Send + 'static
where
    S: Stream<Item = Result<FlightData, Status>> + Send + 'static,
{
    let mut seen: u64 = 0;
    upload.map(move |message| {
        let message = message?;
        seen = seen.saturating_add((message.data_body.len() + message.data_header.len()) as u64);
        if seen > max_bytes {
            return Err(Status::resource_exhausted(format!(
                "upload larger than the server's limit of {} (--max-upload-size): split it into \
                 several calls",
                bytesize::ByteSize(max_bytes)
            )));
        }
        Ok(message)
    })
}

/// Reads the parameter rows a client binds to a prepared statement (all batches, concatenated).
pub async fn collect_parameters<S>(upload: S) -> Result<Option<RecordBatch>>
where
    S: Stream<Item = Result<FlightData, Status>> + Send + 'static,
{
    let Some((schema, batches)) = decode_parameters(upload).await? else {
        return Ok(None);
    };
    Ok(Some(concat_batches(&schema, &batches)?))
}

/// The parameters a client binds to a prepared query, checked by decoding them, as the Arrow IPC
/// stream it sent: the handle stores that stream rather than the rows encoded again. `None` when
/// the upload binds no rows.
pub async fn bound_parameters<S>(upload: S) -> Result<Option<Bytes>>
where
    S: Stream<Item = Result<FlightData, Status>> + Send,
{
    let messages = collect_upload(upload).await?;
    let framed = messages
        .iter()
        .filter(|m| !m.data_header.is_empty())
        .map(|m| (m.data_header.clone(), m.data_body.clone()));
    // Most uploads decode here, their schema decoded once per distinct message; the rest (e.g.
    // dictionaries) through arrow-flight's decoder.
    let batches = match parameters::decode(framed) {
        Some(decoded) => Some(decoded?.1),
        None => {
            let upload = futures::stream::iter(messages.clone().into_iter().map(Ok));
            decode_parameters(upload).await?.map(|(_, batches)| batches)
        }
    };
    if batches.is_none_or(|b| b.iter().all(|b| b.num_rows() == 0)) {
        return Ok(None);
    }
    ipc_stream(&messages).map(Some)
}

/// The batches of a parameter upload; `None` when it binds no rows.
async fn decode_parameters<S>(upload: S) -> Result<Option<(SchemaRef, Vec<RecordBatch>)>>
where
    S: Stream<Item = Result<FlightData, Status>> + Send + 'static,
{
    let Some(data) = decode_optional_upload(upload).await? else {
        return Ok(None);
    };
    let schema = data.schema();
    let batches: Vec<RecordBatch> = data.try_collect().await?;
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Ok(None);
    }
    Ok(Some((schema, batches)))
}
