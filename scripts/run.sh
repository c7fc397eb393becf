#!/usr/bin/env bash
# `make run`: the whole service on the local stack with the simulator feeding
# it. Prints the dashboard URL and a monitor token, then stays in the
# foreground until Ctrl-C, which stops the simulator and the service cleanly.
#
# The simulator replays the most recent past school day (06:00 local onward)
# at ANXIAO_DEMO_SPEED (default 30x) under `serve --clock event`, so buses are
# on the road and scenarios raise alerts whatever the time of day; event time
# stays in the past, within the 7-day validity window.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN=.venv/bin
DEMO=${ANXIAO_STACK_DIR:-.stack}/demo
BUSES=${ANXIAO_DEMO_BUSES:-40}
SCHOOLS=${ANXIAO_DEMO_SCHOOLS:-8}
SPEED=${ANXIAO_DEMO_SPEED:-30x}
mkdir -p "$DEMO"

start=$("$BIN/python" - <<'PY'
import datetime as dt
from zoneinfo import ZoneInfo

import chinese_calendar

tz = ZoneInfo("Asia/Shanghai")
day = dt.datetime.now(tz).date() - dt.timedelta(days=1)
for _ in range(6):
    try:
        workday = chinese_calendar.is_workday(day)
    except NotImplementedError:  # a year the package does not cover
        workday = day.weekday() < 5
    if workday:
        break
    day -= dt.timedelta(days=1)
print(dt.datetime.combine(day, dt.time(6, 0), tz).isoformat())
PY
)

echo "run: 生成模拟车队 writing the simulated fleet ($BUSES buses, $SCHOOLS schools, from $start)"
"$BIN/anxiao" simulate --buses "$BUSES" --schools "$SCHOOLS" --start "$start" --duration 12h \
    --out "$DEMO" --no-publish --quiet
"$BIN/anxiao" fleet import "$DEMO/fleet.json"
monitor=$("$BIN/anxiao" token create --role monitor --name "监控室 demo")
admin=$("$BIN/anxiao" token create --role admin --name "make run")

set -a
# shellcheck disable=SC1091
[ -f .stack/env ] && . .stack/env
set +a
port=${ANXIAO_HTTP_PORT:-8420}
url="http://127.0.0.1:$port"

# A session of its own that the broker forgets an hour after the demo stops, so
# test traffic published later does not pile up for a demo that is gone.
ANXIAO_INGEST_CLIENT_ID=${ANXIAO_INGEST_CLIENT_ID:-anxiao-demo} \
ANXIAO_INGEST_SESSION_EXPIRY_S=${ANXIAO_INGEST_SESSION_EXPIRY_S:-3600} \
    "$BIN/anxiao" serve --clock event >"$DEMO/serve.log" 2>&1 &
serve_pid=$!
sim_pid=
cleanup() {
    [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null || true
    kill -TERM "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# Readiness: /readyz answers 200 once ingest has subscribed.
for _ in $(seq 1 300); do
    if "$BIN/python" -c "import sys, urllib.request; urllib.request.urlopen('$url/readyz', timeout=1)" 2>/dev/null; then
        break
    fi
    kill -0 "$serve_pid" 2>/dev/null || { tail -n 30 "$DEMO/serve.log"; echo "run: serve exited" >&2; exit 1; }
    sleep 0.1
done

# Filings the scenarios rely on (报备).
"$BIN/python" - "$url" "$admin" "$DEMO/filings.json" <<'PY'
import json, sys, urllib.request
url, token, path = sys.argv[1:4]
try:
    filings = json.load(open(path, encoding="utf-8"))
except FileNotFoundError:
    filings = []
for body in filings:
    request = urllib.request.Request(
        f"{url}/api/v1/filings", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=5).read()
PY

"$BIN/anxiao" simulate --buses "$BUSES" --schools "$SCHOOLS" --start "$start" --duration 12h \
    --speed "$SPEED" --out "$DEMO" --quiet >"$DEMO/simulate.log" 2>&1 &
sim_pid=$!

cat <<MSG

  安校 anxiao 正在运行 is running
  监控大屏 dashboard:  $url/
  监控室令牌 monitor token:  $monitor
  API 文档 docs:  $url/docs
  日志 logs:  $DEMO/serve.log, $DEMO/simulate.log
  模拟 simulation: $BUSES 辆校车 buses, $SCHOOLS 所学校 schools, $start 起 at $SPEED
  按 Ctrl-C 停止 press Ctrl-C to stop

MSG
wait "$serve_pid"
