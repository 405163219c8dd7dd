# Sourced by gate_semantic_standin.sh and gate_semantic_oracle.sh (they set W, PY, CLI, TOWNS and sets).
# evaluate_gated STANDIN OUT: $W/OUT.onnx against the imported stand-in $W/STANDIN.onnx on the held-out towns:
# recall per town and condition, the paired sign test (which queries each gets right) and where the gate looks.
evaluate_gated() {
  local standin=$1 out=$2 t c
  for t in "${TOWNS[@]}"; do for c in same cross; do
    # the imported stand-in once (it does not change); the gated model every time (the choice may have)
    [ -f "$W/res_${standin}_${t}_$c.json" ] || $CLI eval recall --model "$W/$standin.onnx" \
        --data "$W/eval$t/synth0${t}_$c" --out "$W/res_${standin}_${t}_$c.json"
    $CLI eval recall --model "$W/$out.onnx" --data "$W/eval$t/synth0${t}_$c" --out "$W/res_${out}_${t}_$c.json"
  done; done
  for c in cross same; do
    $PY scripts/paired_recall.py "$W/$standin.onnx" "$W/$out.onnx" --data $(sets $c) --out "$W/paired_${out}_$c.json"
  done
  $PY scripts/gate_clutter_report.py "$W/$out.onnx" --towns 900 902 --views 60 --out "$W/${out}_report"
}
