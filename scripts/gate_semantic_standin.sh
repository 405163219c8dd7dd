#!/usr/bin/env bash
# Issue 11, variant (c) of scripts/gate_on_salad_standin.sh: the gate trained alone on top of the imported
# DINOv2-SALAD stand-in, with a frozen CLIP-layout tower that was given semantic knowledge first, as a
# stand-in for real CLIP (none can be downloaded here): scripts/clip_standin_tower.py pre-trains the tiny
# preset's tower so that a linear probe on its embedding predicts the renderer's per-cell label fractions
# (sky, building, road, vegetation, vehicles, pedestrians...) on the TRAINING towns 0-5 only; the probe is
# discarded, the tower frozen and loaded with --clip like openai/clip-vit-large-patch14-336.
# Learning rate and epoch chosen on validation town 901; held-out towns 900, 902, 903, 904 reported.
# Shares the work folder of gate_on_salad_standin.sh and skips what is already there (data, stand-in).
# About 40 minutes of one or two shared cores. Usage: bash scripts/gate_semantic_standin.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/gate_standin}
mkdir -p "$W"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
CLI="$PY -m clino_vpr_ros.cli"
# data and the stand-in checkpoint, exactly as gate_on_salad_standin.sh makes them
[ -d "$W/gsv" ] || $CLI synth gsv --out "$W/gsv" --towns 0 1 2 3 4 5 --places 120 --size 112 112
for t in 901 900 902 903 904; do
  [ -d "$W/eval$t" ] || $CLI synth eval --out "$W/eval$t" --town $t --places 100 --size 112 112
done
if [ ! -f "$W/standin.ckpt" ]; then
  $PY scripts/salad_standin.py init "$W/standin_init.safetensors"
  $CLI train --init "$W/standin_init.safetensors" --no-gate --data "$W/gsv" --val "$W/eval901/synth0901_cross" \
      --out "$W/standin" --epochs 12 --iters-per-epoch 25 --batch-places 24 -K 4 --lr 1e-3 --lr-decay-iters 300 \
      --lr-end-factor 0.1 --augment --threads 1
  $PY scripts/salad_standin.py to-ckpt "$W/standin/last.safetensors" "$W/standin.ckpt"
fi
[ -f "$W/standin.onnx" ] || $CLI import salad "$W/standin.ckpt" --out "$W/standin.onnx" --image-size 112 112
# 1. the semantic stand-in tower: training towns 0-5 only, probe checked on validation town 901
[ -f "$W/clip_labels/model.safetensors" ] || $PY scripts/clip_standin_tower.py --towns 0 1 2 3 4 5 --views 800 \
    --val-town 901 --val-views 300 --steps 900 --threads 1 --out "$W/clip_labels"
# 2. the gate alone on top (same schedule as (a) and (b)); two learning rates, chosen on town 901
GATE=(train --init-from "$W/standin.ckpt" --gate-only --gate-clip tiny --clip "$W/clip_labels" --image-size 112 112
    --data "$W/gsv" --val "$W/eval901/synth0901_cross" --epochs 8 --iters-per-epoch 25 --batch-places 24 -K 4
    --lr-decay-iters 200 --lr-end-factor 0.1 --augment --seed 3 --threads 1 --no-progress)
for lr in 5e-3 2e-2; do  # --resume: a rerun continues a cut-off run and leaves a finished one as it is
  $CLI "${GATE[@]}" --out "$W/gate_sem_$lr" --lr $lr --resume
done
BEST=$($PY - "$W" <<'EOF'
import json, sys
from pathlib import Path
runs = {lr: json.loads((Path(sys.argv[1]) / f"gate_sem_{lr}" / "metrics.json").read_text())["best"] for lr in ("5e-3", "2e-2")}
key = lambda lr: tuple(runs[lr]["recall"][k] for k in ("1", "5", "10"))
best = max(runs, key=key)
print(f"validation town 901: " + ", ".join(f"lr {lr}: epoch {r['epoch']} R@1/5/10 {key(lr)}" for lr, r in runs.items()), file=sys.stderr)
print(best)
EOF
)
echo "chosen on town 901: lr $BEST"
$CLI export --checkpoint "$W/gate_sem_$BEST/best.safetensors" --out "$W/gate_sem.onnx"
# 3. held-out towns (900 and 902 as for (a) and (b), plus 903 and 904 for a larger sample: 400 queries a
#    condition): imported stand-in vs + semantic gate; then where the gate looks
for m in standin gate_sem; do for t in 900 902 903 904; do for c in same cross; do
  $CLI eval recall --model "$W/$m.onnx" --data "$W/eval$t/synth0${t}_$c" --out "$W/res_${m}_${t}_$c.json"
done; done; done
$PY scripts/gate_clutter_report.py "$W/gate_sem.onnx" --towns 900 902 --views 60 --out "$W/gate_sem_report"
# 4. the figures: recall per town and the mean over the held-out towns; the gate's mask on clutter vs structure
$PY - "$W" <<'EOF2'
import json, sys
from pathlib import Path
w = Path(sys.argv[1])
towns = (900, 902, 903, 904)
for c in ("cross", "same"):
    for m in ("standin", "gate_sem"):
        r = [json.loads((w / f"res_{m}_{t}_{c}.json").read_text())["recall"] for t in towns]
        per = "  ".join(f"{t}: {100 * x['1']:.0f}/{100 * x['5']:.0f}/{100 * x['10']:.0f}" for t, x in zip(towns, r))
        mean = "/".join(f"{100 * sum(x[k] for x in r) / len(r):.2f}" for k in ("1", "5", "10"))
        print(f"{c:5s} {m:9s} R@1/5/10 mean {mean}   ({per})")
g = json.loads((w / "gate_sem_report" / "gate_clutter.json").read_text())
print("mean mask:", json.dumps(g["mean_mask"]), "per label:", json.dumps(g["mean_mask_per_label"]),
      "same-cell clutter - structure:", g["position_matched_clutter_minus_structure"])
EOF2
