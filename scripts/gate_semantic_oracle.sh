#!/usr/bin/env bash
# Issue 11, after scripts/gate_semantic_standin.sh (same work folder; run that first): can a gate that suppresses
# clutter raise cross-condition recall on these stand-ins at all, and does a longer gate run on S1 get there?
# 2. Oracle masks (scripts/gate_oracle_masks.py): the renderer's labels in place of the gate, on the frozen
#    backbone + SALAD of S1 and S2: validation towns 901 + 905-908 (500 queries a condition), then, for the
#    record only (nothing is chosen from them), held-out towns 900, 902-904.
# 1. The gate alone on S1 with the semantic tower, 400 iterations instead of 200 (lr 2e-2 and 5e-3, every
#    epoch kept); lr and epoch chosen on the mean R@1 of validation towns 901 + 905-908 (cross-condition), not
#    on town 901's 100 queries alone. Held-out towns 900, 902-904: recall, paired sign test, mask report.
# 3. A replication of 2 on eight fresh towns, 910-917 (added after seeing 2's result: 400 queries had too little power).
# About 45 minutes of one core. Usage: bash scripts/gate_semantic_oracle.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/gate_standin}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
CLI="$PY -m clino_vpr_ros.cli"
. scripts/gate_semantic_eval.sh
for f in standin.ckpt standin_tb.ckpt clip_labels/model.safetensors tb_gate_sem_2e-2/best.safetensors; do
  [ -e "$W/$f" ] || { echo "missing $W/$f: run scripts/gate_semantic_standin.sh $W first" >&2; exit 1; }
done
VAL=(901 905 906 907 908)   # validation only: 905-908 are used nowhere else
TOWNS=(900 902 903 904)     # held out
for t in "${VAL[@]}"; do
  [ -d "$W/eval$t" ] || $CLI synth eval --out "$W/eval$t" --town $t --places 100 --size 112 112
done
valsets() { for t in "${VAL[@]}"; do echo "$W/eval$t/synth0${t}_cross"; done; }
sets() { for t in "${TOWNS[@]}"; do echo "$W/eval$t/synth0${t}_$1"; done; }
# 1. the longer gate run on S1, every epoch kept, the choice on the five validation towns
best=""
for lr in 2e-2 5e-3; do
  $CLI train --init-from "$W/standin.ckpt" --gate-only --gate-clip tiny --clip "$W/clip_labels" --image-size 112 112 \
      --data "$W/gsv" --val "$W/eval901/synth0901_cross" --epochs 16 --iters-per-epoch 25 --batch-places 24 -K 4 \
      --lr-decay-iters 400 --lr-end-factor 0.1 --augment --seed 3 --threads 1 --no-progress --keep-epochs \
      --out "$W/gate_sem_long_$lr" --lr $lr --resume
  [ -f "$W/gate_sem_long_$lr/epoch_choice.json" ] || \
      $PY scripts/gate_semantic_summary.py choose-epoch "$W/gate_sem_long_$lr" $(valsets) >/dev/null
done
best=$($PY scripts/gate_semantic_summary.py choose-run "$W/gate_sem_long_2e-2" "$W/gate_sem_long_5e-3")
$CLI export --checkpoint "$best" --out "$W/gate_sem_long.onnx"
evaluate_gated standin gate_sem_long
# 2. oracle masks; any gated checkpoint of a stand-in carries its frozen backbone and SALAD (its gate is unused
#    except for the "own_gate" row)
[ -f "$W/gate_sem_2e-2/best.safetensors" ] || { echo "missing $W/gate_sem_2e-2/best.safetensors" >&2; exit 1; }
for m in gate_sem_2e-2 tb_gate_sem_2e-2; do
  [ -f "$W/oracle_${m}_val.json" ] || $PY scripts/gate_oracle_masks.py "$W/$m/best.safetensors" --towns "${VAL[@]}" \
      --out "$W/oracle_${m}_val.json"
  [ -f "$W/oracle_${m}_heldout.json" ] || $PY scripts/gate_oracle_masks.py "$W/$m/best.safetensors" --towns "${TOWNS[@]}" \
      --out "$W/oracle_${m}_heldout.json"
done
$PY scripts/gate_semantic_summary.py oracle "$W" gate_sem_2e-2 tb_gate_sem_2e-2
# 3. the replication on fresh towns
FRESH=(910 911 912 913 914 915 916 917)
for t in "${FRESH[@]}"; do
  [ -d "$W/eval$t" ] || $CLI synth eval --out "$W/eval$t" --town $t --places 100 --size 112 112
done
for c in cross same; do
  $PY scripts/paired_recall.py "$W/standin.onnx" "$W/gate_sem_long.onnx" \
      --data $(for t in "${FRESH[@]}"; do echo "$W/eval$t/synth0${t}_$c"; done) --out "$W/paired_gate_sem_long_fresh_$c.json"
done
