"""Trains a ranking scorer (logistic regression) on a training set read from Quiver over Flight SQL
(ADBC), and exports it as a scorer model directory Quiver serves with predict().

    python models/train_ranker.py --uri grpc://127.0.0.1:50051 --name ranker \
        --query "SELECT label, f1, f2, f3 FROM training_set"

The query's first column is the 0/1 label, the others are numeric features, in the order predict()
takes them: predict('ranker', f1, f2, f3) or predict('ranker', [f1, f2, f3]). NULL features are
read as 0. Standardization is folded into the exported weights, so the model takes raw features.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import adbc_driver_flightsql.dbapi as dbapi
import numpy as np

from onnx_export import mlp, publish, staging_for


def read(uri: str, query: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with dbapi.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(query)
        data = cur.fetch_arrow_table()
    if data.num_columns < 2 or data.num_rows == 0:
        raise SystemExit("the query must return rows of (label, feature, ...)")
    label = data.column(0).to_numpy(zero_copy_only=False).astype(np.float64)
    names = data.column_names[1:]
    features = np.column_stack([
        data.column(i).fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
        for i in range(1, data.num_columns)
    ])
    # Rows arrive in whatever order the query's parallel parts finished; sorted, the gradient sums add
    # up in one order and the same data gives the same weights, bit for bit.
    order = np.lexsort(np.column_stack([features, label]).T[::-1])
    return features[order], label[order], names


def train(x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float, l2: float):
    """Full-batch gradient descent on the standardized features; returns raw-feature weights."""
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0
    z = (x - mean) / std
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(epochs):
        p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
        grad = p - y
        w -= lr * (z.T @ grad / len(y) + l2 * w)
        b -= lr * grad.mean()
    p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
    loss = -np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12))
    return w / std, b - np.sum(w * mean / std), loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", default="grpc://127.0.0.1:50051", help="Quiver's Flight SQL address")
    parser.add_argument("--query", required=True, help="SQL returning (label, feature, ...)")
    parser.add_argument("--name", default="ranker")
    parser.add_argument("--out", type=Path, help="model directory to write (default: models/<name>)")
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--l2", type=float, default=1e-4)
    parser.add_argument("--version", default="1")
    args = parser.parse_args()
    out = args.out or Path(__file__).resolve().parent / args.name

    x, y, names = read(args.uri, args.query)
    w, b, loss = train(x, y, epochs=args.epochs, lr=args.lr, l2=args.l2)
    print(f"{len(y)} rows, {len(names)} features ({', '.join(names)}), log loss {loss:.4f}")
    staging = staging_for(out)
    mlp(staging / "model.onnx", [(w.reshape(-1, 1), np.array([b]))])
    (staging / "model.toml").write_text(f'''version = "{args.version}"
kind = "scorer"
description = "logistic regression on {', '.join(names)}"
inputs = [{{ name = "features", type = "float32", shape = [-1, {len(names)}] }}]
outputs = [{{ name = "score", type = "float32", shape = [-1, 1] }}]
''')
    publish(staging, out)


if __name__ == "__main__":
    main()
