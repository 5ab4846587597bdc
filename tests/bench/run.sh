#!/usr/bin/env bash
# Builds the release binary and runs the throughput benchmark; prints figures, asserts nothing.
#   tests/bench/run.sh [--rows N] [--repeat N]
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
VENV="${QUIVER_VENV:-$PWD/.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt -r tests/bench/requirements.txt
cargo build --release --bin quiver
QUIVER_BIN="$CARGO_TARGET_DIR/release/quiver" "$VENV/bin/python" tests/bench/flight_bench.py "$@"
