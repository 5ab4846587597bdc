"""Trains the two models `quiver demo` serves, against a running demo, into models/demo/:

    cargo run --release -- demo                      # in one terminal
    python models/train_demo.py                      # in another (venv: models/requirements.txt)

- `recs`: the retrieval model, implicit ALS over the interactions (train_two_tower.py);
- `ranker`: a click scorer, logistic regression over feature-view columns (train_ranker.py), with the
  query below. Its features are the views' current values, not point-in-time ones: fine for a demo
  scorer; docs/tutorial.md builds a point-in-time training set with ASOF JOIN instead.

The committed models/demo was made this way from the default dataset (`quiver demo` with no data
flags); both trainings are deterministic for a dataset. The running server picks the new files up
within seconds (or on `RELOAD MODELS`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# The label is "the user clicked or bought the item" among the items they saw. The columns after
# the label are the scorer's inputs, in order: the serving query computes the same expressions.
RANKER_QUERY = """
WITH pairs AS (
    SELECT user_id, item_id, max(CASE WHEN event = 'view' THEN 0 ELSE 1 END) AS label
    FROM interactions
    GROUP BY user_id, item_id
)
SELECT p.label,
       ln(1 + u.events_30d) AS user_events_30d,
       coalesce(u.ctr_7d, 0) AS user_ctr_7d,
       coalesce(c.share, 0) AS category_share,
       coalesce(c.ctr, 0) AS category_ctr,
       coalesce(ip.ctr_7d, 0) AS item_ctr_7d,
       ln(1 + ip.views_7d) AS item_views_7d,
       ln(i.price) AS log_price
FROM pairs p
JOIN items i ON i.item_id = p.item_id
JOIN features.user_activity u ON u.user_id = p.user_id
LEFT JOIN features.user_category c ON c.user_id = p.user_id AND c.category = i.category
JOIN features.item_popularity ip ON ip.item_id = p.item_id
"""


def run(script: str, *args: str) -> None:
    command = [sys.executable, str(HERE / script), *args]
    print("$", " ".join(command[1:2] + [a if "\n" not in a else "'<query>'" for a in command[2:]]), flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", default="grpc://127.0.0.1:50051", help="the demo's Flight SQL address")
    parser.add_argument("--out", type=Path, default=HERE / "demo", help="directory of the two models")
    args = parser.parse_args()
    run("train_two_tower.py", "--uri", args.uri, "--name", "recs", "--out", str(args.out / "recs"))
    run("train_ranker.py", "--uri", args.uri, "--name", "ranker", "--out", str(args.out / "ranker"),
        "--query", RANKER_QUERY)


if __name__ == "__main__":
    main()
