"""HTTP collector throughput: N concurrent senders post gzip NDJSON batches (as Vector's http sink
sends them) to `POST /v1/ingest/{table}` of a release `quiver serve`; prints rows/s, request latency,
requests per Delta commit (group commit) and the server's RSS. Asserts nothing.

    tests/bench/run.sh collect [--senders 8] [--batch 1000] [--seconds 30]
"""

import argparse
import gzip
import http.client
import json
import os
import pathlib
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "python"))
import adbc_driver_flightsql.dbapi as dbapi  # noqa: E402
from conftest import Server  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bodies(batch: int, count: int) -> list[bytes]:
    rng = random.Random(7)
    made = []
    for _ in range(count):
        lines = [
            json.dumps(
                {
                    "user_id": rng.randrange(1_000_000),
                    "item_id": rng.randrange(100_000),
                    "event": rng.choice(["view", "click", "cart", "buy"]),
                    "ts": f"2026-12-05T10:{rng.randrange(60):02d}:{rng.randrange(60):02d}.{rng.randrange(1000):03d}Z",
                    "host": "web-1",
                    "source_type": "file",
                }
            )
            for _ in range(batch)
        ]
        made.append(gzip.compress("\n".join(lines).encode()))
    return made


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        warehouse = pathlib.Path(tmp) / "warehouse"
        server = Server(warehouse, args=["--http-listen", "127.0.0.1:0"], env={"QUIVER_LOG": "warn"})
        try:
            with dbapi.connect(server.uri, autocommit=True) as conn, conn.cursor() as cur:
                cur.execute("CREATE TABLE events (user_id BIGINT NOT NULL, item_id BIGINT, event VARCHAR, ts TIMESTAMP)")
                cur.fetchall()
            pool = bodies(args.batch, 16)
            url = urllib.parse.urlparse(server.http)
            headers = {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip", "User-Agent": "Vector/bench"}
            latencies: list[float] = []
            rows = [0]
            deferred = [0]
            lock = threading.Lock()
            deadline = time.perf_counter() + args.seconds

            def send(sender: int) -> None:
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
                i = sender
                while time.perf_counter() < deadline:
                    body = pool[i % len(pool)]
                    i += 1
                    start = time.perf_counter()
                    conn.request("POST", "/v1/ingest/events", body=body, headers=headers)
                    response = conn.getresponse()
                    answer = json.loads(response.read())
                    took = time.perf_counter() - start
                    with lock:
                        if response.status == 200:
                            latencies.append(took)
                            rows[0] += answer["rows"]
                        else:
                            deferred[0] += 1
                    if response.status != 200:
                        time.sleep(0.1)
                conn.close()

            peak = [0.0]
            stop = threading.Event()

            def watch() -> None:
                while not stop.wait(0.2):
                    peak[0] = max(peak[0], rss_mib(server.proc.pid))

            watcher = threading.Thread(target=watch)
            watcher.start()
            began = time.perf_counter()
            threads = [threading.Thread(target=send, args=(s,)) for s in range(args.senders)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - began
            stop.set()
            watcher.join()
            commits = len(list((warehouse / "public" / "events" / "_delta_log").glob("*.json"))) - 1
            latencies.sort()
            q = statistics.quantiles(latencies, n=100)
            print(f"HTTP collector: {args.senders} senders, {args.batch}-event gzip NDJSON batches, {elapsed:.1f} s")
            print(f"  rows/s            {rows[0] / elapsed:,.0f}  ({rows[0]:,} rows, {len(latencies):,} requests)")
            print(f"  request p50/p99   {q[49] * 1000:.1f} / {q[98] * 1000:.1f} ms")
            print(f"  commits           {commits:,}  ({len(latencies) / max(commits, 1):.2f} requests per commit)")
            print(f"  deferred (429/503) {deferred[0]}")
            print(f"  server RSS peak   {peak[0]:.0f} MiB")
        finally:
            server.stop()


if __name__ == "__main__":
    os.environ.setdefault("QUIVER_LOG", "warn")
    main()
