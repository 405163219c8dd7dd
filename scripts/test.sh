#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite: core, model/export/runtime, engine,
# and the ROS 2 node over real DDS. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# A domain of our own so that concurrent ROS 2 processes on the machine do not cross-talk; 1..101:
# higher ids put the DDS ports into Linux's ephemeral range (clino_vpr_ros/ros/harness.py MAX_DOMAIN_ID).
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( (RANDOM % 101) + 1 ))}
# The fleet tests start a real Milvus standalone server themselves (the `milvus` wheel, a pytest
# session fixture with its data under the pytest tmp dir); nothing else to start here.
exec python -m pytest test -q -p no:cacheprovider "$@"
