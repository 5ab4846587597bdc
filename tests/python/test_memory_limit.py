"""`--memory-limit` (QUIVER_MEMORY_LIMIT): queries share a bounded pool; sorts (and so the ASOF
join's inputs) spill to disk beyond it, and a query that cannot fit fails with ResourceExhausted while
the server keeps serving."""

import adbc_driver_flightsql.dbapi as dbapi
import adbc_driver_manager
import pytest
from conftest import Server
from helpers import rows


@pytest.fixture()
def limited(tmp_path):
    srv = Server(tmp_path / "warehouse", env={"QUIVER_MEMORY_LIMIT": "64MiB"})
    yield srv
    assert srv.stop() == 0


def test_asof_join_spills_under_the_limit_and_oversized_queries_fail_cleanly(limited):
    with dbapi.connect(limited.uri, autocommit=True) as conn:
        with conn.cursor() as cur:
            # 2M rows a side: the two sorts need far more than 64 MiB in memory.
            cur.execute(
                "CREATE TABLE big AS SELECT v AS user_id, v % 1000 AS ts FROM generate_series(1, 2000000) t(v)"
            )
        got = rows(
            conn,
            "SELECT count(*) AS n, count(f.ts) AS matched FROM big l ASOF JOIN big f "
            "MATCH_CONDITION (l.ts >= f.ts) ON l.user_id = f.user_id",
        )
        assert got == [{"n": 2_000_000, "matched": 2_000_000}]

        # Wide rows: even the sort's merge phase does not fit; the gRPC status is ResourceExhausted.
        with pytest.raises(adbc_driver_manager.Error) as info:
            rows(conn, "SELECT user_id, repeat('x', 200) || user_id AS pad FROM big ORDER BY pad LIMIT 1000000 OFFSET 10")
        assert "(ResourceExhausted;" in str(info.value), info.value
        assert "Resources exhausted" in str(info.value), info.value
        assert rows(conn, "SELECT 1 AS one") == [{"one": 1}]


def test_bad_memory_limit_is_a_clear_startup_error(tmp_path):
    with pytest.raises(RuntimeError, match="--memory-limit"):
        Server(tmp_path / "warehouse", env={"QUIVER_MEMORY_LIMIT": "lots"})
