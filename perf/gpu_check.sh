#!/usr/bin/env bash
# One prepared GPU check (issue 14): see perf/gpu_check.py.
#   perf/gpu_check.sh --prepare DIR        here: download the wheels the GPU machine lacks into DIR (< 64 MiB)
#   perf/gpu_check.sh [--wheels DIR] [--out FILE]   there: install what is missing (offline), run, write FILE
#   perf/gpu_check.sh --dry-run [--out FILE]        on CPU: the same code paths at tiny sizes, nothing installed
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
OUT=gpu_check.json; WHEELS=perf/wheels; DRY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) exec "$PY" perf/gpu_check.py prepare "$2" ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --dry-run) DRY=--dry-run; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$DRY" ]; then
  if ! "$PY" -c "import invarlock, pytest_invarlock" 2>/dev/null; then
    "$PY" -m pip install --no-index --no-deps --no-build-isolation -q "$WHEELS"/*
    "$PY" -m pip install --no-index --no-deps --no-build-isolation -q -e .
  fi
fi
exec "$PY" perf/gpu_check.py run --out "$OUT" $DRY
