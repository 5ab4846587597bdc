"""Delta Lake interoperability with another writer/reader: the `deltalake` Python package.

- Tables Quiver writes (ADBC ingest, SQL INSERT/CTAS/UPDATE/DELETE, partitioned) read back
  correctly with `deltalake.DeltaTable(path).to_pyarrow_table()`.
- Tables `deltalake.write_deltalake` writes into the warehouse are visible to the running server,
  and each new version another writer commits is seen by the next query.
- Time travel (`VERSION AS OF`, `TIMESTAMP AS OF`) agrees with `deltalake`'s own snapshots.

Every table name starts with `dl_`: the server is shared by the whole session.
"""

import datetime
import decimal
import json
import shutil
import time

import adbc_driver_manager
import deltalake
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from helpers import ingest, query, rows

UTC = datetime.timezone.utc


# --- helpers -----------------------------------------------------------------------------------


def path_of(server, table, schema="public"):
    return server.warehouse / schema / table


def delta_read(path, version=None) -> pa.Table:
    return deltalake.DeltaTable(str(path), version=version).to_pyarrow_table()


def by_id(table: pa.Table, key="id") -> list[dict]:
    return table.sort_by(key).to_pylist()


def typed_sample() -> pa.Table:
    return pa.table(
        {
            "id": pa.array([1, 2, 3, 4], pa.int32()),
            "big": pa.array([10_000_000_000, None, -1, 0], pa.int64()),
            "s": pa.array(["x", None, "", "ünïcödé"], pa.string()),
            "f": pa.array([1.5, None, -0.25, 1e300], pa.float64()),
            "b": pa.array([True, None, False, True]),
            "ts": pa.array(
                [
                    datetime.datetime(2024, 1, 1, 12, 0, tzinfo=UTC),
                    None,
                    datetime.datetime(1970, 1, 1, tzinfo=UTC),
                    datetime.datetime(2025, 6, 30, 1, 2, 3, 456789, tzinfo=UTC),
                ],
                pa.timestamp("us", tz="UTC"),
            ),
            "ntz": pa.array(
                [datetime.datetime(2024, 1, 1, 12, 0), None, None, datetime.datetime(1999, 12, 31, 23, 59, 59)],
                pa.timestamp("us"),
            ),
            "d": pa.array(
                [datetime.date(2024, 2, 29), datetime.date(1900, 1, 1), None, datetime.date(2038, 1, 19)],
                pa.date32(),
            ),
            "dec": pa.array(
                [decimal.Decimal("1.23"), None, decimal.Decimal("-99999999.99"), decimal.Decimal("0.00")],
                pa.decimal128(10, 2),
            ),
            "l": pa.array([[1, 2], None, [], [None, 3]], pa.list_(pa.int64())),
            "st": pa.array(
                [{"a": 1, "b": "q"}, None, {"a": None, "b": "r"}, {"a": 4, "b": None}],
                pa.struct([("a", pa.int64()), ("b", pa.string())]),
            ),
        }
    )


# --- Quiver writes, deltalake reads ------------------------------------------------------------


def test_ingested_types_read_by_deltalake(adbc, server):
    t = "dl_ingest_types"
    data = typed_sample()
    ingest(adbc, t, data, "create")
    from_delta = delta_read(path_of(server, t))
    assert set(from_delta.column_names) == set(data.column_names)
    assert by_id(from_delta.select(data.column_names)) == by_id(data)

    schema = {f.name: f.type for f in deltalake.DeltaTable(str(path_of(server, t))).schema().fields}
    assert str(schema["ts"]) == 'PrimitiveType("timestamp")'
    assert str(schema["ntz"]) == 'PrimitiveType("timestamp_ntz")'
    assert str(schema["dec"]) == 'PrimitiveType("decimal(10,2)")'
    assert str(schema["d"]) == 'PrimitiveType("date")'
    # And Quiver reads back the same.
    assert by_id(query(adbc, f"SELECT * FROM {t}")) == by_id(data)


