"""docs/tutorial.md, executed: every code block, in order, as a reader runs them, then checks of what
the tutorial claims (no leakage in the ASOF training set, ranked recommendations, the model beating
popularity on the held-out week).

How the blocks run:

- ```sh blocks: `bash -euo pipefail` in a temporary directory that stands in for the checkout's root
  (its `models` is a link to the repository's models/, so `python models/train_*.py` runs the real
  scripts; everything the tutorial writes goes under its `tutorial/`);
- ```python blocks: one after the other in one namespace (one Python session);
- ```sql blocks: through ADBC; statements separated by `;` at the end of a line run in order, and
  the last one's result must have rows.

Any other kind of block fails the test: nothing in the tutorial goes unexecuted.

What the test substitutes, and nothing else:

1. `grpc://127.0.0.1:50051` in any block becomes the test server's address.
2. The one sh block that starts the server (`cargo run --release -- serve ARGS`) runs as
   `$QUIVER_BIN serve ARGS --listen 127.0.0.1:0` in the background (ARGS are relative to the
   temporary directory, so the warehouse is a fresh one); the address is read from the line it prints.
   It is stopped with SIGTERM at the end and must exit 0.
3. The one sh block that makes the models venv (`python3 -m venv ...`) is not run: `python` in the
   sh blocks is this interpreter, whose venv (tests/python/requirements.txt) has every package of
   models/requirements.txt.
"""

import contextlib
import io
import os
import re
import shlex
import signal
import subprocess
import sys
from collections import defaultdict

import adbc_driver_flightsql.dbapi as dbapi
import numpy as np
import pytest
from conftest import REPO, _binary
from sklearn.metrics import roc_auc_score

TUTORIAL = REPO / "docs" / "tutorial.md"
DEFAULT_URI = "grpc://127.0.0.1:50051"
SERVE = "cargo run --release -- serve"
VENV = "python3 -m venv"
USER = 30  # the user the tutorial recommends to
BLOCK = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)


class Block:
    def __init__(self, kind: str, code: str, line: int):
        self.kind, self.code, self.line = kind, code, line

    def __repr__(self) -> str:
        return f"{TUTORIAL.name}:{self.line} ({self.kind})"


def tutorial_blocks() -> list[Block]:
    text = TUTORIAL.read_text()
    return [Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in BLOCK.finditer(text)]


def statements(sql: str) -> list[str]:
    return [s.strip() for s in re.split(r";[ \t]*(?:\n|$)", sql) if s.strip()]


