"""Operating Quiver as an SRE would: Prometheus metrics scraped from `/metrics` and parsed with the
reference client's parser, the statement history in `system.queries` over ADBC (errors, parameters,
bound, roles), and `/health` and `/ready` through a server's life (loading, serving, draining).

Every server here runs with `--http-listen 127.0.0.1:0`; its HTTP address is the line it prints first.
"""

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import adbc_driver_flightsql.dbapi as dbapi
import adbc_driver_manager
import pyarrow as pa
from pyarrow import flight
import pytest
from conftest import Server, _binary
from helpers import ingest, rows
from prometheus_client.parser import text_string_to_metric_families

HTTP = ["--http-listen", "127.0.0.1:0"]

VIEW = """\
-- @entity user_id
-- @event_time event_time
-- @materialize offline, online
SELECT user_id, max(ts) AS event_time, count(*) AS events FROM clicks GROUP BY user_id
"""


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(server) -> dict:
    """Every sample of `/metrics` by (name, labels), parsed as Prometheus parses it."""
    status, body = get(f"{server.http}/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: dict, after: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture()
def operated(tmp_path):
    """A server with the HTTP listener and one feature view over `clicks`."""
    views = tmp_path / "sql" / "features"
    views.mkdir(parents=True)
    (views / "user_clicks.sql").write_text(VIEW)
    server = Server(tmp_path / "warehouse", args=[*HTTP, "--sql-dir", str(tmp_path / "sql")])
    assert server.http, "the server printed no HTTP address"
    yield server
    assert server.stop() == 0


def clicks(n: int) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([i % 10 for i in range(n)], pa.int64()),
            "ts": pa.array([1_700_000_000_000_000 + i for i in range(n)], pa.timestamp("us")),
        }
    )


def test_metrics_move_by_what_clients_did(operated):
    before = scrape(operated)
    with dbapi.connect(operated.uri, autocommit=True) as conn:
        assert ingest(conn, "clicks", clicks(1000), mode="create") == 1000
        assert len(rows(conn, "SELECT * FROM clicks WHERE user_id < 3")) == 300
        assert len(rows(conn, "SELECT * FROM clicks LIMIT 5")) == 5
        with pytest.raises(adbc_driver_manager.ProgrammingError, match="no_such_table"):
            rows(conn, "SELECT * FROM no_such_table")
        [report] = rows(conn, "REFRESH FEATURE VIEW user_clicks")
        assert report["mode"] == "full"
        # An online lookup: a prepared statement answered from the view's index.
        assert rows(conn, "SELECT events FROM features.user_clicks WHERE user_id = ?", parameters=(3,)) == [
            {"events": 100}
        ]
    after = scrape(operated)

    # Statements by kind and status: two queries and the lookup ran; the bad one failed to plan.
    assert moved(before, after, "quiver_statements_total", kind="query", status="ok") == 3
    assert moved(before, after, "quiver_statements_total", kind="query", status="error") == 1
    assert moved(before, after, "quiver_statements_total", kind="ingest", status="ok") == 1
    assert moved(before, after, "quiver_statements_total", kind="command", status="ok") == 1
    # The histogram counts every statement the counter does.
    for kind, count in [("query", 4), ("ingest", 1), ("command", 1)]:
        assert moved(before, after, "quiver_statement_duration_seconds_count", kind=kind) == count
        assert moved(before, after, "quiver_statement_duration_seconds_bucket", kind=kind, le="+Inf") == count
    # Rows served: 300 + 5 from the queries, 1 from the lookup, 1 REFRESH report row.
    assert moved(before, after, "quiver_rows_served_total") == 307
    assert moved(before, after, "quiver_bytes_served_total") > 0
    assert moved(before, after, "quiver_rows_ingested_total", table="public.clicks") == 1000
    assert moved(before, after, "quiver_bytes_ingested_total", table="public.clicks") >= 1000 * 16
    # Commits: the ingest, and the view's table at its refresh.
    assert moved(before, after, "quiver_delta_commits_total", table="public.clicks") == 1
    assert moved(before, after, "quiver_delta_commits_total", table="features.user_clicks") == 1
    # The refresh, its duration, rows; the online index it built.
    assert moved(before, after, "quiver_feature_refreshes_total", view="user_clicks", mode="full", status="ok") == 1
    assert moved(before, after, "quiver_feature_refresh_duration_seconds_count", view="user_clicks", mode="full") == 1
    assert moved(before, after, "quiver_feature_refresh_rows_total", view="user_clicks") == 10
    assert value(after, "quiver_online_index_entries", view="user_clicks") == 10
    assert value(after, "quiver_online_index_bytes", view="user_clicks") > 0
    assert 0 <= value(after, "quiver_feature_view_age_seconds", view="user_clicks") < 60
    # RPCs by method and status: the failed query was refused at CreatePreparedStatement (DoAction).
    refused = [
        code
        for (name, labels) in after
        if name == "quiver_rpcs_total" and ("method", "DoAction") in labels
        for key, code in labels
        if key == "code" and code != "OK" and moved(before, after, name, **dict(labels)) > 0
    ]
    assert refused == ["NOT_FOUND"], refused
    assert moved(before, after, "quiver_rpcs_total", method="DoPut", code="OK") >= 1
    gets = moved(before, after, "quiver_rpcs_total", method="DoGet", code="OK")
    assert gets >= 4 and moved(before, after, "quiver_rpc_duration_seconds_count", method="DoGet") == gets
    # Nothing left running; the process's own figures are there.
    assert value(after, "quiver_statements_active") == 0
    assert value(after, "process_resident_memory_bytes") > 1_000_000
    assert value(after, "process_open_fds") > 0
    assert ("quiver_memory_pool_used_bytes", frozenset()) in after