def test_sql_insert_read_by_deltalake(adbc, server):
    t = "dl_sql_types"
    query(
        adbc,
        f"CREATE TABLE {t} (id INT, s VARCHAR, big BIGINT, r REAL, d DOUBLE, dt DATE, "
        "ts TIMESTAMP, dec DECIMAL(12, 3), flag BOOLEAN)",
    )
    query(
        adbc,
        f"INSERT INTO {t} VALUES "
        "(1, 'x', 10000000000, 1.5, 2.25, DATE '2024-03-01', TIMESTAMP '2024-03-01 12:34:56.789', "
        "123456789.123, true), "
        "(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL), "
        "(3, 'z', -5, -0.5, 1e10, DATE '1999-12-31', TIMESTAMP '1999-12-31 23:59:59', -0.001, false)",
    )
    expected = [
        {
            "id": 1, "s": "x", "big": 10_000_000_000, "r": 1.5, "d": 2.25,
            "dt": datetime.date(2024, 3, 1),
            "ts": datetime.datetime(2024, 3, 1, 12, 34, 56, 789000),
            "dec": decimal.Decimal("123456789.123"), "flag": True,
        },
        {
            "id": 2, "s": None, "big": None, "r": None, "d": None,
            "dt": None, "ts": None, "dec": None, "flag": None,
        },
        {
            "id": 3, "s": "z", "big": -5, "r": -0.5, "d": 1e10,
            "dt": datetime.date(1999, 12, 31),
            "ts": datetime.datetime(1999, 12, 31, 23, 59, 59),
            "dec": decimal.Decimal("-0.001"), "flag": False,
        },
    ]  # fmt: skip
    from_delta = delta_read(path_of(server, t))
    assert from_delta.schema.field("dec").type == pa.decimal128(12, 3)
    assert from_delta.schema.field("r").type == pa.float32()
    assert by_id(from_delta) == expected
    assert by_id(query(adbc, f"SELECT * FROM {t}")) == expected


def test_nested_columns_from_sql_read_by_deltalake(adbc, server):
    t = "dl_sql_nested"
    query(
        adbc,
        f"CREATE TABLE {t} AS SELECT 1 AS id, make_array(1, 2, 3) AS l, "
        "named_struct('a', 1, 'b', 'x') AS st",
    )
    from_delta = delta_read(path_of(server, t))
    assert from_delta.to_pylist() == [{"id": 1, "l": [1, 2, 3], "st": {"a": 1, "b": "x"}}]
    assert pa.types.is_list(from_delta.schema.field("l").type) or pa.types.is_large_list(
        from_delta.schema.field("l").type
    )
    assert pa.types.is_struct(from_delta.schema.field("st").type)


def test_partitioned_table_read_by_deltalake(adbc, server):
    t = "dl_partitioned"
    query(adbc, f"CREATE TABLE {t} (id INT, region VARCHAR, year INT, amount DOUBLE) PARTITIONED BY (region, year)")
    query(
        adbc,
        f"INSERT INTO {t} VALUES (1, 'eu', 2020, 1.0), (2, 'us', 2020, 2.0), "
        "(3, 'eu', 2021, 3.0), (4, NULL, 2021, 4.0)",
    )
    path = path_of(server, t)
    dt = deltalake.DeltaTable(str(path))
    assert dt.metadata().partition_columns == ["region", "year"]
    expected = [
        {"id": 1, "region": "eu", "year": 2020, "amount": 1.0},
        {"id": 2, "region": "us", "year": 2020, "amount": 2.0},
        {"id": 3, "region": "eu", "year": 2021, "amount": 3.0},
        {"id": 4, "region": None, "year": 2021, "amount": 4.0},
    ]
    from_delta = dt.to_pyarrow_table()
    assert by_id(from_delta.select(["id", "region", "year", "amount"])) == expected
    eu = dt.to_pyarrow_table(filters=[("region", "=", "eu")])
    assert sorted(eu.column("id").to_pylist()) == [1, 3]
    # Files are laid out per partition.
    assert (path / "region=eu" / "year=2020").is_dir()
    assert (path / "region=us" / "year=2020").is_dir()


