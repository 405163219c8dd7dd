#!/usr/bin/env bash
# Rebuilds the shipped default model models/clino-vpr-tiny.onnx from nothing, and measures it.
# Every step is one clino-vpr command; seeds are fixed. CPU: about 3.5 hours on 2 cores (two trainings
# side by side, in three stages).
# Usage: bash scripts/build_default_model.sh [WORKDIR]   (default WORKDIR: runs/default_model)
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
W=${1:-runs/default_model}
mkdir -p "$W"
export OMP_NUM_THREADS=1
# 1. data: 30 training towns (seeds 0-29, 160 places x 4 images; stages 1-2 use the first 10), a
#    validation town (901), 3 held-out evaluation towns (900, 902, 903), all at the sessions' 240x320
#    (the model resizes to 112x112)
[ -d "$W/gsv" ] || clino-vpr synth gsv --out "$W/gsv" --towns $(seq 0 29) --places 160 --size 240 320
TEN_TOWNS="--cities $(printf 'SynthTown%04d ' $(seq 0 9))"
for t in 901 900 902 903; do
  [ -d "$W/eval$t" ] || clino-vpr synth eval --out "$W/eval$t" --town $t --places $([ $t = 901 ] && echo 120 || echo 150) --size 240 320
done
# 2. train the gated model and the no-gate ablation on the same budget (run them side by side)
COMMON="--data $W/gsv $TEN_TOWNS --val $W/eval901/synth0901_cross --preset tiny --epochs 16 --batch-places 32 -K 4
        --lr 1e-3 --lr-decay-iters 800 --lr-end-factor 0.05 --augment --seed 0 --threads 1"
clino-vpr train $COMMON --out "$W/tiny_gate" &
clino-vpr train $COMMON --no-gate --out "$W/tiny_nogate" &
wait
#    stage 2, both again on the same budget: warm restart from the best stage-1 weights, 20 epochs
STAGE2="--data $W/gsv $TEN_TOWNS --val $W/eval901/synth0901_cross --preset tiny --epochs 20 --batch-places 32 -K 4
        --lr 3e-4 --lr-decay-iters 1000 --lr-end-factor 0.1 --augment --seed 1 --threads 1"
clino-vpr train $STAGE2 --init "$W/tiny_gate/best.safetensors" --out "$W/tiny_gate2" &
clino-vpr train $STAGE2 --no-gate --init "$W/tiny_nogate/best.safetensors" --out "$W/tiny_nogate2" &
wait
#    stage 3, both again: all 30 towns, 20 epochs of 150 iterations
STAGE3="--data $W/gsv --val $W/eval901/synth0901_cross --preset tiny --epochs 20 --batch-places 32 -K 4
        --lr 3e-4 --lr-decay-iters 3000 --lr-end-factor 0.05 --augment --seed 2 --threads 1"
clino-vpr train $STAGE3 --init "$W/tiny_gate2/best.safetensors" --out "$W/tiny_gate3" &
clino-vpr train $STAGE3 --no-gate --init "$W/tiny_nogate2/best.safetensors" --out "$W/tiny_nogate3" &
wait
# 3. export (parity-checked) and evaluate on the held-out towns
clino-vpr export --checkpoint "$W/tiny_gate3/best.safetensors" --out "$W/clino-vpr-tiny.onnx"
clino-vpr export --checkpoint "$W/tiny_nogate3/best.safetensors" --out "$W/clino-vpr-tiny-nogate.onnx"
for m in clino-vpr-tiny clino-vpr-tiny-nogate; do
  for t in 900 902 903; do for c in same cross; do
    clino-vpr eval recall --model "$W/$m.onnx" --data "$W/eval$t/synth0${t}_$c" --rerank 10 --out "$W/$m.eval$t.$c.json"
  done; done
done
# 4. loop closure on held-out sequences (town 960: two sessions, day and dusk)
[ -d "$W/seq960" ] || clino-vpr synth sessions --town 960 --out "$W/seq960"
#    both engine presets; high_recall's settings were chosen on validation towns 961 and 962
for preset in default high_recall; do
  clino-vpr bag "$W/seq960/s1" --model "$W/clino-vpr-tiny.onnx" --engine-preset $preset \
      --out "$W/seq960/s1_$preset" --save-map "$W/seq960/s1_$preset.map"
  clino-vpr bag "$W/seq960/s2" --model "$W/clino-vpr-tiny.onnx" --engine-preset $preset --out "$W/seq960/s2_$preset" \
      --prior-map "$W/seq960/s1_$preset.map" --groundtruth "$W/seq960/s1" --groundtruth "$W/seq960/s2"
done
echo "built $W/clino-vpr-tiny.onnx; copy it to models/ and update models/README.md with the figures above"
