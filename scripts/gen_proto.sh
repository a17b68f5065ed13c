#!/usr/bin/env bash
# Regenerate the committed Python code for proto/ into OUT (default: the repository root).
# `scripts/gen_proto.sh --check` regenerates into a temporary folder and fails on any drift.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PATH="$(dirname "$PY"):$PATH"
gen() {
  local out=$1
  mkdir -p "$out/cccfed/v1"
  "$PY" -m grpc_tools.protoc -Iproto --python_out="$out" --grpc_python_out="$out" \
    --mypy_out="$out" proto/cccfed/v1/*.proto
  printf '"""Generated protobuf code for package cccfed.v1 (do not edit; see proto/)."""\n' \
    > "$out/cccfed/__init__.py"
  printf '"""Generated from proto/cccfed/v1 by scripts/gen_proto.sh."""\n' > "$out/cccfed/v1/__init__.py"
  touch "$out/cccfed/py.typed"
}
if [ "${1:-}" = "--check" ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  gen "$tmp"
  if ! diff -r -x __pycache__ "$tmp/cccfed" cccfed; then
    echo "generated code in cccfed/ is out of date with proto/: run scripts/gen_proto.sh" >&2
    exit 1
  fi
  echo "generated code matches proto/"
else
  rm -rf cccfed/v1
  gen .
fi
