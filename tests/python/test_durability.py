"""Durability and concurrency, end to end through the real server and clients.

- Concurrent writers (ADBC ingest, INSERT, DELETE from several clients at once) on one table: every
  acknowledged write is present exactly once; a conflict that cannot be retried is a clear Aborted.
- SIGKILL during ingest, repeatedly (QUIVER_KILL_ROUNDS, default 20): after each restart every
  acknowledged batch is present, no batch is half-visible, and every table opens (Quiver and
  Python deltalake).
"""

import itertools
import os
import random
import signal
import subprocess
import threading
import time

import adbc_driver_flightsql.dbapi as dbapi
import adbc_driver_manager
import deltalake
import pyarrow as pa
import pytest
from conftest import Server, _binary
from helpers import rows

BATCH_ROWS = 500


def batch(writer: int, seq: int) -> pa.Table:
    return pa.table(
        {
            "writer": pa.array([writer] * BATCH_ROWS, pa.int64()),
            "seq": pa.array([seq] * BATCH_ROWS, pa.int64()),
            "row": pa.array(range(BATCH_ROWS), pa.int64()),
        }
    )


def keep_appending(uri, round_, seqs, stop, acked, attempted, table_of, mode):
    """Appends batches `(round_, seq)` until `stop` or until the server dies under it (whatever was
    not acknowledged may then be lost); `table_of(seq)` picks the table."""
    try:
        with dbapi.connect(uri, autocommit=True) as conn:
            while not stop.is_set():
                seq = next(seqs)
                key = (round_, seq)
                attempted.add(key)
                with conn.cursor() as cur:
                    cur.adbc_ingest(table_of(seq), batch(round_, seq), mode=mode)
                acked.add(key)
    except Exception:
        pass


