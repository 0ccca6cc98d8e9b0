#!/usr/bin/env bash
# Create .venv at the repository root (once) and install magi1 with the given extras into it.
# Usage: scripts/bootstrap.sh [extras]   e.g. scripts/bootstrap.sh serve,test
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-}"
venv="$root/.venv"
stamp="$venv/.magi1-installed-${extras:-base}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# Re-install only when pyproject.toml changed since the last install of these extras.
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
    # torch first and pinned: the CPU build 2.13.0 is what every machine here has.
    "$venv/bin/python" -m pip install -q "torch==2.13.0"
    spec="$root"
    [ -n "$extras" ] && spec="$root[$extras]"
    "$venv/bin/python" -m pip install -q -e "$spec"
    touch "$stamp"
fi
