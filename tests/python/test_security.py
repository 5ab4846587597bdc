"""Authentication, roles and TLS through the real clients (ADBC and pyarrow.flight).

A server with an auth file: users log in with username/password (the Flight handshake, as the ADBC
driver does it) or send an API token; role `read` may query, `read_write` may also write. A non-loopback
address needs auth unless --insecure-no-auth is given; TLS is tested with a self-signed certificate.
"""

import datetime
import ipaddress
import os
import subprocess

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as dbapi
import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from conftest import Server, _binary, quiver
from helpers import rows


@pytest.fixture(scope="module")
def secured(tmp_path_factory, auth_file):
    srv = Server(tmp_path_factory.mktemp("warehouse"), args=["--auth-file", str(auth_file[0])])
    yield srv
    assert srv.stop() == 0


def connect(srv, user=None, password=None, token=None, **kwargs):
    db_kwargs = dict(kwargs)
    if user is not None:
        db_kwargs["username"] = user
        db_kwargs["password"] = password
    if token is not None:
        db_kwargs[adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value] = f"Bearer {token}"
    return dbapi.connect(srv.uri, db_kwargs=db_kwargs, autocommit=True)


def test_roles_through_adbc_logins_and_tokens(secured, auth_file):
    _, tokens = auth_file
    with connect(secured, "writer", "w-pass") as conn:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE sec_events AS SELECT * FROM (VALUES (1, 'a'), (2, 'b')) t(id, tag)")
            cur.adbc_ingest("sec_events", pa.table({"id": [3], "tag": ["c"]}), mode="append")
    with connect(secured, token=tokens["read_write"]) as conn:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO sec_events VALUES (4, 'd')")
    for reader in (connect(secured, "reader", "r-pass"), connect(secured, token=tokens["read"])):
        with reader as conn:
            assert [r["id"] for r in rows(conn, "SELECT id FROM sec_events ORDER BY id")] == [1, 2, 3, 4]
            # Prepared statements with parameters are reads too.
            assert rows(conn, "SELECT tag FROM sec_events WHERE id = ?", (2,)) == [{"tag": "b"}]
            for write in [
                "INSERT INTO sec_events VALUES (5, 'e')",
                "DELETE FROM sec_events WHERE id = 1",
                "DROP TABLE sec_events",
                "CREATE TABLE sec_other AS SELECT 1 AS x",
                "RELOAD MODELS",
                "RELOAD FEATURE VIEWS",
                "REFRESH FEATURE VIEWS",
            ]:
                with pytest.raises(adbc_driver_manager.Error) as failure:
                    with conn.cursor() as cur:
                        cur.execute(write)
                message = str(failure.value)
                assert "permission denied" in message and "needs read_write" in message, message
                assert failure.value.status_code == adbc_driver_manager.AdbcStatusCode.UNAUTHORIZED
            with pytest.raises(adbc_driver_manager.Error, match="permission denied.*ingest"):
                with conn.cursor() as cur:
                    cur.adbc_ingest("sec_events", pa.table({"id": [9], "tag": ["z"]}), mode="append")
    with connect(secured, "writer", "w-pass") as conn:
        assert [r["id"] for r in rows(conn, "SELECT id FROM sec_events ORDER BY id")] == [1, 2, 3, 4]


def test_only_read_write_callers_manage_sources(secured):
    """CREATE / ALTER / DROP SOURCE change what every server consumes: role read may list sources,
    not manage them (the definitions are only written, no broker is contacted here)."""
    with connect(secured, "writer", "w-pass") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE sec_clicks (user_id BIGINT NOT NULL)")
        cur.fetchall()
        cur.execute(
            "CREATE SOURCE sec_in FROM KAFKA (brokers '127.0.0.1:1', topic 'clicks') INTO sec_clicks"
        )
        cur.fetchall()
        cur.execute("ALTER SOURCE sec_in PAUSE")
        cur.fetchall()
    with connect(secured, "reader", "r-pass") as conn:
        assert [r["name"] for r in rows(conn, "SHOW SOURCES")] == ["sec_in"]
        for statement, kind in [
            ("CREATE SOURCE sec_other FROM KAFKA (brokers 'b:1', topic 't') INTO sec_clicks", "CREATE SOURCE"),
            ("ALTER SOURCE sec_in RESUME", "ALTER SOURCE"),
            ("DROP SOURCE sec_in", "DROP SOURCE"),
        ]:
            with pytest.raises(adbc_driver_manager.Error) as refused, conn.cursor() as cur:
                cur.execute(statement)
                cur.fetchall()
            assert refused.value.status_code == adbc_driver_manager.AdbcStatusCode.UNAUTHORIZED, refused.value
            assert f"cannot run {kind}" in str(refused.value)
        assert [r["paused"] for r in rows(conn, "SHOW SOURCES")] == [True]
    with connect(secured, "writer", "w-pass") as conn, conn.cursor() as cur:
        cur.execute("DROP SOURCE sec_in")
        cur.fetchall()


