"""Feature views end to end through ADBC: loading view files, REFRESH (full, incremental, after a
restart, on a schedule), online lookups with `= ?` and IN, online/offline consistency, and errors.

Each test runs its own server over its own warehouse and SQL directory (`--sql-dir`).
"""

import random
import time
from datetime import datetime, timedelta, timezone

import adbc_driver_flightsql.dbapi as dbapi
import adbc_driver_manager
import pyarrow as pa
import pytest
from conftest import Server
from helpers import ingest, rows

VIEW = """\
-- Clicks per user, as of the user's latest event.
-- @entity user_id
-- @event_time event_time
-- @ttl 30 days
-- @materialize offline, online
SELECT user_id, max(ts) AS event_time, count(*) AS events, sum(clicks) AS clicks
FROM events
GROUP BY user_id
"""

BROKEN = """\
-- @entity user_id
-- @event_time event_time
-- @tll 3 days
SELECT user_id, max(ts) AS event_time FROM events GROUP BY user_id
"""

EVENTS = pa.schema([("user_id", pa.int64()), ("ts", pa.timestamp("us")), ("clicks", pa.int64())])


def events(rng: random.Random, users: int, count: int, now: datetime) -> pa.Table:
    data = {
        "user_id": [rng.randrange(users) for _ in range(count)],
        "ts": [now - timedelta(minutes=rng.randrange(60 * 24 * 20)) for _ in range(count)],
        "clicks": [rng.randrange(5) for _ in range(count)],
    }
    return pa.Table.from_pydict(data, schema=EVENTS)


def expected(table: pa.Table) -> dict[int, dict]:
    """The view computed in Python: per user, latest ts, number of events, sum of clicks."""
    out: dict[int, dict] = {}
    for r in table.to_pylist():
        o = out.setdefault(r["user_id"], {"event_time": r["ts"], "events": 0, "clicks": 0})
        o["event_time"] = max(o["event_time"], r["ts"])
        o["events"] += 1
        o["clicks"] += r["clicks"]
    return out


@pytest.fixture()
def sql_dir(tmp_path):
    views = tmp_path / "sql" / "features"
    views.mkdir(parents=True)
    (views / "user_clicks.sql").write_text(VIEW)
    (views / "broken.sql").write_text(BROKEN)
    return tmp_path / "sql"


def start(tmp_path, sql_dir, *args) -> Server:
    return Server(tmp_path / "warehouse", args=["--sql-dir", str(sql_dir), *args])


def refresh(conn, view="user_clicks") -> dict:
    [report] = rows(conn, f"REFRESH FEATURE VIEW {view}")
    return report


def lookup(conn, user_id) -> list[dict]:
    return rows(conn, "SELECT * FROM features.user_clicks WHERE user_id = ?", parameters=(user_id,))


def materialized_lookup(conn, user_id) -> list[dict]:
    """`lookup`, or [] while the view has not been materialized yet."""
    try:
        return lookup(conn, user_id)
    except adbc_driver_manager.ProgrammingError as e:
        assert "table not found: features.user_clicks" in str(e)
        return []


def naive(ts: datetime) -> datetime:
    return ts.replace(tzinfo=None) if ts.tzinfo else ts


def test_refresh_lookup_restart_and_consistency(tmp_path, sql_dir):
    rng = random.Random(7)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    first = events(rng, users=300, count=5000, now=now)
    server = start(tmp_path, sql_dir)
    try:
        with dbapi.connect(server.uri, autocommit=True) as conn:
            ingest(conn, "events", first, mode="create")
            report = refresh(conn)
            assert (report["mode"], report["entities"]) == ("full", len(expected(first)))

            # `= ?` in a prepared statement is answered from the index; EXPLAIN shows it.
            want = expected(first)
            for user in (0, 17, 299):
                [row] = lookup(conn, user)
                assert (row["events"], row["clicks"]) == (want[user]["events"], want[user]["clicks"])
                assert naive(row["event_time"]) == want[user]["event_time"]
            plan = rows(conn, "EXPLAIN SELECT * FROM features.user_clicks WHERE user_id = 5")
            assert "OnlineLookupExec: view=user_clicks" in plan[1]["plan"]
            assert lookup(conn, 100_000) == []

            # Consistency: for every key, the online answer is the offline row.
            offline = {
                r["user_id"]: r for r in rows(conn, "SELECT * FROM features.user_clicks WHERE user_id + 0 >= 0")
            }
            keys = ", ".join(str(k) for k in offline)
            online = {r["user_id"]: r for r in rows(conn, f"SELECT * FROM features.user_clicks WHERE user_id IN ({keys})")}
            assert online == offline
            assert len(online) == len(want)

            # `= ANY(?)` binds any number of keys as one list parameter; from the index, NULL and
            # unknown keys matching nothing.
            some = sorted(offline)[:50]
            keys = pa.record_batch([pa.array([some + [None, 10**9]], pa.list_(pa.int64()))], names=["keys"])
            listed = rows(conn, "SELECT * FROM features.user_clicks WHERE user_id = ANY(?)", parameters=keys)
            assert {r["user_id"]: r for r in listed} == {k: offline[k] for k in some}
            plan = rows(conn, "EXPLAIN SELECT * FROM features.user_clicks WHERE user_id = ANY([5, 6])")
            assert "OnlineLookupExec: view=user_clicks" in plan[1]["plan"]
    finally:
        assert server.stop() == 0

    # Appends while the server is down; the refresh after a restart is incremental: the state
    # (source versions) is in the view's Delta table, and the index was rebuilt at start.
    second = events(random.Random(8), users=20, count=200, now=now)
    server = start(tmp_path, sql_dir)
    try:
        with dbapi.connect(server.uri, autocommit=True) as conn:
            [before] = lookup(conn, 3)
            assert before["events"] == want[3]["events"]
            ingest(conn, "events", second, mode="append")
            report = refresh(conn)
            assert report["mode"] == "incremental", report
            assert report["entities"] == len(set(second.column("user_id").to_pylist()))
            want = expected(pa.concat_tables([first, second]))
            got = {r["user_id"]: r for r in rows(conn, "SELECT * FROM features.user_clicks")}
            assert {k: (v["events"], v["clicks"]) for k, v in got.items()} == {
                k: (v["events"], v["clicks"]) for k, v in want.items()
            }
            [after] = lookup(conn, 3)
            assert after["events"] == want[3]["events"]
            assert refresh(conn)["mode"] == "unchanged"
    finally:
        assert server.stop() == 0


