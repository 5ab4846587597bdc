//! Property-based fuzzing (proptest) of everything that decodes client or file input: Flight SQL
//! commands, tickets, statement handles and action bodies sent to a live server, and the model,
//! feature-view and auth file loaders. Nothing may panic; a server answer to garbage is a status a
//! client can act on (never Internal or Unknown), and the server keeps serving.
//!
//! Cases per property: `PROPTEST_CASES` (default 64 here; raise it for a long run).

use std::sync::{Arc, OnceLock};

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::Any;
use arrow_flight::{Action, FlightData, FlightDescriptor, Ticket};
use bytes::Bytes;
use futures::StreamExt;
use proptest::prelude::*;
use prost::Message;
use quiver::auth::{Auth, Principal};
use quiver::features::definition::FeatureView;
use quiver::flight::handle::StatementHandle;
use quiver::scoring::spec::ModelSpec;
use tokio::runtime::Runtime;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::TestServer;

const FLIGHT_SQL_TYPES: &[&str] = &[
    "CommandStatementQuery",
    "CommandPreparedStatementQuery",
    "CommandStatementUpdate",
    "CommandPreparedStatementUpdate",
    "CommandStatementIngest",
    "CommandGetTables",
    "CommandGetDbSchemas",
    "CommandGetSqlInfo",
    "TicketStatementQuery",
    "ActionCreatePreparedStatementRequest",
];

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// One server and runtime for all server properties (a server per case would dominate the time).
fn server() -> &'static (Runtime, TestServer) {
    static SERVER: OnceLock<(Runtime, TestServer)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = Runtime::new().expect("runtime");
        let server = runtime.block_on(TestServer::start());
        (runtime, server)
    })
}

async fn client() -> FlightServiceClient<Channel> {
    server().1.flight_client().await
}

/// Bytes that are sometimes a well-formed `Any` of a Flight SQL type around garbage, so decoding
/// gets past the outer layer.
fn command_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        (
            proptest::sample::select(FLIGHT_SQL_TYPES),
            proptest::collection::vec(any::<u8>(), 0..256)
        )
            .prop_map(|(kind, value)| {
                Any {
                    type_url: format!("type.googleapis.com/arrow.flight.protocol.sql.{kind}"),
                    value: Bytes::from(value),
                }
                .encode_to_vec()
            }),
    ]
}

fn acceptable(status: &tonic::Status) -> bool {
    !matches!(status.code(), Code::Internal | Code::Unknown)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn garbage_tickets_and_commands_get_clear_statuses(bytes in command_bytes()) {
        let (runtime, _) = server();
        runtime.block_on(async {
            let mut client = client().await;
            if let Err(status) = client.do_get(Ticket::new(bytes.clone())).await {
                assert!(acceptable(&status), "DoGet: {status:?}");
            }
            let descriptor = FlightDescriptor::new_cmd(bytes.clone());
            if let Err(status) = client.get_flight_info(descriptor.clone()).await {
                assert!(acceptable(&status), "GetFlightInfo: {status:?}");
            }
            if let Err(status) = client.get_schema(descriptor.clone()).await {
                assert!(acceptable(&status), "GetSchema: {status:?}");
            }
            let action = Action::new("CreatePreparedStatement", bytes.clone());
            if let Err(status) = client.do_action(action).await {
                assert!(acceptable(&status), "DoAction: {status:?}");
            }
            let put = FlightData::new().with_descriptor(descriptor).with_data_header(bytes.clone());
            for status in put_errors(&mut client, vec![put]).await {
                assert!(acceptable(&status), "DoPut: {status:?}");
            }
            // Still serving.
            let ok = client.do_get(Ticket::new("SELECT 1")).await;
            assert!(ok.is_ok(), "server stopped answering: {ok:?}");
        });
    }

    #[test]
    fn mutated_uploads_get_clear_statuses(
        target in 0usize..2,
        part in 0usize..2,
        edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<u16>()),
        parameters in any::<bool>(),
    ) {
        let (runtime, _) = server();
        runtime.block_on(async {
            let mut messages = upload_messages(parameters).await;
            // Overwrite a few bytes of the schema's or the batch's header or body, perhaps cut it.
            let message = &mut messages[target];
            let bytes = if part == 0 { &mut message.data_header } else { &mut message.data_body };
            let mut edited = bytes.to_vec();
            if !edited.is_empty() {
                for (at, value) in &edits {
                    let at = usize::from(*at) % edited.len();
                    edited[at] = *value;
                }
                if let Some(cut) = cut {
                    edited.truncate(usize::from(cut) % edited.len());
                }
            }
            *bytes = Bytes::from(edited);
            let mut client = client().await;
            for status in put_errors(&mut client, messages).await {
                assert!(acceptable(&status), "DoPut: {status:?}");
            }
            let ok = client.do_get(Ticket::new("SELECT 1")).await;
            assert!(ok.is_ok(), "server stopped answering: {ok:?}");
        });
    }

    #[test]
    fn statement_handles_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let auth = auth();
        let result = StatementHandle::open(&bytes, auth, &Principal::anonymous());
        prop_assert!(result.is_err(), "random bytes opened as a handle");
    }

    #[test]
    fn model_toml_never_panics(text in model_toml()) {
        let _ = ModelSpec::parse(&text, "m");
    }

    #[test]
    fn feature_view_files_never_panic(text in feature_view_text()) {
        let path = std::path::Path::new("sql/features/fuzzed.sql");
        if let Err(e) = FeatureView::parse(path, &text) {
            prop_assert!(e.line >= 1, "error without a line: {e:?}");
        }
    }

    #[test]
    fn auth_files_never_panic(text in auth_text()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("auth.toml");
        std::fs::write(&path, &text).expect("write");
        let _ = Auth::from_file(&path);
    }
}

