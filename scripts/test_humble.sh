#!/usr/bin/env bash
# The robot runtime on the oldest versions a supported ROS 2 distro ships: Python 3.10 with Ubuntu
# 22.04's (Humble) NumPy 1.21, SciPy 1.8.0, OpenCV 4.5.4, Matplotlib 3.5.1 and tqdm 4.57, in
# .venv-humble, running the tests marked `runtime` (no torch, no ROS). Jazzy's versions (Python 3.12,
# NumPy 1.26.4, SciPy 1.11.4, OpenCV 4.6.0) lie between these and the main environment's.
# Usage: bash scripts/test_humble.sh [pytest args]    (HUMBLE_PYTHON=/path/to/python3.10 to choose)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=""
for candidate in "${HUMBLE_PYTHON:-}" python3.10 /root/.pyenv/versions/3.10.13/bin/python; do
  if [ -n "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
    PY=$candidate; break
  fi
done
# numpy 1.21.6, not 22.04's 1.21.5: every onnxruntime that runs opset 18 needs >= 1.21.6 (pip upgrades a
# robot's numpy to it too); no API changed between the two. PyYAML 6.0: 5.4.1 has no Python 3.10 wheel.
PINS=(numpy==1.21.6 scipy==1.8.0 opencv-python-headless==4.5.4.60 matplotlib==3.5.1 tqdm==4.57.0 pyyaml==6.0
      onnxruntime==1.17.3 faiss-cpu==1.8.0.post1 rosbags==0.11.9 gtsam==4.2 pytest wheel)
CHECK='import numpy, scipy, cv2, matplotlib, onnxruntime, faiss, rosbags, gtsam, pytest, wheel
assert (numpy.__version__, scipy.__version__, cv2.__version__) == ("1.21.6", "1.8.0", "4.5.4"), "pins"'
if [ ! -x .venv-humble/bin/python ]; then
  [ -n "$PY" ] || { echo "test_humble: no Python 3.10 found (set HUMBLE_PYTHON=/path/to/python3.10)" >&2; exit 2; }
  echo "test_humble: creating .venv-humble with $("$PY" --version)"
  "$PY" -m venv .venv-humble
fi
if ! .venv-humble/bin/python -c "$CHECK" >/dev/null 2>&1; then
  echo "test_humble: installing the Humble-pinned runtime"
  .venv-humble/bin/python -m pip install --quiet --only-binary=:all: "${PINS[@]}"
fi
.venv-humble/bin/python -c "import sys, numpy, scipy, cv2; print(f'test_humble: Python {sys.version.split()[0]}, NumPy {numpy.__version__}, SciPy {scipy.__version__}, OpenCV {cv2.__version__}')"
# the test modules marked `pytestmark = pytest.mark.runtime` (the others import torch or ROS at the top)
mapfile -t FILES < <(grep -l "^pytestmark = pytest.mark.runtime" test/test_*.py)
exec .venv-humble/bin/python -m pytest "${FILES[@]}" -m runtime -q -p no:cacheprovider "$@"