def test_concurrent_writers_every_acknowledged_write_lands_once(fresh_server):
    uri = fresh_server.uri
    with dbapi.connect(uri, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.adbc_ingest("events", batch(0, 0), mode="create")
    acked: dict[str, list] = {"ingest": [], "insert": [], "delete": []}
    errors: list[str] = []
    lock = threading.Lock()

    def ingester(writer: int):
        with dbapi.connect(uri, autocommit=True) as conn:
            for seq in range(8):
                with conn.cursor() as cur:
                    cur.adbc_ingest("events", batch(writer, seq), mode="append")
                with lock:
                    acked["ingest"].append((writer, seq))

    def inserter(writer: int):
        with dbapi.connect(uri, autocommit=True) as conn:
            for seq in range(8):
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO events VALUES ({writer}, {seq}, -1)")
                with lock:
                    acked["insert"].append((writer, seq))

    def deleter():
        # Deletes the seed batch and the rows of writer 900 (inserted below), one statement at a time.
        with dbapi.connect(uri, autocommit=True) as conn:
            for seq in range(8):
                try:
                    with conn.cursor() as cur:
                        cur.execute(f"DELETE FROM events WHERE writer = 900 AND seq = {seq}")
                    with lock:
                        acked["delete"].append(seq)
                except adbc_driver_manager.Error as e:
                    # Allowed only as a clear conflict, never anything else.
                    assert "write conflict" in str(e) and "Aborted" in str(e), str(e)
                    with lock:
                        errors.append(str(e))

    with dbapi.connect(uri, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO events SELECT 900 AS writer, s AS seq, 0 AS row FROM generate_series(0, 7) t(s)"
            )
    threads = [threading.Thread(target=ingester, args=(w,)) for w in (1, 2, 3)]
    threads += [threading.Thread(target=inserter, args=(w,)) for w in (10, 11)]
    threads.append(threading.Thread(target=deleter))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert len(acked["ingest"]) == 24 and len(acked["insert"]) == 16

    with dbapi.connect(uri, autocommit=True) as conn:
        counts = {
            (r["writer"], r["seq"]): r["n"]
            for r in rows(conn, "SELECT writer, seq, count(*) AS n FROM events GROUP BY writer, seq")
        }
    for key in acked["ingest"]:
        assert counts.get(key) == BATCH_ROWS, (key, counts.get(key))
    for key in acked["insert"]:
        assert counts.get(key) == 1, (key, counts.get(key))
    for seq in acked["delete"]:
        assert (900, seq) not in counts
    # Nothing but what was written: seed + acknowledged ingests and inserts + undeleted 900s.
    expected = {(0, 0)} | set(acked["ingest"]) | set(acked["insert"])
    expected |= {(900, s) for s in range(8) if s not in acked["delete"]}
    assert set(counts) == expected
    # Appends commute: they were all retried to success. Deletes conflicting with them are retried
    # by the server too, so the deleter saw no error in practice.
    assert errors == []


def test_sigkill_during_ingest_loses_nothing_acknowledged(tmp_path):
    rounds = int(os.environ.get("QUIVER_KILL_ROUNDS", "20"))
    warehouse = tmp_path / "warehouse"
    acked: set[tuple[int, int]] = set()
    attempted: set[tuple[int, int]] = set()
    rng = random.Random(20261125)
    seqs = itertools.count(1)
    for round_ in range(rounds):
        srv = Server(warehouse)
        stop = threading.Event()

        def write():
            keep_appending(
                srv.uri, round_, seqs, stop, acked, attempted,
                lambda seq: "killed_a" if seq % 2 else "killed_b", "create_append",
            )

        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(rng.uniform(0.3, 1.5))
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(timeout=30)
        stop.set()
        writer.join(timeout=60)
    assert len(acked) >= rounds, f"too few writes acknowledged to mean anything: {len(acked)}"

    srv = Server(warehouse)
    try:
        with dbapi.connect(srv.uri, autocommit=True) as conn:
            counts = {}
            for table in ("killed_a", "killed_b"):
                for r in rows(conn, f"SELECT writer, seq, count(*) AS n FROM {table} GROUP BY writer, seq"):
                    counts[(r["writer"], r["seq"])] = r["n"]
            tables = rows(conn, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
            for t in tables:
                rows(conn, f'SELECT count(*) FROM "{t["table_name"]}"')
    finally:
        assert srv.stop() == 0
    missing = acked - set(counts)
    assert not missing, f"acknowledged batches lost: {sorted(missing)[:5]}"
    partial = {k: n for k, n in counts.items() if n != BATCH_ROWS}
    assert not partial, f"half-visible batches: {partial}"
    assert set(counts) <= attempted
    for table in ("killed_a", "killed_b"):
        dt = deltalake.DeltaTable(str(warehouse / "public" / table))
        assert dt.to_pyarrow_table().num_rows == sum(
            BATCH_ROWS for k in counts if (k[1] % 2 == 1) == (table == "killed_a")
        )


def test_sigkill_during_maintenance_loses_nothing(tmp_path):
    """SIGKILL while appends, checkpoints (every 2 commits), OPTIMIZE, MERGE and VACUUM run: after a
    restart every acknowledged append is there once, the merged table has each key once, both
    tables open in Quiver and deltalake, and the next OPTIMIZE and VACUUM succeed."""
    rounds = int(os.environ.get("QUIVER_KILL_ROUNDS", "20")) // 2 or 1
    warehouse = tmp_path / "warehouse"
    keys = 50
    srv = Server(warehouse)
    with dbapi.connect(srv.uri, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.adbc_ingest("busy", batch(-1, 0), mode="create")
            cur.execute("ALTER TABLE busy SET TBLPROPERTIES ('delta.checkpointInterval' = '2')")
            cur.execute(
                f"CREATE TABLE upserted AS SELECT CAST(v AS BIGINT) AS id, CAST(-1 AS BIGINT) AS r "
                f"FROM generate_series(0, {keys - 1}) t(v)"
            )
            cur.execute("ALTER TABLE upserted SET TBLPROPERTIES ('delta.checkpointInterval' = '2')")
    assert srv.stop() == 0
    acked: set[tuple[int, int]] = {(-1, 0)}
    attempted: set[tuple[int, int]] = set(acked)
    rng = random.Random(20261203)
    seqs = itertools.count(1)
    for round_ in range(rounds):
        srv = Server(warehouse)
        stop = threading.Event()

        def append():
            keep_appending(srv.uri, round_, seqs, stop, acked, attempted, lambda _: "busy", "append")

        def maintain():
            try:
                with dbapi.connect(srv.uri, autocommit=True) as conn:
                    while not stop.is_set():
                        with conn.cursor() as cur:
                            cur.execute("OPTIMIZE busy")
                            cur.fetchall()
                            cur.execute(
                                f"MERGE INTO upserted t USING (SELECT CAST(v AS BIGINT) AS id FROM "
                                f"generate_series(0, {keys + 10}) s(v)) s ON t.id = s.id "
                                f"WHEN MATCHED THEN UPDATE SET r = {round_} "
                                f"WHEN NOT MATCHED THEN INSERT (id, r) VALUES (s.id, {round_})"
                            )
                            cur.execute("VACUUM upserted RETAIN 0 HOURS WITHOUT RETENTION CHECK")
                            cur.fetchall()
            except Exception:
                pass

        threads = [threading.Thread(target=append), threading.Thread(target=maintain)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.5, 2.0))
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(timeout=30)
        stop.set()
        for t in threads:
            t.join(timeout=60)

    srv = Server(warehouse)
    try:
        with dbapi.connect(srv.uri, autocommit=True) as conn:
            counts = {
                (r["writer"], r["seq"]): r["n"]
                for r in rows(conn, "SELECT writer, seq, count(*) AS n FROM busy GROUP BY writer, seq")
            }
            ids = rows(conn, "SELECT id, count(*) AS n FROM upserted GROUP BY id ORDER BY id")
            history = [h["operation"] for h in rows(conn, "DESCRIBE HISTORY upserted")]
            assert "MERGE" in history and "VACUUM END" in history, "no maintenance ran before the kills"
            assert "OPTIMIZE" in [h["operation"] for h in rows(conn, "DESCRIBE HISTORY busy")]
            # The next maintenance runs succeed.
            rows(conn, "OPTIMIZE busy")
            rows(conn, "OPTIMIZE upserted")
            rows(conn, "VACUUM upserted RETAIN 0 HOURS WITHOUT RETENTION CHECK")
            assert rows(conn, "SELECT count(*) AS n FROM busy") == [{"n": BATCH_ROWS * len(counts)}]
    finally:
        assert srv.stop() == 0
    missing = acked - set(counts)
    assert not missing, f"acknowledged appends lost: {sorted(missing)[:5]}"
    assert all(n == BATCH_ROWS for n in counts.values()), "an append is half-visible or duplicated"
    assert set(counts) <= attempted
    assert all(r["n"] == 1 for r in ids), "a MERGE wrote a key twice"
    assert {r["id"] for r in ids} >= set(range(keys))
    assert list((warehouse / "public" / "busy" / "_delta_log").glob("*.checkpoint.parquet"))
    for table in ("busy", "upserted"):
        deltalake.DeltaTable(str(warehouse / "public" / table)).to_pyarrow_table()