class Tutorial:
    """The tutorial's state while its blocks run: the working directory, the server, the Python
    namespace, and what each SQL statement returned."""

    def __init__(self, work):
        self.work = work
        self.server = None
        self.uri = None
        self.log = open(work / "server.log", "w+")
        self.namespace: dict = {"__name__": "tutorial"}
        self.results: list[tuple[str, object]] = []  # (statement, pyarrow.Table)
        (work / "models").symlink_to(REPO / "models")
        shim = work / ".bin"
        shim.mkdir()
        (shim / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        (shim / "python").chmod(0o755)
        self.env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
                    "PYTHONDONTWRITEBYTECODE": "1"}
        self.conn = None

    def code(self, block: Block) -> str:
        if DEFAULT_URI in block.code:
            assert self.uri, f"{block} uses the server before it is started"
            return block.code.replace(DEFAULT_URI, self.uri)
        return block.code

    def run(self, block: Block) -> None:
        if block.kind == "sh" and SERVE in block.code:
            self.start(block)
        elif block.kind == "sh" and VENV in block.code:
            pass  # substitution 3: `python` is this interpreter
        elif block.kind == "sh":
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", self.code(block)], cwd=self.work,
                                  env=self.env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{block} failed:\n{done.stdout}\n{done.stderr}"
        elif block.kind == "python":
            out = io.StringIO()
            cwd = os.getcwd()
            os.chdir(self.work)
            try:
                # Padded to its place in the file, so a traceback names the tutorial's own lines.
                code = "\n" * block.line + self.code(block)
                with contextlib.redirect_stdout(out):
                    exec(compile(code, str(TUTORIAL), "exec"), self.namespace)
            finally:
                os.chdir(cwd)
                sys.stdout.write(out.getvalue())
        elif block.kind == "sql":
            assert self.conn is not None, f"{block} runs SQL before the server is started"
            result = None
            for statement in statements(self.code(block)):
                try:
                    with self.conn.cursor() as cur:
                        cur.execute(statement)
                        result = cur.fetch_arrow_table()
                except Exception as e:
                    raise AssertionError(f"{block} failed: {e}\n{statement}") from e
                self.results.append((statement, result))
            assert result is not None and result.num_rows > 0, f"{block} returned no rows"
        else:
            raise AssertionError(f"{block}: a block of kind '{block.kind}' would not be executed")

    def start(self, block: Block) -> None:
        assert self.server is None, f"{block} starts a second server"
        command = block.code.replace("\\\n", " ").strip()
        assert command.startswith(SERVE) and "\n" not in command, \
            f"{block}: the server block must be the one command `{SERVE} ...`"
        args = shlex.split(command.removeprefix(SERVE))
        assert "--listen" not in args, f"{block}: the test picks the address"
        self.server = subprocess.Popen([_binary(), "serve", *args, "--listen", "127.0.0.1:0"],
                                       cwd=self.work, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                       env=self.env)
        line = self.server.stdout.readline().strip()
        assert line.startswith("quiver listening on grpc"), \
            f"server did not start: {line!r}\n{self.server_log()}"
        self.uri = line.removeprefix("quiver listening on ")
        self.conn = dbapi.connect(self.uri, autocommit=True)

    def server_log(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-5000:]

    def result(self, fragment: str):
        """The result of the one tutorial statement containing `fragment`."""
        found = [table for statement, table in self.results if fragment in statement]
        assert len(found) == 1, f"{len(found)} tutorial statements contain {fragment!r}"
        return found[0]

    def query(self, sql: str) -> list[dict]:
        with self.conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetch_arrow_table().to_pylist()

    def stop(self) -> None:
        # The tutorial's own cursor and connection, if it stopped before closing them.
        for name in ("cur", "conn"):
            with contextlib.suppress(Exception):
                self.namespace[name].close()
        if self.conn is not None:
            self.conn.close()
        if self.server is not None:
            self.server.send_signal(signal.SIGTERM)
            try:
                code = self.server.wait(timeout=30)
            finally:
                if self.server.poll() is None:
                    self.server.kill()
            assert code == 0, f"server exited {code}:\n{self.server_log()}"
        self.log.close()


@pytest.fixture()
def tutorial(tmp_path):
    state = Tutorial(tmp_path)
    try:
        yield state
    finally:
        state.stop()


def assert_latest_at_or_before(labels, features, keys):
    """Every label's matched feature time is the latest feature time of its key at or before the
    label's time (brute force, per key, with searchsorted)."""
    series = defaultdict(list)
    for row in features:
        series[tuple(row[k] for k in keys)].append(row["event_time"])
    series = {k: np.sort(np.array(v, dtype="datetime64[us]")) for k, v in series.items()}
    for label in labels:
        times = series.get(tuple(label[k] for k in keys))
        expected = None
        if times is not None:
            i = np.searchsorted(times, np.datetime64(label["ts"], "us"), side="right")
            expected = times[i - 1] if i > 0 else None
        got = None if label["as_of"] is None else np.datetime64(label["as_of"], "us")
        assert got == expected, f"{label}: expected the feature row of {expected}"