def test_dml_history_read_by_deltalake(adbc, server):
    t = "dl_dml"
    query(adbc, f"CREATE TABLE {t} (id BIGINT, name VARCHAR)")  # v0
    query(adbc, f"INSERT INTO {t} VALUES (1, 'a'), (2, 'b'), (3, 'c')")  # v1
    query(adbc, f"UPDATE {t} SET name = 'B' WHERE id = 2")  # v2
    query(adbc, f"DELETE FROM {t} WHERE id = 3")  # v3
    ingest(adbc, t, pa.table({"id": pa.array([4], pa.int64()), "name": ["d"]}), "append")  # v4
    path = path_of(server, t)
    dt = deltalake.DeltaTable(str(path))
    assert dt.version() == 4
    assert by_id(dt.to_pyarrow_table()) == [
        {"id": 1, "name": "a"},
        {"id": 2, "name": "B"},
        {"id": 4, "name": "d"},
    ]
    assert by_id(delta_read(path, version=1)) == [
        {"id": 1, "name": "a"},
        {"id": 2, "name": "b"},
        {"id": 3, "name": "c"},
    ]
    assert len(dt.history()) == 5
    # Deletes are real: the file with id 3 is no longer part of the table.
    assert 3 not in dt.to_pyarrow_table().column("id").to_pylist()


def test_replace_ingest_read_by_deltalake(adbc, server):
    t = "dl_replace"
    ingest(adbc, t, pa.table({"id": pa.array([1, 2], pa.int64())}), "create")
    ingest(adbc, t, pa.table({"word": ["hello", "world"], "n": pa.array([1, 2], pa.int32())}), "replace")
    dt = deltalake.DeltaTable(str(path_of(server, t)))
    assert dt.version() == 1
    result = dt.to_pyarrow_table()
    assert sorted(result.column_names) == ["n", "word"]
    assert by_id(result, key="n") == [{"word": "hello", "n": 1}, {"word": "world", "n": 2}]
    assert delta_read(path_of(server, t), version=0).sort_by("id").to_pylist() == [{"id": 1}, {"id": 2}]


def test_large_ctas_read_by_deltalake(adbc, server):
    t = "dl_large"
    query(adbc, f"CREATE TABLE {t} AS SELECT value AS id, value * 2 AS twice FROM generate_series(1, 50000) AS s(value)")
    from_delta = delta_read(path_of(server, t))
    assert from_delta.num_rows == 50000
    ids = from_delta.column("id").to_pylist()
    assert sorted(ids) == list(range(1, 50001))
    assert all(r["twice"] == 2 * r["id"] for r in from_delta.slice(0, 1000).to_pylist())


# --- deltalake writes, Quiver reads ------------------------------------------------------------


def test_deltalake_table_visible_without_restart(adbc, server):
    t = "dl_foreign"
    path = path_of(server, t)
    deltalake.write_deltalake(str(path), pa.table({"id": pa.array([1, 2], pa.int64()), "s": ["a", "b"]}))
    assert rows(adbc, f"SELECT id, s FROM {t} ORDER BY id") == [
        {"id": 1, "s": "a"},
        {"id": 2, "s": "b"},
    ]
    # Another writer appends; the next query sees the new version.
    deltalake.write_deltalake(
        str(path), pa.table({"id": pa.array([3], pa.int64()), "s": ["c"]}), mode="append"
    )
    assert rows(adbc, f"SELECT id, s FROM {t} ORDER BY id") == [
        {"id": 1, "s": "a"},
        {"id": 2, "s": "b"},
        {"id": 3, "s": "c"},
    ]
    # ... and again, through plain Flight too.
    deltalake.DeltaTable(str(path)).delete("id = 1")
    client = flight.FlightClient(server.uri)
    try:
        got = client.do_get(flight.Ticket(f"SELECT id FROM {t} ORDER BY id".encode())).read_all()
        assert got.to_pylist() == [{"id": 2}, {"id": 3}]
        listed = {tuple(p.decode() for p in i.descriptor.path) for i in client.list_flights()}
        assert (t,) in listed
    finally:
        client.close()
    assert adbc.adbc_get_table_schema(t).names == ["id", "s"]


