//! Stateless prepared-statement handles and tickets: the SQL text and any bound parameters travel with
//! the client, so no server keeps per-statement state and any replica can serve any call.
//!
//! Handles leave the server sealed: signed for the caller they were issued to ([`Auth::sign`]), so a
//! client can neither edit the SQL or stored result inside one nor use somebody else's.

use std::io::Cursor;

use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use prost::Message;

use crate::auth::{Auth, Principal};
use crate::error::{Error, Result};

/// A handle as it travels: the encoded [`StatementHandle`] and its signature.
#[derive(Clone, PartialEq, Message)]
struct SealedHandle {
    #[prost(bytes = "bytes", tag = "1")]
    body: Bytes,
    #[prost(bytes = "vec", tag = "2")]
    tag: Vec<u8>,
}

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
    /// Rows in `result` (the served-rows metric).
    #[prost(uint64, optional, tag = "4")]
    pub result_rows: Option<u64>,
    /// Rows the statement affected: DML's count, else `result_rows` (`system.queries`).
    #[prost(uint64, optional, tag = "5")]
    pub affected_rows: Option<u64>,
}

impl StatementHandle {
    pub fn new(sql: impl Into<String>) -> Self {
        Self {
            sql: sql.into(),
            parameters: Bytes::new(),
            result: Bytes::new(),
            result_rows: None,
            affected_rows: None,
        }
    }

    pub fn with_parameters(mut self, batch: &RecordBatch) -> Result<Self> {
        self.parameters = ipc_bytes(&batch.schema(), std::slice::from_ref(batch))?;
        Ok(self)
    }

    /// Binds parameters already encoded as an Arrow IPC stream (as a client uploaded them).
    pub fn with_parameter_stream(mut self, stream: Bytes) -> Self {
        self.parameters = stream;
        self
    }

    /// Stores the result of a statement that already ran. Its parameters are left out: the ticket
    /// only brings the result back.
    pub fn with_result(mut self, schema: &Schema, batches: &[RecordBatch]) -> Result<Self> {
        self.result = ipc_bytes(schema, batches)?;
        self.result_rows = Some(batches.iter().map(|b| b.num_rows() as u64).sum());
        self.affected_rows = Some(crate::query::update::affected(schema, batches));
        self.parameters = Bytes::new();
        Ok(self)
    }

    /// The stored result, if the statement already ran.
    pub fn stored_result(&self) -> Result<Option<(SchemaRef, Vec<RecordBatch>)>> {
        if self.result.is_empty() {
            return Ok(None);
        }
        read_ipc(&self.result, "result in statement ticket").map(Some)
    }

    /// The handle as sent to `principal`: encoded and signed.
    pub fn seal(&self, auth: &Auth, principal: &Principal) -> Bytes {
        let body = Bytes::from(self.encode_to_vec());
        let tag = auth.sign(principal, &body);
        Bytes::from(SealedHandle { body, tag }.encode_to_vec())
    }

    /// A handle sent back by `principal`: its signature checked, then decoded.
    pub fn open(bytes: &[u8], auth: &Auth, principal: &Principal) -> Result<Self> {
        let sealed = SealedHandle::decode(bytes)
            .map_err(|e| Error::InvalidInput(format!("malformed statement handle: {e}")))?;
        if sealed.tag.is_empty() {
            return Err(Error::InvalidInput(
                "malformed statement handle: it carries no signature".into(),
            ));
        }
        auth.verify(principal, &sealed.body, &sealed.tag)?;
        Self::decode(sealed.body)
            .map_err(|e| Error::InvalidInput(format!("malformed statement handle: {e}")))
    }

    /// The bound parameter rows, if any.
    pub fn parameter_batch(&self) -> Result<Option<RecordBatch>> {
        if self.parameters.is_empty() {
            return Ok(None);
        }
        let decoded =
            super::parameters::frames(&self.parameters).and_then(super::parameters::decode);
        let (schema, mut batches) = match decoded {
            Some(decoded) => decoded?,
            None => read_ipc(&self.parameters, "parameters in statement handle")?,
        };
        if batches.len() == 1 {
            return Ok(batches.pop());
        }
        Ok(Some(datafusion::arrow::compute::concat_batches(
            &schema, &batches,
        )?))
    }
}