def test_tutorial(tutorial):
    blocks = tutorial_blocks()
    assert sum(b.kind == "sh" and SERVE in b.code for b in blocks) == 1
    assert sum(b.kind == "sh" and VENV in b.code for b in blocks) == 1
    try:
        for block in blocks:
            tutorial.run(block)
    except BaseException:
        if tutorial.server is not None:
            print(f"--- server log (tail)\n{tutorial.server_log()}", file=sys.stderr)
        raise
    ns = tutorial.namespace

    # Both views were materialized in full.
    refreshed = tutorial.result("REFRESH FEATURE VIEWS").to_pylist()
    assert sorted((r["view"], r["mode"]) for r in refreshed) == [
        ("item_daily", "full"), ("user_category_daily", "full")], refreshed

    # The point-in-time training set: one example per labelled view, no feature row later than its
    # example, most examples with a history, and each match the latest row at or before the example.
    [summary] = tutorial.result("features_from_the_future").to_pylist()
    [labels] = tutorial.query("SELECT count(*) AS n FROM labels")
    assert summary["examples"] == labels["n"] > 40_000, summary
    assert summary["features_from_the_future"] == 0, summary
    assert summary["with_item_history"] > 0.9 * summary["examples"], summary
    [leak] = tutorial.result("share_leaking_with_a_plain_join").to_pylist()
    assert leak["share_leaking_with_a_plain_join"] > 0.9, leak
    assert_latest_at_or_before(
        tutorial.query("SELECT item_id, ts, item_as_of AS as_of FROM training_set"),
        tutorial.query("SELECT item_id, event_time FROM features.item_daily"), ["item_id"])
    assert_latest_at_or_before(
        tutorial.query("SELECT t.user_id, i.category, t.ts, t.taste_as_of AS as_of "
                       "FROM training_set t JOIN items i ON i.item_id = t.item_id"),
        tutorial.query("SELECT user_id, category, event_time FROM features.user_category_daily"),
        ["user_id", "category"])

    # Both models serve.
    models = tutorial.query("SELECT name, kind, status FROM system.models ORDER BY name")
    assert models == [{"name": "mf", "kind": "two_tower", "status": "loaded"},
                      {"name": "ranker", "kind": "scorer", "status": "loaded"}], models

    # recommend: 10 ranked rows, best first, none the user has seen, in the user's taste (the
    # tutorial's user, and a sample of others).
    recs = tutorial.result(f"SELECT * FROM recommend('mf', {USER}, 10)").to_pylist()
    assert [r["rank"] for r in recs] == list(range(1, 11)), recs
    assert all(a["score"] >= b["score"] for a, b in zip(recs, recs[1:])), recs
    seen = tutorial.query(f"SELECT DISTINCT item_id FROM interactions WHERE user_id = {USER}")
    assert not {r["item_id"] for r in seen} & {r["item_id"] for r in recs}

    def in_taste(user, recs):
        return sum(int(ns["category_of"][r["item_id"]]) in ns["taste"][user] for r in recs)

    assert in_taste(USER, recs) >= 9, recs
    sample = [in_taste(u, tutorial.query(f"SELECT item_id FROM recommend('mf', {u}, 10)"))
              for u in range(0, 2000, 40)]
    assert np.mean(sample) >= 9, sample

    # predict: the re-ranked candidates, ten click probabilities, best first.
    reranked = tutorial.result("predict('ranker', coalesce(uc.share").column("p_click").to_pylist()
    assert len(reranked) == 10 and all(0 < p < 1 for p in reranked), reranked
    assert reranked == sorted(reranked, reverse=True), reranked

    # The evaluation: the model beats popularity on every metric, by a wide margin on precision@10.
    metrics = {r["method"]: r for r in tutorial.result("precision_at_k(").to_pylist()}
    model, popularity = metrics["mf"], metrics["popularity"]
    print(f"\nprecision@10 mf {model['precision_at_10']:.4f} popularity {popularity['precision_at_10']:.4f}; "
          f"recall@10 {model['recall_at_10']:.4f} / {popularity['recall_at_10']:.4f}; "
          f"ndcg@10 {model['ndcg_at_10']:.4f} / {popularity['ndcg_at_10']:.4f}")
    assert model["users"] == popularity["users"] > 1000, metrics
    assert model["precision_at_10"] > 3 * popularity["precision_at_10"] > 0, metrics
    for metric in ["recall_at_10", "ndcg_at_10", "map_at_10"]:
        assert model[metric] > popularity[metric], (metric, metrics)

    # The ranker, on the held-out week's views: better than its features alone, and near the AUC of
    # the generator's own click probabilities (the ceiling the tutorial quotes).
    [auc] = tutorial.result("AS ranker_auc").to_pylist()
    held_out = ns["view_ts"] >= ns["SPLIT"]
    truth = np.where(ns["likes"], 0.35, 0.05) * ns["quality"][ns["item"]]
    ceiling = roc_auc_score(ns["clicked"][held_out], truth[held_out])
    print(f"AUC ranker {auc['ranker_auc']:.4f}, item_ctr {auc['item_ctr_auc']:.4f}, "
          f"taste_share {auc['taste_share_auc']:.4f}, ceiling {ceiling:.4f}")
    assert auc["ranker_auc"] > max(auc["item_ctr_auc"], auc["taste_share_auc"]) + 0.02, auc
    assert ceiling - 0.1 < auc["ranker_auc"] < ceiling, (auc, ceiling)

