"""Quiver's recommender functions checked against scikit-learn's definitions, through ADBC.

Random recommendation lists, scores and vectors (fixed seed) are ingested into Delta tables, the
metrics are computed in SQL by the server, and each value is compared with what scikit-learn
computes for the same row. Table names start with `udf_`.
"""

import random

import numpy as np
import pyarrow as pa
import pytest
from helpers import ingest, rows
from sklearn.metrics import (
    average_precision_score,
    ndcg_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.metrics.pairwise import cosine_similarity
from sklearn.preprocessing import normalize
from sklearn.utils import murmurhash3_32

SEED = 20261124


def random_lists(rng: random.Random, n: int) -> pa.Table:
    """Per user: a ranked list of distinct item ids and a non-empty set of relevant ids."""
    predicted, relevant, ks = [], [], []
    for _ in range(n):
        items = rng.sample(range(1000), rng.randint(5, 30))
        # Relevant ids: some among the recommended, some never recommended.
        hits = rng.sample(items, rng.randint(0, min(5, len(items))))
        misses = rng.sample(range(1000, 1100), rng.randint(0 if hits else 1, 3))
        predicted.append(items)
        relevant.append(hits + misses)
        ks.append(rng.randint(1, len(items)))
    return pa.table(
        {
            "user_id": pa.array(range(n), pa.int64()),
            "predicted": pa.array(predicted, pa.list_(pa.int64())),
            "relevant": pa.array(relevant, pa.list_(pa.int64())),
            "k": pa.array(ks, pa.int64()),
        }
    )


@pytest.fixture(scope="module")
def lists(server):
    import adbc_driver_flightsql.dbapi as dbapi

    table = random_lists(random.Random(SEED), 300)
    with dbapi.connect(server.uri, autocommit=True) as conn:
        ingest(conn, "udf_lists", table, "replace")
        got = rows(
            conn,
            "SELECT user_id, precision_at_k(predicted, relevant, k) AS p, "
            "recall_at_k(predicted, relevant, k) AS r, ndcg_at_k(predicted, relevant, k) AS ndcg, "
            "average_precision_at_k(predicted, relevant, k) AS ap_k, "
            "average_precision_at_k(predicted, relevant, cardinality(predicted)) AS ap_all "
            "FROM udf_lists ORDER BY user_id",
        )
    return table.to_pylist(), got


def universe(row):
    """All ids of a row, recommended first in rank order, with sklearn-style truth and scores."""
    ids = row["predicted"] + [i for i in row["relevant"] if i not in row["predicted"]]
    truth = np.array([1 if i in row["relevant"] else 0 for i in ids])
    # Recommended ids score by rank; never-recommended ones score below all of them.
    scores = np.array([len(ids) - r for r in range(len(row["predicted"]))] + [0] * (len(ids) - len(row["predicted"])), float)
    return ids, truth, scores


def test_precision_and_recall_at_k_match_sklearn(lists):
    inputs, got = lists
    for row, out in zip(inputs, got, strict=True):
        ids, truth, _ = universe(row)
        k = row["k"]
        in_top_k = np.array([1 if r < k else 0 for r in range(len(ids))])
        top_truth = truth[:k]
        assert out["p"] == pytest.approx(precision_score(top_truth, np.ones(k), zero_division=0.0), rel=1e-12)
        assert out["r"] == pytest.approx(recall_score(truth, in_top_k), rel=1e-12)


def test_ndcg_at_k_matches_sklearn(lists):
    inputs, got = lists
    for row, out in zip(inputs, got, strict=True):
        _, truth, scores = universe(row)
        expected = ndcg_score([truth], [scores], k=row["k"])
        assert out["ndcg"] == pytest.approx(expected, rel=1e-12, abs=1e-15), row


def test_average_precision_matches_sklearn(lists):
    inputs, got = lists
    for row, out in zip(inputs, got, strict=True):
        found = [i for i in row["relevant"] if i in row["predicted"]]
        if len(found) < len(row["relevant"]):
            continue  # sklearn ranks never-recommended relevant ids too; AP over the list differs by design
        _, truth, scores = universe(row)
        assert out["ap_all"] == pytest.approx(average_precision_score(truth, scores), rel=1e-12)
    # AP@k: the same precisions, cut at k, divided by min(k, |relevant|) (ml_metrics.apk).
    for row, out in zip(inputs, got, strict=True):
        hits, total = 0, 0.0
        for rank, item in enumerate(row["predicted"][: row["k"]]):
            if item in row["relevant"]:
                hits += 1
                total += hits / (rank + 1)
        assert out["ap_k"] == pytest.approx(total / min(row["k"], len(set(row["relevant"]))), rel=1e-12)


def test_auc_matches_roc_auc_score_with_ties(adbc):
    rng = np.random.default_rng(SEED)
    groups = np.repeat(np.arange(20), 250)
    labels = rng.random(groups.size) < 0.3
    # Rounded scores: many ties, across and within classes.
    scores = np.round(rng.random(groups.size) * 0.5 + labels * 0.25, 2)
    ingest(adbc, "udf_scores", pa.table({"g": groups, "score": scores, "label": labels}), "replace")
    got = rows(adbc, "SELECT g, auc(score, label) AS auc FROM udf_scores GROUP BY g ORDER BY g")
    for out in got:
        mask = groups == out["g"]
        assert out["auc"] == pytest.approx(roc_auc_score(labels[mask], scores[mask]), rel=1e-12)
    overall = rows(adbc, "SELECT auc(score, label) AS auc FROM udf_scores")[0]["auc"]
    assert overall == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)


