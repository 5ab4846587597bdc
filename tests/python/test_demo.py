"""`quiver demo` as a new user meets it: it prepares a shop, prints three snippets, and the snippets,
pasted into Python as printed, work. A second start on the same warehouse reuses the data."""

import contextlib
import io
import os
import re
import signal
import subprocess
import sys

import adbc_driver_flightsql.dbapi as dbapi
from conftest import REPO, _binary
from helpers import commits, rows

# Small enough for a debug build; the committed models/demo serve it (its ids are in their range).
SIZE = ["--events", "30000", "--users", "500", "--items", "200"]
LAST_LINE = "Ctrl-C stops the server"


class Demo:
    def __init__(self, tmp_path, *args):
        self.warehouse = tmp_path / "warehouse"
        self.log = open(tmp_path / "demo.log", "a")
        self.proc = subprocess.Popen(
            [_binary(), "demo", "--warehouse", str(self.warehouse), "--listen", "127.0.0.1:0", *args],
            cwd=REPO,  # the README's command runs from the repository: ./sql and ./models/demo
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            # The demo's default log level: what a newcomer sees.
            env={k: v for k, v in os.environ.items() if k != "QUIVER_LOG"},
        )
        lines = []
        for line in self.proc.stdout:
            lines.append(line)
            if line.startswith(LAST_LINE):
                break
        self.output = "".join(lines)
        match = re.search(r"quiver listening on (grpc://\S+)", self.output)
        assert match, f"the demo did not start: {self.output}"
        self.uri = match.group(1)

    def snippets(self) -> list[str]:
        """The printed code blocks: from each '# N.' line to the next blank line."""
        return re.findall(r"^(# \d\..*?)\n\n", self.output, flags=re.S | re.M)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.log.close()
        return code


def run_snippets(snippets: list[str]) -> list[str]:
    """Runs the snippets one after the other in one namespace, as pasted into one Python session."""
    namespace, printed = {}, []
    for snippet in snippets:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(snippet, "<snippet>", "exec"), namespace)
        printed.append(out.getvalue())
    namespace["cur"].close()
    return printed


def test_demo_serves_its_snippets_and_reuses_its_data(tmp_path):
    demo = Demo(tmp_path, *SIZE)
    try:
        assert "interactions: 30000 rows generated and written" in demo.output
        for view in ["item_popularity", "user_activity", "user_category", "user_item_affinity"]:
            assert f"features.{view}: full refresh" in demo.output
        assert "model recs: two_tower" in demo.output and "model ranker: scorer" in demo.output

        snippets = demo.snippets()
        assert len(snippets) == 3, demo.output
        counts, lookup, recommended = run_snippets(snippets)
        assert all(kind in counts for kind in ["view", "click", "purchase"]), counts
        assert "'user_id': 42" in lookup and "events_30d" in lookup, lookup
        assert recommended.count("\n") > 10 and "category" in recommended, recommended

        with dbapi.connect(demo.uri, autocommit=True) as conn:
            [row] = rows(conn, "SELECT count(*) AS n, count(DISTINCT user_id) AS users FROM interactions")
            assert row["n"] == 30000 and 0 < row["users"] <= 500
            ranked = rows(conn, "SELECT rank FROM recommend('recs', 42, 10)")
            assert [r["rank"] for r in ranked] == list(range(1, 11))
            # The README's retrieval-then-ranking query: ten candidates of the 50, by the ranker's score.
            readme = (REPO / "README.md").read_text()
            [ranking] = re.findall(r"```sql\n(SELECT r\.rank AS retrieval_rank.*?)```", readme, flags=re.S)
            ranked = rows(conn, ranking)
            assert len(ranked) == 10 and all(0 < r["p_click"] < 1 for r in ranked), ranked
            assert [r["p_click"] for r in ranked] == sorted((r["p_click"] for r in ranked), reverse=True)
            assert all(1 <= r["retrieval_rank"] <= 50 for r in ranked), ranked
            # The lookup in snippet 2 is answered from the online index.
            plan = rows(conn, "EXPLAIN SELECT * FROM features.user_activity WHERE user_id = 42")
            assert any("OnlineLookupExec" in r["plan"] for r in plan), plan
    finally:
        assert demo.stop() == 0
    # A fresh warehouse is no error: the models load after the tables they read are written, and
    # the demo's own logs (warnings and up by default) say nothing while it prepares.
    log = (tmp_path / "demo.log").read_text()
    assert "ERROR" not in log and "failed to load" not in log, log
    assert "WARN" not in log, log

    again = Demo(tmp_path, *SIZE)
    try:
        for table, count in [("users", 500), ("items", 200), ("interactions", 30000)]:
            assert f"{table}: exists ({count} rows), reused" in again.output, again.output
            assert commits(again, table) == 1, f"{table} was written again"
        assert "features.user_activity: up to date" in again.output
        with dbapi.connect(again.uri, autocommit=True) as conn:
            assert rows(conn, "SELECT count(*) AS n FROM interactions") == [{"n": 30000}]
    finally:
        assert again.stop() == 0


