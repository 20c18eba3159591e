#!/usr/bin/env bash
# Runs kpiforge on the shared TPC-H KPI workload (../shared/bench/workload) and writes
# that workload's output contract, so it can stand beside the peers in the harness:
#
#   ../shared/bench/run_baselines.sh 1 5 --extra 'kpiforge=bench/tpch.sh {data} {out}'
#
# usage: bench/tpch.sh DATA_DIR OUT.parquet
#   DATA_DIR holds lineitem, orders and customer as .parquet or .csv.
#   Writes OUT.parquet (kpi, perspective, month, value; sorted by kpi, month; an
#   `exports:` entry of the generated pipeline) and OUT.parquet.checks.json.
#
# The workload's KPI files are used as written; each is wrapped as
# `SELECT month AS period, value FROM (<file>)` because kpiforge's KPI contract names the
# period column `period`. The release binary must be built first: cargo build --release.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
DATA=$(cd "$1" && pwd)
OUT=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
WORKLOAD=${WORKLOAD:-$HERE/../shared/bench/workload}
BIN=${KPIFORGE_BIN:-$HERE/target/release/kpiforge}
[ -x "$BIN" ] || { echo "bench/tpch.sh: $BIN not found; run 'cargo build --release' first" >&2; exit 2; }

if [ -f "$DATA/lineitem.parquet" ]; then ext=parquet; else ext=csv; fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/pipelines" "$WORK/sql"

{
  echo "name: tpch"
  echo "output: out"
  echo "sources:"
  for t in lineitem orders customer; do
    echo "  $t: {file: \"$DATA/$t.$ext\"}"
  done
  echo "scorecard:"
  echo "  objectives:"
  for p in financial customer internal_process learning_growth; do
    echo "    - {id: $p, perspective: $p}"
  done
  # The workload's output contract, written by kpiforge itself as an export.
  echo "exports:"
  echo "  - file: \"$OUT\""
  echo "    query: SELECT kpi_id AS kpi, perspective, period_start AS month, value FROM kpi_values ORDER BY kpi, month"
  echo "kpis:"
  for f in "$WORKLOAD"/kpis/*.sql; do
    # First line: "-- kpi: <name> | perspective: <perspective>"
    header=$(head -n 1 "$f")
    kpi=$(sed -E 's/^-- kpi: ([a-z_]+) .*/\1/' <<<"$header")
    perspective=$(sed -E 's/.*perspective: ([a-z_]+).*/\1/' <<<"$header")
    { echo "SELECT month AS period, value FROM ("; cat "$f"; echo; echo ") AS workload_kpi"; } > "$WORK/sql/$kpi.sql"
    echo "  - {id: $kpi, objective: $perspective, sql: sql/$kpi.sql, grain: month}"
  done
} > "$WORK/pipelines/tpch.yaml"

"$BIN" -q run "$WORK/pipelines/tpch.yaml" --as-of 1998-12-31 >/dev/null

# Quality checks arrive with the quality stage (issue 4); until then none are reported.
echo '{}' > "$OUT.checks.json"
