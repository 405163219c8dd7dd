#!/usr/bin/env bash
# Sets up .venv with everything: robot runtime, training/export side, ROS 2 (Kilted) from wheels, tests.
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
# the package itself is checked as installed (its console scripts), not just importable from this folder
if [ ! -x .venv/bin/clino-vpr ] || ! python -c "import torch, rclpy, faiss, gtsam, onnxruntime, pymilvus, milvus" >/dev/null 2>&1; then
  echo "setup: installing dependencies (first time: a few minutes)"
  python -m pip install --quiet --upgrade pip
  # torch first: this pin resolves to the machine's local CPU build (no CUDA wheels); on a GPU
  # workstation set TORCH_SPEC to the build you want (e.g. TORCH_SPEC=torch).
  python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
  python -m pip install --quiet -e ".[train,ros,fleet,test]"
fi
echo "setup: ok ($(python -c 'import clino_vpr_ros; print("clino_vpr_ros", clino_vpr_ros.__version__)'))"
