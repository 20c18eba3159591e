#!/usr/bin/env bash
# The workload's 11 quality checks alone, kpiforge beside DuckDB, interleaved rounds:
# DuckDB's in-process `checks=` phase (its baseline script, which then also runs the
# KPIs) against kpiforge's in-process check time (`kpiforge check`, "checks done ms=").
#
# usage: bench/checks_vs_duckdb.sh DATA_DIR [ROUNDS]
#   needs the bench virtualenv (../shared/bench/setup_venv.sh) and a release binary
#   (KPIFORGE_BIN, default target/release/kpiforge).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
DATA=$1
ROUNDS=${2:-7}
VENV=${BENCH_VENV:-/tmp/bench-venv}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for i in $(seq "$ROUNDS"); do
  d=$("$VENV/bin/python" "$HERE/../shared/bench/baselines/duckdb_baseline.py" "$DATA" "$OUT/d.parquet" 2>&1 | grep -o "checks=[0-9.]*" | cut -d= -f2)
  k=$("$HERE/bench/tpch.sh" "$DATA" "$OUT/k.parquet" check 2>&1 | grep -o "checks done.*ms=[0-9]*" | grep -o "ms=[0-9]*" | cut -d= -f2)
  awk -v i="$i" -v d="$d" -v k="$k" 'BEGIN { printf "round %d  duckdb %.3f s  kpiforge %.3f s  ratio %.2f\n", i, d, k / 1000, k / 1000 / d }'
done