def test_demo_data_is_deterministic(tmp_path):
    """Two warehouses, the same flags: the same interactions, row for row."""
    tables = []
    for name in ["a", "b"]:
        (tmp_path / name).mkdir()
        demo = Demo(tmp_path / name, *SIZE, "--end", "2026-01-31T12:00:00")
        try:
            with dbapi.connect(demo.uri, autocommit=True) as conn, conn.cursor() as cur:
                cur.execute("SELECT * FROM interactions ORDER BY ts, user_id, item_id, event")
                tables.append(cur.fetch_arrow_table())
        finally:
            assert demo.stop() == 0
    assert tables[0].num_rows == 30000 and tables[0].equals(tables[1])


def test_bad_demo_flags_are_named(tmp_path):
    result = subprocess.run(
        [_binary(), "demo", "--warehouse", str(tmp_path / "w"), "--users", "3"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0 and "--users" in result.stderr, result.stderr
    assert not (tmp_path / "w" / "public" / "interactions").exists()


def test_a_warehouse_with_other_tables_of_the_demos_names_is_refused_untouched(tmp_path):
    warehouse = tmp_path / "w"
    made = subprocess.run([_binary(), "sql", "CREATE TABLE interactions (a INT)", "--warehouse", str(warehouse)],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    result = subprocess.run(
        [_binary(), "demo", "--warehouse", str(warehouse), *SIZE, "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert result.returncode != 0, result.stdout
    assert "table interactions (a Int32) that is not the demo's (user_id Int64" in result.stderr, result.stderr
    for table in ["users", "items"]:
        assert not (warehouse / "public" / table).exists(), f"{table} was written"


def test_committed_demo_models_are_what_the_scripts_train(tmp_path):
    """models/demo is reproducible: the default demo data, trained by models/train_demo.py, gives the
    committed weights. The retrieval model learns from counts alone: equal bit for bit on one machine
    (BLAS kernels may differ in the last bits elsewhere, hence its tolerance). The ranker's features are
    windows ending at the wall clock of the refresh (the views use now()), and the seconds between
    generating the data and refreshing the views differ from run to run, so a few events fall on the
    other side of a window's edge: its weights agree to about 0.1 %."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    demo = Demo(tmp_path)  # the defaults, ending now as when the models were trained
    try:
        subprocess.run(
            [sys.executable, str(REPO / "models" / "train_demo.py"),
             "--uri", demo.uri, "--out", str(tmp_path / "models")],
            check=True, capture_output=True, timeout=600,
        )
    finally:
        assert demo.stop() == 0
    for model in ["recs/model.onnx", "recs/item_tower.onnx", "ranker/model.onnx"]:
        committed = onnx.load(str(REPO / "models" / "demo" / model)).graph.initializer
        trained = onnx.load(str(tmp_path / "models" / model)).graph.initializer
        assert [t.name for t in committed] == [t.name for t in trained]
        rtol = 1e-2 if model.startswith("ranker") else 1e-4
        for a, b in zip(committed, trained):
            np.testing.assert_allclose(numpy_helper.to_array(b), numpy_helper.to_array(a),
                                       rtol=rtol, atol=1e-5, err_msg=f"{model}: {a.name}")
    for toml in ["recs/model.toml", "ranker/model.toml"]:
        assert (tmp_path / "models" / toml).read_text() == (REPO / "models" / "demo" / toml).read_text()
