#!/usr/bin/env bash
# The test suite: set up .venv with the test and serving extras if needed, then run pytest.
# The browser test runs when Chromium is installed (/usr/bin/chromium) and is skipped otherwise.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh" "serve,test"
cd "$root"
exec "$root/.venv/bin/python" -m pytest "$@"
