//! Auth, roles, TLS and statement-handle forgery from the arrow-flight Rust client.

use std::sync::Arc;

use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any,
    CommandPreparedStatementQuery, ProstMessageExt,
};
use arrow_flight::{Action, FlightDescriptor, HandshakeRequest};
use bytes::Bytes;
use prost::Message;
use quiver::auth::{Auth, hash_password};
use quiver::flight::handle::StatementHandle;
use quiver::server::{ServerOptions, TlsFiles};
use quiver::session::SessionOptions;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::common::{TestServer, code, fetch};

/// The wire form of a sealed handle (mirrors `flight::handle`), to tamper with.
#[derive(Clone, PartialEq, Message)]
struct Sealed {
    #[prost(bytes = "bytes", tag = "1")]
    body: Bytes,
    #[prost(bytes = "vec", tag = "2")]
    tag: Vec<u8>,
}

struct Secured {
    server: TestServer,
    ca: Vec<u8>,
    _dir: tempfile::TempDir,
}

async fn secured_server() -> Secured {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth_path = dir.path().join("auth.toml");
    let file = format!(
        "[[users]]\nname = \"writer\"\npassword_hash = \"{}\"\nrole = \"read_write\"\n\
         [[users]]\nname = \"reader\"\npassword_hash = \"{}\"\nrole = \"read\"\n",
        hash_password("w-pass").expect("hash"),
        hash_password("r-pass").expect("hash"),
    );
    std::fs::write(&auth_path, file).expect("write auth file");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let cert_pem = cert.cert.pem().into_bytes();
    let key_pem = cert.signing_key.serialize_pem().into_bytes();
    let mut options = ServerOptions::local().expect("options");
    options.auth = Arc::new(Auth::from_file(&auth_path).expect("auth"));
    options.tls = Some(TlsFiles::from_pem(cert_pem.clone(), key_pem));
    let server = TestServer::start_serving(SessionOptions::default(), options).await;
    Secured {
        server,
        ca: cert_pem,
        _dir: dir,
    }
}

impl Secured {
    async fn channel(&self) -> Channel {
        quiver::server::install_crypto_provider();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .domain_name("localhost");
        Channel::from_shared(format!("https://{}", self.server.addr))
            .expect("uri")
            .tls_config(tls)
            .expect("tls")
            .connect()
            .await
            .expect("connect over TLS")
    }

    async fn login(&self, user: &str, password: &str) -> FlightSqlServiceClient<Channel> {
        let mut client = FlightSqlServiceClient::new(self.channel().await);
        client.handshake(user, password).await.expect("handshake");
        client
    }
}

#[tokio::test]
async fn roles_and_tls_from_the_rust_client() {
    let secured = secured_server().await;
    let mut writer = secured.login("writer", "w-pass").await;
    writer
        .execute_update("CREATE TABLE t AS SELECT 1 AS x".into(), None)
        .await
        .expect("writer creates");
    let mut reader = secured.login("reader", "r-pass").await;
    let info = reader
        .execute("SELECT x FROM t".into(), None)
        .await
        .expect("reader reads");
    assert_eq!(fetch(&mut reader, info).await[0].num_rows(), 1);
    let denied = reader
        .execute_update("DELETE FROM t".into(), None)
        .await
        .unwrap_err();
    assert_eq!(code(&denied), tonic::Code::PermissionDenied, "{denied}");

    // No credentials, and a wrong password.
    let mut anonymous = FlightSqlServiceClient::new(secured.channel().await);
    let refused = anonymous
        .execute("SELECT 1".into(), None)
        .await
        .unwrap_err();
    assert_eq!(code(&refused), tonic::Code::Unauthenticated, "{refused}");
    // (arrow-flight's client turns a failed handshake into an Arrow error holding the status.)
    let wrong = anonymous.handshake("reader", "nope").await.unwrap_err();
    assert!(
        wrong.to_string().contains("invalid username or password"),
        "{wrong}"
    );

    // A plain-text client cannot talk to the TLS port.
    let plain = Channel::from_shared(format!("http://{}", secured.server.addr))
        .expect("uri")
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut client = arrow_flight::flight_service_client::FlightServiceClient::new(channel);
        let request = futures::stream::iter([HandshakeRequest::default()]);
        assert!(client.handshake(request).await.is_err());
    }
}