def test_deltalake_overwrite_with_new_schema_is_seen(adbc, server):
    t = "dl_foreign_overwrite"
    path = path_of(server, t)
    deltalake.write_deltalake(str(path), pa.table({"id": pa.array([1], pa.int64())}))
    assert rows(adbc, f"SELECT * FROM {t}") == [{"id": 1}]
    deltalake.write_deltalake(
        str(path), pa.table({"word": ["new"]}), mode="overwrite", schema_mode="overwrite"
    )
    assert rows(adbc, f"SELECT * FROM {t}") == [{"word": "new"}]
    assert rows(adbc, f"SELECT * FROM {t} VERSION AS OF 0") == [{"id": 1}]


def test_deltalake_table_in_named_schema(adbc, server):
    schema, t = "dl_schema", "dl_foreign_in_schema"
    query(adbc, f"CREATE SCHEMA {schema}")
    deltalake.write_deltalake(str(path_of(server, t, schema)), pa.table({"x": [1.5, 2.5]}))
    assert rows(adbc, f"SELECT sum(x) AS s FROM {schema}.{t}") == [{"s": 4.0}]
    objects = adbc.adbc_get_objects(depth="tables", db_schema_filter=schema).read_all().to_pylist()
    tables = [tb["table_name"] for tb in objects[0]["catalog_db_schemas"][0]["db_schema_tables"]]
    assert tables == [t]


def test_each_read_sees_the_commits_since_the_last(adbc, server):
    # Quiver keeps each table's latest snapshot and reads only the commits made since.
    t = "dl_kept_snapshot"
    path = path_of(server, t)
    deltalake.write_deltalake(str(path), pa.table({"id": pa.array([1], pa.int64())}))
    assert rows(adbc, f"SELECT count(*) AS n FROM {t}") == [{"n": 1}]
    for i in range(2, 5):
        deltalake.write_deltalake(str(path), pa.table({"id": pa.array([i], pa.int64())}), mode="append")
        assert rows(adbc, f"SELECT sum(id) AS s FROM {t}") == [{"s": sum(range(1, i + 1))}]
    # A new schema from another writer is read too.
    deltalake.write_deltalake(
        str(path), pa.table({"id": pa.array([9], pa.int64()), "extra": ["x"]}),
        mode="overwrite", schema_mode="overwrite",
    )
    assert rows(adbc, f"SELECT * FROM {t}") == [{"id": 9, "extra": "x"}]


def test_a_table_deleted_and_recreated_by_another_writer_is_read_afresh(adbc, server):
    t = "dl_recreated"
    path = path_of(server, t)
    for i in range(3):  # versions 0..2
        deltalake.write_deltalake(str(path), pa.table({"id": pa.array([i], pa.int64())}), mode="append")
    assert rows(adbc, f"SELECT count(*) AS n FROM {t}") == [{"n": 3}]
    # Deleted and written again: its log starts over at version 0, behind the snapshot Quiver kept.
    shutil.rmtree(path)
    deltalake.write_deltalake(str(path), pa.table({"id": pa.array([7], pa.int64()), "s": ["new"]}))
    assert rows(adbc, f"SELECT * FROM {t}") == [{"id": 7, "s": "new"}]
    # Again, to the kept version and past it: the kept version's commit exists, but is another.
    shutil.rmtree(path)
    deltalake.write_deltalake(str(path), pa.table({"k": ["a"]}))
    assert rows(adbc, f"SELECT * FROM {t}") == [{"k": "a"}]
    shutil.rmtree(path)
    for k in ["b", "c"]:
        deltalake.write_deltalake(str(path), pa.table({"k": [k]}), mode="append")
    assert rows(adbc, f"SELECT k FROM {t} ORDER BY k") == [{"k": "b"}, {"k": "c"}]


def test_a_table_dropped_and_created_again_through_sql_is_the_new_one(adbc):
    t = "kept_then_dropped"
    query(adbc, f"CREATE TABLE {t} AS SELECT 1::BIGINT AS id")
    query(adbc, f"INSERT INTO {t} VALUES (2)")
    assert rows(adbc, f"SELECT count(*) AS n FROM {t}") == [{"n": 2}]
    query(adbc, f"DROP TABLE {t}")
    # As many commits as before and more: the new log passes the old table's version.
    query(adbc, f"CREATE TABLE {t} AS SELECT 10::BIGINT AS id")
    for v in (20, 30):
        query(adbc, f"INSERT INTO {t} VALUES ({v})")
    assert rows(adbc, f"SELECT sum(id) AS s, count(*) AS n FROM {t}") == [{"s": 60, "n": 3}]


