#!/usr/bin/env bash
# The main job: set up .venv if needed, then make a video with the embedded demo model.
# Extra arguments go to `magi1 generate` (e.g. --prompt "a red ball bounces" --seed 3).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh"
mkdir -p "$root/outputs"
cd "$root"
config=demo
if [ ! -f "$root/src/magi1/presets/demo.json" ]; then
    # Until the trained demo model is committed, run the same code paths on a random-weight model.
    echo "note: the trained demo model is not in this checkout yet; using a tiny random-weight model" >&2
    echo "      (outputs/tiny-random): the video is noise, but every stage of the pipeline runs." >&2
    [ -f outputs/tiny-random/config.json ] || "$root/.venv/bin/magi1" make-tiny outputs/tiny-random
    config=outputs/tiny-random/config.json
fi
exec "$root/.venv/bin/magi1" generate --config_file "$config" --output_path outputs/demo.mp4 "$@"
