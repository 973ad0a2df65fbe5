#!/usr/bin/env bash
# Set up a virtualenv and run the whole suite: lint, unit, hostile-sandbox and end-to-end tests.
# The Docker tests need a running engine (they build the sandbox image offline on first use)
# and are skipped, with the reason, where none is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "torch==2.13.0"  # CPU build where a local wheel exists; any torch works
.venv/bin/pip install -q -e ".[local,test,finetune,ray,mlflow,ui]"
.venv/bin/ruff check .

set +e
.venv/bin/python -m pytest -ra "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
