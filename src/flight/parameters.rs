//! Decoding a prepared statement's bound parameters, which arrive on every request of an
//! application: checked at DoPut, kept in the handle as the client's IPC stream, decoded again at
//! GetFlightInfo.
//!
//! A client binds the same parameter schema on every request, and decoding a schema message costs
//! as much as the rows it describes (about 30 µs each for 100 BIGINT parameters, half of it verifying
//! the flatbuffer), so each distinct schema message is decoded once and kept. Streams this does not
//! cover (dictionary fields, unexpected framing) return `None` and go to arrow's general readers,
//! which also name what is wrong with a malformed one.

use std::collections::HashMap;
use std::sync::LazyLock;

use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::ipc::convert::fb_to_schema;
use datafusion::arrow::ipc::reader::read_record_batch;
use datafusion::arrow::ipc::root_as_message;
use quick_cache::sync::Cache;

use crate::error::{Error, Result};

/// Distinct schema messages kept; past it the least used go first.
const SCHEMAS_KEPT: usize = 256;

/// Decoded schemas by their IPC message (the flatbuffer bytes).
static SCHEMAS: LazyLock<Cache<Bytes, SchemaRef>> = LazyLock::new(|| Cache::new(SCHEMAS_KEPT));

/// Decodes IPC messages, each its flatbuffer header and its body: a schema, then record batches.
/// `None` for a stream the general readers must decode (no schema first, dictionaries, a message
/// that does not parse); `Some(Err)` for a batch that parses but does not match its schema.
pub fn decode(messages: impl IntoIterator<Item = (Bytes, Bytes)>) -> Option<Result<Batches>> {
    crate::flight::stream::decoding(|| Ok(decode_messages(messages)))
        .unwrap_or_else(|e| Some(Err(e)))
}

fn decode_messages(messages: impl IntoIterator<Item = (Bytes, Bytes)>) -> Option<Result<Batches>> {
    let mut messages = messages.into_iter();
    let (header, _) = messages.next()?;
    let schema = schema_of(header)?;
    let mut batches = Vec::new();
    for (header, body) in messages {
        let message = root_as_message(&header).ok()?;
        let batch = message.header_as_record_batch()?;
        if let Err(e) = crate::flight::stream::check_body(&header, body.len()) {
            return Some(Err(e));
        }
        let body = Buffer::from(body);
        match read_record_batch(
            &body,
            batch,
            schema.clone(),
            &HashMap::new(),
            None,
            &message.version(),
        ) {
            Ok(batch) => batches.push(batch),
            Err(e) => {
                return Some(Err(Error::InvalidInput(format!(
                    "malformed parameters: {e}"
                ))));
            }
        }
    }
    Some(Ok((schema, batches)))
}

/// A schema and its batches.
pub type Batches = (SchemaRef, Vec<RecordBatch>);

/// The messages of an Arrow IPC stream as [`crate::flight::stream::ipc_stream`] and arrow's
/// `StreamWriter` frame them (continuation marker, length, header, body), up to the end marker.
/// `None` if the framing is anything else.
pub fn frames(stream: &Bytes) -> Option<Vec<(Bytes, Bytes)>> {
    const CONTINUATION: [u8; 4] = [0xff; 4];
    let mut messages = Vec::new();
    let mut at = 0usize;
    loop {
        let prefix = stream.get(at..at + 8)?;
        if prefix[..4] != CONTINUATION {
            return None;
        }
        let length = u32::from_le_bytes(prefix[4..].try_into().ok()?) as usize;
        at += 8;
        if length == 0 {
            return (at == stream.len()).then_some(messages);
        }
        let header = stream.slice(at..at.checked_add(length).filter(|&e| e <= stream.len())?);
        let body_length = usize::try_from(root_as_message(&header).ok()?.bodyLength()).ok()?;
        at += length;
        let end = at.checked_add(body_length).filter(|&e| e <= stream.len())?;
        messages.push((header, stream.slice(at..end)));
        at = end;
    }
}

/// The schema of a schema message, decoded once per distinct message. `None` if it is not one, or
/// has dictionary fields (their batches need the dictionary messages this does not read).
fn schema_of(header: Bytes) -> Option<SchemaRef> {
    if let Some(schema) = SCHEMAS.get(&header) {
        return Some(schema);
    }
    let message = root_as_message(&header).ok()?;
    let schema = SchemaRef::new(fb_to_schema(message.header_as_schema()?));
    let dictionaries = schema
        .flattened_fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Dictionary(..)));
    if dictionaries {
        return None;
    }
    SCHEMAS.insert(header, schema.clone());
    Some(schema)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, DictionaryArray, Int64Array, StringArray};
    use datafusion::arrow::datatypes::Int32Type;
    use datafusion::arrow::ipc::writer::StreamWriter;

    use super::*;

    fn stream(batches: &[RecordBatch]) -> Bytes {
        let mut buffer = Vec::new();
        let mut writer = StreamWriter::try_new(&mut buffer, &batches[0].schema()).expect("writer");
        for batch in batches {
            writer.write(batch).expect("write");
        }
        writer.finish().expect("finish");
        drop(writer);
        buffer.into()
    }

    #[test]
    fn decodes_what_the_stream_reader_decodes_and_leaves_it_the_rest() {
        let batch = RecordBatch::try_from_iter([
            (
                "0",
                Arc::new(Int64Array::from(vec![Some(7), None])) as ArrayRef,
            ),
            ("1", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef),
        ])
        .expect("batch");
        let bytes = stream(&[batch.clone(), batch.clone()]);
        for _ in 0..2 {
            // The second time with the schema kept.
            let (schema, batches) = decode(frames(&bytes).expect("frames"))
                .expect("decoded here")
                .expect("valid");
            assert_eq!(schema, batch.schema());
            assert_eq!(batches, vec![batch.clone(), batch.clone()]);
        }
        // As a handle keeps a client's upload: its messages framed again.
        let upload =
            arrow_flight::utils::batches_to_flight_data(&batch.schema(), vec![batch.clone()])
                .expect("flight data");
        let kept = crate::flight::stream::ipc_stream(&upload).expect("framed");
        let (_, batches) = decode(frames(&kept).expect("frames of a kept upload"))
            .expect("decoded here")
            .expect("valid");
        assert_eq!(batches, vec![batch.clone()]);
        // Cut short, or with a trailing byte: not framed as a stream.
        assert!(frames(&bytes.slice(..bytes.len() - 3)).is_none());
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(frames(&longer.into()).is_none());
        // Dictionaries are the general reader's.
        let keys: DictionaryArray<Int32Type> = vec!["x", "y", "x"].into_iter().collect();
        let dictionary =
            RecordBatch::try_from_iter([("0", Arc::new(keys) as ArrayRef)]).expect("batch");
        let bytes = stream(&[dictionary]);
        assert!(frames(&bytes).and_then(decode).is_none());
        // A body too short for its batch's buffers is an error naming it, not a panic.
        let bytes = stream(std::slice::from_ref(&batch));
        let mut messages = frames(&bytes).expect("frames");
        messages[1].1 = messages[1].1.slice(..8);
        let error = decode(messages).expect("parses").expect_err("short body");
        assert!(
            error
                .to_string()
                .contains("outside its 8-byte message body"),
            "{error}"
        );
    }
}