/// The uploads the property mutates are accepted as they are: the property tests the decoders,
/// not an upload refused for another reason.
#[test]
fn unmutated_uploads_are_accepted() {
    let (runtime, _) = server();
    runtime.block_on(async {
        for parameters in [false, true] {
            let messages = upload_messages(parameters).await;
            let errors = put_errors(&mut client().await, messages).await;
            assert!(errors.is_empty(), "accepted: {errors:?}");
        }
    });
}

/// A batch whose header claims far more rows than its buffers hold (found by the property above):
/// arrow's decoder panics building the validity bitmap; the server answers InvalidArgument.
#[test]
fn a_batch_longer_than_its_buffers_is_invalid_argument() {
    let (runtime, _) = server();
    runtime.block_on(async {
        for parameters in [false, true] {
            let mut messages = upload_messages(parameters).await;
            let mut header = messages[1].data_header.to_vec();
            // The field nodes (length, null count) of the columns with a null: their validity
            // bitmaps are one byte, the lengths now billions.
            let node = [3i64.to_le_bytes(), 1i64.to_le_bytes()].concat();
            let nullable: Vec<usize> = (0..header.len().saturating_sub(15))
                .filter(|&at| header[at..at + 16] == node[..])
                .collect();
            assert!(
                !nullable.is_empty(),
                "the nullable columns' nodes in the header"
            );
            for at in nullable {
                header[at + 3] = 0xac;
            }
            messages[1].data_header = Bytes::from(header);
            let status = put_errors(&mut client().await, messages)
                .await
                .pop()
                .expect("refused");
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(
                status.message().contains("malformed Arrow data"),
                "{status:?}"
            );
        }
    });
}

/// The errors of a DoPut: of the call, or in its result stream.
async fn put_errors(
    client: &mut FlightServiceClient<Channel>,
    messages: Vec<FlightData>,
) -> Vec<tonic::Status> {
    match client.do_put(futures::stream::iter(messages)).await {
        Err(status) => vec![status],
        Ok(response) => {
            let results: Vec<_> = response.into_inner().collect().await;
            results.into_iter().filter_map(Result::err).collect()
        }
    }
}