def test_cosine_similarity_and_l2_normalize_match_sklearn(adbc):
    rng = np.random.default_rng(SEED)
    a = rng.normal(size=(100, 16)).astype(np.float32)
    b = rng.normal(size=(100, 16)).astype(np.float32)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(a.ravel()), 16)
    others = pa.FixedSizeListArray.from_arrays(pa.array(b.ravel()), 16)
    ingest(adbc, "udf_vectors", pa.table({"id": np.arange(100), "a": vectors, "b": others}), "replace")
    got = rows(adbc, "SELECT id, cosine_similarity(a, b) AS cos, dot(a, b) AS dot, l2_normalize(a) AS unit FROM udf_vectors ORDER BY id")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    expected_cos = np.diag(cosine_similarity(a64, b64))
    expected_unit = normalize(a, norm="l2")
    for out in got:
        i = out["id"]
        assert out["cos"] == pytest.approx(expected_cos[i], rel=1e-12)
        assert out["dot"] == pytest.approx(float(a64[i] @ b64[i]), rel=1e-12)
        assert out["unit"] == pytest.approx(expected_unit[i].tolist(), rel=1e-6)


def test_feature_hash_reproducible_in_python(adbc):
    rng = random.Random(SEED)
    values = ["", "user:42", "ünïcödé ✓", "a" * 100] + [f"item-{rng.randint(0, 10**9)}" for _ in range(200)]
    ingest(adbc, "udf_hash", pa.table({"v": values}), "replace")
    got = rows(adbc, "SELECT v, feature_hash(v, 1048576) AS h, feature_hash(v, 7) AS h7 FROM udf_hash")
    assert len(got) == len(values)
    for out in got:
        assert out["h"] == murmurhash3_32(out["v"], seed=0, positive=True) % 1048576
        assert out["h7"] == murmurhash3_32(out["v"], seed=0, positive=True) % 7
    ints = rows(adbc, "SELECT feature_hash(v, 1000003) AS h FROM (VALUES (0), (-17), (9223372036854775807)) t(v)")
    assert [r["h"] for r in ints] == [
        murmurhash3_32(str(v), seed=0, positive=True) % 1000003 for v in (0, -17, 9223372036854775807)
    ]
