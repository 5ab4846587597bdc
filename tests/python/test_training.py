"""The training loop of models/: read from Quiver over ADBC, train, export ONNX + model.toml into the
models directory, and serve it (recommend, predict) — checked against onnxruntime on the exported
files. The scripts run as a user runs them, in a subprocess."""

import subprocess
import sys
import time

import adbc_driver_flightsql.dbapi as dbapi
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
from conftest import REPO, Server
from helpers import ingest, rows

SCRIPTS = REPO / "models"


def run_script(name, *args):
    done = subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True,
                          cwd=SCRIPTS, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture()
def served(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    server = Server(tmp_path / "warehouse", args=["--models-dir", str(models)])
    with dbapi.connect(server.uri, autocommit=True) as conn:
        yield server, conn, models
    assert server.stop() == 0


def wait_loaded(conn, name, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = rows(conn, f"SELECT status, error FROM system.models WHERE name = '{name}'")
        if status and status[0]["status"] == "loaded":
            return
        time.sleep(0.2)
    raise AssertionError(f"model {name} not loaded: {status}")


def test_two_tower_training_loop(served):
    server, conn, models = served
    # Two taste groups: even users like even items, odd users odd items.
    rng = np.random.default_rng(3)
    users = rng.integers(0, 60, size=3000)
    items = (rng.integers(0, 50, size=3000) * 2 + users % 2) % 100
    ingest(conn, "interactions", pa.table({"user_id": pa.array(users, pa.int64()),
                                           "item_id": pa.array(items, pa.int64())}), "create")
    out = run_script("train_two_tower.py", "--uri", server.uri, "--out", str(models / "mf"),
                     "--dim", "8", "--epochs", "4")
    assert "wrote" in out
    wait_loaded(conn, "mf")

    user_tower = ort.InferenceSession(str(models / "mf" / "model.onnx"), providers=["CPUExecutionProvider"])
    item_tower = ort.InferenceSession(str(models / "mf" / "item_tower.onnx"), providers=["CPUExecutionProvider"])
    item_ids = np.array(sorted(set(items.tolist())), dtype=np.int64)
    item_vectors = item_tower.run(None, {"item_id": item_ids})[0]
    for user in (0, 1, 17):
        got = rows(conn, f"SELECT item_id, score FROM recommend('mf', {user}, 5) ORDER BY rank")
        vector = user_tower.run(None, {"user_id": np.array([user], dtype=np.int64)})[0][0]
        scores = item_vectors @ vector
        seen = set(items[users == user].tolist())
        order = [i for i in np.argsort(-scores, kind="stable") if item_ids[i] not in seen][:5]
        assert [r["item_id"] for r in got] == item_ids[order].tolist()
        np.testing.assert_allclose([r["score"] for r in got], scores[order], rtol=1e-5)
        # The model learned the taste groups: recommendations share the user's parity.
        assert all(r["item_id"] % 2 == user % 2 for r in got)


def test_ranker_training_loop(served):
    server, conn, models = served
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2000, 3))
    label = (x @ np.array([2.0, -1.0, 0.0]) + rng.normal(scale=0.5, size=2000) > 0).astype(np.int64)
    ingest(conn, "training_set", pa.table({"label": label, "f1": x[:, 0], "f2": x[:, 1], "f3": x[:, 2]}), "create")
    run_script("train_ranker.py", "--uri", server.uri, "--out", str(models / "ranker"),
               "--query", "SELECT label, f1, f2, f3 FROM training_set")
    wait_loaded(conn, "ranker")

    scored = rows(conn, "SELECT predict('ranker', f1, f2, f3) AS p, label FROM training_set")
    session = ort.InferenceSession(str(models / "ranker" / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"features": x.astype(np.float32)})[0][:, 0]
    # tract's Sigmoid kernel is a rational approximation that bottoms out at 4.47e-7 (logits below
    # about -14.6), where onnxruntime goes on to 0: hence the absolute tolerance.
    np.testing.assert_allclose([r["p"] for r in scored], expected, rtol=1e-5, atol=5e-7)
    auc = rows(conn, "SELECT auc(predict('ranker', [f1, f2, f3]), label = 1) AS auc FROM training_set")[0]["auc"]
    assert auc > 0.9
