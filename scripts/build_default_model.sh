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
# 4. loop closure on held-out sequences (towns 960 and 963: two sessions each, day and dusk), RGB only;
#    the presets' thresholds were chosen on validation towns 961 and 962. The bag runs store the
#    keyframes; scripts/loop_presets.py replays them through each preset (models/README.md table)
for T in 960 963; do
  [ -d "$W/seq$T" ] || clino-vpr synth sessions --town $T --out "$W/seq$T"
  [ -f "$W/seq$T/s1.map.npz" ] || clino-vpr bag "$W/seq$T/s1" --model "$W/clino-vpr-tiny.onnx" \
      --out "$W/seq$T/s1_bag" --save-map "$W/seq$T/s1.map.npz"
  [ -f "$W/seq$T/s2.map.npz" ] || clino-vpr bag "$W/seq$T/s2" --model "$W/clino-vpr-tiny.onnx" --out "$W/seq$T/s2_bag" \
      --prior-map "$W/seq$T/s1.map.npz" --groundtruth "$W/seq$T/s1" --groundtruth "$W/seq$T/s2" \
      --save-map "$W/seq$T/s2.map.npz"
done
python scripts/loop_presets.py --data "$W" --towns 960 963 --presets single_frame sequence default
echo "built $W/clino-vpr-tiny.onnx; copy it to models/ and update models/README.md with the figures above"