def test_metric_labels_stay_bounded(operated):
    """Table names are client input: past a cap, new ones are counted under `other`."""
    with dbapi.connect(operated.uri, autocommit=True) as conn:
        for i in range(3):
            ingest(conn, f"bounded_{i}", clicks(2), mode="create")
    samples = scrape(operated)
    tables = {dict(labels).get("table") for (name, labels) in samples if name == "quiver_rows_ingested_total"}
    assert {"public.bounded_0", "public.bounded_1", "public.bounded_2"} <= tables
    # No label carries SQL text.
    assert not any("SELECT" in v for (_, labels) in samples for _, v in labels)


def test_system_queries_over_adbc(tmp_path):
    server = Server(tmp_path / "warehouse", args=[*HTTP, "--query-history", "5"])
    try:
        with dbapi.connect(server.uri, autocommit=True) as conn:
            ingest(conn, "history_t", clicks(20), mode="create")
            assert rows(conn, "SELECT count(*) AS n FROM history_t WHERE user_id = ?", parameters=(4,)) == [{"n": 2}]
            with pytest.raises(adbc_driver_manager.ProgrammingError):
                rows(conn, "SELEC broken")
            with conn.cursor() as cur:
                cur.execute("DELETE FROM history_t WHERE user_id = 9")
            history = rows(conn, "SELECT * FROM system.queries ORDER BY id")
            # The bound (5) keeps the newest; the reading statement itself is not in yet.
            assert len(history) == 4
            by_sql = {r["sql"]: r for r in history}
            ingested = by_sql["ingest into history_t"]
            assert (ingested["kind"], ingested["rows"], ingested["status"]) == ("ingest", 20, "ok")
            lookup = by_sql["SELECT count(*) AS n FROM history_t WHERE user_id = ?"]
            assert (lookup["kind"], lookup["rows"], lookup["status"]) == ("query", 1, "ok")
            # Parameters are never recorded: only the text with its placeholder.
            assert not any("4" in (r["error"] or "") + r["sql"].replace("count(*)", "") for r in history)
            failed = by_sql["SELEC broken"]
            assert failed["status"] == "error" and "SELEC" in failed["error"]
            deleted = by_sql["DELETE FROM history_t WHERE user_id = 9"]
            assert (deleted["kind"], deleted["rows"]) == ("dml", 2)
            for r in history:
                assert r["user"] == "anonymous" and r["role"] == "read_write"
                assert r["client_address"].startswith("127.0.0.1:")
                assert r["duration_ms"] >= 0 and r["started_at"] is not None
            # Bounded: three more statements push the oldest out.
            for _ in range(3):
                rows(conn, "SELECT 1 AS one")
            kept = rows(conn, "SELECT sql FROM system.queries ORDER BY id")
            assert len(kept) == 5 and kept[0]["sql"] != "ingest into history_t"
    finally:
        assert server.stop() == 0


