//! Arrow record batches to and from Flight data.
//!
//! Results are produced on the executor and handed to gRPC through a small bounded channel: the
//! server holds a few batches per call at most, a slow client slows the query down, and a client
//! that goes away stops it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_flight::FlightData;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use datafusion::arrow::ipc::MetadataVersion;
use datafusion::arrow::ipc::writer::{EncodedData, IpcWriteOptions, write_message};
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{Stream, StreamExt, TryStreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::flight::limits::{Slot, cancelled};
use crate::history::{Outcome, Running};

pub type FlightDataStream =
    Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// Batches in flight between the executor and the gRPC connection, per call.
const CHANNEL_DEPTH: usize = 4;

/// Runs `produce` on the executor and streams the batches it returns as Flight data, within the
/// statement's `slot` (its deadline and cancellation; the slot is released when the stream ends).
/// `statement` is recorded when the stream ends, with the rows and bytes sent; a client that goes
/// away leaves it cancelled.
pub fn execute_to_flight<F>(
    executor: &Executor,
    slot: Slot,
    statement: Running,
    produce: F,
) -> FlightDataStream
where
    F: Future<Output = Result<SendableRecordBatchStream>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(CHANNEL_DEPTH);
    let watcher_tx = tx.clone();
    let producer = executor.spawn(
        async move {
            let batches = match slot.bound(produce).await {
                Ok(batches) => batches,
                Err(e) => {
                    statement.finish(Outcome::failed(&e));
                    let _ = tx.send(Err(e.to_status())).await;
                    return;
                }
            };
            let schema = batches.schema();
            let rows = Arc::new(AtomicU64::new(0));
            let counted = rows.clone();
            let batches = batches
                .inspect_ok(move |batch| {
                    counted.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                })
                .map_err(|e| FlightError::ExternalError(Box::new(Error::from(e))));
            let mut encoded = FlightDataEncoderBuilder::new()
                .with_schema(schema)
                .build(batches);
            let deadline = slot.expired();
            tokio::pin!(deadline);
            let mut bytes = 0u64;
            let error = loop {
                let item = tokio::select! {
                    item = encoded.next() => item,
                    // The client went away: dropping the stream cancels the query, even one that
                    // has not produced a batch yet (and records the statement as cancelled).
                    () = tx.closed() => return,
                    () = &mut deadline => Some(Err(FlightError::ExternalError(Box::new(slot.timed_out())))),
                    () = slot.cancel.cancelled() => Some(Err(FlightError::ExternalError(Box::new(cancelled())))),
                };
                let Some(item) = item else { break None };
                let item = item.map_err(flight_error_to_status);
                let error = match &item {
                    Ok(data) => {
                        bytes += (data.data_header.len() + data.data_body.len()) as u64;
                        None
                    }
                    Err(status) => Some(status.message().to_string()),
                };
                if tx.send(item).await.is_err() {
                    return;
                }
                if error.is_some() {
                    break error;
                }
            };
            let rows = rows.load(Ordering::Relaxed);
            served(Some(rows), bytes);
            statement.finish(Outcome {
                rows: Some(rows),
                bytes: Some(bytes),
                error,
            });
        }
        .instrument(tracing::info_span!("execute")),
    );
    // A producer that panics or is cancelled must end the call with an error, never with a clean
    // end of stream that would make a truncated result look complete.
    executor.spawn(async move {
        if let Err(e) = producer.await {
            let status =
                Error::Internal(format!("query execution ended abnormally: {e}")).to_status();
            let _ = watcher_tx.send(Err(status)).await;
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// Counts rows and bytes sent to clients.
pub fn served(rows: Option<u64>, bytes: u64) {
    if let Some(rows) = rows {
        ::metrics::counter!(crate::metrics::ROWS_SERVED).increment(rows);
    }
    ::metrics::counter!(crate::metrics::BYTES_SERVED).increment(bytes);
}

/// Streams one small in-memory batch (catalog metadata).
pub fn batch_to_flight(batch: RecordBatch) -> FlightDataStream {
    batches_to_flight(batch.schema(), vec![batch])
}

/// Streams small in-memory batches (catalog metadata, results stored in a ticket) on the calling
/// thread: no query work, so no executor.
pub fn batches_to_flight(schema: SchemaRef, batches: Vec<RecordBatch>) -> FlightDataStream {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::iter(batches.into_iter().map(Ok)))
        .map_err(flight_error_to_status);
    Box::pin(stream)
}

/// Turns an upload (DoPut) into a record batch stream. The schema comes with the first message.
pub async fn decode_upload<S>(upload: S) -> Result<SendableRecordBatchStream>
where
    S: Stream<Item = Result<FlightData, Status>> + Send + 'static,
{
    decode_optional_upload(upload)
        .await?
        .ok_or_else(|| Error::InvalidInput("the upload carries no Arrow schema".into()))
}

/// Like [`decode_upload`], but an upload of just a descriptor (no schema, no data) is `None`.
pub async fn decode_optional_upload<S>(upload: S) -> Result<Option<SendableRecordBatchStream>>
where
    S: Stream<Item = Result<FlightData, Status>> + Send + 'static,
{
    // A message with only a descriptor (no IPC header) carries no data: clients send one to start
    // an upload of nothing (e.g. an update whose parameters were bound earlier).
    let messages = upload
        .try_filter(|data| futures::future::ready(!data.data_header.is_empty()))
        .map_err(|s| FlightError::Tonic(Box::new(s)))
        .and_then(|data| {
            let checked = check_body(&data.data_header, data.data_body.len())
                .map(|()| data)
                .map_err(|e| FlightError::DecodeError(e.to_string()));
            futures::future::ready(checked)
        });
    // A panic inside arrow's decoder (see [`decoding`]) ends the stream with that error.
    let mut decoder = std::panic::AssertUnwindSafe(FlightDataDecoder::new(messages))
        .catch_unwind()
        .map(|item| {
            item.unwrap_or_else(|panic| {
                let problem = crate::error::panic_message(panic.as_ref());
                Err(FlightError::DecodeError(problem.to_string()))
            })
        });
    let schema = loop {
        match decoder.next().await {
            Some(Ok(decoded)) => {
                if let DecodedPayload::Schema(schema) = decoded.payload {
                    break schema;
                }
            }
            Some(Err(e)) => return Err(upload_error(e)),
            None => return Ok(None),
        }
    };
    let batches = decoder.filter_map(|item| async move {
        match item {
            Ok(decoded) => match decoded.payload {
                DecodedPayload::RecordBatch(batch) => Some(Ok(batch)),
                DecodedPayload::Schema(_) | DecodedPayload::None => None,
            },
            Err(e) => Some(Err(DataFusionError::External(Box::new(upload_error(e))))),
        }
    });
    Ok(Some(Box::pin(RecordBatchStreamAdapter::new(
        schema, batches,
    ))))
}

/// Runs an Arrow IPC decoder over a client's bytes. arrow's decoder reports most malformed input,
/// but panics on some (a validity bitmap shorter than the row count the header claims): that is
/// the client's malformed data, not a server fault, so a panic is `InvalidInput`. The decoders keep
/// nothing past the call, so unwinding out of one is safe.
pub fn decoding<T>(decode: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode))
        .unwrap_or_else(|panic| Err(malformed(crate::error::panic_message(panic.as_ref()))))
}

fn malformed(problem: &str) -> Error {
    Error::InvalidInput(format!("malformed Arrow data: {problem}"))
}

/// Checks that the buffers an IPC record batch or dictionary message names lie within its body of
/// `body_len` bytes: arrow's decoder panics on one that does not (a truncated or forged client
/// message). A header that does not parse is left for the decoder to report.
pub fn check_body(header: &[u8], body_len: usize) -> Result<()> {
    let Ok(message) = datafusion::arrow::ipc::root_as_message(header) else {
        return Ok(());
    };
    let batch = message
        .header_as_record_batch()
        .or_else(|| message.header_as_dictionary_batch().and_then(|d| d.data()));
    let Some(buffers) = batch.and_then(|b| b.buffers()) else {
        return Ok(());
    };
    let outside = buffers.iter().any(|b| {
        u64::try_from(b.offset())
            .ok()
            .zip(u64::try_from(b.length()).ok())
            .and_then(|(offset, length)| offset.checked_add(length))
            .is_none_or(|end| end > body_len as u64)
    });
    if outside {
        return Err(malformed(&format!(
            "a buffer lies outside its {body_len}-byte message body"
        )));
    }
    Ok(())
}

/// An upload's messages as they came, collected (a parameter upload: small). A transport error is
/// reported as [`decode_upload`] reports it.
pub async fn collect_upload<S>(upload: S) -> Result<Vec<FlightData>>
where
    S: Stream<Item = Result<FlightData, Status>> + Send,
{
    upload
        .map_err(|s| upload_error(FlightError::Tonic(Box::new(s))))
        .try_collect()
        .await
}

/// The Arrow IPC stream of an upload's messages, framed as they came rather than decoded and
/// encoded again. Messages without an IPC header (a descriptor alone) are left out.
pub fn ipc_stream(messages: &[FlightData]) -> Result<bytes::Bytes> {
    // Bodies as clients send them are 8-byte aligned (ADBC's Go writer), not 64 as arrow-rs writes;
    // padding at a body's end moves none of its buffers.
    const ALIGNMENT: usize = 8;
    let options = IpcWriteOptions::try_new(ALIGNMENT, false, MetadataVersion::V5)?;
    let mut stream = Vec::new();
    for message in messages.iter().filter(|m| !m.data_header.is_empty()) {
        let mut body = message.data_body.to_vec();
        body.resize(body.len().next_multiple_of(ALIGNMENT), 0);
        let encoded = EncodedData {
            ipc_message: message.data_header.to_vec(),
            arrow_data: body,
        };
        write_message(&mut stream, encoded, &options)?;
    }
    // The end-of-stream marker: a continuation and a zero length.
    stream.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    Ok(stream.into())
}

fn upload_error(e: FlightError) -> Error {
    match e {
        // tonic refuses a message over --max-message-size while decoding it, with OutOfRange (its
        // only use of that code when decoding).
        FlightError::Tonic(status) if status.code() == tonic::Code::OutOfRange => {
            Error::ResourceExhausted(format!(
                "upload message too large (--max-message-size): {}; send smaller batches",
                status.message()
            ))
        }
        FlightError::Tonic(status) if status.code() == tonic::Code::ResourceExhausted => {
            Error::ResourceExhausted(status.message().to_string())
        }
        FlightError::Tonic(status) => {
            Error::InvalidInput(format!("upload failed: {}", status.message()))
        }
        other => Error::InvalidInput(format!("malformed Arrow data in upload: {other}")),
    }
}

/// The schema clients receive: the encoder hydrates dictionary columns (delta-rs dictionary-encodes
/// string partition columns), so every schema Quiver announces must say the same, or clients such as
/// ADBC reject the stream as inconsistent with its FlightInfo.
pub fn wire_schema(schema: &Schema) -> Schema {
    let fields: Vec<Field> = schema.fields().iter().map(|f| wire_field(f)).collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

fn wire_field(field: &Field) -> Field {
    field.clone().with_data_type(wire_type(field.data_type()))
}

fn wire_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Dictionary(_, value) => wire_type(value),
        DataType::List(f) => DataType::List(Arc::new(wire_field(f))),
        DataType::LargeList(f) => DataType::LargeList(Arc::new(wire_field(f))),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(Arc::new(wire_field(f)), *n),
        DataType::Struct(fields) => {
            DataType::Struct(fields.iter().map(|f| wire_field(f)).collect::<Fields>())
        }
        DataType::Map(f, sorted) => DataType::Map(Arc::new(wire_field(f)), *sorted),
        other => other.clone(),
    }
}

pub fn flight_error_to_status(e: FlightError) -> Status {
    match e {
        FlightError::ExternalError(inner) => match inner.downcast::<Error>() {
            Ok(e) => e.to_status(),
            Err(other) => Error::Internal(other.to_string()).to_status(),
        },
        FlightError::Tonic(status) => *status,
        FlightError::Arrow(e) => Error::Arrow(e).to_status(),
        other => Error::Internal(other.to_string()).to_status(),
    }
}
