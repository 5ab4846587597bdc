"""Regenerates the small deterministic models the tests use (tests/models/), with a fixed seed.

    python models/make_test_models.py          # writes tests/models/<name>/{model.onnx, model.toml}

The models are committed; run this only to change them. Each model.toml documents what the tests
rely on; the tests compute the expected results from the same ONNX files with onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_export import IR_VERSION, OPSET, embedding_tower, mlp

SEED = 20261124
OUT = Path(__file__).resolve().parent.parent / "tests" / "models"
USERS, ITEMS, DIM = 50, 200, 8


def write(name: str, toml: str) -> Path:
    directory = OUT / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.toml").write_text(toml.lstrip())
    return directory


def ranker(rng: np.random.Generator) -> None:
    directory = write("ranker", """
version = "1"
kind = "scorer"
description = "8 -> 16 -> 1 MLP with a sigmoid: a CTR-style ranking scorer"
inputs = [{ name = "features", type = "float32", shape = [-1, 8] }]
outputs = [{ name = "score", type = "float32", shape = [-1, 1] }]
""")
    mlp(directory / "model.onnx", [
        (rng.normal(size=(8, 16)), rng.normal(size=16) * 0.1),
        (rng.normal(size=(16, 1)) * 0.5, rng.normal(size=1) * 0.1),
    ])


def multi(rng: np.random.Generator) -> None:
    """Two inputs of different types and two outputs: predict() returns a struct."""
    directory = write("multi", """
version = "1"
kind = "scorer"
description = "dense float32[3] and an int64 bucket -> a logit and a 2-d embedding"
inputs = [
    { name = "dense", type = "float32", shape = [-1, 3] },
    { name = "bucket", type = "int64", shape = [-1] },
]
outputs = [
    { name = "logit", type = "float32", shape = [-1, 1] },
    { name = "embedding", type = "float32", shape = [-1, 2] },
]
""")
    w = rng.normal(size=(3, 1)).astype(np.float32)
    w2 = rng.normal(size=(3, 2)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["dense", "w"], ["dense_logit"]),
        helper.make_node("Cast", ["bucket"], ["bucket_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["bucket_f", "axis1"], ["bucket_col"]),
        helper.make_node("Mul", ["bucket_col", "half"], ["bucket_logit"]),
        helper.make_node("Add", ["dense_logit", "bucket_logit"], ["logit"]),
        helper.make_node("MatMul", ["dense", "w2"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "multi",
        [helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("bucket", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N", 1]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w2, "w2"),
         numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
         numpy_helper.from_array(np.array([0.5], dtype=np.float32), "half")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(directory / "model.onnx"))


def two_tower(rng: np.random.Generator) -> None:
    """Matrix factorization: user and item towers are embedding tables over dense ids."""
    users = rng.normal(size=(USERS, DIM)).astype(np.float32)
    items = rng.normal(size=(ITEMS, DIM)).astype(np.float32)
    directory = write("mf", f"""
version = "1"
kind = "two_tower"
description = "matrix factorization, {USERS} users x {ITEMS} items x {DIM} dims; items through the item tower"
inputs = [{{ name = "user_id", type = "int64", shape = [-1] }}]
outputs = [{{ name = "embedding", type = "float32", shape = [-1, {DIM}] }}]

[items]
query = "SELECT item_id FROM items"
tower = "item_tower.onnx"

[users]
query = "SELECT DISTINCT user_id FROM interactions"

[exclude]
query = "SELECT item_id FROM interactions WHERE user_id = $1"

[fallback]
query = "SELECT item_id, CAST(COUNT(*) AS DOUBLE) AS score FROM interactions GROUP BY item_id ORDER BY score DESC, item_id LIMIT 100"
""")
    embedding_tower(directory / "model.onnx", users)
    embedding_tower(directory / "item_tower.onnx", items, input_name="item_id")

    # The same user tower with item embeddings from a Delta table and the cosine metric; no
    # [users] section, so every id the tower accepts is known.
    directory = write("mf_cosine", f"""
version = "1"
kind = "two_tower"
metric = "cosine"
description = "the mf user tower over the item_embeddings table, cosine similarity"
inputs = [{{ name = "user_id", type = "int64", shape = [-1] }}]
outputs = [{{ name = "embedding", type = "float32", shape = [-1, {DIM}] }}]

[items]
query = "SELECT item_id, embedding FROM item_embeddings"
""")
    embedding_tower(directory / "model.onnx", users)
    np.save(OUT / "mf_item_embeddings.npy", items)


def reranked(rng: np.random.Generator) -> None:
    """mf whose top 20 candidates are re-ranked by a scorer of (user, item, retrieval score)."""
    width = 2 * DIM + 1
    directory = write("pair_ranker", f"""
version = "1"
kind = "scorer"
description = "re-ranker: user embedding, item embedding and retrieval score -> a score"
inputs = [{{ name = "pair", type = "float32", shape = [-1, {width}] }}]
outputs = [{{ name = "score", type = "float32", shape = [-1, 1] }}]
""")
    mlp(directory / "model.onnx", [
        (rng.normal(size=(width, 8)), rng.normal(size=8) * 0.1),
        (rng.normal(size=(8, 1)), np.zeros(1)),
    ], input_name="pair", sigmoid=False)
    source = (OUT / "mf" / "model.toml").read_text()
    directory = write("mf_reranked", source.replace(
        'description = "matrix factorization',
        'description = "mf re-ranked by pair_ranker; matrix factorization',
    ) + """
[rerank]
model = "pair_ranker"
candidates = 20
""")
    for name in ("model.onnx", "item_tower.onnx"):
        (directory / name).write_bytes((OUT / "mf" / name).read_bytes())


def main() -> None:
    rng = np.random.default_rng(SEED)
    ranker(rng)
    multi(rng)
    two_tower(rng)
    reranked(rng)
    print(f"wrote {sorted(p.name for p in OUT.iterdir())} under {OUT}")


if __name__ == "__main__":
    main()
