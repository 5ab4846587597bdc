"""ASOF JOIN benchmark: 10M label rows x 10M feature rows, point-in-time join through Flight SQL.

Prints figures; asserts nothing about speed. Run through `tests/bench/run.sh asof` (release build).

Labels and features are random over 1M users and 30 days (microsecond timestamps). Both tables are
ingested through ADBC; then the server is restarted, so the peak RSS reported is the join's own
(VmHWM of a fresh process), and the query

    SELECT count(*), count(f.value), sum(f.value)
    FROM labels l ASOF JOIN feats f MATCH_CONDITION (l.ts >= f.ts) ON l.user_id = f.user_id

runs `--repeat` times (the aggregate keeps the client out of the measurement: every joined row is
produced by the operator and consumed by the aggregate inside the server).
"""

import argparse
import os
import signal
import subprocess
import tempfile
import time

import numpy as np
import pyarrow as pa
from flight_bench import rss_kib

QUERY = (
    "SELECT count(*) AS n, count(f.value) AS matched, sum(f.value) AS s "
    "FROM labels l ASOF JOIN feats f MATCH_CONDITION (l.ts >= f.ts) ON l.user_id = f.user_id"
)


def make_tables(rows: int, users: int):
    rng = np.random.default_rng(7)
    start = np.datetime64("2026-01-01T00:00:00", "us")
    span = 30 * 86_400_000_000

    def times():
        return pa.array(start + rng.integers(0, span, rows).astype("timedelta64[us]"), pa.timestamp("us", "UTC"))

    labels = pa.table({
        "user_id": pa.array(rng.integers(0, users, rows, dtype=np.int64)),
        "ts": times(),
        "label": pa.array(rng.integers(0, 2, rows, dtype=np.int8)),
    })
    feats = pa.table({
        "user_id": pa.array(rng.integers(0, users, rows, dtype=np.int64)),
        "ts": times(),
        "value": pa.array(rng.random(rows)),
    })
    return labels, feats


def start(binary: str, warehouse: str, memory_limit: str | None = None):
    limit = ["--memory-limit", memory_limit] if memory_limit else []
    proc = subprocess.Popen(
        [binary, "serve", "--warehouse", warehouse, "--listen", "127.0.0.1:0", *limit],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    uri = proc.stdout.readline().strip().removeprefix("quiver listening on ")
    return proc, uri


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows in each table")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--memory-limit", help="the server's --memory-limit for the join (e.g. 512MiB)")
    parser.add_argument("--binary", default=os.environ.get("QUIVER_BIN", "target/release/quiver"))
    args = parser.parse_args()

    import adbc_driver_flightsql.dbapi as dbapi

    labels, feats = make_tables(args.rows, args.users)
    print(f"labels: {labels.num_rows:,} rows, features: {feats.num_rows:,} rows, {args.users:,} users")
    print(f"server --memory-limit: {args.memory_limit or 'none'}")
    print(f"machine: {os.cpu_count()} cores; binary: {args.binary}")
    with tempfile.TemporaryDirectory() as tmp:
        proc, uri = start(args.binary, f"{tmp}/wh")
        try:
            with dbapi.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
                for name, table in (("labels", labels), ("feats", feats)):
                    # Batches under gRPC's message limit.
                    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=131_072))
                    cur.adbc_ingest(name, reader, mode="create")
        finally:
            stop(proc)
        del labels, feats

        proc, uri = start(args.binary, f"{tmp}/wh", args.memory_limit)
        try:
            time.sleep(1.0)
            idle = rss_kib(proc.pid, "VmRSS")
            times = []
            with dbapi.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    cur.execute(QUERY)
                    result = cur.fetch_arrow_table().to_pylist()[0]
                    times.append(time.perf_counter() - t0)
            peak = rss_kib(proc.pid, "VmHWM")
        finally:
            stop(proc)

    assert result["n"] == args.rows, result
    best = min(times)
    print()
    print(f"result                    {result}")
    print(f"ASOF JOIN time (best)     {best:.2f} s  ({args.rows / best / 1e6:.2f} M label rows/s)")
    print(f"ASOF JOIN times           {', '.join(f'{t:.2f} s' for t in times)}")
    print(f"server RSS idle           {idle / 1024:.1f} MiB")
    print(f"server RSS peak (join)    {peak / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