fn read_ipc(bytes: &Bytes, what: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    crate::flight::stream::decoding(|| {
        let reader = StreamReader::try_new(Cursor::new(bytes.clone()), None)
            .map_err(|e| Error::InvalidInput(format!("malformed {what}: {e}")))?;
        let schema = reader.schema();
        let batches = reader.collect::<Result<Vec<_>, _>>()?;
        Ok((schema, batches))
    })
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
        let auth = Auth::open().expect("auth");
        let me = Principal::anonymous();
        let back = StatementHandle::open(&handle.seal(&auth, &me), &auth, &me).expect("open");
        assert_eq!(back.sql, "SELECT ?, ?");
        assert_eq!(back.parameter_batch().expect("batch"), Some(batch));
    }

    /// Parameters are stored as the client's upload framed as an IPC stream, not encoded again.
    #[tokio::test]
    async fn an_uploaded_stream_is_stored_as_sent() {
        use arrow_flight::encode::FlightDataEncoderBuilder;
        use futures::TryStreamExt;

        use crate::flight::ingest::bound_parameters;
        let batch = RecordBatch::try_from_iter([
            ("0", Arc::new(Int64Array::from(vec![7, 8])) as _),
            ("1", Arc::new(StringArray::from(vec![Some("x"), None])) as _),
        ])
        .expect("batch");
        // Bodies 8-byte aligned, as ADBC's Go driver sends them (arrow-rs pads to 64).
        let eight = datafusion::arrow::ipc::writer::IpcWriteOptions::try_new(
            8,
            false,
            datafusion::arrow::ipc::MetadataVersion::V5,
        )
        .expect("options");
        let upload: Vec<_> = FlightDataEncoderBuilder::new()
            .with_options(eight)
            .build(futures::stream::iter([
                Ok(batch.slice(0, 1)),
                Ok(batch.slice(1, 1)),
            ]))
            .try_collect()
            .await
            .expect("encode");
        let stream = bound_parameters(futures::stream::iter(upload.into_iter().map(Ok)))
            .await
            .expect("decoded")
            .expect("rows");
        let handle = StatementHandle::new("SELECT ?, ?").with_parameter_stream(stream);
        let auth = Auth::open().expect("auth");
        let me = Principal::anonymous();
        let back = StatementHandle::open(&handle.seal(&auth, &me), &auth, &me).expect("open");
        assert_eq!(back.parameter_batch().expect("batch"), Some(batch.clone()));
        // An upload of a schema and no rows binds nothing.
        let empty: Vec<_> = FlightDataEncoderBuilder::new()
            .with_schema(batch.schema())
            .build(futures::stream::empty())
            .try_collect()
            .await
            .expect("encode");
        let bound = bound_parameters(futures::stream::iter(empty.into_iter().map(Ok)))
            .await
            .expect("decoded");
        assert_eq!(bound, None);
    }

    #[test]
    fn garbage_is_invalid_input() {
        let auth = Auth::open().expect("auth");
        let err =
            StatementHandle::open(b"\xff\xff\xff", &auth, &Principal::anonymous()).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)));
    }

    #[test]
    fn an_edited_handle_is_refused() {
        let auth = Auth::open().expect("auth");
        let me = Principal::anonymous();
        let sealed = StatementHandle::new("SELECT 1").seal(&auth, &me);
        let mut sealed = SealedHandle::decode(sealed).expect("decode");
        sealed.body = Bytes::from(StatementHandle::new("DROP TABLE t").encode_to_vec());
        let forged = sealed.encode_to_vec();
        let err = StatementHandle::open(&forged, &auth, &me).unwrap_err();
        assert!(matches!(err, Error::PermissionDenied(_)), "{err}");
    }
}
