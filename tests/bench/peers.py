"""Quiver side by side with its peers: the same data, the same machine, one run.

Prints figures and ratios; asserts nothing about speed. Run through `tests/bench/run.sh peers`
(release build; its own venv from tests/bench/peers-requirements.txt). Writes a PNG bar chart per
benchmark and a markdown table to --out (default: a new temporary directory, printed at the end).

One `quiver serve` process serves every benchmark. The data is `interactions(user_id BIGINT,
item_id BIGINT, event VARCHAR in {view, click, purchase}, ts TIMESTAMP(us, UTC))`, --events rows
(default 10M) over --users users and the 60 days before a fixed "now" (2026-03-01 00:00 UTC).

  ingest    Quiver ADBC adbc_ingest(mode="create") of the events (one Delta commit) vs Python
            deltalake.write_deltalake of the same pyarrow table to a local directory. rows/s.
  doget     Flight DoGet `SELECT * FROM interactions` (plain pyarrow.flight, SQL text ticket) vs a
            pyarrow.flight server (separate process) streaming the same table from memory (read from
            Quiver's Delta table, in batches of --chunk rows). MB/s (Arrow bytes of the generated
            table) and rows/s.
  features  per-user windowed aggregates (1/7/30-day counts, clicks, purchases, CTR, distinct items,
            as sql/features/user_activity.sql but with a fixed "now" literal) over the events: Quiver
            over Flight SQL (ADBC, whole result fetched as Arrow) vs DuckDB in process on the SAME
            Delta table directory Quiver wrote (<warehouse>/public/interactions). DuckDB reads it with
            `delta_scan` from the delta extension that the PyPI package duckdb-extension-delta ships
            for the pinned duckdb, loaded from that file (nothing is downloaded at run time);
            `--duckdb-read parquet` (also the fallback when the extension does not load) instead
            reads the table's current Parquet files as listed by deltalake's
            `DeltaTable(path).file_uris()` with `read_parquet([...])`. Both results are checked
            equal (row count and a checksum of every column, sorted by user_id). M events/s.
  online    online lookups of the same per-user features vs Feast (local provider, sqlite online
            store). Quiver: a feature view file (`@materialize offline, online`) in a --sql-dir made
            for this run, `REFRESH FEATURE VIEWS` over ADBC. Feast: the rows Quiver materialized, read
            back from Quiver, written to a Parquet file, `apply` + `materialize` through the
            FeatureStore API. Two pairs, p50/p99 for 1 key and 100 keys (distinct random keys):
            - over the network on both sides: Quiver through plain pyarrow.flight (the SQL text is
              the ticket, `... WHERE user_id = 42` / `IN (...)`: one DoGet round trip) vs Feast's
              HTTP feature server (`feast serve`, one keep-alive connection, JSON);
            - Feast's SDK in process (`get_online_features(...).to_dict()`, no network) vs Quiver
              through an ADBC prepared statement (`WHERE user_id = ?`: bind, execute and fetch are
              several gRPC round trips on loopback).
            Every path converts to Python values. A few keys, one 100-key batch and an unknown key
            are checked to give the same values everywhere, and EXPLAIN to show that Quiver answers
            from its online index (OnlineLookupExec).
  predict   the 64 -> 256 -> 128 -> 1 MLP of models_bench.py over --rows rows (default 2M):
            Quiver `SELECT sum(predict('mlp', features)) FROM predict_rows` over ADBC (table
            ingested beforehand; both cores) vs onnxruntime on the same rows in batches of 8192 with
            intra_op_num_threads = 2. rows/s; the two sums are printed side by side.

Speeds are the best of --repeat runs (latencies: percentiles over --lookups lookups after 10 %
warm-up). Client and server share the machine's cores. The server's idle and peak RSS (VmHWM) are
printed at the end. A small run of some of them:

    tests/bench/run.sh peers --events 200000 --rows 100000 --lookups 200 --only features,online
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import multiprocessing
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

# The in-memory Flight server, the timing loop and the RSS reader of the DoGet benchmark.
from flight_bench import MemoryServer, rss_kib, timed

BENCHMARKS = ["ingest", "doget", "features", "online", "predict"]
NOW = "2026-03-01 00:00:00"  # the fixed "now" of the feature query (UTC)
DAYS = 60  # events span the DAYS days before NOW
CHUNK = 131_072  # rows per uploaded batch (under gRPC's message limit)
ORT_BATCH = 8192

# The feature query; {now} is each engine's spelling of the same UTC instant.
FEATURES_SQL = """SELECT
    user_id,
    max(ts) AS event_time,
    count(*) FILTER (WHERE ts > {now} - INTERVAL '1 day') AS events_1d,
    count(*) FILTER (WHERE ts > {now} - INTERVAL '7 days') AS events_7d,
    count(*) FILTER (WHERE ts > {now} - INTERVAL '30 days') AS events_30d,
    count(*) FILTER (WHERE event = 'click' AND ts > {now} - INTERVAL '7 days') AS clicks_7d,
    count(*) FILTER (WHERE event = 'purchase' AND ts > {now} - INTERVAL '30 days') AS purchases_30d,
    CAST(count(*) FILTER (WHERE event = 'click' AND ts > {now} - INTERVAL '7 days') AS DOUBLE)
        / NULLIF(count(*) FILTER (WHERE event = 'view' AND ts > {now} - INTERVAL '7 days'), 0) AS ctr_7d,
    count(DISTINCT item_id) FILTER (WHERE ts > {now} - INTERVAL '30 days') AS distinct_items_30d
