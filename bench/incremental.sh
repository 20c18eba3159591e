#!/usr/bin/env bash
# Times a nightly incremental run against a full one on the TPC-H KPI workload
# (bench/tpch.sh): one new day of orders and their lines appended to the history.
#
# usage: bench/incremental.sh DATA_DIR [ROUNDS]
#   DATA_DIR holds lineitem, orders and customer .parquet (../shared/bench/gen_data.sh).
#   Needs python3 with duckdb (the bench venv: ../shared/bench/setup_venv.sh) to
#   write the new day, and the release binary.
#
# The new day is the last day's orders (and their lines) again, one day later,
# under new order keys past the last one, as an order system appends them. Each
# round prints four wall times, all with the history plus the new day:
#   full        `incremental: false`, everything computed;
#   incremental `incremental: true`, states kept from a run over the history alone;
#   unchanged   `incremental: true` again, nothing new since: what a run costs when
#               there is no new row to read (planning, checks, scoring, publishing);
#   rebuild     `incremental: true` with `--full`: a first run, which builds the states.
# and at the end the medians, and whether the incremental outputs equal the full one.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
DATA=$(cd "$1" && pwd)
ROUNDS=${2:-5}
PY=${PYTHON:-python3}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

mkdir -p "$T/history" "$T/day"
for t in lineitem orders customer; do ln -s "$DATA/$t.parquet" "$T/history/$t.parquet"; done
"$PY" - "$DATA" "$T/day" <<'PY'
import sys, duckdb
data, day = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute(f"CREATE VIEW o AS SELECT * FROM '{data}/orders.parquet'")
con.execute(f"CREATE VIEW l AS SELECT * FROM '{data}/lineitem.parquet'")
last, top = con.execute("SELECT max(o_orderdate), max(o_orderkey) FROM o").fetchone()
con.execute(f"""CREATE TABLE keys AS SELECT o_orderkey AS old, {top} + row_number() OVER (ORDER BY o_orderkey) AS new
                FROM o WHERE o_orderdate = DATE '{last}'""")
con.execute(f"""COPY (SELECT * REPLACE (k.new AS o_orderkey, o_orderdate + 1 AS o_orderdate)
                FROM o JOIN keys k ON o.o_orderkey = k.old ORDER BY o_orderkey)
                TO '{day}/orders_day.parquet' (FORMAT parquet)""")
con.execute(f"""COPY (SELECT * REPLACE (k.new AS l_orderkey, l_shipdate + 1 AS l_shipdate,
                l_commitdate + 1 AS l_commitdate, l_receiptdate + 1 AS l_receiptdate)
                FROM l JOIN keys k ON l.l_orderkey = k.old ORDER BY l_orderkey)
                TO '{day}/lineitem_day.parquet' (FORMAT parquet)""")
n_o = con.execute(f"SELECT count(*) FROM '{day}/orders_day.parquet'").fetchone()[0]
n_l = con.execute(f"SELECT count(*) FROM '{day}/lineitem_day.parquet'").fetchone()[0]
print(f"new day {last} + 1: {n_o} orders, {n_l} lines", file=sys.stderr)
PY

timed() { # the command; prints seconds. With LOG_TO set, the command's stderr
           # is logged at info to that file and its start and end (ns) go to LOG_TO.span.
  local start end
  start=$(date +%s%N)
  if [ -n "${LOG_TO:-}" ]; then
    KPIFORGE_LOG=kpiforge=info "$@" >/dev/null 2>"$LOG_TO"
  else
    "$@" >/dev/null
  fi
  end=$(date +%s%N)
  [ -z "${LOG_TO:-}" ] || echo "$start $end" > "$LOG_TO.span"
  echo "scale=9; ($end - $start) / 1000000000" | bc
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# STAGES=1 also says where the incremental and unchanged runs' time goes, from
# their logs' timestamps (KPIFORGE_LOG=kpiforge=info, every timed run) and the wall
# clock around them: before the run proper (this adapter, process start,
# pipeline load), sources registered, checks and KPIs (side by side, from the
# sources' registration), publishing, and after the run (run history closed,
# exit, the adapter's JSON).
log() { [ -z "${STAGES:-}" ] || echo "$T/$1.log"; }
stages() { # a run's log: one line of stage times, ms
  "$PY" - "$1" <<'PY'
import datetime, re, sys
log = sys.argv[1]
start, end = (int(x) for x in open(log + ".span").read().split())
marks = {}
for line in open(log):
    m = re.match(r"(\S+?)Z\s", line)
    if not m:
        continue
    at = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc)
    t = int(at.timestamp() * 1e6) * 1000
    for key, text in (("started", "run started"), ("sources", "source ready"),
                      ("checks", "checks done"), ("kpis", "KPI computed"), ("finished", "run finished")):
        if text in line:
            marks[key] = max(marks.get(key, t), t)
missing = {"started", "sources", "checks", "kpis", "finished"} - marks.keys()
if missing:
    sys.exit(f"{log}: no {', '.join(sorted(missing))} in the log; its end:\n" + "".join(open(log).readlines()[-5:]))
src = marks["sources"]
spans = [marks["started"] - start, src - marks["started"], marks["checks"] - src, marks["kpis"] - src,
         marks["finished"] - max(marks["checks"], marks["kpis"]), end - marks["finished"], end - start]
print(" ".join(f"{s / 1e6:.1f}" for s in spans))
PY
}