def test_history_off_still_counts(tmp_path):
    server = Server(tmp_path / "warehouse", args=[*HTTP, "--query-history", "0"])
    try:
        with dbapi.connect(server.uri, autocommit=True) as conn:
            rows(conn, "SELECT 1 AS one")
            assert rows(conn, "SELECT * FROM system.queries") == []
        assert value(scrape(server), "quiver_statements_total", kind="query", status="ok") >= 2
    finally:
        assert server.stop() == 0


def test_health_and_ready_through_a_servers_life(tmp_path):
    """Loading: live but not ready (the warehouse's store answers nothing yet). Serving: ready.
    Draining (SIGTERM with a statement in flight): not ready, still live, until it exits."""
    # An S3 endpoint that accepts connections and never answers: opening the warehouse hangs.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    env = {
        **os.environ,
        "AWS_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}",
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_REGION": "us-east-1",
    }
    loading = subprocess.Popen(
        [_binary(), "serve", "--warehouse", "s3://nowhere/wh", "--listen", "127.0.0.1:0", *HTTP],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        line = loading.stdout.readline().strip()
        assert line.startswith("quiver http on "), line
        http = line.removeprefix("quiver http on ")
        assert get(f"{http}/health") == (200, "ok\n")
        status, body = get(f"{http}/ready")
        assert status == 503 and body.startswith("loading"), body
    finally:
        loading.kill()
        loading.wait()
        silent.close()

    server = Server(tmp_path / "warehouse", args=HTTP)
    assert get(f"{server.http}/ready") == (200, "ready\n")
    # A statement that runs for a while, in flight when SIGTERM comes.
    errors = []

    def slow():
        try:
            ticket = flight.Ticket(b"SELECT count(*) FROM range(20000000000) a")
            flight.connect(server.uri).do_get(ticket).read_all()
        except flight.FlightError as e:  # cancelled at the end of the drain
            errors.append(e)

    worker = threading.Thread(target=slow)
    worker.start()
    time.sleep(1.0)
    server.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status, body = get(f"{server.http}/ready")
        if status == 503:
            break
        time.sleep(0.05)
    assert (status, body) == (503, "draining: shutting down\n")
    assert get(f"{server.http}/health") == (200, "ok\n")
    assert server.proc.wait(timeout=30) == 0
    worker.join(timeout=30)
    # The statement outlived the drain and was cancelled, with an error, never a truncated result.
    assert len(errors) == 1, errors


def test_json_logs_carry_the_request_id(tmp_path):
    server = Server(tmp_path / "warehouse", args=["--log-format", "json", "--log", "warn,quiver=info"])
    try:
        with dbapi.connect(server.uri, autocommit=True) as conn:
            with pytest.raises(adbc_driver_manager.ProgrammingError):
                rows(conn, "SELECT * FROM nothing_here")
            [entry] = rows(conn, "SELECT id FROM system.queries WHERE status = 'error'")
    finally:
        assert server.stop() == 0
    lines = [json.loads(line) for line in server.proc.stderr.read().splitlines() if line.strip()]
    assert lines and all("level" in line and "fields" in line for line in lines)
    failed = [line for line in lines if line["fields"].get("message") == "statement failed"]
    assert [line["span"]["request_id"] for line in failed] == [entry["id"]], lines[-5:]
    assert failed[0]["fields"]["id"] == entry["id"] and "nothing_here" in failed[0]["fields"]["error"]


def test_the_compose_dashboard_reads_metrics_the_server_exports(operated):
    """docker/grafana/dashboards/quiver.json names only metrics Quiver defines (src/metrics.rs) or
    that a live server's /metrics shows (the process figures)."""
    import pathlib
    import re

    repo = pathlib.Path(__file__).resolve().parents[2]
    defined = set(re.findall(r'"(quiver_[a-z_]+)"', (repo / "src" / "metrics.rs").read_text()))
    exported = {name for (name, _) in scrape(operated)}
    dashboard = json.loads((repo / "docker" / "grafana" / "dashboards" / "quiver.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b((?:quiver|process)_[a-z_]+)", e)}
    unknown = [
        m
        for m in used
        if re.sub(r"_(bucket|count|sum)$", "", m) not in defined and m not in exported
    ]
    assert used and not unknown, unknown
    prometheus = (repo / "docker" / "prometheus.yml").read_text()
    assert "quiver:9090" in prometheus and "/metrics" in prometheus


def test_statements_are_appended_to_the_audit_table(tmp_path):
    """--audit-table: every recorded statement reaches a Delta table, every 5 s and at shutdown,
    with more history than system.queries keeps in memory."""
    from deltalake import DeltaTable

    server = Server(tmp_path / "warehouse", args=["--audit-table", "audit.queries", "--query-history", "2"])
    try:
        with dbapi.connect(server.uri, autocommit=True) as conn:
            for i in range(4):
                rows(conn, f"SELECT {i} AS audited_{i}")
            with pytest.raises(adbc_driver_manager.ProgrammingError):
                rows(conn, "SELECT * FROM not_audited_table")
            # Appended while serving, within an interval or two.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    [row] = rows(conn, "SELECT count(*) AS n FROM audit.queries")
                    if row["n"] >= 5:
                        break
                except adbc_driver_manager.ProgrammingError:
                    pass  # not created yet
                time.sleep(0.5)
            assert row["n"] >= 5
            rows(conn, "SELECT 'the last one' AS last")
    finally:
        assert server.stop() == 0
    # At shutdown the last statements are appended too; Delta readers see the table.
    audit = DeltaTable(str(tmp_path / "warehouse" / "audit" / "queries")).to_pyarrow_table().to_pylist()
    sqls = [r["sql"] for r in audit]
    assert all(f"SELECT {i} AS audited_{i}" in sqls for i in range(4)), sqls
    assert "SELECT 'the last one' AS last" in sqls
    [failed] = [r for r in audit if "not_audited_table" in r["sql"]]
    assert failed["status"] == "error" and "not_audited_table" in failed["error"]
    assert failed["user"] == "anonymous"
    assert len(set(r["id"] for r in audit)) == len(audit), "a statement was appended twice"


def test_statement_phases_are_exported_over_otlp(tmp_path):
    """--otlp-endpoint: spans reach a real OTLP/gRPC trace receiver (the OpenTelemetry protocol's
    own service definition): the RPC, and a statement's plan, execute and commit phases."""
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received = []

    class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            for resource_spans in request.resource_spans:
                service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    received.extend((service.get("service.name"), span) for span in scope.spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    receiver = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), receiver)
    port = receiver.add_insecure_port("127.0.0.1:0")
    receiver.start()
    try:
        server = Server(tmp_path / "warehouse", args=["--otlp-endpoint", f"http://127.0.0.1:{port}"])
        try:
            with dbapi.connect(server.uri, autocommit=True) as conn:
                ingest(conn, "traced", clicks(10), mode="create")
                assert len(rows(conn, "SELECT * FROM traced WHERE user_id = 1")) == 1
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO traced SELECT * FROM traced")
        finally:
            # Spans still batched are exported before the process exits.
            assert server.stop() == 0
    finally:
        receiver.stop(grace=None)
    names = [span.name for _, span in received]
    assert {"rpc", "plan", "execute", "commit"} <= set(names), names
    assert {service for service, _ in received} == {"quiver"}
    # Phases are children of the RPC that ran them, in one trace.
    by_id = {span.span_id: span for _, span in received}
    for _, span in received:
        if span.name in ("plan", "execute"):
            parent = by_id.get(span.parent_span_id)
            assert parent is not None and span.trace_id == parent.trace_id, span.name


def test_a_bad_otlp_endpoint_is_named(tmp_path):
    done = subprocess.run(
        [_binary(), "serve", "--warehouse", str(tmp_path / "w"), "--listen", "127.0.0.1:0", "--otlp-endpoint", "localhost:4317"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "--otlp-endpoint" in done.stderr and "http://" in done.stderr, done.stderr
