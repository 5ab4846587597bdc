"""Plain Arrow Flight (pyarrow.flight, no Flight SQL) against a real Quiver server.

A ticket or CMD descriptor holding UTF-8 SQL runs that SQL; a PATH descriptor names a table;
DoPut appends to a table (creating it when absent); ListFlights lists the tables.

Every table name starts with `fl_`: the server is shared by the whole session.
"""

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight
import pytest
from helpers import commits


# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture()
def client(server):
    c = flight.FlightClient(server.uri)
    yield c
    c.close()


def sql(client, text) -> pa.Table:
    return client.do_get(flight.Ticket(text.encode())).read_all()


def rows(client, text) -> list[dict]:
    return sql(client, text).to_pylist()


def put(client, path, data) -> bytes | None:
    """DoPut `data` (a Table, or a list of RecordBatches) to a PATH descriptor; returns the ack."""
    if isinstance(data, pa.Table):
        schema, batches = data.schema, data.to_batches()
    else:
        schema, batches = data[0].schema, data
    writer, reader = client.do_put(flight.FlightDescriptor.for_path(*path), schema)
    for batch in batches:
        writer.write_batch(batch)
    writer.done_writing()
    ack = reader.read()
    writer.close()
    return None if ack is None else ack.to_pybytes()


def record_count(ack: bytes) -> int:
    """`record_count` (field 1, varint) of the DoPutUpdateResult the server acknowledges with."""
    assert ack and ack[0] == 0x08, ack
    value, shift = 0, 0
    for byte in ack[1:]:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return value


def sample(ids, names) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64()), "name": pa.array(names, pa.string())})


def sorted_rows(table: pa.Table, key="id") -> list[dict]:
    return table.sort_by(key).to_pylist()


# --- DoGet with SQL tickets --------------------------------------------------------------------


def test_sql_ticket_literal_query(client):
    result = sql(client, "SELECT 1 AS a, 'x' AS b, CAST(NULL AS DOUBLE) AS c")
    assert result.column_names == ["a", "b", "c"]
    assert result.to_pylist() == [{"a": 1, "b": "x", "c": None}]


def test_sql_ticket_streams_many_rows(client):
    result = sql(client, "SELECT value AS v FROM generate_series(1, 200000) AS t(value)")
    assert result.num_rows == 200000
    assert pc.sum(result.column("v")).as_py() == 200000 * 200001 // 2


def test_sql_ticket_ddl_and_dml(client, server):
    t = "fl_ticket_dml"
    assert rows(client, f"CREATE TABLE {t} (id BIGINT, name VARCHAR)") == [{"count": 0}]
    assert rows(client, f"INSERT INTO {t} VALUES (2, 'b'), (1, 'a')") == [{"count": 2}]
    assert commits(server, t) == 2
    assert rows(client, f"SELECT * FROM {t} ORDER BY id") == [
        {"id": 1, "name": "a"},
        {"id": 2, "name": "b"},
    ]
    assert rows(client, f"UPDATE {t} SET name = 'z' WHERE id = 1") == [{"count": 1}]
    assert rows(client, f"DELETE FROM {t} WHERE id = 2") == [{"count": 1}]
    assert rows(client, f"SELECT * FROM {t}") == [{"id": 1, "name": "z"}]
    assert commits(server, t) == 4


# --- GetFlightInfo -----------------------------------------------------------------------------


def test_flight_info_for_command_then_do_get(client):
    t = "fl_info_cmd"
    sql(client, f"CREATE TABLE {t} (id BIGINT, name VARCHAR)")
    sql(client, f"INSERT INTO {t} VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    info = client.get_flight_info(
        flight.FlightDescriptor.for_command(f"SELECT id, name FROM {t} WHERE id >= 2".encode())
    )
    assert info.schema.names == ["id", "name"]
    assert info.schema.field("id").type == pa.int64()
    assert len(info.endpoints) == 1
    result = client.do_get(info.endpoints[0].ticket).read_all()
    assert result.schema.names == ["id", "name"]
    assert sorted_rows(result) == [{"id": 2, "name": "b"}, {"id": 3, "name": "c"}]
    # The ticket is reusable.
    again = client.do_get(info.endpoints[0].ticket).read_all()
    assert sorted_rows(again) == sorted_rows(result)


