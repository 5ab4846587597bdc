"""ASOF JOIN through ADBC, against a brute-force reference on random data.

Labels and features are random (fixed seed) over many keys, with duplicate label times, NULL keys and
times, and several input files per table (so the join runs hash-partitioned on both cores, over many
batches). For every label the server's answer must equal the reference: the feature with the same key
whose time is the latest at or before (or per operator) the label's time. Feature times are unique
per key, so the expected match is unique. Table names start with `asof_`.
"""

import bisect
import random
from collections import defaultdict

import pyarrow as pa
import pytest
from helpers import ingest, rows

SEED = 424242
KEYS = 300


def random_tables(rng: random.Random, labels: int, features: int):
    def key():
        return None if rng.random() < 0.01 else rng.randrange(KEYS)

    def time():
        return None if rng.random() < 0.01 else rng.randrange(100_000)

    label_rows = [{"id": i, "user_id": key(), "ts": time()} for i in range(labels)]
    seen, feature_rows = set(), []
    while len(feature_rows) < features:
        k, t = key(), time()
        if (k, t) in seen:
            continue  # unique (key, time): the expected match is unique
        seen.add((k, t))
        feature_rows.append({"user_id": k, "ts": t, "value": len(feature_rows)})
    return label_rows, feature_rows


def reference(label_rows, feature_rows, op):
    """For each label id, the matching feature's value (None without a match), by bisection."""
    by_key = defaultdict(list)
    for f in feature_rows:
        if f["user_id"] is not None and f["ts"] is not None:
            by_key[f["user_id"]].append((f["ts"], f["value"]))
    for series in by_key.values():
        series.sort()
    expected = {}
    for label in label_rows:
        series = by_key.get(label["user_id"], []) if label["ts"] is not None else []
        times = [t for t, _ in series]
        t = label["ts"]
        if op == ">=":
            i = bisect.bisect_right(times, t) - 1 if series else -1
        elif op == ">":
            i = bisect.bisect_left(times, t) - 1 if series else -1
        elif op == "<=":
            i = bisect.bisect_left(times, t) if series else len(times)
        else:
            i = bisect.bisect_right(times, t) if series else len(times)
        expected[label["id"]] = series[i][1] if 0 <= i < len(series) else None
    return expected


@pytest.fixture(scope="module")
def tables(server):
    import adbc_driver_flightsql.dbapi as dbapi

    label_rows, feature_rows = random_tables(random.Random(SEED), 30_000, 20_000)
    schema_l = pa.schema([("id", pa.int64()), ("user_id", pa.int64()), ("ts", pa.int64())])
    schema_f = pa.schema([("user_id", pa.int64()), ("ts", pa.int64()), ("value", pa.int64())])
    with dbapi.connect(server.uri, autocommit=True) as conn:
        # Several appends: several Parquet files per table, read in parallel.
        for part in range(4):
            ingest(conn, "asof_labels", pa.Table.from_pylist(label_rows[part::4], schema_l), "create_append")
            ingest(conn, "asof_feats", pa.Table.from_pylist(feature_rows[part::4], schema_f), "create_append")
    return label_rows, feature_rows


@pytest.mark.parametrize("op", [">=", ">", "<=", "<"])
def test_asof_join_matches_brute_force(adbc, tables, op):
    label_rows, feature_rows = tables
    got = rows(
        adbc,
        f"SELECT l.id, f.value FROM asof_labels l ASOF JOIN asof_feats f "
        f"MATCH_CONDITION (l.ts {op} f.ts) ON l.user_id = f.user_id",
    )
    assert len(got) == len(label_rows), "every label row appears exactly once"
    answer = {r["id"]: r["value"] for r in got}
    expected = reference(label_rows, feature_rows, op)
    assert answer == expected
    matched = sum(v is not None for v in expected.values())
    assert 0.5 * len(label_rows) < matched < len(label_rows), "the data exercises matches and misses"


def test_asof_join_in_prepared_statement_with_parameters(adbc, tables):
    label_rows, feature_rows = tables
    expected = reference(label_rows, feature_rows, ">=")
    got = rows(
        adbc,
        "SELECT l.id, f.value FROM asof_labels l ASOF JOIN asof_feats f "
        "MATCH_CONDITION (l.ts >= f.ts) ON l.user_id = f.user_id WHERE l.user_id = ?",
        parameters=(7,),
    )
    want = {label["id"]: expected[label["id"]] for label in label_rows if label["user_id"] == 7}
    assert {r["id"]: r["value"] for r in got} == want
