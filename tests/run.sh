#!/usr/bin/env bash
# Runs every check and test: formatting, lints, Rust unit + integration + sqllogictest, and the Python
# client tests (ADBC, pyarrow.flight, deltalake) against the real binary.
#
#   tests/run.sh
#
# Creates its Python venv from tests/python/requirements.txt (pinned). Settings:
#   CARGO_TARGET_DIR   cargo's build directory (default: ./target)
#   QUIVER_VENV        the venv to create/reuse (default: ./.venv)
#   QUIVER_TESTDATA    shared Delta test tables (default: ../shared/testdata; tests that need them
#                      are skipped, with a message, when absent)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
VENV="${QUIVER_VENV:-$ROOT/.venv}"
REQUIREMENTS="$ROOT/tests/python/requirements.txt"

step() { printf '\n==> %s\n' "$*"; }

step "Python venv ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if ! cmp -s "$REQUIREMENTS" "$VENV/.quiver-requirements" 2>/dev/null; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
    cp "$REQUIREMENTS" "$VENV/.quiver-requirements"
fi

# The slt suite runs every file a second time through the ADBC Flight SQL driver of this venv.
export QUIVER_ADBC_DRIVER
QUIVER_ADBC_DRIVER="$("$VENV/bin/python" -c 'import adbc_driver_flightsql as d; print(d._driver_path())')"

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "Rust tests (unit, integration, sqllogictest in-process and through ADBC)"
cargo test --workspace --all-targets

step "Load (short): 16 clients x 5 s of queries, scans and ingest; fails on any error or lost write"
cargo run --quiet --example load -- --server "$CARGO_TARGET_DIR/debug/quiver" --clients 16 --seconds 5 --rows 20000

step "Python client tests"
QUIVER_BIN="$CARGO_TARGET_DIR/debug/quiver" "$VENV/bin/python" -m pytest tests/python -q -rs -p no:cacheprovider
