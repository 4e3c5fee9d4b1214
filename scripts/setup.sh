#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project with its pinned versions (constraints.txt).
# Re-running is cheap: it reinstalls only when pyproject.toml or constraints.txt changed.
#
# The installer is uv: 48 s for the pinned set where pip took 124 s (bench/setup_install.sh, no download
# caches, docs/benchmarks.md). uv is installed with pip into .cache/uv-tool (a private folder of this
# checkout, nothing global); if that fails, the script says so and falls back to pip with the same pins.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9

py="${PYTHON:-}"
if [ -z "$py" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      py="$cand"; break
    fi
  done
fi
[ -n "$py" ] || { echo "setup: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$py" --version)" >&2
  "$py" -m venv .venv
fi

stamp=.venv/.cxr-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
[ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && exit 0

uv=.cache/uv-tool/bin/uv
if [ ! -x "$uv" ]; then
  echo "setup: installing the uv installer into .cache/uv-tool" >&2
  "$py" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target .cache/uv-tool "uv==$UV_VERSION" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) || true
fi

start=$(date +%s)
if [ -x "$uv" ]; then
  echo "setup: installing dependencies with uv $UV_VERSION (first time: about a minute)" >&2
  # --compile-bytecode: pip writes .pyc files while installing, uv only when asked; without them every
  # import parses the sources again when PYTHONDONTWRITEBYTECODE is set (measured: import torch 3.0 s vs 1.6 s)
  "$uv" pip install --quiet --compile-bytecode --python .venv/bin/python -c constraints.txt -e '.[test]'
else
  echo "setup: uv could not be installed; falling back to pip (first time: a few minutes)" >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]' \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
fi
echo "setup: dependencies installed in $(($(date +%s) - start)) s" >&2
echo "$want" > "$stamp"
