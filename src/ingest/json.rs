//! JSON records (one object per record) to Arrow in a table's schema, keeping apart the records
//! that do not fit: what the HTTP collector and Kafka sources decode.
//!
//! Fields map to the table's columns by name; fields the table lacks are ignored (log shippers add
//! their own: `@timestamp`, `host`, `date`), a column missing from a record is null, and a record that
//! is not JSON, not an object, has a value of the wrong type or leaves a NOT NULL column empty is
//! [`Rejected`] with the reason, without failing the others. All records are decoded together
//! first (arrow-json's tape decoder); only when that fails is each record decoded alone to find
//! which ones do not fit.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::json::reader::Decoder;

use crate::error::{Error, Result};

/// A record that does not fit the table, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Its place among the records decoded.
    pub index: usize,
    /// The record as it arrived (invalid UTF-8 replaced).
    pub payload: String,
    pub error: String,
}

/// The records of one body: the rows that fit, in the table's schema, and those that do not.
#[derive(Debug)]
pub struct Decoded {
    pub rows: RecordBatch,
    pub rejected: Vec<Rejected>,
}

/// Splits a body into its records: a JSON array of objects (Logstash's `json_batch`) or
/// newline-delimited JSON (Vector, Fluent Bit's `json_lines`); blank lines are skipped. Fails only
/// on an array that is not closed, or text after it: a record that is not JSON is still a record
/// (it is rejected when decoded).
pub fn records(body: &[u8]) -> Result<Vec<&[u8]>> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    match start {
        None => Ok(Vec::new()),
        Some(at) if body[at] == b'[' => array_elements(body, at),
        Some(_) => Ok(body
            .split(|b| *b == b'\n')
            .map(trim)
            .filter(|line| !line.is_empty())
            .collect()),
    }
}

/// The top-level elements of the JSON array starting at `body[open]`. Strings are skipped with
/// their escapes, so a `,` or `]` inside one does not split; what each element holds is checked
/// when it is decoded.
fn array_elements(body: &[u8], open: usize) -> Result<Vec<&[u8]>> {
    let mut elements = Vec::new();
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut element_start = open + 1;
    let mut close = None;
    for (i, &b) in body.iter().enumerate().skip(open + 1) {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth > 0 => depth -= 1,
            b']' => {
                close = Some(i);
                break;
            }
            b',' if depth == 0 => {
                elements.push(trim(&body[element_start..i]));
                element_start = i + 1;
            }
            _ => {}
        }
    }
    let Some(close) = close else {
        return Err(Error::InvalidInput(
            "the body starts a JSON array that is never closed".into(),
        ));
    };
    let last = trim(&body[element_start..close]);
    if !last.is_empty() || !elements.is_empty() {
        elements.push(last);
    }
    if !trim(&body[close + 1..]).is_empty() {
        return Err(Error::InvalidInput(
            "the body has text after its JSON array (send one array, or one object per line)"
                .into(),
        ));
    }
    Ok(elements)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// Decodes `records` into `schema`, rejecting those that do not fit.
pub fn decode(records: &[&[u8]], schema: &SchemaRef) -> Result<Decoded> {
    if let Ok(rows) = decode_all(records, schema) {
        return Ok(Decoded {
            rows,
            rejected: Vec::new(),
        });
    }
    let mut good = Vec::with_capacity(records.len());
    let mut rejected = Vec::new();
    for (index, record) in records.iter().enumerate() {
        match decode_all(std::slice::from_ref(record), schema) {
            Ok(batch) => good.push(batch),
            Err(e) => rejected.push(Rejected {
                index,
                payload: String::from_utf8_lossy(record).into_owned(),
                error: e.to_string(),
            }),
        }
    }
    Ok(Decoded {
        rows: concat_batches(schema, &good)?,
        rejected,
    })
}

/// All of `records` as one batch, or the first record's error.
fn decode_all(records: &[&[u8]], schema: &SchemaRef) -> Result<RecordBatch> {
    let mut decoder = decoder(schema, records.len())?;
    for record in records {
        if !record.starts_with(b"{") {
            return Err(Error::InvalidInput(format!(
                "a record must be a JSON object, not {}",
                preview(record)
            )));
        }
        feed(&mut decoder, record)?;
        // Records are whole values: one must not run into the next.
        if decoder.has_partial_record() {
            return Err(Error::InvalidInput(format!(
                "not a complete JSON object: {}",
                preview(record)
            )));
        }
    }
    Ok(decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema.clone())))
}

