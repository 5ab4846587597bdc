"""A warehouse on S3: the server, `quiver sql` and Python `deltalake` sharing one bucket.

The bucket is served by moto's S3 server on 127.0.0.1 (a real HTTP S3 endpoint in-process, no
network). Credentials and the endpoint reach Quiver the way they reach any AWS tool: AWS_* variables.
moto honours `If-None-Match: *` like AWS S3 does, so Delta commits use the same put-if-absent path as
in production, and concurrent writers are really racing for the same commit file.

Every table name starts with `s3_`.
"""

import concurrent.futures
import os
import subprocess

import adbc_driver_flightsql.dbapi as dbapi
import adbc_driver_manager
import boto3
import deltalake
import pyarrow as pa
import pytest
from conftest import Server, _binary
from helpers import ingest, rows
from moto.server import ThreadedMotoServer

BUCKET = "quiver-warehouse"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 endpoint with an empty bucket; yields (environment for Quiver, boto3 client)."""
    endpoint_server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    endpoint_server.start()
    host, port = endpoint_server.get_host_and_port()
    env = {
        "AWS_ENDPOINT": f"http://{host}:{port}",
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "quiver-test",
        "AWS_SECRET_ACCESS_KEY": "quiver-test",
        "AWS_REGION": "us-east-1",
    }
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_REGION"],
    )
    client.create_bucket(Bucket=BUCKET)
    yield env, client
    endpoint_server.stop()


@pytest.fixture(scope="module")
def s3_server(s3):
    env, _ = s3
    srv = Server(f"s3://{BUCKET}/wh", env=env)
    yield srv
    assert srv.stop() == 0


@pytest.fixture()
def conn(s3_server):
    with dbapi.connect(s3_server.uri, autocommit=True) as c:
        yield c


def keys(client, prefix) -> list[str]:
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(obj["Key"] for obj in listed.get("Contents", []))


def storage_options(env) -> dict[str, str]:
    """The same settings for Python deltalake, under its names."""
    return {
        "AWS_ENDPOINT_URL": env["AWS_ENDPOINT"],
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
        "AWS_REGION": env["AWS_REGION"],
        "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
    }


# --- SQL and ingest on S3 -------------------------------------------------------------------------


def test_sql_writes_delta_commits_into_the_bucket(conn, s3):
    _, client = s3
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE s3_events (user_id BIGINT, item TEXT, day TEXT) PARTITIONED BY (day)")
        cur.execute("INSERT INTO s3_events VALUES (1, 'a', 'mon'), (2, 'b', 'tue')")
        cur.execute("INSERT INTO s3_events VALUES (3, 'c', 'mon')")
        cur.execute("DELETE FROM s3_events WHERE user_id = 2")
    assert rows(conn, "SELECT user_id, item, day FROM s3_events ORDER BY user_id") == [
        {"user_id": 1, "item": "a", "day": "mon"},
        {"user_id": 3, "item": "c", "day": "mon"},
    ]
    assert rows(conn, "SELECT count(*) AS n FROM s3_events VERSION AS OF 1") == [{"n": 2}]

    objects = keys(client, "wh/public/s3_events/")
    log = [k for k in objects if k.startswith("wh/public/s3_events/_delta_log/") and k.endswith(".json")]
    assert [k.rsplit("/", 1)[1] for k in log] == [f"{v:020}.json" for v in range(4)]
    assert any(k.startswith("wh/public/s3_events/day=mon/") and k.endswith(".parquet") for k in objects)


def test_adbc_ingest_modes_on_s3(conn):
    first = pa.table({"id": pa.array([1, 2], pa.int64()), "v": pa.array([0.5, 1.5])})
    more = pa.table({"id": pa.array([3], pa.int64()), "v": pa.array([2.5])})
    assert ingest(conn, "s3_ingest", first, "create") == 2
    assert ingest(conn, "s3_ingest", more, "append") == 1
    assert rows(conn, "SELECT id FROM s3_ingest ORDER BY id") == [{"id": 1}, {"id": 2}, {"id": 3}]
    assert ingest(conn, "s3_ingest", more, "replace") == 1
    assert rows(conn, "SELECT id, v FROM s3_ingest") == [{"id": 3, "v": 2.5}]
    with pytest.raises(adbc_driver_manager.ProgrammingError, match="s3_ingest"):
        ingest(conn, "s3_ingest", first, "create")


def test_schemas_show_tables_and_drop_on_s3(conn, s3):
    _, client = s3
    with conn.cursor() as cur:
        cur.execute("CREATE SCHEMA s3_feats")
        cur.execute("CREATE TABLE s3_feats.s3_users AS SELECT 7 AS user_id, 'x' AS segment")
    tables = rows(conn, "SELECT table_schema, table_name FROM information_schema.tables WHERE table_name LIKE 's3_%'")
    assert {"table_schema": "s3_feats", "table_name": "s3_users"} in tables
    assert rows(conn, "SELECT user_id, segment FROM s3_feats.s3_users") == [{"user_id": 7, "segment": "x"}]
    with conn.cursor() as cur:
        cur.execute("DROP TABLE s3_feats.s3_users")
    assert keys(client, "wh/s3_feats/s3_users/") == []
    with pytest.raises(adbc_driver_manager.Error, match="s3_users"):
        rows(conn, "SELECT * FROM s3_feats.s3_users")


def test_concurrent_appends_all_land_once(s3_server, conn):
    """Four clients append at once: every commit races for the same log entry; delta-rs retries."""
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE s3_race (writer BIGINT, n BIGINT)")

    def append(writer: int) -> None:
        with dbapi.connect(s3_server.uri, autocommit=True) as own:
            for n in range(3):
                ingest(own, "s3_race", pa.table({"writer": [writer], "n": [n]}), "append")

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(append, range(4)))
    got = rows(conn, "SELECT writer, n FROM s3_race ORDER BY writer, n")
    assert got == [{"writer": w, "n": n} for w in range(4) for n in range(3)]


# --- Another writer and reader: Python deltalake on the same bucket -------------------------------


def test_python_deltalake_reads_what_quiver_wrote(conn, s3):
    env, _ = s3
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE s3_for_python AS SELECT * FROM (VALUES (1, 'a'), (2, 'b')) AS t(id, name)")
    table = deltalake.DeltaTable(f"s3://{BUCKET}/wh/public/s3_for_python", storage_options=storage_options(env))
    assert table.to_pyarrow_table().sort_by("id").to_pylist() == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def test_quiver_sees_a_table_python_deltalake_wrote(conn, s3):
    env, _ = s3
    uri = f"s3://{BUCKET}/wh/public/s3_from_python"
    deltalake.write_deltalake(uri, pa.table({"k": [1, 2, 3]}), storage_options=storage_options(env))
    assert rows(conn, "SELECT sum(k) AS s FROM s3_from_python") == [{"s": 6}]
    deltalake.write_deltalake(uri, pa.table({"k": [4]}), mode="append", storage_options=storage_options(env))
    assert rows(conn, "SELECT sum(k) AS s FROM s3_from_python") == [{"s": 10}]


def test_external_table_elsewhere_in_the_bucket(conn, s3):
    env, _ = s3
    uri = f"s3://{BUCKET}/outside/clicks"
    deltalake.write_deltalake(uri, pa.table({"c": [5, 6]}), storage_options=storage_options(env))
    with conn.cursor() as cur:
        cur.execute(f"CREATE EXTERNAL TABLE s3_clicks STORED AS DELTA LOCATION '{uri}'")
    assert rows(conn, "SELECT sum(c) AS s FROM s3_clicks") == [{"s": 11}]


# --- Configuration errors --------------------------------------------------------------------------


def test_missing_bucket_fails_at_startup_naming_the_warehouse(s3):
    env, _ = s3
    result = subprocess.run(
        [_binary(), "sql", "SELECT 1", "--warehouse", "s3://no-such-bucket-here/wh"],
        env={**os.environ, **env, "RUST_BACKTRACE": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "--warehouse" in result.stderr and "no-such-bucket-here" in result.stderr, result.stderr


def test_unsupported_scheme_is_a_clear_error():
    result = subprocess.run(
        [_binary(), "sql", "SELECT 1", "--warehouse", "http://example.invalid/wh"],
        env={**os.environ, "RUST_BACKTRACE": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "cannot hold a warehouse" in result.stderr, result.stderr


# --- Transient store errors -----------------------------------------------------------------------


class FlakyProxy:
    """An HTTP proxy in front of the S3 endpoint that answers every `fail_every`-th request with
    503 Slow Down (as S3 does under load) and forwards the rest unchanged."""

    def __init__(self, upstream: str, fail_every: int):
        import http.client
        import http.server
        import threading
        import urllib.parse

        target = urllib.parse.urlparse(upstream)
        proxy = self
        self.requests = 0
        self.failed = 0
        lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with lock:
                    proxy.requests += 1
                    fail = proxy.requests % fail_every == 0
                    proxy.failed += fail
                if fail:
                    payload = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream_conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                upstream_conn.request(self.command, self.path, body=body, headers=headers)
                response = upstream_conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream_conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_transient_store_errors_are_retried_with_backoff(s3, tmp_path):
    env, client = s3
    proxy = FlakyProxy(env["AWS_ENDPOINT"], fail_every=3)
    flaky = {**env, "AWS_ENDPOINT": proxy.endpoint}
    try:
        srv = Server(f"s3://{BUCKET}/flaky", env=flaky)
        try:
            with dbapi.connect(srv.uri, autocommit=True) as c:
                with c.cursor() as cur:
                    cur.execute("CREATE TABLE s3_flaky AS SELECT * FROM (VALUES (1, 'a'), (2, 'b')) t(id, tag)")
                ingest(c, "s3_flaky", pa.table({"id": [3], "tag": ["c"]}), "append")
                assert rows(c, "SELECT id FROM s3_flaky ORDER BY id") == [{"id": 1}, {"id": 2}, {"id": 3}]
        finally:
            assert srv.stop() == 0
        assert proxy.failed >= 3, f"the proxy injected only {proxy.failed} failures"

        # With retries off, the same faults reach the client as Unavailable, naming the store error.
        result = subprocess.run(
            [_binary(), "sql", "SELECT count(*) FROM s3_flaky", "--warehouse", f"s3://{BUCKET}/flaky",
             "--store-max-retries", "0"],
            env={**os.environ, **flaky, "RUST_BACKTRACE": "0", "QUIVER_LOG": "off"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        failures_seen = result.returncode != 0
        # Every third request fails: a statement of several requests cannot get through unretried.
        assert failures_seen and ("503" in result.stderr or "Slow" in result.stderr), result.stderr
    finally:
        proxy.close()
