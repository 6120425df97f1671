#!/usr/bin/env bash
# Set up (idempotently) and run: the validation suite, or the plugin's own tests.
#
#   ./dev.sh suite [pytest args]   # pytest validation/ --suite tiny [args]
#   ./dev.sh test  [pytest args]   # pytest [args] (tests/ unless paths are given); without args: model-free tests on two workers, then the model tests
#   ./dev.sh test --fast [args]    # the pure and hypothesis tests only (no sessions, no model runs): under a minute
#   ./dev.sh rehearse [--models A,B]  # the GPU suites' path on CPU: miniatures on a local hub, online then offline
#   ./dev.sh lint                  # ruff check, ruff format --check, mypy --strict, import contracts
#   ./dev.sh setup                 # only create .venv and install the pinned set
#
# Needs Python >= 3.12 (InvarLock requires it): $PYTHON, python3.12/python3.13 on PATH, or a pyenv install.
set -euo pipefail
cd "$(dirname "$0")"

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.12 python3.13 "$HOME"/.pyenv/versions/3.12*/bin/python3.12 \
                   /root/.pyenv/versions/3.12*/bin/python3.12 "$HOME"/.pyenv/versions/3.13*/bin/python3.13; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  echo "dev.sh: Python >= 3.12 not found; install it or set PYTHON=/path/to/python3.12" >&2
  return 1
}

setup() {
  local stamp=.venv/.installed hash
  hash=$(cat requirements.lock requirements-nodeps.lock requirements-peers.lock pyproject.toml | sha256sum | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ] && [ -x .venv/bin/python ]; then
    return 0
  fi
  if [ ! -x .venv/bin/python ]; then
    "$(find_python)" -m venv .venv
  fi
  .venv/bin/python -m pip install --quiet --upgrade "pip>=24"
  .venv/bin/python -m pip install --quiet -r requirements.lock
  .venv/bin/python -m pip install --quiet --no-deps -r requirements-nodeps.lock
  .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
  # Popular pytest plugins, beside ours only in the sessions of tests/test_citizenship.py (PYTHONPATH=.venv/peers).
  rm -rf .venv/peers
  .venv/bin/python -m pip install --quiet --no-deps --target .venv/peers -r requirements-peers.lock
  echo "$hash" > "$stamp"
}

lint() {
  # Each check runs even when an earlier one fails; the exit status says whether all passed.
  local status=0 started elapsed check
  for check in "ruff check --output-format concise ." "ruff format --check --output-format concise ." "mypy" "lint-imports --no-logo"; do
    started=${EPOCHREALTIME/./}
    echo "lint: $check"
    # shellcheck disable=SC2086  # word splitting wanted: "ruff check ." is a command and its arguments
    .venv/bin/$check || status=1
    elapsed=$(( (${EPOCHREALTIME/./} - started) / 100000 ))
    echo "lint: $check took $((elapsed / 10)).$((elapsed % 10)) s"
  done
  return "$status"
}

# The project's tests. Without arguments (CI), in two passes: the tests that run no model on two workers (they
# spend their time starting processes), then the model tests in one process (their torch already uses both cores;
# a second line of them only slowed both). Each pass prints its slowest tests, for CI's time budget. With
# arguments, one session with them (a pass's own -m would otherwise meet the caller's).
project_tests() {
  if [ $# -gt 0 ]; then
    # No tests/ here: the paths given select (pyproject's testpaths is tests/ when none is given).
    .venv/bin/python -m pytest -ra --durations 15 "$@"
    return
  fi
  local first=0 second=0
  .venv/bin/python -m pytest tests/ -ra --durations 10 -n 2 -m "not campaign" || first=$?
  .venv/bin/python -m pytest tests/ -ra --durations 15 -m campaign || second=$?
  [ "$first" -eq 0 ] || return "$first"
  return "$second"
}

# Offline by construction: nothing here may reach a model hub.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_EVALUATE_OFFLINE=1
command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
  setup) setup ;;
  suite) setup; exec .venv/bin/python -m pytest validation/ --suite tiny "$@" ;;
  test)
    setup
    if [ "${1:-}" = "--fast" ]; then
      shift
      exec .venv/bin/python -m pytest -ra -n auto -m "not campaign and not slow and not gpu and not sessions" "$@"
    fi
    project_tests "$@" ;;
  # The local hub listens on 127.0.0.1 only; its sessions set their own HF variables (online, then offline).
  rehearse) setup; exec .venv/bin/python -m pytest_invarlock.assets.rehearsal "$@" ;;
  lint)  setup; lint ;;
  *) echo "usage: ./dev.sh suite|test [--fast]|rehearse|lint|setup [args]" >&2; exit 2 ;;
esac
