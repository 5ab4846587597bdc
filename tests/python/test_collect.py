"""The HTTP collector (`POST /v1/ingest/{table}`) as stock log shippers use it.

Each shipper's request is sent byte for byte as its source builds it (method, headers, body shape,
compression; see the README's configs): Logstash's `http` output with `format => "json_batch"` (a
JSON array, `application/json`, gzip), Vector's `http` sink with the JSON codec and newline framing
(NDJSON without a final newline, `application/x-ndjson`, gzip, `Accept-Encoding: identity`), Fluent
Bit's `http` output with `Format json_lines` (NDJSON with a final newline and its `date` key). Then
what the collector promises: the commit exists before the 200, rows that do not fit go to
`public.dead_letters`, an `Idempotency-Key` lands once across a restart, a busy server answers 429
with `Retry-After` and a shipper that retries (as all three do on 429 and 5xx) lands everything
exactly once, and refusals carry the status shippers act on and a message naming the problem.
"""

import base64
import concurrent.futures
import datetime
import gzip
import http.client
import json
import time
import urllib.parse
import zlib

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as dbapi
import pytest
import zstandard
from conftest import Server
from helpers import commits, rows

HTTP = ["--http-listen", "127.0.0.1:0"]

EVENTS = "CREATE TABLE {name} (user_id BIGINT NOT NULL, item_id BIGINT, event VARCHAR, ts TIMESTAMP)"


def post(server, path, body: bytes, headers: dict) -> tuple[int, dict, dict]:
    """One request as a shipper sends it: exactly these headers (plus Host and Content-Length)."""
    url = urllib.parse.urlparse(server.http)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        text = response.read().decode()
        answer = json.loads(text) if text else {}
        return response.status, {k.lower(): v for k, v in response.getheaders()}, answer
    finally:
        conn.close()


