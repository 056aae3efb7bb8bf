#!/usr/bin/env bash
# Pack the Python packages a bare CUDA machine lacks into .whl/ (git-ignored), for machines that
# have torch + transformers but cannot reach a package index (the project's GPU check machine:
# Python 3.12, torch 2.11, transformers 5.x). scripts/gpu_check.sh installs them with
# scripts/gpu_install.sh. Versions come from constraints.txt.
#
# Ray's wheel (79 MB) is repacked without the Java jar, the dashboard's web client, RLlib and
# Serve (unused here) and xz-compressed; duckdb likewise; everything else travels as wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-.whl}
PY=${GPU_PYTHON_VERSION:-3.12}
rm -rf "$OUT" && mkdir -p "$OUT"
pin() { grep -i "^$1==" constraints.txt | head -1; }
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$1" "${@:2}"
}
# small pure-Python or small binary wheels, as they are
WHEELS=(pydantic pydantic_core annotated-types typing-inspection typing_extensions jsonschema
  jsonschema-specifications referencing rpds-py tensorboardX diffusers importlib_metadata zipp
  vector-quantize-pytorch einx frozendict loguru torch-einops-utils)
specs=()
for name in "${WHEELS[@]}"; do specs+=("$(pin "$name")"); done
download "$OUT" "${specs[@]}"
# large binaries: unpacked, trimmed, xz-compressed
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for name in ray duckdb; do
  download "$tmp/$name-whl" "$(pin "$name")"
  mkdir -p "$tmp/$name"
  unzip -q "$tmp/$name-whl"/*.whl -d "$tmp/$name"
done
rm -rf "$tmp"/ray/ray/jars "$tmp"/ray/ray/dashboard/client "$tmp"/ray/ray/rllib "$tmp"/ray/ray/serve
for name in ray duckdb; do
  tar -C "$tmp/$name" -cf - . | xz -T0 -6 > "$OUT/$name.tar.xz"
done
du -sh "$OUT"
ls -la "$OUT"