def test_flight_info_for_path_then_do_get(client):
    t = "fl_info_path"
    put(client, [t], sample([1, 2], ["a", "b"]))
    info = client.get_flight_info(flight.FlightDescriptor.for_path(t))
    assert info.descriptor.path == [t.encode()]
    assert info.schema.names == ["id", "name"]
    assert len(info.endpoints) == 1
    result = client.do_get(info.endpoints[0].ticket).read_all()
    assert sorted_rows(result) == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def test_flight_info_for_schema_qualified_path(client):
    schema, t = "fl_info_schema", "fl_info_qualified"
    sql(client, f"CREATE SCHEMA {schema}")
    put(client, [schema, t], sample([7], ["g"]))
    info = client.get_flight_info(flight.FlightDescriptor.for_path(schema, t))
    assert info.schema.names == ["id", "name"]
    result = client.do_get(info.endpoints[0].ticket).read_all()
    assert result.to_pylist() == [{"id": 7, "name": "g"}]


def test_flight_info_for_dml_runs_it_once(client, server):
    t = "fl_info_dml"
    sql(client, f"CREATE TABLE {t} (id BIGINT)")
    info = client.get_flight_info(
        flight.FlightDescriptor.for_command(f"INSERT INTO {t} VALUES (1), (2)".encode())
    )
    assert info.schema.names == ["count"]
    ticket = info.endpoints[0].ticket
    assert client.do_get(ticket).read_all().to_pylist() == [{"count": 2}]
    assert client.do_get(ticket).read_all().to_pylist() == [{"count": 2}]
    assert commits(server, t) == 2
    assert rows(client, f"SELECT count(*) AS n FROM {t}") == [{"n": 2}]


# --- DoPut -------------------------------------------------------------------------------------


def test_do_put_creates_then_appends(client, server):
    t = "fl_put"
    assert not (server.warehouse / "public" / t).exists()
    ack = put(client, [t], sample([1, 2], ["a", "b"]))
    assert record_count(ack) == 2
    assert commits(server, t) == 1
    assert sorted_rows(sql(client, f"SELECT * FROM {t}")) == [
        {"id": 1, "name": "a"},
        {"id": 2, "name": "b"},
    ]
    ack = put(client, [t], sample([3, 4, 5], ["c", None, "e"]))
    assert record_count(ack) == 3
    assert commits(server, t) == 2
    assert sorted_rows(sql(client, f"SELECT * FROM {t}")) == [
        {"id": 1, "name": "a"},
        {"id": 2, "name": "b"},
        {"id": 3, "name": "c"},
        {"id": 4, "name": None},
        {"id": 5, "name": "e"},
    ]


def test_do_put_many_batches_is_one_commit(client, server):
    t = "fl_put_batches"
    batches = [sample(list(range(i * 100, i * 100 + 100)), [f"n{i}"] * 100).to_batches()[0] for i in range(8)]
    ack = put(client, [t], batches)
    assert record_count(ack) == 800
    assert commits(server, t) == 1
    assert rows(client, f"SELECT count(*) AS n, count(DISTINCT id) AS d, max(id) AS m FROM {t}") == [
        {"n": 800, "d": 800, "m": 799}
    ]


def test_do_put_to_schema_path(client, server):
    schema, t = "fl_put_schema", "fl_put_in_schema"
    sql(client, f"CREATE SCHEMA {schema}")
    put(client, [schema, t], sample([1], ["a"]))
    put(client, [schema, t], sample([2], ["b"]))
    assert commits(server, t, schema=schema) == 2
    assert not (server.warehouse / "public" / t).exists()
    assert rows(client, f"SELECT id, name FROM {schema}.{t} ORDER BY id") == [
        {"id": 1, "name": "a"},
        {"id": 2, "name": "b"},
    ]


def test_do_put_to_missing_schema_fails(client, server):
    with pytest.raises(pa.ArrowKeyError) as info:
        put(client, ["fl_no_such_schema", "t"], sample([1], ["a"]))
    assert "not found" in str(info.value)
    assert "fl_no_such_schema" in str(info.value)
    assert not (server.warehouse / "fl_no_such_schema").exists()


