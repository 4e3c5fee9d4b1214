#!/usr/bin/env bash
# What a fresh setup waits for: the pinned set (constraints.txt) installed into two new virtual
# environments, side by side in one run, by pip and by uv (the installer scripts/setup.sh uses), both
# without their download caches, both writing .pyc files (pip does by default; setup.sh asks uv to).
# Prints each wall time and the ratio.
#
#     bench/setup_install.sh            # about 3 minutes on the 2-core development machine
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3.11}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$py" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$work/uv-tool" \
  "uv==$(sed -n 's/^UV_VERSION=//p' scripts/setup.sh)" 2> >(grep -v "is ignored" >&2)

"$py" -m venv "$work/pip-venv"
start=$(date +%s.%N)
"$work/pip-venv/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check -c constraints.txt \
  -e '.[test]' 2> >(grep -v "is ignored" >&2)
pip_s=$(echo "$(date +%s.%N) - $start" | bc)

"$py" -m venv "$work/uv-venv"
start=$(date +%s.%N)
"$work/uv-tool/bin/uv" pip install --quiet --no-cache --compile-bytecode --python "$work/uv-venv/bin/python" -c constraints.txt -e '.[test]'
uv_s=$(echo "$(date +%s.%N) - $start" | bc)

same=$(diff <("$work/pip-venv/bin/python" -m pip freeze --exclude-editable | sort) \
            <("$work/uv-venv/bin/python" -m pip freeze --exclude-editable | sort) >/dev/null && echo yes || echo NO)
printf 'machine: %s, %s cores, %s\n' "$(uname -m)" "$(nproc)" "$("$py" --version)"
printf 'pip install: %6.1f s\nuv install:  %6.1f s\npip / uv:    %6.2fx   (same versions installed: %s)\n' \
  "$pip_s" "$uv_s" "$(echo "$pip_s / $uv_s" | bc -l)" "$same"
