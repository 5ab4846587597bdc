//! Stateless prepared-statement handles and tickets: the SQL text and any bound parameters travel with
//! the client, so no server keeps per-statement state and any replica can serve any call.

use std::io::Cursor;

use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use prost::Message;

use crate::error::{Error, Result};

/// What a prepared-statement handle and a statement ticket carry.
#[derive(Clone, PartialEq, Message)]
pub struct StatementHandle {
    #[prost(string, tag = "1")]
    pub sql: String,
    /// Bound parameter rows as an Arrow IPC stream (empty when nothing is bound).
    #[prost(bytes = "bytes", tag = "2")]
    pub parameters: Bytes,
    /// For statements with side effects, which run when they are planned for a client
    /// (GetFlightInfo): their result as an Arrow IPC stream, so DoGet only reads it back and a retried
    /// DoGet never writes twice.
    #[prost(bytes = "bytes", tag = "3")]
    pub result: Bytes,
}

impl StatementHandle {
    pub fn new(sql: impl Into<String>) -> Self {
        Self {
            sql: sql.into(),
            parameters: Bytes::new(),
            result: Bytes::new(),
        }
    }

    pub fn with_parameters(mut self, batch: &RecordBatch) -> Result<Self> {
        self.parameters = ipc_bytes(&batch.schema(), std::slice::from_ref(batch))?;
        Ok(self)
    }

    /// Stores the result of a statement that already ran.
    pub fn with_result(mut self, schema: &Schema, batches: &[RecordBatch]) -> Result<Self> {
        self.result = ipc_bytes(schema, batches)?;
        Ok(self)
    }

    /// The stored result, if the statement already ran.
    pub fn stored_result(&self) -> Result<Option<(SchemaRef, Vec<RecordBatch>)>> {
        if self.result.is_empty() {
            return Ok(None);
        }
        read_ipc(&self.result, "result in statement ticket").map(Some)
    }

    pub fn encode(&self) -> Bytes {
        Bytes::from(self.encode_to_vec())
    }

    pub fn decode_handle(bytes: &[u8]) -> Result<Self> {
        Self::decode(bytes)
            .map_err(|e| Error::InvalidInput(format!("malformed statement handle: {e}")))
    }

    /// The bound parameter rows, if any.
    pub fn parameter_batch(&self) -> Result<Option<RecordBatch>> {
        if self.parameters.is_empty() {
            return Ok(None);
        }
        let (schema, batches) = read_ipc(&self.parameters, "parameters in statement handle")?;
        Ok(Some(datafusion::arrow::compute::concat_batches(
            &schema, &batches,
        )?))
    }
}

fn read_ipc(bytes: &Bytes, what: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let reader = StreamReader::try_new(Cursor::new(bytes.clone()), None)
        .map_err(|e| Error::InvalidInput(format!("malformed {what}: {e}")))?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    Ok((schema, batches))
}

fn ipc_bytes(schema: &Schema, batches: &[RecordBatch]) -> Result<Bytes> {
    let mut buffer = Vec::new();
    {
        let mut writer = StreamWriter::try_new(&mut buffer, schema)?;
        for batch in batches {
            writer.write(batch)?;
        }
        writer.finish()?;
    }
    Ok(Bytes::from(buffer))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};

    use super::*;

    #[test]
    fn handle_round_trips_with_parameters() {
        let batch = RecordBatch::try_from_iter([
            ("0", Arc::new(Int64Array::from(vec![7])) as _),
            ("1", Arc::new(StringArray::from(vec!["x"])) as _),
        ])
        .expect("batch");
        let handle = StatementHandle::new("SELECT ?, ?")
            .with_parameters(&batch)
            .expect("params");
        let back = StatementHandle::decode_handle(&handle.encode()).expect("decode");
        assert_eq!(back.sql, "SELECT ?, ?");
        assert_eq!(back.parameter_batch().expect("batch"), Some(batch));
    }

    #[test]
    fn garbage_is_invalid_input() {
        let err = StatementHandle::decode_handle(b"\xff\xff\xff").unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)));
    }
}
