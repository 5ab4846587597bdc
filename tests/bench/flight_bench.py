"""Throughput benchmark: Flight DoGet and ADBC ingest of a 10M-row, 5-column table, with baselines.

Prints figures; asserts nothing about speed. Run through tests/bench/run.sh (release build).

  - ingest: adbc_ingest(mode="create") of the table into Quiver (one Delta commit), rows/s
  - DoGet: `SELECT *` of that table through plain pyarrow.flight and through ADBC, MB/s and rows/s
  - baseline DoGet: a pyarrow.flight server (separate process) streaming the same table from memory
  - baseline write: Python deltalake write_deltalake of the same table to local disk
  - server RSS: idle after start, and peak (VmHWM) after the run
"""

import argparse
import multiprocessing
import os
import signal
import subprocess
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight


def make_table(rows: int) -> pa.Table:
    rng = np.random.default_rng(42)
    start = np.datetime64("2026-01-01T00:00:00", "us")
    return pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "user_id": pa.array(rng.integers(0, 1_000_000, rows, dtype=np.int64)),
            "item_id": pa.array(rng.integers(0, 100_000, rows, dtype=np.int64)),
            "score": pa.array(rng.random(rows)),
            "ts": pa.array(start + rng.integers(0, 86_400_000_000, rows).astype("timedelta64[us]"), pa.timestamp("us", "UTC")),
        }
    )


def rss_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


class MemoryServer(flight.FlightServerBase):
    def __init__(self, table: pa.Table):
        super().__init__("grpc://127.0.0.1:0")
        self.table = table

    def do_get(self, context, ticket):
        return flight.RecordBatchStream(self.table)


def _serve_memory(rows: int, chunk: int, port_queue):
    table = pa.Table.from_batches(make_table(rows).to_batches(max_chunksize=chunk))
    server = MemoryServer(table)
    port_queue.put(server.port)
    server.serve()


def timed(fn, repeat: int):
    times = []
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), sorted(times)[len(times) // 2], result


def fmt_rate(nbytes: int, rows: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:8.0f} MB/s  {rows / seconds / 1e6:6.2f} M rows/s  ({seconds:.2f} s)"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--chunk", type=int, default=131_072, help="rows per uploaded batch")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--binary", default=os.environ.get("QUIVER_BIN", "target/release/quiver"))
    args = parser.parse_args()

    import adbc_driver_flightsql.dbapi as dbapi
    import deltalake

    table = make_table(args.rows)
    nbytes = table.nbytes
    print(f"table: {args.rows:,} rows x {table.num_columns} columns, {nbytes / 1e6:.0f} MB in Arrow")
    print(f"machine: {os.cpu_count()} cores; binary: {args.binary}")

    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [args.binary, "serve", "--warehouse", f"{tmp}/wh", "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        uri = proc.stdout.readline().strip().removeprefix("quiver listening on ")
        time.sleep(1.0)  # let the allocator settle before reading idle RSS
        idle = rss_kib(proc.pid, "VmRSS")
        results = {}
        try:
            with dbapi.connect(uri, autocommit=True) as conn:
                reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=args.chunk))
                cur = conn.cursor()
                t0 = time.perf_counter()
                cur.adbc_ingest("bench", reader, mode="create")
                ingest_s = time.perf_counter() - t0
                results["ingest (adbc_ingest)"] = f"{args.rows / ingest_s / 1e6:6.2f} M rows/s  ({ingest_s:.2f} s)"
                peak_after_ingest = rss_kib(proc.pid, "VmHWM")

                client = flight.connect(uri)
                best, median, got = timed(
                    lambda: client.do_get(flight.Ticket(b"SELECT * FROM bench")).read_all(), args.repeat
                )
                assert got.num_rows == args.rows, got.num_rows
                results["DoGet SELECT * (pyarrow.flight)"] = fmt_rate(nbytes, args.rows, best)
                results["DoGet SELECT * (pyarrow.flight, median)"] = fmt_rate(nbytes, args.rows, median)

                def adbc_fetch():
                    cur.execute("SELECT * FROM bench")
                    return cur.fetch_arrow_table()

                best, _, got = timed(adbc_fetch, args.repeat)
                assert got.num_rows == args.rows
                results["DoGet SELECT * (ADBC)"] = fmt_rate(nbytes, args.rows, best)
            peak = rss_kib(proc.pid, "VmHWM")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)

        ctx = multiprocessing.get_context("spawn")  # forking after gRPC threads exist can deadlock
        queue = ctx.Queue()
        baseline = ctx.Process(target=_serve_memory, args=(args.rows, args.chunk, queue), daemon=True)
        baseline.start()
        port = queue.get(timeout=120)
        client = flight.connect(f"grpc://127.0.0.1:{port}")
        best, _, got = timed(lambda: client.do_get(flight.Ticket(b"x")).read_all(), args.repeat)
        assert got.num_rows == args.rows
        results["baseline: pyarrow.flight server from memory"] = fmt_rate(nbytes, args.rows, best)
        baseline.terminate()

        t0 = time.perf_counter()
        deltalake.write_deltalake(f"{tmp}/py-delta", table)
        write_s = time.perf_counter() - t0
        results["baseline: deltalake.write_deltalake"] = f"{args.rows / write_s / 1e6:6.2f} M rows/s  ({write_s:.2f} s)"

    width = max(len(k) for k in results)
    print()
    for name, value in results.items():
        print(f"{name:<{width}}  {value}")
    print(f"{'server RSS idle':<{width}}  {idle / 1024:8.1f} MiB")
    print(f"{'server RSS peak after ingest':<{width}}  {peak_after_ingest / 1024:8.1f} MiB")
    print(f"{'server RSS peak after DoGets':<{width}}  {peak / 1024:8.1f} MiB")


if __name__ == "__main__":
    main()