FROM {table}
WHERE ts <= {now}
GROUP BY user_id"""
QUIVER_NOW = f"TIMESTAMP '{NOW}'"  # naive: read as UTC against the UTC column
DUCKDB_NOW = f"TIMESTAMPTZ '{NOW}+00'"
FEATURE_COLUMNS = ["events_1d", "events_7d", "events_30d", "clicks_7d", "purchases_30d", "ctr_7d", "distinct_items_30d"]
FEATURE_VIEW = "user_features"


# ---------------------------------------------------------------------------------------------
# Data, server, helpers


def make_events(events: int, users: int, items: int) -> pa.Table:
    rng = np.random.default_rng(42)
    now = np.datetime64(NOW.replace(" ", "T"), "us")
    span = DAYS * 86_400_000_000
    kinds = pa.array(["view", "click", "purchase"])
    codes = rng.choice(3, size=events, p=[0.85, 0.12, 0.03]).astype(np.int32)
    return pa.table({
        "user_id": pa.array(rng.integers(0, users, events, dtype=np.int64)),
        "item_id": pa.array(rng.integers(0, items, events, dtype=np.int64)),
        "event": kinds.take(pa.array(codes)),
        # strictly before NOW: offsets 1..span microseconds back
        "ts": pa.array(now - rng.integers(1, span + 1, events).astype("timedelta64[us]"), pa.timestamp("us", "UTC")),
    })


def terminate(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within a minute."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Server:
    """`quiver serve` on a free loopback port, started as flight_bench.py starts it."""

    def __init__(self, binary: str, warehouse: Path, sql_dir: Path, models_dir: Path, log: Path):
        self.log = log
        self.out = log.with_suffix(".stdout")
        with open(self.out, "w") as out, open(log, "w") as err:
            self.proc = subprocess.Popen(
                [binary, "serve", "--warehouse", str(warehouse), "--listen", "127.0.0.1:0",
                 "--sql-dir", str(sql_dir), "--models-dir", str(models_dir)],
                stdout=out, stderr=err, text=True,
            )
        deadline = time.monotonic() + 300
        while True:
            line = self.out.read_text().splitlines()
            if line and line[0].startswith("quiver listening on "):
                self.uri = line[0].strip().removeprefix("quiver listening on ")
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"quiver serve did not start:\n{self.tail()}")
            time.sleep(0.05)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def rss(self, field_name: str) -> int:
        return rss_kib(self.proc.pid, field_name)

    def stop(self) -> None:
        terminate(self.proc)


def quiver_version(binary: str) -> str:
    try:
        return subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError as e:
        return f"--version failed: {e}"


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples) * 1e3, q))


def reader_of(table: pa.Table, chunk: int = CHUNK) -> pa.RecordBatchReader:
    return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=chunk))


@dataclass
class Row:
    bench: str
    metric: str
    unit: str
    higher_is_better: bool
    quiver: float
    peer_name: str
    peer: float

    @property
    def ratio(self) -> float:
        return self.quiver / self.peer if self.peer else float("nan")

    def verdict(self) -> str:
        r = self.ratio
        if not np.isfinite(r) or r <= 0:
            return "n/a"
        faster = r > 1 if self.higher_is_better else r < 1
        factor = r if r >= 1 else 1 / r
        if abs(factor - 1) < 0.005:
            return "same"
        return f"Quiver {factor:.2f}x {'faster' if faster else 'slower'}"


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)

    def add(self, *args) -> None:
        self.rows.append(Row(*args))

    def note(self, bench: str, text: str) -> None:
        print(f"  [{bench}] {text}", flush=True)
        self.notes.setdefault(bench, []).append(text)


def fmt(value: float) -> str:
    if not np.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


# ---------------------------------------------------------------------------------------------
# Benchmarks


def bench_ingest(report, cur, events, tmp, repeat, first_s):
    import deltalake

    times = [first_s]  # the ingest of `interactions` the other benchmarks read
    for i in range(1, repeat):
        t0 = time.perf_counter()
        cur.adbc_ingest(f"ingest_{i}", reader_of(events), mode="create")
        times.append(time.perf_counter() - t0)
        cur.execute(f"DROP TABLE ingest_{i}")
        cur.fetchall()
    py_times = []
    for i in range(repeat):
        target = tmp / f"py-delta-{i}"
        t0 = time.perf_counter()
        deltalake.write_deltalake(str(target), events)
        py_times.append(time.perf_counter() - t0)
        shutil.rmtree(target)
    n = events.num_rows
    report.add("ingest", "Delta ingest", "M rows/s", True, n / min(times) / 1e6,
               f"deltalake {deltalake.__version__} write_deltalake", n / min(py_times) / 1e6)
    report.note("ingest", f"Quiver adbc_ingest: {', '.join(f'{t:.2f}' for t in times)} s; "
                f"deltalake {deltalake.__version__} write_deltalake: {', '.join(f'{t:.2f}' for t in py_times)} s")


def _serve_memory(delta_path: str, chunk: int, queue) -> None:
    import deltalake

    table = deltalake.DeltaTable(delta_path).to_pyarrow_table()
    table = pa.Table.from_batches(table.combine_chunks().to_batches(max_chunksize=chunk))
    server = MemoryServer(table)
    queue.put((server.port, table.num_rows))
    server.serve()


def bench_doget(report, uri, delta_path, nbytes, rows, repeat, chunk):
    client = flight.connect(uri)
    best, median, got = timed(lambda: client.do_get(flight.Ticket(b"SELECT * FROM interactions")).read_all(), repeat)
    assert got.num_rows == rows, got.num_rows
    report.note("doget", f"Quiver: best {best:.3f} s, median {median:.3f} s; result schema "
                f"{', '.join(f'{f.name}: {f.type}' for f in got.schema)}")
    del got
    client.close()

    ctx = multiprocessing.get_context("spawn")  # forking after gRPC threads exist can deadlock
    queue = ctx.Queue()
    proc = ctx.Process(target=_serve_memory, args=(delta_path, chunk, queue), daemon=True)
    proc.start()
    try:
        port, served = queue.get(timeout=600)
        assert served == rows, served
        client = flight.connect(f"grpc://127.0.0.1:{port}")
        pbest, pmedian, got = timed(lambda: client.do_get(flight.Ticket(b"x")).read_all(), repeat)
        assert got.num_rows == rows
        client.close()
    finally:
        proc.terminate()
        proc.join(timeout=30)
    report.note("doget", f"pyarrow.flight from memory ({chunk:,}-row batches): best {pbest:.3f} s, median {pmedian:.3f} s")
    peer = f"pyarrow.flight {pa.__version__} from memory"
    report.add("doget", "DoGet SELECT *", "MB/s", True, nbytes / best / 1e6, peer, nbytes / pbest / 1e6)
    report.add("doget", "DoGet SELECT *", "M rows/s", True, rows / best / 1e6, peer, rows / pbest / 1e6)


def normalized(table: pa.Table) -> dict[str, np.ndarray]:
    """Every output column as a numpy array of one fixed type, rows sorted by user_id."""
    import pyarrow.compute as pc

    table = table.sort_by("user_id")
    out = {}
    for name in ["user_id", "event_time", *FEATURE_COLUMNS]:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            col = pc.cast(col.cast(pa.timestamp("us", "UTC")), pa.int64()).fill_null(-1)
            out[name] = col.to_numpy()
        elif pa.types.is_floating(col.type):
            out[name] = pc.cast(col, pa.float64()).fill_null(float("nan")).to_numpy()
        else:
            out[name] = pc.cast(col, pa.int64()).fill_null(-1).to_numpy()
    return out


def checksum(table: pa.Table) -> str:
    h = hashlib.sha256()
    for name, values in normalized(table).items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()[:16]


def compare(a: pa.Table, b: pa.Table) -> list[str]:
    """The columns on which two feature results differ (NaN equals NaN), with the largest difference."""
    if a.num_rows != b.num_rows:
        return [f"row counts {a.num_rows} != {b.num_rows}"]
    na, nb = normalized(a), normalized(b)
    diffs = []
    for name in na:
        x, y = na[name].astype(np.float64), nb[name].astype(np.float64)
        same = (x == y) | (np.isnan(x) & np.isnan(y))
        if not same.all():
            worst = np.nanmax(np.abs(x - y)) if np.isfinite(x - y).any() else float("nan")
            diffs.append(f"{name}: {int((~same).sum())} rows differ, max |diff| {worst:g}")
    return diffs


def duckdb_connection(mode: str, report):
    import duckdb

    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.execute("SET TimeZone = 'UTC'")
    if mode == "delta_scan":
        try:
            import duckdb_extension_delta

            base = Path(duckdb_extension_delta.__file__).parent / "extensions" / f"v{duckdb.__version__}"
            con.execute(f"LOAD '{base / 'delta.duckdb_extension'}'")
        except Exception as e:  # noqa: BLE001 -- any failure means: use the Parquet fallback
            report.note("features", f"DuckDB delta extension did not load ({e}); falling back to read_parquet")
            mode = "parquet"
    return con, mode


def duckdb_source(mode: str, path: str) -> str:
    if mode == "delta_scan":
        return f"delta_scan('{path}')"
    import deltalake

    files = [u.removeprefix("file://") for u in deltalake.DeltaTable(path).file_uris()]
    return "read_parquet([" + ", ".join(f"'{f}'" for f in files) + "])"


def bench_features(report, cur, delta_path, events, repeat, duckdb_read):
    import duckdb

    quiver_sql = FEATURES_SQL.format(now=QUIVER_NOW, table="interactions")

    def quiver():
        cur.execute(quiver_sql)
        return cur.fetch_arrow_table()

    best, median, q = timed(quiver, repeat)
    con, mode = duckdb_connection(duckdb_read, report)
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]

    def duck():
        # the source is resolved inside the timing: delta_scan reads the log each time, as Quiver does
        sql = FEATURES_SQL.format(now=DUCKDB_NOW, table=duckdb_source(mode, delta_path))
        return con.execute(sql).to_arrow_table()

    dbest, dmedian, d = timed(duck, repeat)
    how = ("delta_scan (delta extension from the PyPI package duckdb-extension-delta, loaded from its file)"
           if mode == "delta_scan" else "read_parquet over deltalake DeltaTable.file_uris()")
    report.note("features", f"DuckDB {duckdb.__version__} ({threads} threads) reads {delta_path} with {how}")
    report.note("features", f"Quiver: best {best:.3f} s, median {median:.3f} s; DuckDB: best {dbest:.3f} s, median {dmedian:.3f} s")
    diffs = compare(q, d)
    verdict = "same result" if not diffs else "DIFFERENT results: " + "; ".join(diffs)
    report.note("features", f"check: Quiver {q.num_rows:,} rows, checksum {checksum(q)}; "
                f"DuckDB {d.num_rows:,} rows, checksum {checksum(d)}: {verdict}")
    report.add("features", "feature SQL, whole result", "M events/s", True, events / best / 1e6,
               f"DuckDB {duckdb.__version__}", events / dbest / 1e6)


def write_view(sql_dir: Path) -> None:
    (sql_dir / "features").mkdir(parents=True, exist_ok=True)
    (sql_dir / "features" / f"{FEATURE_VIEW}.sql").write_text(
        "-- The per-user features of tests/bench/peers.py (written for the run).\n"
        "-- @entity user_id\n-- @event_time event_time\n-- @materialize offline, online\n"
        + FEATURES_SQL.format(now=QUIVER_NOW, table="interactions") + "\n"
    )


def feast_store(repo: Path, parquet: Path):
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64

    repo.mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(
        f"project: quiver_peers\nregistry: {repo / 'registry.db'}\nprovider: local\n"
        f"online_store:\n  type: sqlite\n  path: {repo / 'online.db'}\n"
        "offline_store:\n  type: file\nentity_key_serialization_version: 3\n"
    )
    store = FeatureStore(repo_path=str(repo))
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    view = FeatureView(
        name=FEATURE_VIEW,
        entities=[user],
        schema=[Field(name="user_id", dtype=Int64)]
        + [Field(name=c, dtype=Float64 if c == "ctr_7d" else Int64) for c in FEATURE_COLUMNS],
        online=True,
        source=FileSource(path=str(parquet), timestamp_field="event_time"),
    )  # no ttl, as the Quiver view has no @ttl
    store.apply([user, view])
    return store


def lookups(fn, keysets, warmup):
    samples = []
    for i, keys in enumerate(keysets):
        t0 = time.perf_counter()
        fn(keys)
        took = time.perf_counter() - t0
        if i >= warmup:
            samples.append(took)
    return samples


class FeastHttpServer:
    """Feast's own feature server (`feast serve`, HTTP/JSON over FastAPI), over the same repo: the
    deployment Feast documents for serving, and a network hop like Quiver's."""

    def __init__(self, repo: Path, log: Path):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        feast_cli = Path(sys.executable).parent / "feast"
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [str(feast_cli), "-c", str(repo), "serve", "-h", "127.0.0.1", "-p", str(self.port),
             "--no-access-log", "--workers", "1", "--max-requests", "100000000",
             "--keep-alive-timeout", "3600"],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "FEAST_USAGE": "False"},
        )
        import http.client

        deadline = time.monotonic() + 120
        while True:
            try:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self.conn.request("GET", "/health")
                self.conn.getresponse().read()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"feast serve did not start: {log.read_text()[-2000:]}")
                time.sleep(0.2)

    def get(self, refs: list[str], keys: list[int]) -> dict:
        import json

        body = json.dumps({"features": refs, "entities": {"user_id": keys}})
        self.conn.request("POST", "/get-online-features", body, {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        data = response.read()
        assert response.status == 200, data[:500]
        return json.loads(data)

    def stop(self) -> None:
        self.conn.close()
        terminate(self.proc)
        self.log.close()


def bench_online(report, conn, uri, tmp, n_lookups, users):
    import datetime as dt

    import pyarrow.parquet as pq

    cur = conn.cursor()
    t0 = time.perf_counter()
    cur.execute("REFRESH FEATURE VIEWS")
    refreshed = cur.fetch_arrow_table().to_pylist()
    refresh_s = time.perf_counter() - t0
    for r in refreshed:
        report.note("online", f"Quiver REFRESH {r['view']}: {r['mode']}, {r['rows']:,} rows, {r['elapsed_ms']} ms "
                    f"(computes the features from the events, writes Delta, builds the index)")
    cur.execute(f"SELECT * FROM features.{FEATURE_VIEW}")
    materialized = cur.fetch_arrow_table()
    parquet = tmp / "feast" / "user_features.parquet"
    parquet.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(materialized, parquet)

    os.environ["FEAST_USAGE"] = "False"  # no telemetry
    import feast

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # Feast prints progress to stdout
        store = feast_store(tmp / "feast" / "repo", parquet)
        apply_s = time.perf_counter() - t0
        now = dt.datetime.fromisoformat(NOW).replace(tzinfo=dt.timezone.utc)
        store.materialize(start_date=now - dt.timedelta(days=DAYS + 1), end_date=now + dt.timedelta(days=1))
    feast_s = time.perf_counter() - t0 - apply_s
    report.note("online", f"Quiver REFRESH FEATURE VIEWS round trip {refresh_s:.2f} s; Feast {feast.__version__} "
                f"apply {apply_s:.2f} s, materialize of the same {materialized.num_rows:,} rows from Parquet "
                f"into sqlite {feast_s:.2f} s")

    refs = [f"{FEATURE_VIEW}:{c}" for c in FEATURE_COLUMNS]
    rng = np.random.default_rng(5)
    ids = materialized.column("user_id").to_numpy()
    one_sql = f"SELECT * FROM features.{FEATURE_VIEW} WHERE user_id = ?"
    many_sql = f"SELECT * FROM features.{FEATURE_VIEW} WHERE user_id IN ({', '.join('?' * 100)})"
    one_cur, many_cur = conn.cursor(), conn.cursor()  # one prepared statement each

    def quiver_one(key):
        one_cur.execute(one_sql, parameters=(key,))
        return one_cur.fetch_arrow_table().to_pydict()

    def quiver_many(keys):
        many_cur.execute(many_sql, parameters=tuple(keys))
        return many_cur.fetch_arrow_table().to_pydict()

    def feast_get(keys):
        return store.get_online_features(features=refs, entity_rows=[{"user_id": k} for k in keys]).to_dict()

    # The one-round-trip path of a plain Flight client: the SQL text is the ticket (DoGet only).
    flight_client = flight.connect(uri)
    one_text = f"SELECT * FROM features.{FEATURE_VIEW} WHERE user_id = {{}}"
    many_text = f"SELECT * FROM features.{FEATURE_VIEW} WHERE user_id IN ({{}})"

    def flight_one(key):
        return flight_client.do_get(flight.Ticket(one_text.format(int(key)).encode())).read_all().to_pydict()

    def flight_many(keys):
        text = many_text.format(", ".join(str(int(k)) for k in keys))
        return flight_client.do_get(flight.Ticket(text.encode())).read_all().to_pydict()

    http_server = FeastHttpServer(tmp / "feast" / "repo", tmp / "feast" / "serve.log")

    def http_get(keys):
        return http_server.get(refs, keys)

    def same(qv, fv) -> bool:
        if isinstance(qv, float) and isinstance(fv, float):
            return abs(qv - fv) <= 1e-12 * max(1.0, abs(qv)) or (qv != qv and fv != fv)
        return qv == fv

    # Same values for a few keys one at a time, for one 100-key batch, and for a key no one has.
    check = [int(k) for k in rng.choice(ids, size=min(5, len(ids)), replace=False)]
    mismatches = []
    for k in check:
        qrow, frow = quiver_one(k), feast_get([k])
        mismatches += [f"user {k} {c}: Quiver {qrow[c][0]!r}, Feast {frow[c][0]!r}"
                       for c in FEATURE_COLUMNS if len(qrow["user_id"]) != 1 or not same(qrow[c][0], frow[c][0])]
    def hundred() -> list[int]:
        return [int(k) for k in rng.choice(ids, size=100, replace=len(ids) < 100)]

    batch = hundred()
    qrows, frows = quiver_many(batch), feast_get(batch)
    by_key = {k: i for i, k in enumerate(qrows["user_id"])}
    for j, k in enumerate(batch):
        i = by_key.get(k)
        mismatches += [f"user {k} {c} (batch): Quiver {None if i is None else qrows[c][i]!r}, Feast {frows[c][j]!r}"
                       for c in FEATURE_COLUMNS if i is None or not same(qrows[c][i], frows[c][j])]
    report.note("online", f"check: keys {check} and a batch of 100: " + (
        "same values in Quiver and Feast" if not mismatches else "DIFFERENT: " + "; ".join(mismatches[:5])))
    missing = users + 1_000_000
    q_missing, f_missing = quiver_one(missing), feast_get([missing])
    report.note("online", f"check: unknown key {missing}: Quiver {len(q_missing['user_id'])} rows, Feast "
                + ("all values None" if all(f_missing[c] == [None] for c in FEATURE_COLUMNS) else str(f_missing)))
    cur.execute(f"EXPLAIN SELECT * FROM features.{FEATURE_VIEW} WHERE user_id = {check[0]}")
    plan = str(cur.fetch_arrow_table().to_pydict())
    report.note("online", "Quiver plan of a lookup: " + ("OnlineLookupExec (answered from the in-memory index)"
                if "OnlineLookupExec" in plan else "NOT OnlineLookupExec: " + plan[:300]))

    warmup = max(1, n_lookups // 10)
    singles = [int(k) for k in rng.choice(ids, size=n_lookups + warmup)]
    batches = [hundred() for _ in range(n_lookups + warmup)]
    answer = http_get([check[0]])
    http_values = {name: values[0] for name, values in zip(answer["metadata"]["feature_names"],
                                                           (r["values"] for r in answer["results"]))}
    qrow = quiver_one(check[0])
    frow = flight_one(check[0])
    agree = all(same(qrow[c][0], http_values[c]) and same(frow[c][0], qrow[c][0]) for c in FEATURE_COLUMNS)
    report.note("online", f"check: user {check[0]} through pyarrow.flight and through Feast's HTTP server: "
                + ("same values" if agree else f"DIFFERENT: {frow} / {http_values}"))

    # Interleaved per phase (Quiver, then Feast) so both see the same machine state.
    samples = {}
    for name, one, many in (("adbc", quiver_one, quiver_many), ("sdk", lambda k: feast_get([k]), feast_get),
                            ("flight", flight_one, flight_many), ("http", lambda k: http_get([k]), http_get)):
        samples[name] = (lookups(one, singles, warmup), lookups(many, batches, warmup))
    http_server.stop()
    flight_client.close()
    pairs = (
        ("pyarrow.flight", "flight", f"Feast {feast.__version__} HTTP feature server", "http"),
        ("ADBC prepared", "adbc", f"Feast {feast.__version__} SDK in process", "sdk"),
    )
    for client, quiver, peer, feast_name in pairs:
        for i, label in enumerate(("1 key", "100 keys")):
            for p in (50, 99):
                report.add("online", f"lookup {label} p{p}, Quiver over {client}", "ms", False,
                           percentile_ms(samples[quiver][i], p), peer, percentile_ms(samples[feast_name][i], p))
    report.note("online", "Over the network on both sides: Quiver through pyarrow.flight (the SQL text as the "
                "ticket: one DoGet round trip) against Feast's HTTP feature server (`feast serve`, one "
                "keep-alive connection, JSON). In process for Feast: get_online_features in this Python "
                "process (sqlite, no network) against Quiver through ADBC (a prepared statement: bind, "
                "execute, fetch, several gRPC round trips on loopback)")
    for c in (one_cur, many_cur, cur):
        c.close()


def bench_predict(report, cur, rows, repeat, model: Path):
    import onnxruntime as ort

    x = np.random.default_rng(3).normal(size=(rows, 64)).astype(np.float32)
    values = pa.array(x.reshape(-1))
    offsets = pa.array(np.arange(0, rows * 64 + 1, 64, dtype=np.int32))
    table = pa.table({"features": pa.ListArray.from_arrays(offsets, values)})
    cur.adbc_ingest("predict_rows", reader_of(table, 32_768), mode="create")
    del table, values

    def quiver():
        cur.execute("SELECT sum(predict('mlp', features)) AS s FROM predict_rows")
        return cur.fetch_arrow_table().column(0)[0].as_py()

    best, median, qsum = timed(quiver, repeat)

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    session.run(None, {"features": x[:ORT_BATCH]})

    def onnx():
        total = 0.0
        for start in range(0, rows, ORT_BATCH):
            total += float(session.run(None, {"features": x[start:start + ORT_BATCH]})[0].sum(dtype=np.float64))
        return total

    obest, omedian, osum = timed(onnx, repeat)
    report.note("predict", f"Quiver: best {best:.3f} s, median {median:.3f} s; onnxruntime: best {obest:.3f} s, median {omedian:.3f} s")
    rel = abs(qsum - osum) / max(abs(osum), 1e-30)
    report.note("predict", f"check: sum of scores Quiver {qsum:.6f}, onnxruntime {osum:.6f} (relative difference {rel:.1e})")
    report.add("predict", f"predict MLP 64-256-128-1, {rows:,} rows", "M rows/s", True, rows / best / 1e6,
               f"onnxruntime {ort.__version__}, 2 threads", rows / obest / 1e6)



# ---------------------------------------------------------------------------------------------
# Output


def print_table(report: Report) -> str:
    header = ["benchmark", "metric", "unit", "Quiver", "peer", "peer value", "Quiver/peer", "better is", "verdict"]
    lines = [header]
    for r in report.rows:
        lines.append([r.bench, r.metric, r.unit, fmt(r.quiver), r.peer_name, fmt(r.peer), f"{r.ratio:.2f}",
                      "higher" if r.higher_is_better else "lower", r.verdict()])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines)
    print(text)
    return text


def write_markdown(report: Report, out: Path, context: list[str], command: str) -> Path:
    md = ["# Quiver vs peers", "", *[f"- {c}" for c in context], f"- command: `{command}`", "",
          "| benchmark | metric | Quiver | peer | peer value | Quiver / peer | better is | verdict |",
          "|---|---|---|---|---|---|---|---|"]
    for r in report.rows:
        md.append(f"| {r.bench} | {r.metric} ({r.unit}) | {fmt(r.quiver)} | {r.peer_name} | {fmt(r.peer)} | "
                  f"{r.ratio:.2f} | {'higher' if r.higher_is_better else 'lower'} | {r.verdict()} |")
    for bench, notes in report.notes.items():
        md += ["", f"**{bench}**", ""] + [f"- {n}" for n in notes]
    path = out / "peers.md"
    path.write_text("\n".join(md) + "\n")
    return path


def write_charts(report: Report, out: Path, subtitle: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for bench in dict.fromkeys(r.bench for r in report.rows):
        rows = [r for r in report.rows if r.bench == bench]
        ncols = 2 if len(rows) == 4 else min(len(rows), 4)
        nrows = (len(rows) + ncols - 1) // ncols
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols + 0.8, 3.4 * nrows + 0.6), squeeze=False)
        for ax, r in zip(axes.flat, rows):
            peer_label = r.peer_name.split(" (")[0].replace(" from memory", "\nfrom memory")
            bars = ax.bar(["Quiver", peer_label.replace(" HTTP", "\nHTTP").replace(" SDK", "\nSDK")],
                          [r.quiver, r.peer], color=["#2f6db3", "#9a9a9a"])
            ax.bar_label(bars, labels=[fmt(r.quiver), fmt(r.peer)], padding=2, fontsize=9)
            ax.set_title(f"{r.metric}\n{r.unit}, {'higher' if r.higher_is_better else 'lower'} is better", fontsize=9)
            ax.margins(y=0.18)
            ax.tick_params(axis="x", labelsize=8)
            ax.set_xlabel(r.verdict(), fontsize=9)
        peers = " and ".join(dict.fromkeys(r.peer_name for r in rows))
        fig.suptitle(f"{bench}: Quiver vs {peers}\n{subtitle}", fontsize=9)
        fig.tight_layout()
        path = out / f"peers-{bench}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="rows of interactions")
    parser.add_argument("--users", type=int, help="distinct users (default: min(100000, events / 20))")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows scored by predict")
    parser.add_argument("--lookups", type=int, default=2_000, help="measured lookups per kind (plus 10 %% warm-up)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each throughput measurement (best is reported)")
    parser.add_argument("--chunk", type=int, default=CHUNK, help="rows per batch of the in-memory Flight server")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma list of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--duckdb-read", choices=["delta_scan", "parquet"], default="delta_scan",
                        help="how DuckDB reads the Delta table (see the docstring)")
    parser.add_argument("--out", type=Path, help="directory for the PNG charts and peers.md (default: a new temp dir)")
    parser.add_argument("--binary", default=os.environ.get("QUIVER_BIN", "target/release/quiver"))
    args = parser.parse_args()
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(only) - set(BENCHMARKS)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))} (choose from {', '.join(BENCHMARKS)})")
    users = args.users or max(1, min(100_000, args.events // 20))
    out = args.out or Path(tempfile.mkdtemp(prefix="quiver-peers-"))
    out.mkdir(parents=True, exist_ok=True)
    command = "tests/bench/run.sh peers" + ("" if len(sys.argv) == 1 else " " + shlex.join(sys.argv[1:]))

    import adbc_driver_flightsql.dbapi as dbapi

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    context = [
        f"machine: {os.cpu_count()} cores ({cpu}), {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
        f"Python {platform.python_version()}; client and server on the same cores",
        f"binary: {args.binary} ({quiver_version(args.binary)})",
        f"data: interactions {args.events:,} events, {users:,} users, {args.items:,} items, {DAYS} days before {NOW} UTC; "
        f"predict {args.rows:,} rows; {args.lookups:,} lookups; best of {args.repeat}",
    ]
    for c in context:
        print(c)
    print(f"benchmarks: {', '.join(only)}", flush=True)

    report = Report()
    events = make_events(args.events, users, args.items)
    nbytes = events.nbytes
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        warehouse, sql_dir, models_dir = tmp / "wh", tmp / "sql", tmp / "models"
        models_dir.mkdir()
        write_view(sql_dir)
        if "predict" in only:
            from models_bench import generate

            generate(tmp / "gen", items=16, dim=8, users=16)
            shutil.move(tmp / "gen" / "mlp", models_dir / "mlp")
        server = Server(args.binary, warehouse, sql_dir, models_dir, tmp / "quiver.log")
        try:
            time.sleep(1.0)  # let the allocator settle before reading idle RSS
            idle = server.rss("VmRSS")
            with dbapi.connect(server.uri, autocommit=True) as conn:
                cur = conn.cursor()
                print(f"\ningest: {args.events:,} events ({nbytes / 1e6:.0f} MB in Arrow) into Quiver", flush=True)
                t0 = time.perf_counter()
                cur.adbc_ingest("interactions", reader_of(events), mode="create")
                first_ingest = time.perf_counter() - t0
                delta_path = str(warehouse / "public" / "interactions")
                for bench in BENCHMARKS:
                    if bench not in only:
                        continue
                    print(f"\n{bench} ...", flush=True)
                    t0 = time.perf_counter()
                    if bench == "ingest":
                        bench_ingest(report, cur, events, tmp, args.repeat, first_ingest)
                    elif bench == "doget":
                        bench_doget(report, server.uri, delta_path, nbytes, args.events, args.repeat, args.chunk)
                    elif bench == "features":
                        bench_features(report, cur, delta_path, args.events, args.repeat, args.duckdb_read)
                    elif bench == "online":
                        bench_online(report, conn, server.uri, tmp, args.lookups, users)
                    elif bench == "predict":
                        bench_predict(report, cur, args.rows, args.repeat, models_dir / "mlp" / "model.onnx")
                    print(f"  ({time.perf_counter() - t0:.1f} s)", flush=True)
                cur.close()
            peak = server.rss("VmHWM")
        except BaseException:
            print(f"quiver serve log (tail):\n{server.tail()}", file=sys.stderr)
            raise
        finally:
            server.stop()

    print()
    print_table(report)
    rss = f"server RSS: idle {idle / 1024:.1f} MiB, peak (VmHWM) over the run {peak / 1024:.1f} MiB"
    print()
    print(rss)
    context.append(rss)
    md = write_markdown(report, out, context, command)
    charts = write_charts(report, out, f"{os.cpu_count()} cores; {args.events:,} events, {args.rows:,} predict rows")
    print(f"\nwritten: {md}")
    for path in charts:
        print(f"written: {path}")
    print(f"reproduce: {command}")


if __name__ == "__main__":
    main()
