"""MERGE benchmark: upsert 100k changed rows (half updates, half inserts) into a 10M-row Delta table,
through Quiver's MERGE INTO over ADBC, and with Python deltalake's merge on an identical copy.

Prints figures; asserts only that both give the same table. Run through tests/bench/run.sh merge
(release build): `tests/bench/run.sh merge [--rows N] [--changes N]`.
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import adbc_driver_flightsql.dbapi as flight_sql
import deltalake
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from conftest import Server  # noqa: E402


def target(rows: int) -> pa.Table:
    rng = np.random.default_rng(7)
    return pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "user_id": pa.array(rng.integers(0, 1_000_000, rows, dtype=np.int64)),
            "score": pa.array(rng.random(rows)),
        }
    )


def changes(rows: int, count: int) -> pa.Table:
    rng = np.random.default_rng(8)
    updated = rng.choice(rows, count // 2, replace=False).astype(np.int64)
    inserted = np.arange(rows, rows + count - count // 2, dtype=np.int64)
    ids = np.concatenate([updated, inserted])
    return pa.table(
        {
            "id": pa.array(ids),
            "user_id": pa.array(rng.integers(0, 1_000_000, len(ids), dtype=np.int64)),
            "score": pa.array(rng.random(len(ids))),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--changes", type=int, default=100_000)
    args = parser.parse_args()
    base, delta = target(args.rows), changes(args.rows, args.changes)
    with tempfile.TemporaryDirectory() as tmp:
        warehouse = Path(tmp) / "warehouse"
        srv = Server(warehouse)
        try:
            with flight_sql.connect(srv.uri, autocommit=True) as conn:
                with conn.cursor() as cur:
                    started = time.perf_counter()
                    # In batches: one 10M-row message is over the client's gRPC message limit.
                    cur.adbc_ingest("target", base.to_reader(max_chunksize=200_000), mode="create")
                    load = time.perf_counter() - started
                    cur.adbc_ingest("changes", delta, mode="create")
                copy = Path(tmp) / "copy"
                shutil.copytree(warehouse / "public" / "target", copy)
                sql = (
                    "MERGE INTO target t USING changes s ON t.id = s.id "
                    "WHEN MATCHED THEN UPDATE SET user_id = s.user_id, score = s.score "
                    "WHEN NOT MATCHED THEN INSERT (id, user_id, score) VALUES (s.id, s.user_id, s.score)"
                )
                with conn.cursor() as cur:
                    started = time.perf_counter()
                    cur.execute(sql)
                    cur.fetchall()
                    quiver = time.perf_counter() - started
                    cur.execute("SELECT count(*), sum(score) FROM target")
                    quiver_result = cur.fetchone()
        finally:
            srv.stop()

        started = time.perf_counter()
        (
            deltalake.DeltaTable(str(copy))
            .merge(delta, "t.id = s.id", source_alias="s", target_alias="t")
            .when_matched_update({"user_id": "s.user_id", "score": "s.score"})
            .when_not_matched_insert({"id": "s.id", "user_id": "s.user_id", "score": "s.score"})
            .execute()
        )
        python = time.perf_counter() - started
        merged = deltalake.DeltaTable(str(copy)).to_pyarrow_table(columns=["score"])
        python_result = (merged.num_rows, pa.compute.sum(merged["score"]).as_py())

    print(f"merge: target {args.rows:,} rows (ingested in {load:.1f} s), {args.changes:,} changed rows")
    print(f"merge: Quiver MERGE INTO over ADBC   {quiver:6.2f} s")
    print(f"merge: Python deltalake {deltalake.__version__} merge {python:6.2f} s")
    assert quiver_result[0] == python_result[0], (quiver_result, python_result)
    assert abs(quiver_result[1] - python_result[1]) < 1e-6 * abs(python_result[1]), (quiver_result, python_result)
    print(f"merge: both tables hold {python_result[0]:,} rows with the same sum(score)")


if __name__ == "__main__":
    main()