def test_missing_or_wrong_credentials_are_unauthenticated(secured):
    with pytest.raises(adbc_driver_manager.Error) as failure:
        with connect(secured, "writer", "wrong") as conn:
            rows(conn, "SELECT 1")
    assert failure.value.status_code == adbc_driver_manager.AdbcStatusCode.UNAUTHENTICATED
    assert "invalid username or password" in str(failure.value)

    client = flight.connect(secured.uri)
    with pytest.raises(flight.FlightUnauthenticatedError, match="no credentials"):
        client.get_flight_info(flight.FlightDescriptor.for_command(b"SELECT 1"))
    with pytest.raises(flight.FlightUnauthenticatedError, match="invalid bearer token"):
        options = flight.FlightCallOptions(headers=[(b"authorization", b"Bearer qv1.bm9ib2R5.99999999999.AAAA")])
        client.get_flight_info(flight.FlightDescriptor.for_command(b"SELECT 1"), options)


def test_plain_flight_logs_in_and_is_held_to_its_role(secured):
    client = flight.connect(secured.uri)
    header = client.authenticate_basic_token("reader", "r-pass")
    options = flight.FlightCallOptions(headers=[header])
    assert header[1].startswith(b"Bearer qv1.")
    table = client.do_get(flight.Ticket(b"SELECT 41 + 1 AS answer"), options).read_all()
    assert table.to_pylist() == [{"answer": 42}]
    with pytest.raises(flight.FlightUnauthorizedError, match="cannot run DROP TABLE"):
        client.do_get(flight.Ticket(b"DROP TABLE sec_events"), options).read_all()
    with pytest.raises(flight.FlightUnauthorizedError, match="cannot run ingest"):
        writer, _ = client.do_put(
            flight.FlightDescriptor.for_path("sec_events"), pa.schema([("id", pa.int64())]), options
        )
        writer.write_table(pa.table({"id": [7]}))
        writer.close()


def test_non_loopback_needs_auth_or_an_explicit_opt_out(tmp_path, auth_file):
    refused = quiver("serve", "--warehouse", str(tmp_path / "w"), "--listen", "0.0.0.0:0")
    assert refused.returncode != 0
    assert "not a loopback address" in refused.stderr and "--insecure-no-auth" in refused.stderr
    assert "--auth-file" in refused.stderr
    for extra in (["--insecure-no-auth"], ["--auth-file", str(auth_file[0])]):
        proc = subprocess.Popen(
            [_binary(), "serve", "--warehouse", str(tmp_path / "w"), "--listen", "0.0.0.0:0", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout.readline().startswith("quiver listening on grpc://0.0.0.0:")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_bad_auth_files_name_the_problem(tmp_path):
    bad = tmp_path / "auth.toml"
    bad.write_text('[[users]]\nname = "x"\npassword_hash = "plain"\nrole = "read"\n')
    result = quiver("serve", "--warehouse", str(tmp_path / "w"), "--auth-file", str(bad))
    assert result.returncode != 0
    assert "auth.toml" in result.stderr and "user 'x'" in result.stderr and "hash-password" in result.stderr


def self_signed(directory):
    """A certificate for localhost and 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(key_pem)
    return directory / "cert.pem", directory / "key.pem", cert_pem


def test_tls_with_a_self_signed_certificate(tmp_path, auth_file):
    cert, key, cert_pem = self_signed(tmp_path)
    srv = Server(
        tmp_path / "warehouse",
        args=["--tls-cert", str(cert), "--tls-key", str(key), "--auth-file", str(auth_file[0])],
    )
    try:
        assert srv.uri.startswith("grpc+tls://")
        with connect(
            srv,
            "writer",
            "w-pass",
            **{adbc_driver_flightsql.DatabaseOptions.TLS_ROOT_CERTS.value: cert_pem.decode()},
        ) as conn:
            assert rows(conn, "SELECT 'over tls' AS s") == [{"s": "over tls"}]
        client = flight.connect(srv.uri, tls_root_certs=cert_pem)
        options = flight.FlightCallOptions(headers=[client.authenticate_basic_token("reader", "r-pass")])
        assert client.do_get(flight.Ticket(b"SELECT 1 AS one"), options).read_all().num_rows == 1
        # A client that does not trust the certificate is refused at the TLS layer.
        with pytest.raises(adbc_driver_manager.Error):
            with connect(srv, "writer", "w-pass") as conn:
                rows(conn, "SELECT 1")
        # Plain text to a TLS port fails.
        plain = flight.connect(srv.uri.replace("grpc+tls://", "grpc://"))
        with pytest.raises(flight.FlightError):
            plain.do_get(flight.Ticket(b"SELECT 1"), options).read_all()
    finally:
        assert srv.stop() == 0


def test_query_history_shows_readers_only_their_own_statements(secured):
    with connect(secured, "writer", "w-pass") as conn:
        rows(conn, "SELECT 'writer was here' AS w")
    with connect(secured, "reader", "r-pass") as conn:
        rows(conn, "SELECT 'reader was here' AS r")
        mine = rows(conn, "SELECT user, role, sql FROM system.queries")
        assert mine and {(r["user"], r["role"]) for r in mine} == {("reader", "read")}, mine
        assert any("reader was here" in r["sql"] for r in mine)
        assert not any("writer was here" in r["sql"] for r in mine)
    with connect(secured, "writer", "w-pass") as conn:
        everyone = rows(conn, "SELECT user, sql FROM system.queries")
        assert {"reader", "writer"} <= {r["user"] for r in everyone}
        assert any("reader was here" in r["sql"] for r in everyone)