fn decoder(schema: &SchemaRef, records: usize) -> Result<Decoder> {
    Ok(ReaderBuilder::new(schema.clone())
        .with_batch_size(records.max(1))
        .build_decoder()?)
}

fn feed(decoder: &mut Decoder, mut bytes: &[u8]) -> Result<()> {
    while !bytes.is_empty() {
        let read = decoder.decode(bytes)?;
        if read == 0 {
            return Err(Error::Internal(
                "the JSON decoder stopped before the end of a record".into(),
            ));
        }
        bytes = &bytes[read..];
    }
    Ok(())
}

/// The start of a record, for an error message.
fn preview(record: &[u8]) -> String {
    const MAX: usize = 40;
    let text = String::from_utf8_lossy(&record[..record.len().min(MAX)]);
    if record.len() > MAX {
        format!("'{text}...'")
    } else {
        format!("'{text}'")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("item_id", DataType::Int64, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ]))
    }

    #[test]
    fn splits_arrays_and_lines() {
        let array = br#" [ {"a": "x,]}"}, {"b": [1, {"c": "\"]"}]} ,{}] "#;
        let split = records(array).expect("array");
        assert_eq!(
            split,
            vec![
                &br#"{"a": "x,]}"}"#[..],
                &br#"{"b": [1, {"c": "\"]"}]}"#[..],
                &b"{}"[..]
            ]
        );
        assert!(records(b"[]").expect("empty").is_empty());
        assert!(records(b"  \n").expect("blank").is_empty());
        let lines = records(b"{\"a\":1}\n\n  {\"a\":2}\r\n").expect("lines");
        assert_eq!(lines, vec![&b"{\"a\":1}"[..], &b"{\"a\":2}"[..]]);
        assert!(records(b"[{\"a\":1}").is_err());
        assert!(records(b"[{\"a\":1}] x").is_err());
    }

    #[test]
    fn fitting_records_decode_together_and_extra_fields_are_ignored() {
        let body = b"{\"user_id\": 1, \"item_id\": 7, \"ts\": \"2026-12-05T03:45:29.5Z\", \"host\": \"h\"}\n\
                     {\"user_id\": 2}\n";
        let decoded = decode(&records(body).expect("split"), &schema()).expect("decoded");
        assert!(decoded.rejected.is_empty());
        assert_eq!(decoded.rows.num_rows(), 2);
        let items = decoded.rows.column(1).as_primitive::<Int64Type>();
        assert_eq!(items.value(0), 7);
        assert!(items.is_null(1));
        assert!(!decoded.rows.column(2).is_null(0));
    }

    #[test]
    fn records_that_do_not_fit_are_rejected_alone() {
        let body = b"{\"user_id\": 1}\n\
                     not json\n\
                     {\"user_id\": \"abc\"}\n\
                     {\"item_id\": 3}\n\
                     [1, 2]\n\
                     {\"user_id\": 4, \"item_id\": 5}\n\
                     {\"user_id\": 6\n";
        let decoded = decode(&records(body).expect("split"), &schema()).expect("decoded");
        let users = decoded.rows.column(0).as_primitive::<Int64Type>();
        assert_eq!(users.values().to_vec(), vec![1, 4]);
        let payloads: Vec<&str> = decoded
            .rejected
            .iter()
            .map(|r| r.payload.as_str())
            .collect();
        assert_eq!(
            payloads,
            vec![
                "not json",
                "{\"user_id\": \"abc\"}",
                "{\"item_id\": 3}",
                "[1, 2]",
                "{\"user_id\": 6"
            ]
        );
        assert!(decoded.rejected.iter().all(|r| !r.error.is_empty()));
        let places: Vec<usize> = decoded.rejected.iter().map(|r| r.index).collect();
        assert_eq!(places, vec![1, 2, 3, 4, 6]);
    }
}
