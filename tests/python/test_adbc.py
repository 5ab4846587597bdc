"""ADBC (Flight SQL driver) against a real Quiver server: queries, parameters, bulk ingest,
metadata calls, errors, DDL/DML and time travel.

Every table name starts with `adbc_` and is used by one test only: the server is shared by the
whole session. Commit counts are read from the Delta log on disk (`_delta_log/*.json`).
"""

import datetime
import decimal

import adbc_driver_manager
import pyarrow as pa
import pytest
from helpers import commits, ingest, query, rows

Status = adbc_driver_manager.AdbcStatusCode


# --- helpers -----------------------------------------------------------------------------------


def dml_count(conn, sql, parameters=None) -> int:
    """The `count` a DML/CTAS statement returns as its one-row result."""
    result = query(conn, sql, parameters)
    assert result.column_names == ["count"], result.schema
    assert result.num_rows == 1
    return result.column("count")[0].as_py()


def error_of(conn, sql, parameters=None) -> adbc_driver_manager.Error:
    with pytest.raises(adbc_driver_manager.Error) as info:
        with conn.cursor() as cur:
            cur.execute(sql, parameters=parameters)
            cur.fetch_arrow_table()
    return info.value


def sample(ids, names) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64()), "name": pa.array(names, pa.string())})


# --- execute / fetch ---------------------------------------------------------------------------


def test_select_literals(adbc):
    result = query(adbc, "SELECT 1 AS a, 'x' AS b, 2.5 AS c, CAST(NULL AS INT) AS d, true AS e")
    assert result.column_names == ["a", "b", "c", "d", "e"]
    assert result.to_pylist() == [{"a": 1, "b": "x", "c": 2.5, "d": None, "e": True}]
    assert pa.types.is_integer(result.schema.field("a").type)
    assert pa.types.is_string(result.schema.field("b").type) or pa.types.is_large_string(
        result.schema.field("b").type
    )


def test_fetch_dbapi_rows_and_many_rows(adbc):
    with adbc.cursor() as cur:
        cur.execute("SELECT value FROM generate_series(1, 5000) AS t(value) ORDER BY value")
        fetched = cur.fetchall()
    assert len(fetched) == 5000
    assert [r[0] for r in fetched[:3]] == [1, 2, 3]
    assert fetched[-1][0] == 5000


def test_create_insert_select_one_commit_each(adbc, server):
    t = "adbc_basic"
    assert dml_count(adbc, f"CREATE TABLE {t} (id INT, name VARCHAR)") == 0
    assert commits(server, t) == 1
    assert dml_count(adbc, f"INSERT INTO {t} VALUES (2, 'b'), (1, 'a'), (3, NULL)") == 3
    assert commits(server, t) == 2
    assert rows(adbc, f"SELECT id, name FROM {t} ORDER BY id") == [
        {"id": 1, "name": "a"},
        {"id": 2, "name": "b"},
        {"id": 3, "name": None},
    ]
    assert rows(adbc, f"SELECT count(*) AS n, max(id) AS m FROM {t} WHERE name IS NOT NULL") == [
        {"n": 2, "m": 2}
    ]
    # A query writes nothing.
    assert commits(server, t) == 2


def test_table_is_addressable_with_catalog_and_schema(adbc):
    t = "adbc_qualified"
    dml_count(adbc, f"CREATE TABLE {t} (id INT)")
    dml_count(adbc, f"INSERT INTO public.{t} VALUES (7)")
    assert rows(adbc, f"SELECT id FROM quiver.public.{t}") == [{"id": 7}]


# --- parameters --------------------------------------------------------------------------------


def test_parameters_in_select(adbc):
    assert rows(adbc, "SELECT ? + 1 AS x, ? AS s, ? IS NULL AS n", parameters=(41, "hi", None)) == [
        {"x": 42, "s": "hi", "n": True}
    ]


