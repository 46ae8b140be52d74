#!/usr/bin/env bash
# README command 1: run the example app under gunicorn on loopback, deliver a signed sample of
# every event type to it over real HTTP (`flask devhealth send`), print each answer and the
# resulting status board, then stop the server. Works on a fresh clone with Python 3.10+:
# creates .venv and installs the package and gunicorn into it on first use.
# Exits 0 when every step gave the expected answer, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "demo: Python 3.10 or newer is needed; set PYTHON=/path/to/python3.10+." >&2
    exit 1
  fi
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import flask_devhealth_webhooks, gunicorn" 2>/dev/null; then
  echo "demo: installing the package and gunicorn into .venv ..."
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e . gunicorn
fi

# Everything the server writes (both SQLite files, its log) goes to a folder removed on exit.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/devhealth-demo.XXXXXX")
SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  if [ -n "$SERVER_PID" ]; then wait "$SERVER_PID" 2>/dev/null || true; fi
  SERVER_PID=""
}
trap 'stop_server; rm -rf "$WORK"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A random secret shared by the server and the sender; never printed.
DEVHEALTH_WEBHOOKS_SECRET=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))')
export DEVHEALTH_WEBHOOKS_SECRET
export DEVHEALTH_WEBHOOKS_DATABASE_URL="sqlite:///$WORK/deliveries.sqlite3"
export EXAMPLE_DATABASE="$WORK/board.sqlite3"
PORT=$(.venv/bin/python -c '
import socket
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"
HOOK="$BASE/webhooks/devhealth"

echo "demo: starting the example app under gunicorn on $BASE (2 workers)"
.venv/bin/python -m gunicorn --bind "127.0.0.1:$PORT" --workers 2 --graceful-timeout 5 \
  "example_app:create_app()" >"$WORK/gunicorn.log" 2>&1 &
SERVER_PID=$!

fetch() {  # fetch URL: print the body of a GET, fail on a connection error or non-2xx
  .venv/bin/python -c '
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as response:
    sys.stdout.write(response.read().decode())' "$1"
}

ready=""
for _ in $(seq 1 150); do  # at most ~30 s
  kill -0 "$SERVER_PID" 2>/dev/null || break
  if fetch "$BASE/status.json" >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.2
done
if [ -z "$ready" ]; then
  echo "demo: the server did not start; its log:" >&2
  cat "$WORK/gunicorn.log" >&2
  exit 1
fi

FAILURES=0
send() {  # send LABEL EXPECTED ARGS...: one signed POST; the answer must have status EXPECTED
  local label=$1 expected=$2 answer
  shift 2
  if ! answer=$(.venv/bin/flask --app example_app devhealth send "$@" --url "$HOOK" 2>&1); then
    FAILURES=$((FAILURES + 1))
  elif ! grep -Eq "\"status\": ?\"$expected\"" <<<"$answer"; then
    FAILURES=$((FAILURES + 1))
    answer="$answer   <-- expected \"$expected\""
  fi
  printf '  %-62s %s\n' "$label" "$answer"
}

echo
echo "Deliveries (the answer of each: HTTP status and JSON body)"
send "benefit_verification.status_change" processed \
  benefit_verification.updated
send "Benefit Verification Updated (legacy envelope)" processed \
  benefit_verification.updated --legacy
send "late, out of order: older in_progress (board keeps completed)" processed \
  benefit_verification.updated --set data.status=in_progress \
  --set occurred_at=2000-01-01T00:00:00Z
send "prior_authorization.status_change (in_progress)" processed \
  prior_authorization.updated --set data.status=in_progress --set data.outcome=null
send "Prior Authorization Updated (legacy envelope)" processed \
  prior_authorization.updated --legacy
send "status_change completed (also fires .determination)" processed \
  prior_authorization.determination
send "Prior Authorization Determination (legacy envelope)" processed \
  prior_authorization.determination --legacy
send "prior_authorization.activity_log_updated" processed \
  prior_authorization.activity_log_updated
send "prior_authorization.prescription_transfer_change" processed \
  prior_authorization.prescription_transfer_change
send "prior_authorization.real_time_benefits_check_change" processed \
  prior_authorization.real_time_benefits_check_change
send "prior_authorization.message" processed \
  prior_authorization.message
send "prior_authorization.provider_outreach_change" processed \
  prior_authorization.provider_outreach_change
send "the legacy BV body again (a retry): not run twice" duplicate \
  benefit_verification.updated --legacy

echo
echo "Status board ($BASE/, shown here from $BASE/status.json)"
if board=$(fetch "$BASE/status.json"); then
  .venv/bin/python -c '
import json, sys

board = json.loads(sys.argv[1])
tables = [
    ("Benefit verifications", "verifications",
     ["id", "status", "coverage", "copay", "changed_at", "updated_at"]),
    ("Prior authorizations", "authorizations",
     ["id", "status", "outcome", "changed_at", "updated_at"]),
    ("Deliveries by event", "activity",
     ["event", "deliveries", "last_object_id", "last_status", "last_received_at"]),
]
for title, key, columns in tables:
    cells = [columns] + [
        ["-" if row[c] is None else str(row[c]) for c in columns] for row in board[key]
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    print(f"\n  {title}")
    for line in cells:
        print("    " + "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
' "$board"
else
  echo "  could not read the board" >&2
  FAILURES=$((FAILURES + 1))
fi

# The HTML board must be served and must not show any patient or provider field of the samples.
if ! page=$(fetch "$BASE/"); then
  echo "demo: GET / failed" >&2
  FAILURES=$((FAILURES + 1))
elif grep -Eq "Alex|Placeholder|1980-01-01|MBR-0001|555-010" <<<"$page"; then
  echo "demo: the HTML board shows a patient or provider field" >&2
  FAILURES=$((FAILURES + 1))
fi

stop_server
echo
if [ "$FAILURES" -ne 0 ]; then
  echo "demo: $FAILURES step(s) failed; server log:" >&2
  cat "$WORK/gunicorn.log" >&2
  exit 1
fi
echo "demo: every delivery was answered as expected; the server is stopped."