def test_refresh_interval_and_ttl(tmp_path, sql_dir):
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    server = start(tmp_path, sql_dir, "--refresh-interval", "1s")
    try:
        with dbapi.connect(server.uri, autocommit=True) as conn:
            old = pa.Table.from_pydict(
                {"user_id": [1, 2], "ts": [now - timedelta(days=40), now - timedelta(days=1)], "clicks": [1, 1]},
                schema=EVENTS,
            )
            ingest(conn, "events", old, mode="create")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not materialized_lookup(conn, 2):
                time.sleep(0.2)
            assert lookup(conn, 2), "the scheduled refresh did not materialize the view"
            # User 1's latest event is older than the 30-day TTL: not served, online or offline.
            assert lookup(conn, 1) == []
            assert [r["user_id"] for r in rows(conn, "SELECT user_id FROM features.user_clicks")] == [2]

            ingest(conn, "events", pa.Table.from_pydict({"user_id": [1], "ts": [now], "clicks": [4]}, schema=EVENTS), mode="append")
            while time.monotonic() < deadline and not lookup(conn, 1):
                time.sleep(0.2)
            [row] = lookup(conn, 1)
            assert (row["events"], row["clicks"]) == (2, 5)
    finally:
        assert server.stop() == 0


def test_invalid_view_files_are_reported_and_others_load(tmp_path, sql_dir):
    server = start(tmp_path, sql_dir)
    try:
        with dbapi.connect(server.uri, autocommit=True) as conn:
            with pytest.raises(adbc_driver_manager.ProgrammingError) as error:
                refresh(conn, "broken")
            assert "broken.sql:3: unknown directive @tll" in str(error.value)
            # The good view loaded; its source is missing, which REFRESH says with the file.
            with pytest.raises(adbc_driver_manager.Error) as error:
                refresh(conn)
            assert "user_clicks.sql:6" in str(error.value) and "events" in str(error.value)
            with pytest.raises(adbc_driver_manager.Error) as error:
                refresh(conn, "nope")
            assert "feature view nope" in str(error.value)
    finally:
        assert server.stop() == 0
    assert "broken.sql:3: unknown directive @tll" in server.proc.stderr.read()


def test_reload_feature_views_fixes_a_broken_file_and_follows_a_changed_one(tmp_path, sql_dir):
    """RELOAD FEATURE VIEWS through ADBC: the broken file fixed becomes a view, a changed view is
    recomputed by its next refresh (full), and an ADBC prepared lookup sees the new rows."""
    server = start(tmp_path, sql_dir)
    try:
        with dbapi.connect(server.uri, autocommit=True) as conn:
            now = datetime.now(timezone.utc).replace(tzinfo=None)
            table = events(random.Random(3), 20, 200, now)
            ingest(conn, "events", table, "create")
            assert refresh(conn)["mode"] == "full"
            want = expected(table)
            assert lookup(conn, 4)[0]["clicks"] == want[4]["clicks"]
            # Unchanged files: nothing to report.
            assert rows(conn, "RELOAD FEATURE VIEWS") == []

            (sql_dir / "features" / "broken.sql").write_text(BROKEN.replace("@tll", "@ttl"))
            (sql_dir / "features" / "user_clicks.sql").write_text(
                VIEW.replace("sum(clicks) AS clicks", "sum(clicks) * 100 AS clicks"))
            report = {r["view"]: r for r in rows(conn, "RELOAD FEATURE VIEWS")}
            assert {v: r["action"] for v, r in report.items()} == {"broken": "loaded", "user_clicks": "reloaded"}
            assert all(r["error"] is None for r in report.values())
            assert lookup(conn, 4)[0]["clicks"] == want[4]["clicks"], "its table until the refresh"
            report = refresh(conn)
            assert (report["mode"], report["reason"]) == ("full", "the view's definition changed"), report
            assert lookup(conn, 4)[0]["clicks"] == 100 * want[4]["clicks"]
            assert refresh(conn, "broken")["mode"] == "full"
    finally:
        assert server.stop() == 0