def test_parameters_filter_a_table(adbc):
    t = "adbc_param_filter"
    dml_count(adbc, f"CREATE TABLE {t} (id BIGINT, name VARCHAR)")
    dml_count(adbc, f"INSERT INTO {t} VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    assert rows(adbc, f"SELECT name FROM {t} WHERE id = ?", parameters=(2,)) == [{"name": "b"}]
    assert rows(
        adbc, f"SELECT id FROM {t} WHERE id > ? AND name <> ? ORDER BY id", parameters=(1, "c")
    ) == [{"id": 2}]


def test_parameters_in_insert(adbc, server):
    t = "adbc_param_insert"
    dml_count(adbc, f"CREATE TABLE {t} (id BIGINT, name VARCHAR, score DOUBLE)")
    assert dml_count(adbc, f"INSERT INTO {t} VALUES (?, ?, ?)", parameters=(1, "a", 1.5)) == 1
    assert dml_count(adbc, f"INSERT INTO {t} VALUES (?, ?, ?)", parameters=(2, None, None)) == 1
    assert commits(server, t) == 3
    assert rows(adbc, f"SELECT * FROM {t} ORDER BY id") == [
        {"id": 1, "name": "a", "score": 1.5},
        {"id": 2, "name": None, "score": None},
    ]


def test_same_cursor_reexecutes_with_new_parameters(adbc):
    t = "adbc_param_reuse"
    dml_count(adbc, f"CREATE TABLE {t} (id BIGINT)")
    with adbc.cursor() as cur:
        for i in (10, 20, 30):
            cur.execute(f"INSERT INTO {t} VALUES (?)", parameters=(i,))
            assert cur.fetch_arrow_table().to_pylist() == [{"count": 1}]
    assert rows(adbc, f"SELECT id FROM {t} ORDER BY id") == [{"id": 10}, {"id": 20}, {"id": 30}]


def test_executemany_is_one_commit(adbc, server):
    t = "adbc_executemany"
    dml_count(adbc, f"CREATE TABLE {t} (id BIGINT, name VARCHAR)")
    dml_count(adbc, f"INSERT INTO {t} VALUES (0, 'zero')")
    before = commits(server, t)
    params = [(1, "a"), (2, "b"), (3, "c"), (4, "d")]
    with adbc.cursor() as cur:
        cur.executemany(f"INSERT INTO {t} VALUES (?, ?)", params)
        assert cur.rowcount == 4
    assert commits(server, t) == before + 1
    assert rows(adbc, f"SELECT count(*) AS n FROM {t}") == [{"n": 5}]
    assert rows(adbc, f"SELECT id, name FROM {t} WHERE id > 0 ORDER BY id") == [
        {"id": i, "name": n} for i, n in params
    ]


def test_executemany_all_null_column(adbc):
    t = "adbc_executemany_allnull"
    dml_count(adbc, f"CREATE TABLE {t} (id BIGINT, name VARCHAR)")
    with adbc.cursor() as cur:
        cur.executemany(f"INSERT INTO {t} VALUES (?, ?)", [(1, None), (2, None)])
    assert rows(adbc, f"SELECT id, name FROM {t} ORDER BY id") == [
        {"id": 1, "name": None},
        {"id": 2, "name": None},
    ]


def test_executemany_with_some_nulls(adbc, server):
    t = "adbc_executemany_nulls"
    dml_count(adbc, f"CREATE TABLE {t} (id BIGINT, name VARCHAR)")
    params = [(1, "a"), (2, None), (3, "c")]
    with adbc.cursor() as cur:
        cur.executemany(f"INSERT INTO {t} VALUES (?, ?)", params)
    assert commits(server, t) == 2
    assert rows(adbc, f"SELECT id, name FROM {t} ORDER BY id") == [
        {"id": i, "name": n} for i, n in params
    ]


def test_mixed_placeholder_styles_rejected(adbc):
    err = error_of(adbc, "SELECT $1 + ?", parameters=(1, 2))
    assert isinstance(err, adbc_driver_manager.ProgrammingError)
    assert err.status_code == Status.INVALID_ARGUMENT
    assert "placeholder" in str(err)


# --- bulk ingest -------------------------------------------------------------------------------


def test_ingest_create(adbc, server):
    t = "adbc_ingest_create"
    assert ingest(adbc, t, sample([1, 2, 3], ["a", "b", None]), "create") == 3
    assert commits(server, t) == 1
    result = query(adbc, f"SELECT * FROM {t} ORDER BY id")
    assert result.column_names == ["id", "name"]
    assert result.to_pylist() == [
        {"id": 1, "name": "a"},
        {"id": 2, "name": "b"},
        {"id": 3, "name": None},
    ]


def test_ingest_create_on_existing_table_fails(adbc, server):
    t = "adbc_ingest_exists"
    ingest(adbc, t, sample([1], ["a"]), "create")
    with pytest.raises(adbc_driver_manager.Error) as info:
        ingest(adbc, t, sample([2], ["b"]), "create")
    assert info.value.status_code == Status.ALREADY_EXISTS
    assert "already exists" in str(info.value)
    assert t in str(info.value)
    assert commits(server, t) == 1
    assert rows(adbc, f"SELECT * FROM {t}") == [{"id": 1, "name": "a"}]


def test_ingest_append_one_commit_per_call(adbc, server):
    t = "adbc_ingest_append"
    ingest(adbc, t, sample([1, 2], ["a", "b"]), "create")
    assert ingest(adbc, t, sample([3], ["c"]), "append") == 1
    assert commits(server, t) == 2
    # A multi-batch reader is still one commit.
    batches = [sample([i], [f"r{i}"]).to_batches()[0] for i in range(10, 15)]
    reader = pa.RecordBatchReader.from_batches(batches[0].schema, batches)
    assert ingest(adbc, t, reader, "append") == 5
    assert commits(server, t) == 3
    assert rows(adbc, f"SELECT id FROM {t} ORDER BY id") == [
        {"id": i} for i in [1, 2, 3, 10, 11, 12, 13, 14]
    ]


def test_ingest_append_to_missing_table_fails(adbc):
    with pytest.raises(adbc_driver_manager.Error) as info:
        ingest(adbc, "adbc_ingest_missing", sample([1], ["a"]), "append")
    assert info.value.status_code == Status.NOT_FOUND
    assert "not found" in str(info.value)
    assert "not found" in str(error_of(adbc, "SELECT * FROM adbc_ingest_missing"))


def test_ingest_of_an_empty_table_is_a_clear_error(adbc, server):
    # The driver sends no messages at all for a table without batches: no command, no schema.
    empty = pa.table({"id": pa.array([], pa.int64())})
    with pytest.raises(adbc_driver_manager.Error) as info:
        ingest(adbc, "adbc_ingest_empty", empty, "create")
    assert info.value.status_code == Status.INVALID_ARGUMENT
    assert "nothing to ingest" in str(info.value)
    assert "not found" in str(error_of(adbc, "SELECT * FROM adbc_ingest_empty"))


def test_ingest_replace_changes_schema(adbc, server):
    t = "adbc_ingest_replace"
    ingest(adbc, t, sample([1, 2], ["a", "b"]), "create")
    replacement = pa.table({"x": pa.array([9.5, 8.5], pa.float64()), "flag": [True, False]})
    assert ingest(adbc, t, replacement, "replace") == 2
    assert commits(server, t) == 2
    result = query(adbc, f"SELECT * FROM {t} ORDER BY x")
    assert result.column_names == ["x", "flag"]
    assert result.to_pylist() == [{"x": 8.5, "flag": False}, {"x": 9.5, "flag": True}]
    assert adbc.adbc_get_table_schema(t).names == ["x", "flag"]
    # The old version is still there for time travel.
    assert rows(adbc, f"SELECT id FROM {t} VERSION AS OF 0 ORDER BY id") == [{"id": 1}, {"id": 2}]


def test_ingest_replace_creates_missing_table(adbc, server):
    t = "adbc_ingest_replace_new"
    assert ingest(adbc, t, sample([5], ["e"]), "replace") == 1
    assert commits(server, t) == 1
    assert rows(adbc, f"SELECT * FROM {t}") == [{"id": 5, "name": "e"}]


def test_ingest_create_append(adbc, server):
    t = "adbc_ingest_create_append"
    assert ingest(adbc, t, sample([1, 2], ["a", "b"]), "create_append") == 2
    assert commits(server, t) == 1
    assert ingest(adbc, t, sample([3], ["c"]), "create_append") == 1
    assert commits(server, t) == 2
    assert rows(adbc, f"SELECT id, name FROM {t} ORDER BY id") == [
        {"id": 1, "name": "a"},
        {"id": 2, "name": "b"},
        {"id": 3, "name": "c"},
    ]


def test_concurrent_create_append_to_a_new_table_all_land(server):
    # Uploads that all find the table missing race to create it: one creates, the others append
    # (found by the 64-client load benchmark: the losers failed with "a table already exists").
    import threading

    import adbc_driver_flightsql.dbapi as flight_sql

    t = "adbc_racing_create_append"
    RACERS = 32
    errors, barrier = [], threading.Barrier(RACERS)

    def upload(i):
        try:
            with flight_sql.connect(server.uri, autocommit=True) as conn:
                barrier.wait()
                ingest(conn, t, sample([i], [f"n{i}"]), "create_append")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    with flight_sql.connect(server.uri, autocommit=True) as conn:
        assert rows(conn, f"SELECT count(*) AS n, count(DISTINCT id) AS d FROM {t}") == [{"n": RACERS, "d": RACERS}]


def test_ingest_schema_mismatch_names_the_column(adbc, server):
    t = "adbc_ingest_mismatch"
    ingest(adbc, t, sample([1], ["a"]), "create")

    extra = pa.table({"id": pa.array([2], pa.int64()), "colour": ["red"]})
    with pytest.raises(adbc_driver_manager.Error) as info:
        ingest(adbc, t, extra, "append")
    assert info.value.status_code == Status.INVALID_ARGUMENT
    assert "colour" in str(info.value)

    wrong_type = pa.table({"id": pa.array([2], pa.int64()), "name": pa.array([1.5], pa.float64())})
    with pytest.raises(adbc_driver_manager.Error) as info:
        ingest(adbc, t, wrong_type, "append")
    assert info.value.status_code == Status.INVALID_ARGUMENT
    assert "name" in str(info.value)

    assert commits(server, t) == 1
    assert rows(adbc, f"SELECT * FROM {t}") == [{"id": 1, "name": "a"}]


def test_ingest_into_named_schema(adbc, server):
    schema, t = "adbc_ingest_schema", "adbc_in_schema"
    query(adbc, f"CREATE SCHEMA {schema}")
    assert ingest(adbc, t, sample([1], ["a"]), "create", db_schema_name=schema) == 1
    assert ingest(adbc, t, sample([2], ["b"]), "append", db_schema_name=schema) == 1
    assert commits(server, t, schema=schema) == 2
    assert not (server.warehouse / "public" / t).exists()
    assert rows(adbc, f"SELECT id FROM {schema}.{t} ORDER BY id") == [{"id": 1}, {"id": 2}]


def test_ingest_into_missing_schema_fails(adbc):
    with pytest.raises(adbc_driver_manager.Error) as info:
        ingest(adbc, "adbc_t", sample([1], ["a"]), "create", db_schema_name="adbc_no_such_schema")
    assert info.value.status_code == Status.NOT_FOUND
    assert "adbc_no_such_schema" in str(info.value)


def test_ingest_typed_columns_round_trip(adbc):
    t = "adbc_ingest_types"
    utc = datetime.timezone.utc
    data = pa.table(
        {
            "i": pa.array([1, 2], pa.int32()),
            "ts": pa.array(
                [datetime.datetime(2024, 1, 1, 12, tzinfo=utc), None], pa.timestamp("us", tz="UTC")
            ),
            "d": pa.array([datetime.date(2024, 2, 29), None], pa.date32()),
            "dec": pa.array([decimal.Decimal("12.34"), None], pa.decimal128(10, 2)),
            "l": pa.array([[1, 2], None], pa.list_(pa.int64())),
        }
    )
    ingest(adbc, t, data, "create")
    result = query(adbc, f"SELECT * FROM {t} ORDER BY i")
    assert result.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert result.schema.field("dec").type == pa.decimal128(10, 2)
    assert result.to_pylist() == data.to_pylist()


# --- metadata ----------------------------------------------------------------------------------


def test_get_objects(adbc):
    t = "adbc_objects"
    dml_count(adbc, f"CREATE TABLE {t} (id BIGINT, label VARCHAR, amount DOUBLE)")
    objects = adbc.adbc_get_objects(depth="all").read_all().to_pylist()
    catalogs = {c["catalog_name"]: c for c in objects}
    assert "quiver" in catalogs
    schemas = {s["db_schema_name"]: s for s in catalogs["quiver"]["catalog_db_schemas"]}
    assert "public" in schemas
    tables = {tb["table_name"]: tb for tb in schemas["public"]["db_schema_tables"]}
    assert t in tables
    assert tables[t]["table_type"] == "TABLE"
    columns = tables[t]["table_columns"]
    assert [c["column_name"] for c in columns] == ["id", "label", "amount"]
    assert [c["ordinal_position"] for c in columns] == [1, 2, 3]


def test_get_objects_filters_and_depths(adbc):
    schema = "adbc_objects_schema"
    query(adbc, f"CREATE SCHEMA {schema}")
    dml_count(adbc, f"CREATE TABLE {schema}.adbc_obj_a (x INT)")
    dml_count(adbc, f"CREATE TABLE {schema}.adbc_obj_b (y INT)")

    cats = adbc.adbc_get_objects(depth="catalogs").read_all().to_pylist()
    assert [c["catalog_name"] for c in cats] == ["quiver"]

    dbs = adbc.adbc_get_objects(depth="db_schemas").read_all().to_pylist()
    names = {s["db_schema_name"] for s in dbs[0]["catalog_db_schemas"]}
    assert {"public", schema} <= names

    filtered = (
        adbc.adbc_get_objects(
            depth="tables", catalog_filter="quiver", db_schema_filter=schema, table_name_filter="%_a"
        )
        .read_all()
        .to_pylist()
    )
    assert len(filtered) == 1
    [only_schema] = filtered[0]["catalog_db_schemas"]
    assert only_schema["db_schema_name"] == schema
    assert [tb["table_name"] for tb in only_schema["db_schema_tables"]] == ["adbc_obj_a"]

    assert adbc.adbc_get_objects(depth="all", catalog_filter="nocatalog").read_all().num_rows == 0


def test_get_table_schema(adbc):
    t = "adbc_table_schema"
    dml_count(adbc, f"CREATE TABLE {t} (id BIGINT, name VARCHAR, price DECIMAL(10, 2), d DATE)")
    schema = adbc.adbc_get_table_schema(t)
    assert schema.names == ["id", "name", "price", "d"]
    assert schema.field("id").type == pa.int64()
    assert pa.types.is_string(schema.field("name").type) or pa.types.is_large_string(
        schema.field("name").type
    ) or pa.types.is_string_view(schema.field("name").type)
    assert schema.field("price").type == pa.decimal128(10, 2)
    assert schema.field("d").type == pa.date32()
    assert adbc.adbc_get_table_schema(t, db_schema_filter="public").names == schema.names


def test_get_table_schema_unknown_table(adbc):
    with pytest.raises(adbc_driver_manager.Error) as info:
        adbc.adbc_get_table_schema("adbc_no_such_table")
    assert info.value.status_code == Status.NOT_FOUND


def test_get_info(adbc):
    info = adbc.adbc_get_info()
    assert info["vendor_name"] == "Quiver"
    assert info["vendor_version"]
    assert info["vendor_arrow_version"]


def test_get_table_types(adbc):
    types = adbc.adbc_get_table_types()
    assert "TABLE" in types
    assert "EXTERNAL TABLE" in types


# --- errors ------------------------------------------------------------------------------------


def test_bad_sql_is_programming_error(adbc):
    err = error_of(adbc, "SELEC 1")
    assert isinstance(err, adbc_driver_manager.ProgrammingError)
    assert err.status_code == Status.INVALID_ARGUMENT
    assert "SELEC" in str(err)
    assert "Expected" in str(err) or "parse" in str(err).lower()
    assert rows(adbc, "SELECT 1 AS ok") == [{"ok": 1}]


def test_unknown_table_is_not_found(adbc):
    err = error_of(adbc, "SELECT * FROM adbc_nope")
    assert isinstance(err, adbc_driver_manager.ProgrammingError)
    assert err.status_code == Status.NOT_FOUND
    assert "not found" in str(err)
    assert "adbc_nope" in str(err)
    err = error_of(adbc, "SELECT * FROM adbc_no_schema.t")
    assert err.status_code == Status.NOT_FOUND


def test_other_errors_keep_their_codes(adbc):
    t = "adbc_errors"
    dml_count(adbc, f"CREATE TABLE {t} (id BIGINT)")
    err = error_of(adbc, f"INSERT INTO {t} VALUES (1, 2)")
    assert err.status_code == Status.INVALID_ARGUMENT
    err = error_of(adbc, f"INSERT INTO {t} VALUES ('abc')")
    assert err.status_code == Status.INVALID_ARGUMENT
    err = error_of(adbc, "SELECT 1; SELECT 2")
    assert err.status_code == Status.INVALID_ARGUMENT
    err = error_of(adbc, "CREATE VIEW adbc_v AS SELECT 1")
    assert isinstance(err, adbc_driver_manager.NotSupportedError)
    err = error_of(adbc, "BEGIN")
    assert isinstance(err, adbc_driver_manager.NotSupportedError)
    err = error_of(adbc, f"CREATE TABLE {t} (x INT)")
    assert err.status_code == Status.ALREADY_EXISTS
    assert rows(adbc, f"SELECT count(*) AS n FROM {t}") == [{"n": 0}]


def test_server_keeps_serving_after_errors(adbc, server):
    for sql in ["SELEC 1", "SELECT * FROM adbc_missing", "SELECT 1/0", "DROP TABLE adbc_missing"]:
        error_of(adbc, sql)
    assert server.proc.poll() is None
    assert rows(adbc, "SELECT 40 + 2 AS answer") == [{"answer": 42}]
    # A new connection works too.
    import adbc_driver_flightsql.dbapi as dbapi

    with dbapi.connect(server.uri, autocommit=True) as other:
        assert rows(other, "SELECT 'still here' AS s") == [{"s": "still here"}]


# --- DDL / DML through execute -----------------------------------------------------------------


def test_create_schema_and_table_in_it(adbc, server):
    schema = "adbc_schema"
    assert query(adbc, f"CREATE SCHEMA {schema}").num_rows == 0
    assert (server.warehouse / schema).is_dir()
    err = error_of(adbc, f"CREATE SCHEMA {schema}")
    assert err.status_code == Status.ALREADY_EXISTS
    query(adbc, f"CREATE SCHEMA IF NOT EXISTS {schema}")
    dml_count(adbc, f"CREATE TABLE {schema}.adbc_t (id INT)")
    dml_count(adbc, f"INSERT INTO {schema}.adbc_t VALUES (1), (2)")
    assert commits(server, "adbc_t", schema=schema) == 2
    assert rows(adbc, f"SELECT sum(id) AS s FROM {schema}.adbc_t") == [{"s": 3}]
    err = error_of(adbc, "CREATE TABLE adbc_no_such_schema.t (id INT)")
    assert err.status_code == Status.NOT_FOUND


def _partition_dirs(path):
    return sorted(p.name for p in path.iterdir() if p.is_dir() and p.name != "_delta_log")


def test_create_partitioned_table(adbc, server):
    import deltalake

    t = "adbc_partitioned"
    dml_count(adbc, f"CREATE TABLE {t} (id INT, region VARCHAR, amount DOUBLE) PARTITIONED BY (region)")
    assert dml_count(adbc, f"INSERT INTO {t} VALUES (1, 'eu', 1.5), (2, 'us', 2.5), (3, 'eu', 3.5)") == 3
    path = server.warehouse / "public" / t
    assert deltalake.DeltaTable(str(path)).metadata().partition_columns == ["region"]
    assert _partition_dirs(path) == ["region=eu", "region=us"]
    # Aggregates over the non-partition columns work.
    assert rows(adbc, f"SELECT count(*) AS n, sum(amount) AS s FROM {t}") == [{"n": 3, "s": 7.5}]


def test_create_partitioned_table_using_delta_int_partition(adbc, server):
    import deltalake

    t = "adbc_partitioned_int"
    dml_count(adbc, f"CREATE TABLE {t} (id INT, year INT) USING DELTA PARTITIONED BY (year)")
    dml_count(adbc, f"INSERT INTO {t} VALUES (1, 2020), (2, 2021), (3, 2021)")
    path = server.warehouse / "public" / t
    assert deltalake.DeltaTable(str(path)).metadata().partition_columns == ["year"]
    assert _partition_dirs(path) == ["year=2020", "year=2021"]
    assert rows(adbc, f"SELECT id, year FROM {t} ORDER BY id") == [
        {"id": 1, "year": 2020},
        {"id": 2, "year": 2021},
        {"id": 3, "year": 2021},
    ]


def test_select_string_partition_column(adbc):
    t = "adbc_partitioned_select"
    dml_count(adbc, f"CREATE TABLE {t} (id INT, region VARCHAR) PARTITIONED BY (region)")
    dml_count(adbc, f"INSERT INTO {t} VALUES (1, 'eu'), (2, 'us'), (3, NULL)")
    assert rows(adbc, f"SELECT id, region FROM {t} ORDER BY id") == [
        {"id": 1, "region": "eu"},
        {"id": 2, "region": "us"},
        {"id": 3, "region": None},
    ]


def test_delete_and_update(adbc, server):
    t = "adbc_dml"
    dml_count(adbc, f"CREATE TABLE {t} (id INT, name VARCHAR, score DOUBLE)")
    dml_count(adbc, f"INSERT INTO {t} VALUES (1, 'a', 1.0), (2, 'b', 2.0), (3, 'c', 3.0), (4, 'd', 4.0)")
    before = commits(server, t)
    assert dml_count(adbc, f"DELETE FROM {t} WHERE id IN (1, 3)") == 2
    assert commits(server, t) == before + 1
    assert dml_count(adbc, f"UPDATE {t} SET score = score * 10, name = 'B' WHERE id = 2") == 1
    assert commits(server, t) == before + 2
    assert dml_count(adbc, f"DELETE FROM {t} WHERE id = 99") == 0
    assert rows(adbc, f"SELECT * FROM {t} ORDER BY id") == [
        {"id": 2, "name": "B", "score": 20.0},
        {"id": 4, "name": "d", "score": 4.0},
    ]
    assert dml_count(adbc, f"DELETE FROM {t} WHERE id = ?", parameters=(4,)) == 1
    assert rows(adbc, f"SELECT id FROM {t}") == [{"id": 2}]


def test_drop_table(adbc, server):
    t = "adbc_drop"
    dml_count(adbc, f"CREATE TABLE {t} (id INT)")
    dml_count(adbc, f"INSERT INTO {t} VALUES (1)")
    query(adbc, f"DROP TABLE {t}")
    err = error_of(adbc, f"SELECT * FROM {t}")
    assert err.status_code == Status.NOT_FOUND
    assert "not found" in str(err)
    assert t not in {r["table_name"] for r in rows(adbc, "SHOW TABLES")}
    query(adbc, f"DROP TABLE IF EXISTS {t}")
    err = error_of(adbc, f"DROP TABLE {t}")
    assert err.status_code == Status.NOT_FOUND
    # The name can be reused, with a new schema and no old rows.
    dml_count(adbc, f"CREATE TABLE {t} (other VARCHAR)")
    result = query(adbc, f"SELECT * FROM {t}")
    assert result.column_names == ["other"]
    assert result.num_rows == 0


def test_drop_schema_requires_cascade_when_not_empty(adbc):
    schema = "adbc_drop_nonempty"
    query(adbc, f"CREATE SCHEMA {schema}")
    dml_count(adbc, f"CREATE TABLE {schema}.t1 (id INT)")
    err = error_of(adbc, f"DROP SCHEMA {schema}")
    assert err.status_code == Status.INVALID_ARGUMENT
    assert "CASCADE" in str(err)
    assert rows(adbc, f"SELECT count(*) AS n FROM {schema}.t1") == [{"n": 0}]
    err = error_of(adbc, "DROP SCHEMA adbc_never_created")
    assert err.status_code == Status.NOT_FOUND
    query(adbc, "DROP SCHEMA IF EXISTS adbc_never_created")


def test_drop_schema_cascade_drops_its_tables(adbc):
    schema = "adbc_drop_cascade"
    query(adbc, f"CREATE SCHEMA {schema}")
    dml_count(adbc, f"CREATE TABLE {schema}.t1 (id INT)")
    query(adbc, f"DROP SCHEMA {schema} CASCADE")
    err = error_of(adbc, f"SELECT * FROM {schema}.t1")
    assert err.status_code == Status.NOT_FOUND


def test_drop_schema_cascade_removes_the_schema(adbc):
    schema = "adbc_drop_cascade_gone"
    query(adbc, f"CREATE SCHEMA {schema}")
    dml_count(adbc, f"CREATE TABLE {schema}.t1 (id INT)")
    query(adbc, f"DROP SCHEMA {schema} CASCADE")
    dbs = adbc.adbc_get_objects(depth="db_schemas").read_all().to_pylist()
    assert schema not in {s["db_schema_name"] for s in dbs[0]["catalog_db_schemas"]}
    err = error_of(adbc, f"CREATE TABLE {schema}.t2 (id INT)")
    assert err.status_code == Status.NOT_FOUND
    query(adbc, f"CREATE SCHEMA {schema}")  # must not be 'already exists'


def test_drop_empty_schema(adbc):
    schema = "adbc_drop_empty"
    query(adbc, f"CREATE SCHEMA {schema}")
    query(adbc, f"DROP SCHEMA {schema}")
    err = error_of(adbc, f"CREATE TABLE {schema}.t (id INT)")
    assert err.status_code == Status.NOT_FOUND


def test_time_travel_by_version(adbc, server):
    t = "adbc_time_travel"
    dml_count(adbc, f"CREATE TABLE {t} (id INT, name VARCHAR)")  # v0
    dml_count(adbc, f"INSERT INTO {t} VALUES (1, 'a'), (2, 'b')")  # v1
    dml_count(adbc, f"UPDATE {t} SET name = 'B' WHERE id = 2")  # v2
    dml_count(adbc, f"DELETE FROM {t} WHERE id = 1")  # v3
    assert commits(server, t) == 4
    at = lambda v: rows(adbc, f"SELECT id, name FROM {t} VERSION AS OF {v} ORDER BY id")  # noqa: E731
    assert at(0) == []
    assert at(1) == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    assert at(2) == [{"id": 1, "name": "a"}, {"id": 2, "name": "B"}]
    assert at(3) == [{"id": 2, "name": "B"}]
    assert rows(adbc, f"SELECT id, name FROM {t} ORDER BY id") == at(3)
    # Two versions of one table in one query.
    assert rows(
        adbc,
        f"SELECT (SELECT count(*) FROM {t} VERSION AS OF 1) AS then_n, "
        f"(SELECT count(*) FROM {t}) AS now_n",
    ) == [{"then_n": 2, "now_n": 1}]


def test_time_travel_by_timestamp(adbc, server):
    import json
    import time

    t = "adbc_time_travel_ts"
    dml_count(adbc, f"CREATE TABLE {t} (id INT)")  # v0
    dml_count(adbc, f"INSERT INTO {t} VALUES (1)")  # v1
    time.sleep(0.3)
    dml_count(adbc, f"INSERT INTO {t} VALUES (2)")  # v2

    def commit_ms(version):
        log = server.warehouse / "public" / t / "_delta_log" / f"{version:020d}.json"
        for line in log.read_text().splitlines():
            action = json.loads(line)
            if "commitInfo" in action:
                return action["commitInfo"]["timestamp"]
        raise AssertionError(f"no commitInfo in {log}")

    middle_ms = (commit_ms(1) + commit_ms(2)) // 2
    middle = datetime.datetime.fromtimestamp(middle_ms / 1000, tz=datetime.timezone.utc)
    text = middle.strftime("%Y-%m-%d %H:%M:%S.%f")
    assert rows(adbc, f"SELECT id FROM {t} TIMESTAMP AS OF '{text}' ORDER BY id") == [{"id": 1}]
    assert rows(
        adbc, f"SELECT id FROM {t} TIMESTAMP AS OF '{middle.isoformat()}' ORDER BY id"
    ) == [{"id": 1}]
    assert rows(adbc, f"SELECT id FROM {t} TIMESTAMP AS OF '2999-01-01 00:00:00' ORDER BY id") == [
        {"id": 1},
        {"id": 2},
    ]


def test_time_travel_bad_timestamp_is_invalid_argument(adbc):
    t = "adbc_time_travel_badts"
    dml_count(adbc, f"CREATE TABLE {t} (id INT)")
    err = error_of(adbc, f"SELECT * FROM {t} TIMESTAMP AS OF 'yesterday-ish'")
    assert err.status_code == Status.INVALID_ARGUMENT
    assert "timestamp" in str(err)


def test_time_travel_to_missing_version_is_a_client_error(adbc):
    t = "adbc_time_travel_missing"
    dml_count(adbc, f"CREATE TABLE {t} (id INT)")
    dml_count(adbc, f"INSERT INTO {t} VALUES (1)")
    err = error_of(adbc, f"SELECT * FROM {t} VERSION AS OF 9")
    assert err.status_code in (Status.INVALID_ARGUMENT, Status.NOT_FOUND), str(err)
    assert "9" in str(err)


def test_show_tables(adbc):
    schema = "adbc_show_schema"
    query(adbc, f"CREATE SCHEMA {schema}")
    dml_count(adbc, "CREATE TABLE adbc_show_public (id INT)")
    dml_count(adbc, f"CREATE TABLE {schema}.adbc_show_other (id INT)")
    result = rows(adbc, "SHOW TABLES")
    found = {(r["table_catalog"], r["table_schema"], r["table_name"]) for r in result}
    assert ("quiver", "public", "adbc_show_public") in found
    assert ("quiver", schema, "adbc_show_other") in found
    types = {r["table_name"]: r["table_type"] for r in result}
    assert types["adbc_show_public"] == "BASE TABLE"


def test_describe(adbc):
    t = "adbc_describe"
    dml_count(adbc, f"CREATE TABLE {t} (id BIGINT, name VARCHAR, ts TIMESTAMP)")
    result = rows(adbc, f"DESCRIBE {t}")
    assert [r["column_name"] for r in result] == ["id", "name", "ts"]
    types = {r["column_name"]: r["data_type"] for r in result}
    assert types["id"] == "Int64"
    assert "Utf8" in types["name"]
    assert types["ts"].startswith("Timestamp")
    assert all(r["is_nullable"] == "YES" for r in result)


def test_information_schema(adbc):
    t = "adbc_info_schema"
    dml_count(adbc, f"CREATE TABLE {t} (a INT, b VARCHAR)")
    tables = rows(adbc, f"SELECT table_schema, table_name FROM information_schema.tables WHERE table_name = '{t}'")
    assert tables == [{"table_schema": "public", "table_name": t}]
    columns = rows(
        adbc,
        "SELECT column_name FROM information_schema.columns "
        f"WHERE table_name = '{t}' ORDER BY ordinal_position",
    )
    assert [c["column_name"] for c in columns] == ["a", "b"]


def test_create_table_as_select(adbc, server):
    src, dst = "adbc_ctas_src", "adbc_ctas_dst"
    dml_count(adbc, f"CREATE TABLE {src} (id INT, name VARCHAR)")
    dml_count(adbc, f"INSERT INTO {src} VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    assert dml_count(adbc, f"CREATE TABLE {dst} AS SELECT id * 10 AS id10, upper(name) AS up FROM {src} WHERE id > 1") == 2
    assert commits(server, dst) == 1
    assert rows(adbc, f"SELECT * FROM {dst} ORDER BY id10") == [
        {"id10": 20, "up": "B"},
        {"id10": 30, "up": "C"},
    ]
    err = error_of(adbc, f"CREATE TABLE {dst} AS SELECT 1 AS x")
    assert err.status_code == Status.ALREADY_EXISTS


def test_create_table_as_select_partitioned(adbc, server):
    import deltalake

    t = "adbc_ctas_partitioned"
    assert dml_count(
        adbc,
        f"CREATE TABLE {t} PARTITIONED BY (y) AS "
        "SELECT value AS id, value % 2 AS y FROM generate_series(1, 6) AS s(value)",
    ) == 6
    path = server.warehouse / "public" / t
    assert deltalake.DeltaTable(str(path)).metadata().partition_columns == ["y"]
    assert _partition_dirs(path) == ["y=0", "y=1"]
    assert rows(adbc, f"SELECT y, count(*) AS n FROM {t} GROUP BY y ORDER BY y") == [
        {"y": 0, "n": 3},
        {"y": 1, "n": 3},
    ]


def test_insert_select_between_tables(adbc, server):
    src, dst = "adbc_insel_src", "adbc_insel_dst"
    ingest(adbc, src, sample([1, 2, 3], ["a", "b", "c"]), "create")
    dml_count(adbc, f"CREATE TABLE {dst} (id BIGINT, name VARCHAR)")
    assert dml_count(adbc, f"INSERT INTO {dst} SELECT id, name FROM {src} WHERE id <> 2") == 2
    assert commits(server, dst) == 2
    assert rows(adbc, f"SELECT id FROM {dst} ORDER BY id") == [{"id": 1}, {"id": 3}]


def test_typed_parameters(adbc):
    t = "adbc_param_types"
    dml_count(adbc, f"CREATE TABLE {t} (d DATE, ts TIMESTAMP, dec DECIMAL(10, 2), f DOUBLE)")
    values = (
        datetime.date(2024, 1, 2),
        datetime.datetime(2024, 1, 2, 3, 4, 5),
        decimal.Decimal("1.50"),
        -2.5,
    )
    assert dml_count(adbc, f"INSERT INTO {t} VALUES (?, ?, ?, ?)", parameters=values) == 1
    assert rows(adbc, f"SELECT * FROM {t}") == [
        {"d": values[0], "ts": values[1], "dec": values[2], "f": values[3]}
    ]
    assert rows(adbc, f"SELECT count(*) AS n FROM {t} WHERE d = ?", parameters=(values[0],)) == [
        {"n": 1}
    ]


def test_identifiers_case_and_invalid_names(adbc, server):
    dml_count(adbc, 'CREATE TABLE "adbc_MixedCase" (i INT)')
    dml_count(adbc, 'INSERT INTO "adbc_MixedCase" VALUES (1)')
    assert rows(adbc, 'SELECT i FROM "adbc_MixedCase"') == [{"i": 1}]
    assert (server.warehouse / "public" / "adbc_MixedCase").is_dir()
    # Unquoted names fold to lower case.
    dml_count(adbc, "CREATE TABLE ADBC_UPPER (i INT)")
    assert rows(adbc, "SELECT count(*) AS n FROM adbc_upper") == [{"n": 0}]
    assert (server.warehouse / "public" / "adbc_upper").is_dir()
    # Names that would escape the warehouse are rejected, and nothing is written.
    for sql in ['CREATE TABLE "adbc/evil" (i INT)', 'CREATE SCHEMA "../adbc_escape"', 'CREATE TABLE ".adbc" (i INT)']:
        err = error_of(adbc, sql)
        assert err.status_code == Status.INVALID_ARGUMENT, sql
    assert not (server.warehouse.parent / "adbc_escape").exists()
    assert not (server.warehouse / "public" / "adbc").exists()