/// A well-formed upload of a batch with a few column types (schema message, then the batch), as
/// an ingest replacing `fuzzed` or as the parameters of a prepared `SELECT $1, $2, $3`.
async fn upload_messages(parameters: bool) -> Vec<FlightData> {
    use arrow_flight::encode::FlightDataEncoderBuilder;
    use arrow_flight::sql::{
        ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
        CommandPreparedStatementQuery, CommandStatementIngest, ProstMessageExt,
        TableDefinitionOptions, TableExistsOption, TableNotExistOption,
    };
    use datafusion::arrow::array::{ArrayRef, Int64Array, ListArray, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::Float32Type;
    use futures::TryStreamExt;
    static HANDLE: tokio::sync::OnceCell<Bytes> = tokio::sync::OnceCell::const_new();
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
        (
            "name",
            Arc::new(StringArray::from(vec![Some("a"), None, Some("ccc")])) as ArrayRef,
        ),
        (
            "embedding",
            Arc::new(ListArray::from_iter_primitive::<Float32Type, _, _>([
                Some(vec![Some(1.0), Some(2.0)]),
                None,
                Some(vec![Some(3.0)]),
            ])) as ArrayRef,
        ),
    ])
    .expect("batch");
    let command = if parameters {
        let handle = HANDLE
            .get_or_init(|| async {
                let request = ActionCreatePreparedStatementRequest {
                    query: "SELECT $1, $2, $3".into(),
                    ..Default::default()
                };
                let action =
                    Action::new("CreatePreparedStatement", request.as_any().encode_to_vec());
                let mut results = client()
                    .await
                    .do_action(action)
                    .await
                    .expect("prepare")
                    .into_inner();
                let result = results.next().await.expect("a result").expect("prepared");
                let any = Any::decode(result.body).expect("any");
                let prepared: ActionCreatePreparedStatementResult =
                    any.unpack().expect("unpack").expect("a prepared statement");
                prepared.prepared_statement_handle
            })
            .await;
        CommandPreparedStatementQuery {
            prepared_statement_handle: handle.clone(),
        }
        .as_any()
        .encode_to_vec()
    } else {
        // Replace, not append: a mutated upload that still decodes may create `fuzzed` with
        // another schema (a renamed column), which an append of the unmutated one would not fit.
        CommandStatementIngest {
            table_definition_options: Some(TableDefinitionOptions {
                if_not_exist: TableNotExistOption::Create.into(),
                if_exists: TableExistsOption::Replace.into(),
            }),
            table: "fuzzed".into(),
            ..Default::default()
        }
        .as_any()
        .encode_to_vec()
    };
    let mut messages: Vec<FlightData> = FlightDataEncoderBuilder::new()
        .build(futures::stream::iter([Ok(batch)]))
        .try_collect()
        .await
        .expect("encode");
    messages[0].flight_descriptor = Some(FlightDescriptor::new_cmd(command));
    messages
}

fn auth() -> &'static Auth {
    static AUTH: OnceLock<Arc<Auth>> = OnceLock::new();
    AUTH.get_or_init(|| Arc::new(Auth::open().expect("auth")))
}

/// Mutations of a valid file: random edits (delete, insert, replace a span) at random places.
fn mutated(base: String) -> impl Strategy<Value = String> {
    let len = base.len();
    proptest::collection::vec((0..=len, 0..16usize, ".{0,12}"), 0..6).prop_map(move |edits| {
        let mut text = base.clone();
        for (at, cut, insert) in edits {
            let mut at = at.min(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let mut end = (at + cut).min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.replace_range(at..end, &insert);
        }
        text
    })
}

fn model_toml() -> impl Strategy<Value = String> {
    let valid = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/models/mf_reranked/model.toml"),
    )
    .expect("a test model");
    prop_oneof![".{0,200}", mutated(valid)]
}

fn feature_view_text() -> impl Strategy<Value = String> {
    let valid = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/features/item_popularity.sql"),
    )
    .expect("an example view");
    prop_oneof![".{0,200}", mutated(valid)]
}

fn auth_text() -> impl Strategy<Value = String> {
    let valid = "token_ttl = \"1h\"\n[[users]]\nname = \"a\"\n\
                 password_hash = \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\"\n\
                 role = \"read\"\n[[tokens]]\nname = \"t\"\n\
                 sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n\
                 role = \"read_write\"\n"
        .to_string();
    prop_oneof![".{0,200}", mutated(valid)]
}
