"""Bounded resources: query timeout, the concurrent-statement cap, cancellation (a dropped stream and
CancelFlightInfo), upload and message size limits. Each refusal has the right status and names the
setting, and the server keeps serving after it. (The memory limit is in test_memory_limit.py.)"""

import time

import adbc_driver_flightsql.dbapi as dbapi
import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from conftest import Server
from helpers import rows

# Tens of millions of rows: minutes in a debug build, so only a limit or a cancellation ends it.
ENDLESS = b"SELECT v FROM generate_series(1, 2000000000) t(v)"


def endless_count():
    return "SELECT count(*) AS n FROM generate_series(1, 2000000000) t(v) WHERE v % 7 = 3"


@pytest.fixture()
def limited(tmp_path):
    srv = Server(
        tmp_path / "warehouse",
        args=[
            "--query-timeout",
            "2s",
            "--max-concurrent-queries",
            "2",
            "--max-upload-size",
            "1MiB",
            "--max-message-size",
            "4MiB",
        ],
    )
    yield srv
    assert srv.stop() == 0


def test_query_timeout_stops_the_query_and_the_server_serves_on(limited):
    with dbapi.connect(limited.uri, autocommit=True) as conn:
        started = time.monotonic()
        with pytest.raises(adbc_driver_manager.Error) as failure:
            rows(conn, endless_count())
        assert time.monotonic() - started < 30
        assert failure.value.status_code == adbc_driver_manager.AdbcStatusCode.TIMEOUT
        assert "--query-timeout" in str(failure.value)
        assert rows(conn, "SELECT 1 AS one") == [{"one": 1}]
    # A streaming DoGet is stopped mid-stream too.
    client = flight.connect(limited.uri)
    reader = client.do_get(flight.Ticket(ENDLESS))
    with pytest.raises(flight.FlightTimedOutError, match="--query-timeout"):
        while True:
            reader.read_chunk()


def test_the_concurrency_cap_refuses_with_resource_exhausted_and_frees_on_drop(limited):
    client = flight.connect(limited.uri)
    # Two endless streams hold both slots: they block on their full channels, unread.
    held = [client.do_get(flight.Ticket(ENDLESS)) for _ in range(2)]
    for reader in held:
        reader.read_chunk()
    # (pyarrow raises ArrowInvalid for RESOURCE_EXHAUSTED; the gRPC status is in the message.)
    with pytest.raises(pa.ArrowException, match="resource exhausted.*limit of 2 statements.*--max-concurrent-queries"):
        client.do_get(flight.Ticket(b"SELECT 1")).read_all()
    with dbapi.connect(limited.uri, autocommit=True) as conn:
        with pytest.raises(adbc_driver_manager.Error, match=r"--max-concurrent-queries.*\(ResourceExhausted;"):
            rows(conn, "SELECT 1")
    # Dropping the readers cancels their queries (they would run for minutes) and frees the slots.
    for reader in held:
        reader.cancel()
    del held
    deadline = time.monotonic() + 10
    while True:
        try:
            assert client.do_get(flight.Ticket(b"SELECT 2 AS two")).read_all().to_pylist() == [{"two": 2}]
            break
        except pa.ArrowException:
            assert time.monotonic() < deadline, "slots were not freed after the clients went away"
            time.sleep(0.1)


def _cancel_request(info: flight.FlightInfo) -> bytes:
    """CancelFlightInfoRequest { info = 1 } in protobuf, around pyarrow's serialized FlightInfo."""
    body = info.serialize()
    size, length = bytearray(), len(body)
    while True:
        byte = length & 0x7F
        length >>= 7
        size.append(byte | (0x80 if length else 0))
        if not length:
            break
    return b"\x0a" + bytes(size) + body


def test_cancel_flight_info_stops_a_running_query(limited):
    client = flight.connect(limited.uri)
    info = client.get_flight_info(flight.FlightDescriptor.for_command(ENDLESS))
    reader = client.do_get(info.endpoints[0].ticket)
    reader.read_chunk()
    results = list(client.do_action(flight.Action("CancelFlightInfo", _cancel_request(info))))
    assert results[0].body.to_pybytes() == b"\x08\x01"  # CancelStatus.CANCELLED
    with pytest.raises(flight.FlightCancelledError, match="cancelled"):
        while True:
            reader.read_chunk()
    # The same ticket stays cancelled; other queries run.
    with pytest.raises(flight.FlightCancelledError):
        client.do_get(info.endpoints[0].ticket).read_all()
    assert client.do_get(flight.Ticket(b"SELECT 3 AS three")).read_all().num_rows == 1


