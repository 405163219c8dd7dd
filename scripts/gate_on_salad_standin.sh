#!/usr/bin/env bash
# Issue 11's CPU experiment: a semantic gate trained alone on top of an imported DINOv2-SALAD checkpoint.
# No published weights or pretrained CLIP exist on the development machine, so the checkpoint is a tiny
# stand-in trained here (scripts/salad_standin.py) and the gate's frozen CLIP tower is either
# (a) random, or (b) the tower of the shipped models/clino-vpr-tiny.onnx (trained jointly with its gate
# on other synthetic towns), recovered as an HF folder (scripts/clip_tower_from_onnx.py) and loaded with
# --clip, the path a robot user takes for openai/clip-vit-large-patch14-336.
# About 80 minutes of one shared core. Usage: bash scripts/gate_on_salad_standin.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/gate_standin}
mkdir -p "$W"
export OMP_NUM_THREADS=1
# the scripts under scripts/ import the package from this checkout even when it is not installed
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
CLI="$PY -m clino_vpr_ros.cli"
# data at the model's 112x112: 6 training towns, validation town 901, held-out towns 900 and 902
[ -d "$W/gsv" ] || $CLI synth gsv --out "$W/gsv" --towns 0 1 2 3 4 5 --places 120 --size 112 112
for t in 901 900 902; do
  [ -d "$W/eval$t" ] || $CLI synth eval --out "$W/eval$t" --town $t --places 100 --size 112 112
done
# 1. the stand-in: a tiny DINOv2-SALAD trained from scratch (300 iterations), in the authors' key format
$PY scripts/salad_standin.py init "$W/standin_init.safetensors"
$CLI train --init "$W/standin_init.safetensors" --no-gate --data "$W/gsv" --val "$W/eval901/synth0901_cross" \
    --out "$W/standin" --epochs 12 --iters-per-epoch 25 --batch-places 24 -K 4 --lr 1e-3 --lr-decay-iters 300 \
    --lr-end-factor 0.1 --augment --threads 1
$PY scripts/salad_standin.py to-ckpt "$W/standin/last.safetensors" "$W/standin.ckpt"
# 2. import it exactly as a user imports dino_salad.ckpt (3 heads = 192 / 64)
$CLI import salad "$W/standin.ckpt" --out "$W/standin.onnx" --image-size 112 112
# 3. the gate alone on top (frozen CLIP tower of the tiny preset's shape): (a) random, (b) recovered
$PY scripts/clip_tower_from_onnx.py models/clino-vpr-tiny.onnx --out "$W/clip_tiny"
GATE=(train --init-from "$W/standin.ckpt" --gate-only --gate-clip tiny --image-size 112 112 --data "$W/gsv"
    --val "$W/eval901/synth0901_cross" --epochs 8 --iters-per-epoch 25 --batch-places 24 -K 4
    --lr-decay-iters 200 --lr-end-factor 0.1 --augment --seed 3 --threads 1)
$CLI "${GATE[@]}" --out "$W/gate" --lr 5e-3
# (b): of lr 5e-3 and 2e-2, validation town 901 chose 2e-2 (R@1 12, R@5 35 against 12, 34)
$CLI "${GATE[@]}" --out "$W/gate_tower" --lr 2e-2 --clip "$W/clip_tiny"
for m in gate gate_tower; do
  $CLI export --checkpoint "$W/$m/best.safetensors" --out "$W/$m.onnx"
done
# 4. held-out towns; where the gate looks (and, for reference, the shipped tiny model's own gate)
for m in standin gate gate_tower; do for t in 900 902; do for c in same cross; do
  $CLI eval recall --model "$W/$m.onnx" --data "$W/eval$t/synth0${t}_$c" --out "$W/res_${m}_${t}_$c.json"
done; done; done
for m in gate gate_tower; do
  $PY scripts/gate_clutter_report.py "$W/$m/best.safetensors" --towns 900 902 --views 60 --out "$W/${m}_report"
done
$PY scripts/gate_clutter_report.py models/clino-vpr-tiny.onnx --towns 900 902 --views 60 --out "$W/shipped_report"
