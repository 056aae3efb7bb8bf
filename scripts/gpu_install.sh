#!/usr/bin/env bash
# Install what scripts/gpu_wheels.sh packed (default .whl/) into a target folder (default
# /tmp/site) without any index, and print the PYTHONPATH to use. Usage:
#   export PYTHONPATH=$(bash scripts/gpu_install.sh .whl /tmp/site)
set -euo pipefail
SRC=${1:-.whl}
TARGET=${2:-/tmp/site}
mkdir -p "$TARGET"
if compgen -G "$SRC/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$TARGET" "$SRC"/*.whl >&2
fi
for archive in "$SRC"/*.tar.xz; do
  [ -e "$archive" ] || continue
  tar -C "$TARGET" -xJf "$archive"
done
chmod +x "$TARGET"/ray/core/src/ray/gcs/gcs_server "$TARGET"/ray/core/src/ray/raylet/raylet \
  2>/dev/null || true
echo "$TARGET"
