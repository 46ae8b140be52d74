#!/usr/bin/env bash
# Lint, type-check and run the whole test suite. Works on a fresh clone with Python 3.10+:
# creates .venv and installs the package with its test extras on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import flask_devhealth_webhooks, pytest_flask, gunicorn, ruff, mypy, hypothesis, cryptography, psycopg" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test,dev,postgres,encryption]'
fi
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
ruff format --check .
mypy
pytest "$@"