def test_do_put_schema_mismatch_leaves_table_unchanged(client, server):
    t = "fl_put_mismatch"
    put(client, [t], sample([1, 2], ["a", "b"]))
    before = commits(server, t)

    extra = pa.table({"id": pa.array([3], pa.int64()), "colour": ["red"]})
    with pytest.raises(pa.ArrowInvalid) as info:
        put(client, [t], extra)
    assert "colour" in str(info.value)

    wrong_type = pa.table({"id": pa.array(["three"]), "name": ["c"]})
    with pytest.raises(pa.ArrowInvalid) as info:
        put(client, [t], wrong_type)
    assert "id" in str(info.value)

    assert commits(server, t) == before
    assert sorted_rows(sql(client, f"SELECT * FROM {t}")) == [
        {"id": 1, "name": "a"},
        {"id": 2, "name": "b"},
    ]


def test_do_put_visible_to_adbc(client, adbc):
    t = "fl_put_adbc"
    put(client, [t], sample([1, 2, 3], ["a", "b", "c"]))
    with adbc.cursor() as cur:
        cur.execute(f"SELECT sum(id) AS s FROM {t}")
        assert cur.fetchall() == [(6,)]


def test_concurrent_writers_all_land(client, server):
    import threading

    import adbc_driver_flightsql.dbapi as dbapi

    t = "fl_concurrent"
    sql(client, f"CREATE TABLE {t} (id BIGINT, w INT)")
    schema = pa.schema([("id", pa.int64()), ("w", pa.int32())])
    errors = []

    def flight_writer(w):
        try:
            c = flight.FlightClient(server.uri)
            for i in range(4):
                put(c, [t], pa.table({"id": pa.array([i], pa.int64()), "w": pa.array([w], pa.int32())}, schema=schema))
            c.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    def adbc_writer(w):
        try:
            with dbapi.connect(server.uri, autocommit=True) as conn, conn.cursor() as cur:
                for i in range(4):
                    cur.execute(f"INSERT INTO {t} VALUES (?, ?)", parameters=(i, w))
                    cur.fetchall()
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=flight_writer, args=(w,)) for w in range(3)]
    threads += [threading.Thread(target=adbc_writer, args=(w,)) for w in range(10, 13)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert errors == []
    assert rows(client, f"SELECT count(*) AS n, count(DISTINCT w) AS writers FROM {t}") == [
        {"n": 24, "writers": 6}
    ]
    # Appends that arrive together are group-committed: never more commits than writes.
    assert 1 < commits(server, t) <= 1 + 24


# --- ListFlights / GetSchema -------------------------------------------------------------------


def test_list_flights_includes_tables(client):
    schema = "fl_list_schema"
    put(client, ["fl_list_public"], sample([1], ["a"]))
    sql(client, f"CREATE SCHEMA {schema}")
    sql(client, f"CREATE TABLE {schema}.fl_list_other (x DOUBLE)")
    listed = {tuple(p.decode() for p in info.descriptor.path): info for info in client.list_flights()}
    assert ("fl_list_public",) in listed
    assert (schema, "fl_list_other") in listed
    assert listed[("fl_list_public",)].schema.names == ["id", "name"]
    assert listed[(schema, "fl_list_other")].schema.names == ["x"]
    # A listed flight can be fetched.
    info = listed[("fl_list_public",)]
    assert client.do_get(info.endpoints[0].ticket).read_all().to_pylist() == [{"id": 1, "name": "a"}]


def test_list_flights_exact_on_fresh_warehouse(fresh_server):
    c = flight.FlightClient(fresh_server.uri)
    try:
        assert list(c.list_flights()) == []
        put(c, ["t1"], sample([1], ["a"]))
        c.do_get(flight.Ticket(b"CREATE SCHEMA s")).read_all()
        put(c, ["s", "t2"], sample([2], ["b"]))
        c.do_get(flight.Ticket(b"CREATE TABLE gone (x INT)")).read_all()
        c.do_get(flight.Ticket(b"DROP TABLE gone")).read_all()
        paths = sorted(tuple(p.decode() for p in i.descriptor.path) for i in c.list_flights())
        assert paths == [("s", "t2"), ("t1",)]
    finally:
        c.close()


def test_get_schema(client):
    schema, t = "fl_schema_schema", "fl_get_schema"
    sql(client, f"CREATE SCHEMA {schema}")
    sql(client, f"CREATE TABLE {t} (id BIGINT, name VARCHAR, price DECIMAL(10, 2))")
    sql(client, f"CREATE TABLE {schema}.{t} (flag BOOLEAN)")

    by_path = client.get_schema(flight.FlightDescriptor.for_path(t)).schema
    assert by_path.names == ["id", "name", "price"]
    assert by_path.field("id").type == pa.int64()
    assert by_path.field("price").type == pa.decimal128(10, 2)

    qualified = client.get_schema(flight.FlightDescriptor.for_path(schema, t)).schema
    assert qualified.names == ["flag"]
    assert qualified.field("flag").type == pa.bool_()

    by_cmd = client.get_schema(
        flight.FlightDescriptor.for_command(f"SELECT price, id * 2 AS twice FROM {t}".encode())
    ).schema
    assert by_cmd.names == ["price", "twice"]
    assert by_cmd.field("twice").type == pa.int64()


def test_partitioned_table_schema_matches_stream(client):
    t = "fl_partitioned"
    sql(client, f"CREATE TABLE {t} (id INT, region VARCHAR) PARTITIONED BY (region)")
    sql(client, f"INSERT INTO {t} VALUES (1, 'eu'), (2, 'us')")
    info = client.get_flight_info(flight.FlightDescriptor.for_path(t))
    result = client.do_get(info.endpoints[0].ticket).read_all()
    assert sorted_rows(result) == [{"id": 1, "region": "eu"}, {"id": 2, "region": "us"}]
    assert info.schema == result.schema
    assert client.get_schema(flight.FlightDescriptor.for_path(t)).schema == result.schema


# --- errors ------------------------------------------------------------------------------------


def test_bad_sql_ticket(client):
    with pytest.raises(pa.ArrowInvalid) as info:
        sql(client, "SELEC 1")
    assert "invalid argument" in str(info.value)
    assert "SELEC" in str(info.value)
    with pytest.raises(pa.ArrowInvalid):
        client.get_flight_info(flight.FlightDescriptor.for_command(b"SELEC 1"))
    assert rows(client, "SELECT 'ok' AS s") == [{"s": "ok"}]


def test_empty_and_binary_tickets_are_invalid(client):
    with pytest.raises(pa.ArrowInvalid) as info:
        sql(client, "   ")
    assert "empty" in str(info.value)
    with pytest.raises(pa.ArrowInvalid):
        client.do_get(flight.Ticket(b"\xff\xfe\x00garbage")).read_all()
    assert rows(client, "SELECT 1 AS one") == [{"one": 1}]


def test_unknown_table(client):
    with pytest.raises(pa.ArrowKeyError) as info:
        sql(client, "SELECT * FROM fl_nope")
    assert "not found" in str(info.value)
    assert "fl_nope" in str(info.value)
    with pytest.raises(pa.ArrowKeyError) as info:
        client.get_flight_info(flight.FlightDescriptor.for_path("fl_nope"))
    assert "not found" in str(info.value)
    with pytest.raises(pa.ArrowKeyError) as info:
        client.get_schema(flight.FlightDescriptor.for_path("fl_nope"))
    assert "not found" in str(info.value)
    with pytest.raises(pa.ArrowKeyError) as info:
        client.get_flight_info(flight.FlightDescriptor.for_path("fl_no_schema", "fl_nope"))
    assert "not found" in str(info.value)
    assert rows(client, "SELECT 2 AS two") == [{"two": 2}]


def test_do_exchange_is_unimplemented(client):
    with pytest.raises(pa.ArrowNotImplementedError):
        writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(b"SELECT 1"))
        writer.done_writing()
        reader.read_all()
    assert rows(client, "SELECT 3 AS three") == [{"three": 3}]