def test_quiver_appends_to_deltalake_table(adbc, server):
    t = "dl_foreign_append"
    path = path_of(server, t)
    deltalake.write_deltalake(str(path), pa.table({"id": pa.array([1], pa.int64()), "s": ["a"]}))
    ingest(adbc, t, pa.table({"id": pa.array([2], pa.int64()), "s": ["b"]}), "append")
    query(adbc, f"INSERT INTO {t} VALUES (3, 'c')")
    dt = deltalake.DeltaTable(str(path))
    assert dt.version() == 2
    assert by_id(dt.to_pyarrow_table()) == [
        {"id": 1, "s": "a"},
        {"id": 2, "s": "b"},
        {"id": 3, "s": "c"},
    ]
    # deltalake can keep writing after Quiver did.
    deltalake.write_deltalake(str(path), pa.table({"id": pa.array([4], pa.int64()), "s": ["d"]}), mode="append")
    assert rows(adbc, f"SELECT count(*) AS n FROM {t}") == [{"n": 4}]


def test_deltalake_int_partitioned_table_read_by_quiver(adbc, server):
    t = "dl_foreign_part_int"
    data = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "year": pa.array([2020, 2021, 2021], pa.int32())})
    deltalake.write_deltalake(str(path_of(server, t)), data, partition_by=["year"])
    assert rows(adbc, f"SELECT id, year FROM {t} ORDER BY id") == by_id(data)
    assert rows(adbc, f"SELECT id FROM {t} WHERE year = 2021 ORDER BY id") == [{"id": 2}, {"id": 3}]


def test_deltalake_string_partitioned_table_via_plain_flight(server):
    t = "dl_foreign_part_str_flight"
    data = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "region": ["eu", None, "us"]})
    deltalake.write_deltalake(str(path_of(server, t)), data, partition_by=["region"])
    client = flight.FlightClient(server.uri)
    try:
        got = client.do_get(flight.Ticket(f"SELECT id, region FROM {t}".encode())).read_all()
    finally:
        client.close()
    assert got.sort_by("id").to_pylist() == by_id(data)


def test_deltalake_string_partitioned_table_via_adbc(adbc, server):
    t = "dl_foreign_part_str_adbc"
    data = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "region": ["eu", None, "us"]})
    deltalake.write_deltalake(str(path_of(server, t)), data, partition_by=["region"])
    assert rows(adbc, f"SELECT id, region FROM {t} ORDER BY id") == by_id(data)


def test_external_table_outside_warehouse(adbc, server, tmp_path):
    location = tmp_path / "dl_outside"
    deltalake.write_deltalake(str(location), pa.table({"id": pa.array([1], pa.int64())}))
    query(adbc, f"CREATE EXTERNAL TABLE dl_external STORED AS DELTA LOCATION '{location}'")
    query(adbc, f"CREATE EXTERNAL TABLE dl_external_uri STORED AS DELTA LOCATION '{location.as_uri()}'")
    assert rows(adbc, "SELECT id FROM dl_external") == [{"id": 1}]
    # Another writer appends; Quiver sees it through both registrations.
    deltalake.write_deltalake(str(location), pa.table({"id": pa.array([2], pa.int64())}), mode="append")
    assert rows(adbc, "SELECT id FROM dl_external ORDER BY id") == [{"id": 1}, {"id": 2}]
    assert rows(adbc, "SELECT count(*) AS n FROM dl_external_uri") == [{"n": 2}]
    # Quiver writes to the external location; deltalake sees it.
    query(adbc, "INSERT INTO dl_external VALUES (3)")
    assert sorted(delta_read(location).column("id").to_pylist()) == [1, 2, 3]
    objects = adbc.adbc_get_objects(
        depth="tables", db_schema_filter="public", table_name_filter="dl_external%"
    ).read_all().to_pylist()
    [public] = objects[0]["catalog_db_schemas"]
    types = {tb["table_name"]: tb["table_type"] for tb in public["db_schema_tables"]}
    assert types == {"dl_external": "EXTERNAL TABLE", "dl_external_uri": "EXTERNAL TABLE"}
    # Dropping an external table forgets it but keeps the data.
    query(adbc, "DROP TABLE dl_external")
    with pytest.raises(adbc_driver_manager.Error) as info:
        query(adbc, "SELECT * FROM dl_external")
    assert info.value.status_code == adbc_driver_manager.AdbcStatusCode.NOT_FOUND
    assert sorted(delta_read(location).column("id").to_pylist()) == [1, 2, 3]
    assert rows(adbc, "SELECT count(*) AS n FROM dl_external_uri") == [{"n": 3}]