def connect(server, token):
    return dbapi.connect(
        server.uri,
        db_kwargs={adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"},
        autocommit=True,
    )


def execute(server, token, sql):
    with connect(server, token) as conn, conn.cursor() as cur:
        cur.execute(sql)
        cur.fetchall()


def select(server, token, sql):
    with connect(server, token) as conn:
        return rows(conn, sql)


@pytest.fixture(scope="module")
def collector(tmp_path_factory, auth_file):
    path, tokens = auth_file
    server = Server(tmp_path_factory.mktemp("warehouse"), args=[*HTTP, "--auth-file", str(path)])
    assert server.http, "the server printed no HTTP address"
    server.token = tokens["read_write"]
    server.read_token = tokens["read"]
    yield server
    assert server.stop() == 0


def events(n, start=0):
    return [{"user_id": start + i, "item_id": 100 + i, "event": "click", "ts": f"2026-12-05T10:00:{i % 60:02d}.250Z"} for i in range(n)]


def logstash(server, table, batch):
    """Logstash 8's http output, json_batch with http_compression (logstash-output-http)."""
    body = json.dumps([{**e, "@timestamp": "2026-12-05T10:00:00.000Z", "@version": "1", "host": {"name": "web-1"}, "message": "GET /"} for e in batch]).encode()
    headers = {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Connection": "Keep-Alive",
        "User-Agent": "Manticore 0.9.1",
        "Authorization": f"Bearer {server.token}",
    }
    return post(server, f"/v1/ingest/{table}", gzip.compress(body), headers)


def vector(server, table, batch):
    """Vector's http sink: codec json, newline_delimited framing (no final newline), gzip."""
    lines = [json.dumps({**e, "host": "web-1", "source_type": "file", "timestamp": "2026-12-05T10:00:00Z"}) for e in batch]
    body = "\n".join(lines).encode()
    headers = {
        "Content-Type": "application/x-ndjson",
        "Content-Encoding": "gzip",
        "Accept-Encoding": "identity",
        "User-Agent": "Vector/0.48.0 (x86_64-unknown-linux-gnu)",
        "Authorization": f"Bearer {server.token}",
    }
    return post(server, f"/v1/ingest/{table}", gzip.compress(body), headers)


def fluent_bit(server, table, batch, compress=gzip.compress, encoding="gzip"):
    """Fluent Bit's http output, Format json_lines: its date key first (json_date_format double),
    one object per line, each ending in a newline."""
    body = "".join(json.dumps({"date": 1764928800.25, **e}) + "\n" for e in batch).encode()
    headers = {
        "Content-Type": "application/x-ndjson",
        "Content-Encoding": encoding,
        "User-Agent": "Fluent-Bit",
        "Connection": "keep-alive",
        "Authorization": f"Bearer {server.token}",
    }
    return post(server, f"/v1/ingest/{table}", compress(body), headers)


def zstd_fluent_bit(server, table, batch):
    return fluent_bit(server, table, batch, zstandard.ZstdCompressor().compress, "zstd")


def deflate_fluent_bit(server, table, batch):
    """The same lines with `Content-Encoding: deflate` (HTTP's deflate is zlib-wrapped)."""
    return fluent_bit(server, table, batch, zlib.compress, "deflate")


@pytest.mark.parametrize(
    "shipper", [logstash, vector, fluent_bit, zstd_fluent_bit, deflate_fluent_bit], ids=lambda s: s.__name__
)
def test_each_shippers_request_lands_in_one_commit(collector, shipper):
    table = f"shipped_{shipper.__name__}"
    execute(collector, collector.token, EVENTS.format(name=table))
    status, headers, answer = shipper(collector, f"public.{table}", events(3))
    assert status == 200, answer
    assert headers["content-type"] == "application/json"
    assert answer["rows"] == 3 and answer["rejected"] == 0
    # The answer names the commit that holds the rows: it exists when the 200 arrives.
    assert answer["version"] == commits(collector, table) - 1
    got = select(collector, collector.token, f"SELECT user_id, item_id, event, ts FROM {table} ORDER BY user_id")
    # TIMESTAMP is Delta's timestamp_ntz: the RFC 3339 instant, in UTC.
    assert got == [
        {"user_id": i, "item_id": 100 + i, "event": "click", "ts": datetime.datetime(2026, 12, 5, 10, 0, i, 250_000)}
        for i in range(3)
    ]


def test_rows_that_do_not_fit_go_to_the_dead_letter_table(collector):
    execute(collector, collector.token, EVENTS.format(name="mixed"))
    good = events(2)
    bad = [
        '{"user_id": "not a number", "event": "click"}',
        '{"item_id": 5, "event": "no user"}',
        "this is not json",
        '[1, 2, 3]',
    ]
    body = "\n".join([json.dumps(good[0]), *bad, json.dumps(good[1])]).encode()
    status, _, answer = post(collector, "/v1/ingest/mixed", body, {"Content-Type": "application/x-ndjson", "Authorization": f"Bearer {collector.token}"})
    assert status == 200, answer
    assert answer["rows"] == 2 and answer["rejected"] == 4
    assert select(collector, collector.token, "SELECT user_id FROM mixed ORDER BY user_id") == [{"user_id": 0}, {"user_id": 1}]
    letters = select(
        collector,
        collector.token,
        "SELECT target_table, source, payload, error, topic, received_at IS NOT NULL AS stamped FROM public.dead_letters WHERE target_table = 'public.mixed' ORDER BY payload",
    )
    assert sorted(r["payload"] for r in letters) == sorted(bad)
    assert all(r["source"] == "http" and r["topic"] is None and r["stamped"] for r in letters)
    by_payload = {r["payload"]: r["error"] for r in letters}
    assert "user_id" in by_payload['{"item_id": 5, "event": "no user"}'], by_payload
    assert "JSON object" in by_payload["[1, 2, 3]"], by_payload


def test_an_idempotency_key_lands_once_across_a_restart(tmp_path, auth_file):
    path, tokens = auth_file
    warehouse = tmp_path / "warehouse"
    server = Server(warehouse, args=[*HTTP, "--auth-file", str(path)])
    server.token = tokens["read_write"]
    execute(server, server.token, EVENTS.format(name="once"))
    body = "\n".join([*(json.dumps(e) for e in events(5)), "not json"]).encode()
    headers = {"Content-Type": "application/x-ndjson", "Authorization": f"Bearer {server.token}", "Idempotency-Key": "batch-0001"}
    status, _, first = post(server, "/v1/ingest/once", body, headers)
    assert status == 200 and first["rows"] == 5 and first["rejected"] == 1, first
    status, _, again = post(server, "/v1/ingest/once", body, headers)
    assert status == 200 and again.get("duplicate") is True and again["rows"] == 0, again
    assert server.stop() == 0

    server = Server(warehouse, args=[*HTTP, "--auth-file", str(path)])
    server.token = tokens["read_write"]
    try:
        status, _, after_restart = post(server, "/v1/ingest/once", body, headers)
        assert status == 200 and after_restart.get("duplicate") is True, after_restart
        # Another key is another request.
        status, _, other = post(server, "/v1/ingest/once", body, {**headers, "Idempotency-Key": "batch-0002"})
        assert status == 200 and other["rows"] == 5, other
        assert select(server, server.token, "SELECT count(*) AS n FROM once") == [{"n": 10}]
        assert select(server, server.token, "SELECT count(*) AS n FROM dead_letters WHERE target_table = 'public.once'") == [{"n": 2}]
    finally:
        assert server.stop() == 0


def test_refusals_carry_the_status_shippers_act_on(collector):
    execute(collector, collector.token, EVENTS.format(name="guarded"))
    body = json.dumps(events(1)[0]).encode()
    auth = {"Authorization": f"Bearer {collector.token}"}

    status, headers, answer = post(collector, "/v1/ingest/guarded", body, {})
    assert status == 401 and "www-authenticate" in headers and "credentials" in answer["error"]
    status, _, answer = post(collector, "/v1/ingest/guarded", body, {"Authorization": "Bearer wrong"})
    assert status == 401, answer
    status, _, answer = post(collector, "/v1/ingest/guarded", body, {"Authorization": f"Bearer {collector.read_token}"})
    assert status == 403 and "read_write" in answer["error"], answer
    status, _, answer = post(collector, "/v1/ingest/nowhere", body, auth)
    assert status == 404 and "nowhere" in answer["error"], answer
    status, _, answer = post(collector, "/v1/ingest/a.b.c", body, auth)
    assert status == 400 and "table name" in answer["error"], answer
    status, _, answer = post(collector, "/v1/ingest/guarded", body, {**auth, "Content-Encoding": "br"})
    assert status == 415 and "br" in answer["error"], answer
    status, _, answer = post(collector, "/v1/ingest/guarded", b"garbage", {**auth, "Content-Encoding": "gzip"})
    assert status == 400 and "gzip" in answer["error"].lower(), answer
    status, _, answer = post(collector, "/v1/ingest/guarded", b'[{"user_id": 1}, ', {**auth, "Content-Type": "application/json"})
    assert status == 400 and "never closed" in answer["error"], answer
    # A user of role read_write logs in with Basic, as Logstash's user/password and Fluent Bit's
    # http_User/http_Passwd send it.
    basic = base64.b64encode(b"writer:w-pass").decode()
    status, _, answer = post(collector, "/v1/ingest/guarded", body, {"Authorization": f"Basic {basic}"})
    assert status == 200 and answer["rows"] == 1, answer
    basic = base64.b64encode(b"reader:r-pass").decode()
    status, _, answer = post(collector, "/v1/ingest/guarded", body, {"Authorization": f"Basic {basic}"})
    assert status == 403, answer
    # Nothing refused was written.
    assert select(collector, collector.token, "SELECT count(*) AS n FROM guarded") == [{"n": 1}]


def test_a_body_over_the_upload_limit_is_413(tmp_path):
    server = Server(tmp_path / "warehouse", args=[*HTTP, "--max-upload-size", "64KiB"])
    try:
        execute(server, "unused", EVENTS.format(name="small"))
        big = "\n".join(json.dumps(e) for e in events(2000)).encode()
        assert len(big) > 64 * 1024
        status, _, answer = post(server, "/v1/ingest/small", big, {})
        assert status == 413 and "max-upload-size" in answer["error"], answer
        # A small gzip body that inflates past the limit is refused the same way.
        status, _, answer = post(server, "/v1/ingest/small", gzip.compress(big), {"Content-Encoding": "gzip"})
        assert len(gzip.compress(big)) < 64 * 1024
        assert status == 413, answer
        status, _, answer = post(server, "/v1/ingest/small", big[:10_000].rsplit(b"\n", 1)[0], {})
        assert status == 200 and answer["rows"] > 0, answer
    finally:
        assert server.stop() == 0


def test_a_busy_server_answers_429_and_retrying_shippers_land_everything_once(tmp_path):
    """Eight shippers at once against a server that writes one request at a time: the others get
    429 with Retry-After, retry as shippers do (each batch with its idempotency key), and every
    event lands exactly once."""
    server = Server(tmp_path / "warehouse", args=[*HTTP, "--max-concurrent-queries", "1"])
    try:
        execute(server, "unused", EVENTS.format(name="busy"))
        refused = []

        def ship(sender):
            for batch in range(5):
                start = (sender * 5 + batch) * 2000
                body = gzip.compress("\n".join(json.dumps(e) for e in events(2000, start)).encode())
                headers = {"Content-Encoding": "gzip", "Idempotency-Key": f"s{sender}-b{batch}"}
                while True:
                    status, got, answer = post(server, "/v1/ingest/busy", body, headers)
                    if status == 200:
                        break
                    assert status in (429, 503), answer
                    assert got["retry-after"] == "1"
                    refused.append(status)
                    # Shippers back off a second or more; a tenth keeps the test short.
                    time.sleep(0.1)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(ship, range(8)))
        assert refused, "no request was refused at a concurrency cap of 1"
        counted = select(server, "unused", "SELECT count(*) AS n, count(DISTINCT user_id) AS d FROM busy")
        assert counted == [{"n": 80_000, "d": 80_000}]
    finally:
        assert server.stop() == 0
