#!/usr/bin/env bash
# The main job: set up .venv if needed, then make a video with the embedded demo model.
# Extra arguments go to `magi1 generate` (e.g. --prompt "a red ball bounces" --seed 3).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh"
mkdir -p "$root/outputs"
cd "$root"
exec "$root/.venv/bin/magi1" generate --config_file demo --output_path outputs/demo.mp4 "$@"
