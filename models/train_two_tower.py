"""Trains a matrix-factorization retrieval model from an interactions table read from Quiver over
Flight SQL (ADBC), and exports it as a two_tower model directory Quiver serves with recommend().

    python models/train_two_tower.py --uri grpc://127.0.0.1:50051 --name mf --out models/mf

Implicit-feedback ALS (Hu, Koren & Volinsky 2008): confidence 1 + alpha * count per (user, item).
User and item ids must be non-negative integers; each tower is an embedding table indexed by id
(Gather), so ids should be dense-ish (the table has max_id + 1 rows). Deterministic for a seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import adbc_driver_flightsql.dbapi as dbapi
import numpy as np

from onnx_export import embedding_tower, publish, staging_for

MAX_ID = 10_000_000


def read_counts(uri: str, table: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sql = f"SELECT user_id, item_id, COUNT(*) AS n FROM {table} GROUP BY user_id, item_id"
    with dbapi.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql)
        data = cur.fetch_arrow_table()
    users = data["user_id"].to_numpy().astype(np.int64)
    items = data["item_id"].to_numpy().astype(np.int64)
    counts = data["n"].to_numpy().astype(np.float32)
    # Rows arrive in whatever order the parallel aggregation finished; sorted, the sums in training
    # add up in one order and the same data gives the same factors, bit for bit.
    order = np.lexsort((items, users))
    users, items, counts = users[order], items[order], counts[order]
    if len(users) == 0:
        raise SystemExit(f"{table} has no interactions to train on")
    if users.min() < 0 or items.min() < 0 or max(users.max(), items.max()) >= MAX_ID:
        raise SystemExit(f"user and item ids must be integers in [0, {MAX_ID})")
    return users, items, counts


def als_step(fixed: np.ndarray, rows: np.ndarray, cols: np.ndarray, conf: np.ndarray,
             n_rows: int, reg: float) -> np.ndarray:
    """Solves every row's factors with `fixed` held constant (the implicit ALS normal equations)."""
    dim = fixed.shape[1]
    gram = fixed.T @ fixed
    out = np.zeros((n_rows, dim), dtype=np.float64)
    order = np.argsort(rows, kind="stable")
    rows, cols, conf = rows[order], cols[order], conf[order]
    bounds = np.searchsorted(rows, np.arange(n_rows + 1))
    eye = reg * np.eye(dim)
    for r in range(n_rows):
        lo, hi = bounds[r], bounds[r + 1]
        if lo == hi:
            continue
        y = fixed[cols[lo:hi]]
        c = conf[lo:hi]
        a = gram + (y.T * (c - 1.0)) @ y + eye
        b = (y.T * c).sum(axis=1)
        out[r] = np.linalg.solve(a, b)
    return out


def train(users, items, counts, *, dim: int, epochs: int, reg: float, alpha: float, seed: int):
    rng = np.random.default_rng(seed)
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    user_factors = rng.normal(scale=0.1, size=(n_users, dim))
    item_factors = rng.normal(scale=0.1, size=(n_items, dim))
    conf = 1.0 + alpha * counts
    for epoch in range(epochs):
        user_factors = als_step(item_factors, users, items, conf, n_users, reg)
        item_factors = als_step(user_factors, items, users, conf, n_items, reg)
        print(f"epoch {epoch + 1}/{epochs}", flush=True)
    return user_factors.astype(np.float32), item_factors.astype(np.float32)


def model_toml(table: str, dim: int, version: str, description: str) -> str:
    return f'''version = "{version}"
kind = "two_tower"
description = "{description}"
metric = "dot"
inputs = [{{ name = "user_id", type = "int64", shape = [-1] }}]
outputs = [{{ name = "embedding", type = "float32", shape = [-1, {dim}] }}]

[items]
query = "SELECT DISTINCT item_id FROM {table}"
tower = "item_tower.onnx"

[users]
query = "SELECT DISTINCT user_id FROM {table}"

[exclude]
query = "SELECT item_id FROM {table} WHERE user_id = $1"

[fallback]
query = "SELECT item_id, CAST(COUNT(*) AS DOUBLE) AS score FROM {table} GROUP BY item_id ORDER BY score DESC, item_id LIMIT 1000"
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", default="grpc://127.0.0.1:50051", help="Quiver's Flight SQL address")
    parser.add_argument("--table", default="interactions", help="table with user_id and item_id columns")
    parser.add_argument("--name", default="mf", help="model name (the directory's name)")
    parser.add_argument("--out", type=Path, help="model directory to write (default: models/<name>)")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--reg", type=float, default=0.1)
    parser.add_argument("--alpha", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--version", default="1")
    args = parser.parse_args()
    out = args.out or Path(__file__).resolve().parent / args.name

    users, items, counts = read_counts(args.uri, args.table)
    print(f"{len(users)} (user, item) pairs, {len(np.unique(users))} users, {len(np.unique(items))} items")
    user_factors, item_factors = train(users, items, counts, dim=args.dim, epochs=args.epochs,
                                       reg=args.reg, alpha=args.alpha, seed=args.seed)
    staging = staging_for(out)
    embedding_tower(staging / "model.onnx", user_factors)
    embedding_tower(staging / "item_tower.onnx", item_factors, input_name="item_id")
    description = f"implicit ALS, {args.dim} dims, {args.epochs} epochs, from {args.table}"
    (staging / "model.toml").write_text(model_toml(args.table, args.dim, args.version, description))
    publish(staging, out)


if __name__ == "__main__":
    main()