#[tokio::test]
async fn statement_handles_cannot_be_forged_or_shared() {
    let secured = secured_server().await;
    let mut writer = secured.login("writer", "w-pass").await;
    writer
        .execute_update("CREATE TABLE kept AS SELECT 1 AS x".into(), None)
        .await
        .expect("create");
    let mut reader = secured.login("reader", "r-pass").await;

    // The reader's own handle for a query, with the SQL inside swapped for a DROP.
    let prepared = prepare_handle(&mut reader, "SELECT x FROM kept").await;
    let info = prepared_info(&mut reader, prepared.clone()).await;
    assert!(info.is_ok(), "the untouched handle works: {info:?}");
    let mut sealed = Sealed::decode(prepared).expect("sealed handle");
    sealed.body = Bytes::from(StatementHandle::new("DROP TABLE kept").encode_to_vec());
    let forged = prepared_info(&mut reader, Bytes::from(sealed.encode_to_vec()))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), tonic::Code::PermissionDenied, "{forged}");
    assert!(
        forged.message().contains("statement handle rejected"),
        "{forged}"
    );

    // A handle with no signature at all.
    let bare = Sealed {
        body: Bytes::from(StatementHandle::new("DROP TABLE kept").encode_to_vec()),
        tag: Vec::new(),
    };
    let unsigned = prepared_info(&mut reader, Bytes::from(bare.encode_to_vec()))
        .await
        .unwrap_err();
    assert_eq!(unsigned.code(), tonic::Code::InvalidArgument, "{unsigned}");

    // The writer's valid handle for a DROP, replayed by the reader.
    let drop = prepare_handle(&mut writer, "DROP TABLE kept").await;
    let replayed = prepared_info(&mut reader, drop).await.unwrap_err();
    assert_eq!(replayed.code(), tonic::Code::PermissionDenied, "{replayed}");

    // The table is still there.
    let info = reader
        .execute("SELECT count(*) FROM kept".into(), None)
        .await
        .expect("still there");
    assert_eq!(fetch(&mut reader, info).await[0].num_rows(), 1);
}

/// CreatePreparedStatement, returning the raw (sealed) handle.
async fn prepare_handle(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Bytes {
    let request = ActionCreatePreparedStatementRequest {
        query: sql.to_string(),
        transaction_id: None,
    };
    let action = Action {
        r#type: "CreatePreparedStatement".into(),
        body: request.as_any().encode_to_vec().into(),
    };
    let mut results = client.do_action(action).await.expect("prepare");
    let result = results
        .message()
        .await
        .expect("result")
        .expect("one result");
    let any = Any::decode(&*result.body).expect("any");
    let prepared: ActionCreatePreparedStatementResult =
        any.unpack().expect("unpack").expect("result");
    prepared.prepared_statement_handle
}

/// GetFlightInfo for a prepared-statement handle, sent with the client's bearer token.
async fn prepared_info(
    client: &mut FlightSqlServiceClient<Channel>,
    handle: Bytes,
) -> Result<arrow_flight::FlightInfo, tonic::Status> {
    let command = CommandPreparedStatementQuery {
        prepared_statement_handle: handle,
    };
    let descriptor = FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
    let mut request = tonic::Request::new(descriptor);
    let token = client.token().expect("logged in").clone();
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    client
        .inner_mut()
        .get_flight_info(request)
        .await
        .map(tonic::Response::into_inner)
}

/// The standard gRPC health service answers on the Flight port without credentials (a load balancer
/// has none) while every Flight call still needs them, and turns NOT_SERVING as shutdown begins.
#[tokio::test]
async fn health_checks_need_no_token_and_follow_shutdown() {
    use tonic_health::ServingStatus;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let mut secured = secured_server().await;
    let mut health = HealthClient::new(secured.channel().await);
    for service in ["", "arrow.flight.protocol.FlightService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("a health check without a token")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service '{service}'");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("an unknown service");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    // Flight calls still need a token.
    let mut anonymous = FlightSqlServiceClient::new(secured.channel().await);
    let refused = anonymous
        .execute("SELECT 1".into(), None)
        .await
        .expect_err("no token");
    assert!(refused.to_string().contains("no credentials"), "{refused}");

    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("status").expect("a status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    secured.server.shut_down();
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), watch.message())
        .await
        .expect("a status change within 10 s")
        .expect("status")
        .expect("a status");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
}