def test_external_table_missing_location(adbc, tmp_path):
    with pytest.raises(adbc_driver_manager.Error) as info:
        query(adbc, f"CREATE EXTERNAL TABLE dl_external_missing STORED AS DELTA LOCATION '{tmp_path / 'none'}'")
    assert info.value.status_code in (
        adbc_driver_manager.AdbcStatusCode.INVALID_ARGUMENT,
        adbc_driver_manager.AdbcStatusCode.NOT_FOUND,
    )
    with pytest.raises(adbc_driver_manager.Error):
        query(adbc, "SELECT * FROM dl_external_missing")


# --- time travel agrees with deltalake ---------------------------------------------------------


def test_version_as_of_matches_deltalake(adbc, server):
    t = "dl_travel"
    path = path_of(server, t)
    deltalake.write_deltalake(str(path), pa.table({"id": pa.array([1, 2], pa.int64()), "v": ["a", "b"]}))  # v0
    query(adbc, f"INSERT INTO {t} VALUES (3, 'c')")  # v1 (Quiver)
    deltalake.write_deltalake(
        str(path), pa.table({"id": pa.array([4], pa.int64()), "v": ["d"]}), mode="append"
    )  # v2 (deltalake)
    query(adbc, f"UPDATE {t} SET v = 'A' WHERE id = 1")  # v3 (Quiver)
    deltalake.DeltaTable(str(path)).delete("id = 2")  # v4 (deltalake)
    query(adbc, f"DELETE FROM {t} WHERE id = 4")  # v5 (Quiver)
    assert deltalake.DeltaTable(str(path)).version() == 5
    for version in range(6):
        expected = by_id(delta_read(path, version=version))
        got = rows(adbc, f"SELECT * FROM {t} VERSION AS OF {version} ORDER BY id")
        assert got == expected, f"version {version}"
    assert rows(adbc, f"SELECT * FROM {t} ORDER BY id") == [
        {"id": 1, "v": "A"},
        {"id": 3, "v": "c"},
    ]


def test_timestamp_as_of_matches_deltalake(adbc, server):
    t = "dl_travel_ts"
    path = path_of(server, t)
    deltalake.write_deltalake(str(path), pa.table({"id": pa.array([1], pa.int64())}))  # v0
    time.sleep(0.3)
    query(adbc, f"INSERT INTO {t} VALUES (2)")  # v1
    time.sleep(0.3)
    deltalake.write_deltalake(str(path), pa.table({"id": pa.array([3], pa.int64())}), mode="append")  # v2

    def commit_ms(version):
        log = path / "_delta_log" / f"{version:020d}.json"
        for line in log.read_text().splitlines():
            action = json.loads(line)
            if "commitInfo" in action:
                return action["commitInfo"]["timestamp"]
        raise AssertionError(f"no commitInfo in {log}")

    for before, after in [(0, 1), (1, 2)]:
        middle_ms = (commit_ms(before) + commit_ms(after)) // 2
        middle = datetime.datetime.fromtimestamp(middle_ms / 1000, tz=UTC)
        dt = deltalake.DeltaTable(str(path))
        dt.load_as_version(middle)
        assert dt.version() == before
        expected = by_id(dt.to_pyarrow_table())
        got = rows(adbc, f"SELECT id FROM {t} TIMESTAMP AS OF '{middle.isoformat()}' ORDER BY id")
        assert got == expected, f"between v{before} and v{after}"
