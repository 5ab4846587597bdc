#!/usr/bin/env bash
# Builds the release binary and runs a benchmark; prints figures, asserts nothing.
#   tests/bench/run.sh [flight] [--rows N] [--repeat N]   Flight DoGet and ingest (flight_bench.py)
#   tests/bench/run.sh asof [--rows N] [--repeat N]       ASOF JOIN, N x N rows (asof_bench.py)
#   tests/bench/run.sh merge [--rows N] [--changes N]     MERGE of 100k changed rows into 10M, Quiver
#                                                         vs Python deltalake (merge_bench.py)
#   tests/bench/run.sh online [--users N] [--lookups N] [--observe on|off]
#                                                         online lookups from the Rust Flight SQL
#                                                         client, 1 and 50 views (online_lookup.rs)
#   tests/bench/run.sh models [--items N] [--rows N] [--observe on|off]
#                                                         predict vs onnxruntime, recommend p50/p99,
#                                                         recommend_items (models.rs, models_bench.py)
#   tests/bench/run.sh load [--clients N] [--seconds N] [--auto-compact true]
#                                                         64 clients x 60 s of point queries, scans and
#                                                         ingest against `quiver serve` (load.rs)
#   tests/bench/run.sh commits [--appends N] [--concurrency N] [--modes checkpoints,none,auto]
#                                                         small appends to one table with and without
#                                                         checkpoints, then OPTIMIZE (commits.rs)
#   tests/bench/run.sh collect [--senders N] [--batch N] [--seconds N]
#                                                         gzip NDJSON posts to the HTTP collector from N
#                                                         concurrent senders (collect_bench.py)
#   tests/bench/run.sh sources [--seconds N] [--partitions N] [--rates N,M]
#                                                         Kafka source sustained rate and freshness
#                                                         against librdkafka's mock cluster (sources.rs)
#   tests/bench/run.sh peers [--events N] [--rows N] [--lookups N] [--repeat N] [--only a,b] [--out DIR]
#                                                         Quiver side by side with pyarrow.flight, DuckDB,
#                                                         Feast, onnxruntime and deltalake (peers.py);
#                                                         its own venv: QUIVER_BENCH_VENV (./.venv-bench)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
if [ "${1:-}" = load ]; then
    shift
    cargo build --release --bin quiver --example load
    exec "$CARGO_TARGET_DIR/release/examples/load" --server "$CARGO_TARGET_DIR/release/quiver" "$@"
fi
if [ "${1:-}" = commits ]; then
    shift
    exec cargo run --release --example commits -- "$@"
fi
if [ "${1:-}" = sources ]; then
    shift
    exec cargo run --release --example sources -- "$@"
fi
if [ "${1:-}" = online ]; then
    shift
    exec cargo run --release --example online_lookup -- "$@"
fi
if [ "${1:-}" = peers ]; then
    shift
    cargo build --release --bin quiver
    # A venv of its own (Feast, DuckDB, ...), reinstalled only when the pinned requirements change.
    BENCH_VENV="${QUIVER_BENCH_VENV:-$PWD/.venv-bench}"
    REQUIREMENTS="$PWD/tests/bench/peers-requirements.txt"
    [ -x "$BENCH_VENV/bin/python" ] || python3 -m venv "$BENCH_VENV"
    if ! cmp -s "$REQUIREMENTS" "$BENCH_VENV/.quiver-requirements" 2>/dev/null; then
        "$BENCH_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
        cp "$REQUIREMENTS" "$BENCH_VENV/.quiver-requirements"
    fi
    export QUIVER_BIN="$CARGO_TARGET_DIR/release/quiver"
    exec "$BENCH_VENV/bin/python" tests/bench/peers.py "$@"
fi
VENV="${QUIVER_VENV:-$PWD/.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt -r tests/bench/requirements.txt
if [ "${1:-}" = models ]; then
    shift
    ITEMS=100000 ROWS=2000000 OBSERVE=on
    while [ $# -gt 0 ]; do
        case "$1" in
            --items) ITEMS="$2"; shift 2 ;;
            --rows) ROWS="$2"; shift 2 ;;
            --observe) OBSERVE="$2"; shift 2 ;;
            *) echo "unknown $1"; exit 2 ;;
        esac
    done
    # Built first, so the baselines do not share the cores with the compiler.
    cargo build --release --example models
    DIR="$(mktemp -d)"
    trap 'rm -rf "$DIR"' EXIT
    "$VENV/bin/python" tests/bench/models_bench.py generate "$DIR" --items "$ITEMS"
    "$VENV/bin/python" tests/bench/models_bench.py baseline "$DIR" --rows "$ROWS"
    cargo run --release --example models -- --models "$DIR" --rows "$ROWS" --observe "$OBSERVE"
    exit 0
fi
cargo build --release --bin quiver
BENCH=flight
case "${1:-}" in flight|asof|merge|collect) BENCH="$1"; shift ;; esac
QUIVER_BIN="$CARGO_TARGET_DIR/release/quiver" "$VENV/bin/python" "tests/bench/${BENCH}_bench.py" "$@"