# The state as kept after a nightly run over the history alone.
KPIFORGE_WORK=$T/primed KPIFORGE_INCREMENTAL=true "$HERE/bench/tpch.sh" "$T/history" "$T/primed.parquet" >/dev/null
cp "$T/day/"*.parquet "$T/history/"

: > "$T/full.txt"; : > "$T/incremental.txt"; : > "$T/unchanged.txt"; : > "$T/rebuild.txt"
: > "$T/stages_inc.txt"; : > "$T/stages_same.txt"
for round in $(seq "$ROUNDS"); do
  rm -rf "$T/inc"; cp -r "$T/primed" "$T/inc"
  full=$(LOG_TO=$(log full) timed "$HERE/bench/tpch.sh" "$T/history" "$T/full.parquet")
  inc=$(LOG_TO=$(log inc) KPIFORGE_WORK=$T/inc KPIFORGE_INCREMENTAL=true timed "$HERE/bench/tpch.sh" "$T/history" "$T/inc.parquet")
  same=$(LOG_TO=$(log same) KPIFORGE_WORK=$T/inc KPIFORGE_INCREMENTAL=true timed "$HERE/bench/tpch.sh" "$T/history" "$T/same.parquet")
  rebuild=$(LOG_TO=$(log rebuild) KPIFORGE_WORK=$T/inc KPIFORGE_INCREMENTAL=true KPIFORGE_RUN_FLAGS=--full timed "$HERE/bench/tpch.sh" "$T/history" "$T/rebuild.parquet")
  if [ -n "${STAGES:-}" ]; then
    stages "$T/inc.log" >> "$T/stages_inc.txt"; stages "$T/same.log" >> "$T/stages_same.txt"
  fi
  echo "round $round: full ${full}s incremental ${inc}s unchanged ${same}s rebuild ${rebuild}s"
  echo "$full" >> "$T/full.txt"; echo "$inc" >> "$T/incremental.txt"
  echo "$same" >> "$T/unchanged.txt"; echo "$rebuild" >> "$T/rebuild.txt"
done
f=$(median < "$T/full.txt"); i=$(median < "$T/incremental.txt"); r=$(median < "$T/rebuild.txt")
u=$(median < "$T/unchanged.txt")
share() { echo "scale=1; 100 * $1 / $f" | bc; }
echo "median: full ${f}s incremental ${i}s ($(share "$i")% of full) unchanged ${u}s ($(share "$u")% of full) rebuild ${r}s"
[ -z "${STAGES:-}" ] || "$PY" - "$T/stages_inc.txt" "$T/stages_same.txt" <<'PY'
import statistics, sys
heads = ["before the run", "sources", "checks", "KPIs", "publish", "after the run", "whole"]
print("stages, medians in ms: " + " | ".join(heads))
for label, path in zip(("incremental", "unchanged"), sys.argv[1:]):
    rows = [[float(x) for x in line.split()] for line in open(path) if line.strip()]
    print(f"  {label}: " + " | ".join(f"{statistics.median(c):.1f}" for c in zip(*rows)))
PY
"$PY" - "$T/full.parquet" "$T/inc.parquet" "$T/same.parquet" <<'PY'
import json, sys, duckdb
a = sys.argv[1]
for label, b in zip(("incremental", "unchanged"), sys.argv[2:]):
    diff = duckdb.sql(f"""SELECT count(*) AS rows, max(abs(x.value - y.value) / greatest(abs(x.value), 1)) AS worst
        FROM '{a}' x FULL JOIN '{b}' y USING (kpi, month)""").fetchall()[0]
    missing = duckdb.sql(f"SELECT count(*) FROM '{a}' x FULL JOIN '{b}' y USING (kpi, month) WHERE (x.value IS NULL) <> (y.value IS NULL)").fetchall()[0][0]
    print(f"{label} against full: {diff[0]} values, worst relative difference {diff[1] or 0:.2e}, {missing} missing on one side")
    checks = [json.load(open(f"{p}.checks.json")) for p in (a, b)]
    print(f"  checks: {len(checks[0])} results, {'the same' if checks[0] == checks[1] else 'DIFFERENT'}")
PY
