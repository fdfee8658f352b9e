#!/usr/bin/env bash
# Re-pin every install to the newest releases that pyproject.toml admits, in a throwaway venv,
# and write them to constraints.txt. Run it, run the tests, commit both together.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --upgrade pip
"$tmp/venv/bin/python" -m pip install --quiet -e '.[dev]'
{
  echo "# Every package CI and the README's set-up install, pinned (ops/refresh-constraints.sh)."
  "$tmp/venv/bin/python" -m pip freeze --all --exclude-editable | grep -vE "^(#|setuptools==|wheel==)"
} > constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pins"
