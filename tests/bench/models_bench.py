"""The Python side of the models benchmark (tests/bench/run.sh models):

    models_bench.py generate DIR [--items N] [--dim D] [--users N]   writes DIR/mlp, DIR/retrieval, DIR/retrieval_excluding[_per_call]
    models_bench.py baseline DIR [--rows N] [--requests N]            onnxruntime and numpy figures

`mlp` is the 64 -> 256 -> 128 -> 1 MLP of the issue (ReLU, sigmoid output); `retrieval` a two-tower
model whose user tower and item tower are embedding tables (items = 0..N-1 from generate_series).
The baselines run on one thread, as Quiver's figures do.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "models"))
from onnx_export import embedding_tower, mlp  # noqa: E402

BATCH = 8192


def generate(out: Path, items: int, dim: int, users: int) -> None:
    rng = np.random.default_rng(11)
    (out / "mlp").mkdir(parents=True, exist_ok=True)
    mlp(out / "mlp" / "model.onnx", [
        (rng.normal(scale=0.1, size=(64, 256)), rng.normal(scale=0.1, size=256)),
        (rng.normal(scale=0.1, size=(256, 128)), rng.normal(scale=0.1, size=128)),
        (rng.normal(scale=0.1, size=(128, 1)), rng.normal(scale=0.1, size=1)),
    ])
    (out / "mlp" / "model.toml").write_text('''version = "1"
kind = "scorer"
inputs = [{ name = "features", type = "float32", shape = [-1, 64] }]
outputs = [{ name = "score", type = "float32", shape = [-1, 1] }]
''')
    (out / "retrieval").mkdir(parents=True, exist_ok=True)
    user_vectors = rng.normal(size=(users, dim)).astype(np.float32)
    item_vectors = rng.normal(size=(items, dim)).astype(np.float32)
    embedding_tower(out / "retrieval" / "model.onnx", user_vectors)
    embedding_tower(out / "retrieval" / "item_tower.onnx", item_vectors, input_name="item_id")
    np.save(out / "retrieval_users.npy", user_vectors)
    np.save(out / "retrieval_items.npy", item_vectors)
    (out / "retrieval" / "model.toml").write_text(f'''version = "1"
kind = "two_tower"
inputs = [{{ name = "user_id", type = "int64", shape = [-1] }}]
outputs = [{{ name = "embedding", type = "float32", shape = [-1, {dim}] }}]
[items]
query = "SELECT value AS item_id FROM generate_series(0, {items - 1})"
tower = "item_tower.onnx"
''')
    # The same model with an [exclude] query: the items the user interacted with, in a Delta table
    # the benchmark writes (bench.interactions). `retrieval_excluding` has the shape Quiver keeps an
    # index of; `retrieval_excluding_per_call` asks the same with a GROUP BY, which runs per call.
    exclude = {
        "retrieval_excluding": "SELECT item_id FROM bench.interactions WHERE user_id = $1",
        "retrieval_excluding_per_call":
            "SELECT item_id FROM bench.interactions WHERE user_id = $1 GROUP BY item_id",
    }
    for model, query in exclude.items():
        (out / model).mkdir(parents=True, exist_ok=True)
        for name in ["model.onnx", "item_tower.onnx"]:
            (out / model / name).write_bytes((out / "retrieval" / name).read_bytes())
        (out / model / "model.toml").write_text(
            (out / "retrieval" / "model.toml").read_text() + f'[exclude]\nquery = "{query}"\n')
    print(f"generated mlp, retrieval, {', '.join(exclude)} ({items} items x {dim} dims, "
          f"{users} users) in {out}")


def percentiles(samples: list[float]) -> str:
    ms = np.array(samples) * 1e3
    return f"p50 {np.percentile(ms, 50):.3f} ms  p99 {np.percentile(ms, 99):.3f} ms  max {ms.max():.3f} ms"


def baseline(out: Path, rows: int, requests: int) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(out / "mlp" / "model.onnx"), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).normal(size=(BATCH, 64)).astype(np.float32)
    session.run(None, {"features": x})
    best = 0.0
    for _ in range(3):
        started = time.perf_counter()
        done = 0
        while done < rows:
            session.run(None, {"features": x})
            done += BATCH
        best = max(best, done / (time.perf_counter() - started))
    print(f"onnxruntime {ort.__version__}, 1 thread, batch {BATCH}: {best / 1e6:.2f} M rows/s (best of 3)")

    users = np.load(out / "retrieval_users.npy")
    items = np.load(out / "retrieval_items.npy")
    rng = np.random.default_rng(2)
    samples = []
    for i in range(requests + requests // 10):
        user = users[rng.integers(len(users))]
        started = time.perf_counter()
        scores = items @ user
        top = np.argpartition(-scores, 10)[:10]
        top = top[np.argsort(-scores[top])]
        took = time.perf_counter() - started
        if i >= requests // 10:
            samples.append(took)
    print(f"numpy {np.__version__} top-10 of {items.shape[0]} x {items.shape[1]} (in process): {percentiles(samples)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["generate", "baseline"])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--requests", type=int, default=5_000)
    args = parser.parse_args()
    if args.command == "generate":
        generate(args.dir, args.items, args.dim, args.users)
    else:
        baseline(args.dir, args.rows, args.requests)


if __name__ == "__main__":
    main()
