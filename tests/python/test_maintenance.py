"""Tables that stay healthy, through ADBC against the real server: checkpoints written every
`delta.checkpointInterval` commits and read by Python deltalake and DuckDB's delta extension,
OPTIMIZE / VACUUM / RESTORE / DESCRIBE HISTORY / DESCRIBE DETAIL reports, MERGE INTO with the
client's rows as its source (executemany), and appends running while OPTIMIZE compacts."""

import json
import threading
import time

import adbc_driver_flightsql.dbapi as flight_sql
import deltalake
import pyarrow as pa
import pytest

from helpers import ingest, query, rows


@pytest.fixture
def conn(server):
    with flight_sql.connect(server.uri, autocommit=True) as c:
        yield c


def execute(conn, sql, parameters=None):
    with conn.cursor() as cur:
        cur.execute(sql, parameters=parameters)
        return cur.fetch_arrow_table()


def wait_for(path, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {seconds} s")
        time.sleep(0.05)


def appended(conn, table, start, count):
    ingest(conn, table, pa.table({"id": pa.array(range(start, start + count), pa.int64())}), "append")


def test_checkpoints_every_interval_are_read_by_deltalake_and_duckdb(server, conn):
    table = "ckpt_events"
    ingest(conn, table, pa.table({"id": pa.array([0], pa.int64())}), "create")  # version 0
    for i in range(1, 25):  # versions 1..24
        appended(conn, table, i, 1)
    log = server.warehouse / "public" / table / "_delta_log"
    # Spark's default interval of 10 (the table sets none): checkpoints after 10 and 20.
    wait_for(log / "00000000000000000020.checkpoint.parquet")
    assert (log / "00000000000000000010.checkpoint.parquet").exists()
    assert not (log / "00000000000000000005.checkpoint.parquet").exists()
    assert json.loads((log / "_last_checkpoint").read_text())["version"] == 20

    # A table property changes the interval.
    execute(conn, f"ALTER TABLE {table} SET TBLPROPERTIES ('delta.checkpointInterval' = '3')")  # v25
    for i in range(25, 28):  # versions 26, 27 (checkpoint), 28
        appended(conn, table, i, 1)
    wait_for(log / "00000000000000000027.checkpoint.parquet")

    dt = deltalake.DeltaTable(str(server.warehouse / "public" / table))
    assert dt.version() == 28
    assert sorted(dt.to_pyarrow_table()["id"].to_pylist()) == list(range(28))

    duckdb = pytest.importorskip("duckdb")
    from duckdb_extensions import import_extension

    con = duckdb.connect()
    import_extension("delta", con=con)
    location = str(server.warehouse / "public" / table)
    assert con.sql(f"SELECT count(*), sum(id) FROM delta_scan('{location}')").fetchone() == (28, sum(range(28)))


def test_optimize_compacts_and_reports(server, conn):
    table = "opt_small"
    ingest(conn, table, pa.table({"id": pa.array([0], pa.int64()), "day": ["mon"]}), "create")
    for i in range(1, 8):
        ingest(conn, table, pa.table({"id": pa.array([i], pa.int64()), "day": ["mon"]}), "append")
    before = sorted(rows(conn, f"SELECT id FROM {table}"), key=lambda r: r["id"])
    files_before = rows(conn, f"DESCRIBE DETAIL {table}")[0]["num_files"]
    assert files_before == 8

    report = rows(conn, f"OPTIMIZE {table}")
    assert len(report) == 1
    r = report[0]
    assert (r["table"], r["files_removed"], r["files_added"], r["version"]) == (f"public.{table}", 8, 1, 8)
    assert r["bytes_removed"] > r["bytes_added"] > 0
    assert r["duration_ms"] >= 0

    assert sorted(rows(conn, f"SELECT id FROM {table}"), key=lambda r: r["id"]) == before
    assert rows(conn, f"DESCRIBE DETAIL {table}")[0]["num_files"] == 1
    # Time travel to before the compaction still works.
    assert rows(conn, f"SELECT count(*) AS n FROM {table} VERSION AS OF 3") == [{"n": 4}]
    # Nothing left to compact: no new version.
    again = rows(conn, f"OPTIMIZE {table}")[0]
    assert (again["files_removed"], again["files_added"]) == (0, 0)

    history = rows(conn, f"DESCRIBE HISTORY {table} LIMIT 2")
    assert [h["version"] for h in history] == [8, 7]
    assert history[0]["operation"] == "OPTIMIZE"
    assert json.loads(history[0]["operation_metrics"])["numFilesRemoved"] == 8
    assert history[1]["operation"] == "WRITE"
    assert json.loads(history[1]["operation_parameters"])["mode"] == "Append"
    everything = rows(conn, f"DESCRIBE HISTORY {table}")
    assert [h["version"] for h in everything] == list(range(8, -1, -1))


def test_appends_during_optimize_are_kept(server, conn):
    table = "opt_busy"
    ingest(conn, table, pa.table({"id": pa.array([0], pa.int64())}), "create")
    for i in range(1, 40):
        appended(conn, table, i, 1)
    errors = []
    done = threading.Event()

    def writer():
        try:
            with flight_sql.connect(server.uri, autocommit=True) as other:
                next_id = 1000
                while not done.is_set():
                    appended(other, table, next_id, 1)
                    next_id += 1
                appended(other, table, next_id, 1)
                writer.last = next_id
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(3):
            rows(conn, f"OPTIMIZE {table}")
    finally:
        done.set()
        thread.join(timeout=60)
    assert not errors, errors
    ids = [r["id"] for r in rows(conn, f"SELECT id FROM {table}")]
    expected = list(range(40)) + list(range(1000, writer.last + 1))
    assert sorted(ids) == expected, "an append made during OPTIMIZE was lost or duplicated"


def test_auto_compaction_when_the_table_asks_for_it(server, conn):
    table = "auto_compacted"
    ingest(conn, table, pa.table({"id": pa.array([0], pa.int64())}), "create")
    for i in range(1, 6):
        appended(conn, table, i, 1)
    # Off by default: six small files stay six.
    time.sleep(0.5)
    assert rows(conn, f"DESCRIBE DETAIL {table}")[0]["num_files"] == 6
    execute(
        conn,
        f"ALTER TABLE {table} SET TBLPROPERTIES ('delta.autoOptimize.autoCompact' = 'true', "
        "'quiver.autoCompact.minNumFiles' = '8')",
    )
    properties = json.loads(rows(conn, f"DESCRIBE DETAIL {table}")[0]["properties"])
    assert properties["quiver.autoCompact.minNumFiles"] == "8"
    appended(conn, table, 6, 1)  # 7 small files: under the threshold
    time.sleep(0.5)
    assert rows(conn, f"DESCRIBE DETAIL {table}")[0]["num_files"] == 7
    appended(conn, table, 7, 1)  # 8: a compaction starts in the background
    deadline = time.monotonic() + 30
    while rows(conn, f"DESCRIBE HISTORY {table} LIMIT 1")[0]["operation"] != "OPTIMIZE":
        assert time.monotonic() < deadline, "no automatic compaction after 8 small files"
        time.sleep(0.1)
    assert rows(conn, f"DESCRIBE DETAIL {table}")[0]["num_files"] == 1
    assert sorted(r["id"] for r in rows(conn, f"SELECT id FROM {table}")) == list(range(8))


def test_vacuum_dry_run_lists_then_removes(server, conn):
    table = "vac_files"
    ingest(conn, table, pa.table({"id": pa.array([1, 2], pa.int64())}), "create")
    ingest(conn, table, pa.table({"id": pa.array([3], pa.int64())}), "append")
    execute(conn, f"DELETE FROM {table} WHERE id < 3")  # removes version 0's file
    data = server.warehouse / "public" / table
    parquet = lambda: sorted(p.name for p in data.glob("*.parquet"))  # noqa: E731
    before = parquet()

    with pytest.raises(flight_sql.Error, match="WITHOUT RETENTION CHECK"):
        execute(conn, f"VACUUM {table} RETAIN 1 HOURS")
    assert rows(conn, f"VACUUM {table}") == []  # nothing older than 7 days

    listed = [r["path"] for r in rows(conn, f"VACUUM {table} RETAIN 0 HOURS DRY RUN WITHOUT RETENTION CHECK")]
    assert len(listed) == 1 and parquet() == before, "a dry run removed files"
    removed = [r["path"] for r in rows(conn, f"VACUUM {table} RETAIN 0 HOURS WITHOUT RETENTION CHECK")]
    assert removed == listed
    assert parquet() == sorted(set(before) - set(listed))
    assert rows(conn, f"SELECT id FROM {table}") == [{"id": 3}]
    with pytest.raises(flight_sql.Error, match="version 0 of .* cannot be read: VACUUM removed"):
        query(conn, f"SELECT * FROM {table} VERSION AS OF 0")


def test_restore_and_merge_from_client_rows(server, conn):
    table = "users_synced"
    ingest(conn, table, pa.table({"id": pa.array([1, 2, 3], pa.int64()), "name": ["a", "b", "c"]}), "create")
    # An upsert of rows the client sends: executemany binds every row into MERGE's source, one commit.
    commits_before = len(list((server.warehouse / "public" / table / "_delta_log").glob("*.json")))
    with conn.cursor() as cur:
        cur.executemany(
            f"MERGE INTO {table} t USING (SELECT CAST(? AS BIGINT) AS id, CAST(? AS VARCHAR) AS name) s "
            "ON t.id = s.id WHEN MATCHED THEN UPDATE SET name = s.name "
            "WHEN NOT MATCHED THEN INSERT (id, name) VALUES (s.id, s.name)",
            [(2, "B"), (4, "d"), (5, "e")],
        )
        assert cur.rowcount == 3
    commits_after = len(list((server.warehouse / "public" / table / "_delta_log").glob("*.json")))
    assert commits_after == commits_before + 1, "the upsert took more than one commit"
    assert rows(conn, f"SELECT * FROM {table} ORDER BY id") == [
        {"id": 1, "name": "a"},
        {"id": 2, "name": "B"},
        {"id": 3, "name": "c"},
        {"id": 4, "name": "d"},
        {"id": 5, "name": "e"},
    ]

    restored = rows(conn, f"RESTORE TABLE {table} TO VERSION AS OF 0")
    assert restored[0]["version"] == 2 and restored[0]["table"] == f"public.{table}"
    assert rows(conn, f"SELECT count(*) AS n FROM {table}") == [{"n": 3}]
    assert rows(conn, f"DESCRIBE HISTORY {table} LIMIT 1")[0]["operation"] == "RESTORE"

    detail = rows(conn, f"DESCRIBE DETAIL {table}")[0]
    assert detail["format"] == "delta" and detail["version"] == 2
    assert detail["location"].endswith(f"/public/{table}/")
    assert detail["partition_columns"] == [] and json.loads(detail["properties"]) == {}



MERGE_SCHEMA_HEADER = "x-quiver-ingest-merge-schema"


def ingest_merging(conn, table, data) -> int:
    """ADBC ingest with the merge-schema option, sent as a call header by the Flight SQL driver."""
    with conn.cursor() as cur:
        cur.adbc_statement.set_options(**{f"adbc.flight.sql.rpc.call_header.{MERGE_SCHEMA_HEADER}": "true"})
        return cur.adbc_ingest(table, data, mode="append")


def test_ingest_merge_schema_adds_columns_in_the_same_commit(server, conn):
    import pyarrow.flight as flight

    table = "evolving"
    log = server.warehouse / "public" / table / "_delta_log"
    created = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("name", pa.string())])
    ingest(conn, table, pa.table({"id": [1], "name": ["a"]}, schema=created), "create")
    wider = pa.table({"id": pa.array([2], pa.int64()), "name": ["b"], "score": pa.array([0.5])})

    # Without the option a new column is refused, naming it and the option.
    with pytest.raises(flight_sql.Error, match="column 'score' is not in the table.*merge_schema=true"):
        ingest(conn, table, wider, "append")
    # A misspelled option is refused, not ignored.
    with conn.cursor() as cur:
        cur.adbc_statement.set_options(**{"adbc.flight.sql.rpc.call_header.x-quiver-ingest-merge-schemas": "true"})
        with pytest.raises(flight_sql.Error, match="unknown ingest option 'merge-schemas'"):
            cur.adbc_ingest(table, wider, mode="append")
    assert len(list(log.glob("*.json"))) == 1

    # With it: the column is added and the rows written in one commit (metaData and add together).
    assert ingest_merging(conn, table, wider) == 1
    commit = [json.loads(line) for line in (log / "00000000000000000001.json").read_text().splitlines()]
    assert any("metaData" in a for a in commit) and any("add" in a for a in commit)
    assert len(list(log.glob("*.json"))) == 2
    # A nullable column the upload lacks is written as nulls.
    assert ingest_merging(conn, table, pa.table({"id": pa.array([3], pa.int64())})) == 1
    assert rows(conn, f"SELECT id, name, score FROM {table} ORDER BY id") == [
        {"id": 1, "name": "a", "score": None},
        {"id": 2, "name": "b", "score": 0.5},
        {"id": 3, "name": None, "score": None},
    ]
    # Types still must match; a NOT NULL column stays NOT NULL (the upload's columns are nullable)
    # and refuses a null; a new column needs a type; names differing only in case are refused.
    with pytest.raises(flight_sql.Error, match="column 'score' has type"):
        ingest_merging(conn, table, pa.table({"id": pa.array([4], pa.int64()), "score": ["x"]}))
    with pytest.raises(flight_sql.Error, match="(?i)id.*null"):
        ingest_merging(conn, table, pa.table({"id": pa.array([None], pa.int64()), "more": [1]}))
    with pytest.raises(flight_sql.Error, match="new column 'nothing' has no type"):
        ingest_merging(conn, table, pa.table({"id": pa.array([4], pa.int64()), "nothing": pa.nulls(1)}))
    with pytest.raises(flight_sql.Error, match="column 'NAME' differs from the table's column 'name' only in case"):
        ingest_merging(conn, table, pa.table({"id": pa.array([4], pa.int64()), "NAME": ["x"]}))
    assert len(list(log.glob("*.json"))) == 3

    # Plain Flight: the same option as a header on DoPut to a PATH descriptor.
    client = flight.FlightClient(server.uri)
    upload = pa.table({"id": pa.array([5], pa.int64()), "tag": ["t"]})
    options = flight.FlightCallOptions(headers=[(MERGE_SCHEMA_HEADER.encode(), b"true")])
    writer, reader = client.do_put(flight.FlightDescriptor.for_path(table), upload.schema, options=options)
    writer.write_table(upload)
    writer.done_writing()
    reader.read()
    writer.close()
    client.close()

    dt = deltalake.DeltaTable(str(server.warehouse / "public" / table))
    assert [(f.name, f.nullable) for f in dt.schema().fields] == [
        ("id", False),
        ("name", True),
        ("score", True),
        ("tag", True),
    ]
    assert sorted(dt.to_pyarrow_table().column("id").to_pylist()) == [1, 2, 3, 5]
