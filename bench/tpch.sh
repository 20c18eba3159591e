#!/usr/bin/env bash
# Runs kpiforge on the shared TPC-H KPI workload (../shared/bench/workload) and writes
# that workload's output contract, so it can stand beside the peers in the harness:
#
#   ../shared/bench/run_baselines.sh 1 5 --extra 'kpiforge=bench/tpch.sh {data} {out}'
#
# usage: bench/tpch.sh DATA_DIR OUT.parquet [run|check]
#   DATA_DIR holds lineitem, orders and customer as .parquet or .csv.
#   `run` (default) writes OUT.parquet (kpi, perspective, month, value; sorted by kpi,
#   month; an `exports:` entry of the generated pipeline) and OUT.parquet.checks.json
#   (the workload's 11 checks, from kpiforge's own checks; see below).
#   `check` runs only the checks (`kpiforge check`), to time them alone.
#
# The workload's KPI files are used as written; each is wrapped as
# `SELECT month AS period, value FROM (<file>)` because kpiforge's KPI contract names the
# period column `period`. The release binary must be built first: cargo build --release.
set -euo pipefail
# Absolute paths with `cd` and `$PWD`, no subshells: the harness times this
# whole script, and each fork costs about a millisecond.
start=$PWD
case $0 in */*) cd "${0%/*}/.." ;; *) cd .. ;; esac
HERE=$PWD; cd "$start"
cd "$1"; DATA=$PWD; cd "$start"
case $2 in */*) cd "${2%/*}"; OUT=$PWD/${2##*/} ;; *) OUT=$PWD/$2 ;; esac
cd "$start"
WORKLOAD=${WORKLOAD:-$HERE/../shared/bench/workload}
BIN=${KPIFORGE_BIN:-$HERE/target/release/kpiforge}
[ -x "$BIN" ] || { echo "bench/tpch.sh: $BIN not found; run 'cargo build --release' first" >&2; exit 2; }

if [ -f "$DATA/lineitem.parquet" ]; then ext=parquet; else ext=csv; fi
# KPIFORGE_WORK keeps the generated project (and its state) between calls;
# KPIFORGE_INCREMENTAL=true turns on `incremental:` (bench/incremental.sh).
if [ -n "${KPIFORGE_WORK:-}" ]; then
  WORK=$KPIFORGE_WORK
else
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
fi
[ -d "$WORK/sql" ] && [ -d "$WORK/pipelines" ] || mkdir -p "$WORK/pipelines" "$WORK/sql"

{
  echo "name: tpch"
  echo "output: out"
  echo "incremental: ${KPIFORGE_INCREMENTAL:-false}"
  echo "sources:"
  # The workload's checks (workload/checks/*.sql) in kpiforge's terms, named as
  # there. Multi-column conditions are row-level expressions, so their counts are
  # the workload's `violations` exactly; the three row counts become one result.
  # Read into a variable, not printed by `cat`: a fork and exec cost about a
  # millisecond, and the harness times this script.
  IFS= read -r -d '' checks <<YAML || true
  lineitem:
    file: "$DATA/lineitem*.$ext"
    checks:
      - row_count: {min: 1, name: rows_lineitem}
      - expression: {name: not_null_lineitem_keys, sql: "l_orderkey IS NOT NULL AND l_partkey IS NOT NULL AND l_suppkey IS NOT NULL AND l_linenumber IS NOT NULL AND l_shipdate IS NOT NULL"}
      - expression: {name: accepted_values_flags, sql: "l_returnflag IN ('A', 'N', 'R') AND l_linestatus IN ('F', 'O')"}
      - expression: {name: range_discount_quantity, sql: "l_discount BETWEEN 0 AND 0.1 AND l_quantity > 0"}
      - expression: {name: ship_before_receipt, sql: "l_shipdate <= l_receiptdate"}
  orders:
    file: "$DATA/orders*.$ext"
    checks:
      - row_count: {min: 1, name: rows_orders}
      - expression: {name: not_null_orders_keys, sql: "o_orderkey IS NOT NULL AND o_custkey IS NOT NULL AND o_orderdate IS NOT NULL"}
      - unique: {column: o_orderkey, name: pk_unique_orders}
      # As of 1998-12-31, judged at 1999-01-01 00:00: 153 days back is 1998-08-01.
      - freshness: {column: o_orderdate, max_age: 153d, name: freshness_orders}
  customer:
    file: "$DATA/customer*.$ext"
    checks:
      - row_count: {min: 1, name: rows_customer}
      - expression: {name: not_null_customer_keys, sql: "c_custkey IS NOT NULL AND c_nationkey IS NOT NULL"}
checks:
  - relationship: {name: ref_lineitem_orders, from: lineitem.l_orderkey, to: orders.o_orderkey}
  - relationship: {name: ref_orders_customer, from: orders.o_custkey, to: customer.c_custkey}
YAML
  printf '%s' "$checks"
  echo "scorecard:"
  echo "  lint: {allow: [stale_kpi]}   # the data ends in 1998-08; the run date is 1998-12-31"
  echo "  objectives:"
  for p in financial customer internal_process learning_growth; do
    echo "    - {id: $p, perspective: $p}"
  done
  # The workload's output contract, written by kpiforge itself as an export.
  echo "exports:"
  echo "  - file: \"$OUT\""
  echo "    query: SELECT kpi_id AS kpi, perspective, period_start AS month, value FROM kpi_values ORDER BY kpi, month"
  echo "  - file: \"$WORK/checks.rows.json\""
  echo "    query: >-"
  echo "      SELECT \"check\" AS name, unexpected_count AS violations, rows_checked AS checked_rows FROM quality"
  echo "      WHERE check_type <> 'row_count' AND check_type <> 'freshness'"
  echo "      UNION ALL SELECT \"check\", CASE WHEN outcome = 'passed' THEN 0 ELSE 1 END, rows_checked FROM quality WHERE check_type = 'freshness'"
  echo "      UNION ALL SELECT 'row_count_nonzero', sum(CASE WHEN outcome = 'passed' THEN 0 ELSE 1 END), CAST(sum(observed_value) AS BIGINT)"
  echo "      FROM quality WHERE check_type = 'row_count'"
  echo "kpis:"
  # Shell built-ins only: the harness times this whole script.
  for f in "$WORKLOAD"/kpis/*.sql; do
    # First line: "-- kpi: <name> | perspective: <perspective>"
    read -r header < "$f"
    kpi=${header#-- kpi: }; kpi=${kpi%% *}
    perspective=${header##*perspective: }; perspective=${perspective%% *}
    IFS= read -r -d '' sql < "$f" || true
    printf 'SELECT month AS period, value FROM (\n%s\n) AS workload_kpi\n' "${sql%$'\n'}" > "$WORK/sql/$kpi.sql"
    echo "  - {id: $kpi, objective: $perspective, sql: sql/$kpi.sql, grain: month}"
  done
} > "$WORK/pipelines/tpch.yaml"

if [ "${3:-run}" = check ]; then
  exec "$BIN" ${KPIFORGE_FLAGS:-} check "$WORK/pipelines/tpch.yaml" --as-of 1998-12-31 --output "$WORK/out"
fi

# Exit code 3 means a check failed: the results are still written, and the
# harness compares the check outcomes with the peers'.
"$BIN" -q run "$WORK/pipelines/tpch.yaml" --as-of 1998-12-31 ${KPIFORGE_RUN_FLAGS:-} >/dev/null || [ $? -eq 3 ]

# The harness wants {name: {violations, checked_rows, passed}}. Converted with
# bash built-ins (no `$(<file)`, no regular expressions, no `rm`): a Python
# start-up here (70 ms on this machine) would be timed as kpiforge's, and even
# a fork costs about a millisecond. Each row is
# {"name":"...","violations":N,"checked_rows":N}; a NULL (a check that could
# not run) leaves its key out, and is written as null, not passed.
IFS= read -r -d '' rows < "$WORK/checks.rows.json" || true
json="{" sep=""
while [[ $rows == *'{"name":"'* ]]; do
  row=${rows#*'{"name":"'}
  rows=${row#*'}'}
  row=${row%%'}'*}
  name=${row%%'"'*}
  violations=null checked=null
  if [[ $row == *'"violations":'* ]]; then
    violations=${row#*'"violations":'}; violations=${violations%%,*}
  fi
  if [[ $row == *'"checked_rows":'* ]]; then
    checked=${row#*'"checked_rows":'}; checked=${checked%%,*}
  fi
  passed=false
  [ "$violations" = 0 ] && passed=true
  json+="$sep\"$name\": {\"violations\": $violations, \"checked_rows\": $checked, \"passed\": $passed}"
  sep=", "
done
echo "$json}" > "$OUT.checks.json"