def test_upload_and_message_limits_name_the_setting(limited):
    big = pa.table({"id": pa.array(range(300_000), pa.int64())})  # 2.4 MB: over the 1 MiB upload limit
    with dbapi.connect(limited.uri, autocommit=True) as conn:
        with pytest.raises(adbc_driver_manager.Error, match=r"--max-upload-size.*\(ResourceExhausted;"):
            with conn.cursor() as cur:
                cur.adbc_ingest("too_big", big, mode="create")
        # Nothing was committed: the table does not exist.
        assert rows(conn, "SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'too_big'") == [
            {"n": 0}
        ]
        with conn.cursor() as cur:
            cur.adbc_ingest("small_enough", big.slice(0, 1000), mode="create")
        assert rows(conn, "SELECT count(*) AS n FROM small_enough") == [{"n": 1000}]

    client = flight.connect(limited.uri)
    huge = pa.table({"id": pa.array(range(1_000_000), pa.int64())})  # one 8 MB batch > 4 MiB messages
    writer, _ = client.do_put(flight.FlightDescriptor.for_path("huge"), huge.schema)
    with pytest.raises(pa.ArrowException, match="resource exhausted.*--max-message-size"):
        writer.write_table(huge, max_chunksize=len(huge))
        writer.close()
    assert client.do_get(flight.Ticket(b"SELECT 4 AS four")).read_all().num_rows == 1


def test_prepare_and_metadata_rpcs_are_within_the_cap(limited):
    """Preparing a statement plans it and listing tables reads the warehouse: both wait for a slot
    like a query (and run under --query-timeout with it), rather than slipping past the cap."""
    client = flight.connect(limited.uri)
    held = [client.do_get(flight.Ticket(ENDLESS)) for _ in range(2)]
    for reader in held:
        reader.read_chunk()
    with dbapi.connect(limited.uri, autocommit=True) as conn:
        with conn.cursor() as cur:
            with pytest.raises(adbc_driver_manager.Error, match=r"--max-concurrent-queries.*\(ResourceExhausted;"):
                cur.adbc_prepare("SELECT 1 AS one")
        with pytest.raises(adbc_driver_manager.Error, match=r"--max-concurrent-queries"):
            conn.adbc_get_objects(depth="tables").read_all()
    for reader in held:
        reader.cancel()
    del held
    deadline = time.monotonic() + 10
    with dbapi.connect(limited.uri, autocommit=True) as conn:
        while True:
            try:
                with conn.cursor() as cur:
                    cur.adbc_prepare("SELECT 1 AS one")
                break
            except adbc_driver_manager.Error:
                assert time.monotonic() < deadline, "slots were not freed after the clients went away"
                time.sleep(0.1)
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        assert any(c["catalog_name"] == "quiver" for c in objects)


def test_parameter_uploads_are_bounded_by_the_upload_limit(limited):
    big = pa.table({"id": pa.array(range(300_000), pa.int64())})  # 2.4 MB of parameters > 1 MiB
    with dbapi.connect(limited.uri, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE bound_ids (id BIGINT)")
            with pytest.raises(adbc_driver_manager.Error, match=r"--max-upload-size.*\(ResourceExhausted;"):
                cur.executemany("INSERT INTO bound_ids VALUES (?)", big)
            with pytest.raises(adbc_driver_manager.Error, match=r"--max-upload-size.*\(ResourceExhausted;"):
                cur.execute("SELECT ? AS id", big)
                cur.fetchall()
            # Within the limit both work, and the refused insert wrote nothing.
            cur.executemany("INSERT INTO bound_ids VALUES (?)", big.slice(0, 1000))
        assert rows(conn, "SELECT count(*) AS n FROM bound_ids") == [{"n": 1000}]
