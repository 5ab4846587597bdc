"""Small ONNX graph builders shared by the training scripts and the test-model generator.

Every model Quiver loads is a plain ONNX graph with a symbolic batch dimension "N"; these helpers
build the two shapes the scripts need (an MLP scorer and an embedding-table tower) with onnx.helper,
so training needs only numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="quiver-models",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def mlp(path: Path, weights: list[tuple[np.ndarray, np.ndarray]], *, input_name: str = "features",
        output_name: str = "score", sigmoid: bool = True) -> None:
    """Dense layers with ReLU between them; the last layer's output optionally through a sigmoid."""
    nodes, inits = [], []
    current = input_name
    for i, (w, b) in enumerate(weights):
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"]),
                  helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"])]
        current = f"z{i}"
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"h{i}"]))
            current = f"h{i}"
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", [current], [output_name]))
    else:
        nodes.append(helper.make_node("Identity", [current], [output_name]))
    width_in = weights[0][0].shape[0]
    width_out = weights[-1][0].shape[1]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", width_in])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", width_out])],
        inits,
    )
    _save(graph, path)


def embedding_tower(path: Path, table: np.ndarray, *, input_name: str = "user_id",
                    output_name: str = "embedding") -> None:
    """id (int64, a row of `table`) -> that row: the tower of a matrix-factorization model."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", input_name], [output_name], axis=0)],
        "embedding_tower",
        [helper.make_tensor_value_info(input_name, TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", table.shape[1]])],
        [numpy_helper.from_array(table.astype(np.float32), "table")],
    )
    _save(graph, path)


def publish(staging: Path, out: Path) -> None:
    """Moves a model written in `staging` (a hidden directory Quiver skips) to `out`, replacing the
    previous version, so the server's watch never sees a half-written model."""
    if out.exists():
        for f in out.iterdir():
            f.unlink()
        out.rmdir()
    staging.rename(out)
    print(f"wrote {out}")


def staging_for(out: Path) -> Path:
    """The hidden directory next to `out` a model is written into before `publish`."""
    staging = out.with_name(f".{out.name}.staging")
    staging.mkdir(parents=True, exist_ok=True)
    return staging
