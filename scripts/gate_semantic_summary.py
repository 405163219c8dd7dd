"""Helpers of scripts/gate_semantic_standin.sh (issue 11): pick a gate run on the validation town; print the figures.

    python scripts/gate_semantic_summary.py choose WORKDIR OUT LR...  # prints the chosen lr of OUT_<LR>
    python scripts/gate_semantic_summary.py table WORKDIR TOWN...  # recall, paired counts, gate mask figures
    python scripts/gate_semantic_summary.py choose-epoch RUN VALSET...  # prints RUN/epoch_NNN.safetensors
    python scripts/gate_semantic_summary.py choose-run RUN...  # the run whose chosen epoch scored best
    python scripts/gate_semantic_summary.py oracle WORKDIR RUN...  # R@1 with oracle clutter masks

``choose-epoch`` picks among the checkpoints a ``train --keep-epochs`` run kept, on several validation
sets at once (one town's 100 queries move R@1 by 1 point a query: too few to choose with).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: imported stand-in -> the gates trained on top of it
MODELS = {"standin": ("gate_sem",), "standin_tb": ("tb_gate_sem", "tb_gate_rand")}


def choose(w: Path, out: str, lrs: list[str]) -> str:
    """The learning rate whose best validation epoch (town 901) has the best R@1, then R@5, then R@10."""
    runs = {lr: json.loads((w / f"{out}_{lr}" / "metrics.json").read_text())["best"] for lr in lrs}

    def key(lr: str) -> tuple[float, ...]:
        return tuple(runs[lr]["recall"][k] for k in ("1", "5", "10"))

    for lr, r in runs.items():
        print(f"{out}, validation town 901: lr {lr}: best epoch {r['epoch']}, R@1/5/10 {key(lr)}", file=sys.stderr)
    return max(runs, key=key)


def choose_epoch(run: Path, sets: list[Path]) -> Path:
    """The kept epoch with the best mean R@1 (then R@5, R@10) over ``sets``; writes RUN/epoch_choice.json."""
    from clino_vpr_ros.checkpoint import load_encoder
    from clino_vpr_ros.evaluate import evaluate_folder, write_json_atomic

    ckpts = sorted(run.glob("epoch_*.safetensors"))
    if not ckpts:
        raise SystemExit(f"{run} holds no epoch_*.safetensors (train with --keep-epochs)")
    scores = {}
    for ck in ckpts:
        model = load_encoder(ck).eval()
        rec = [evaluate_folder(model, s, progress=False, image_size=tuple(model.config.image_size))["recall"]
               for s in sets]
        scores[ck.name] = [100 * sum(r[k] for r in rec) / len(rec) for k in (1, 5, 10)]
        print(f"{ck.name}: mean R@1/5/10 over {len(sets)} validation sets {scores[ck.name]}", file=sys.stderr)
    best = max(scores, key=lambda n: tuple(scores[n]))
    write_json_atomic({"validation_sets": [str(s) for s in sets], "mean_recall_1_5_10": scores, "chosen": best},
                      run / "epoch_choice.json")
    return run / best


def choose_run(runs: list[Path]) -> Path:
    """Of runs already through ``choose-epoch`` (same validation sets), the chosen checkpoint scoring best."""
    picks = {}
    for run in runs:
        c = json.loads((run / "epoch_choice.json").read_text())
        picks[run / c["chosen"]] = tuple(c["mean_recall_1_5_10"][c["chosen"]])
        print(f"{run.name}: {c['chosen']}, mean validation R@1/5/10 {picks[run / c['chosen']]}", file=sys.stderr)
    return max(picks, key=lambda k: picks[k])


def oracle(w: Path, runs: list[str]) -> None:
    """R@1 (%) with each oracle mask, validation and held-out, paired against no mask (scripts/gate_oracle_masks.py)."""
    for run in runs:
        for part in ("val", "heldout"):
            f = w / f"oracle_{run}_{part}.json"
            if not f.is_file():
                continue
            o = json.loads(f.read_text())
            print(f"{run} {part} towns {o['towns']} ({o['queries_per_condition']} queries a condition)")
            for name, r in o["r1"].items():
                pv = o["paired_vs_none"][name]
                print(f"  {name:22s} cross {r['cross']:5.1f} ({pv['cross']['gained']}:{pv['cross']['lost']})"
                      f"  same {r['same']:5.1f} ({pv['same']['gained']}:{pv['same']['lost']})")


def table(w: Path, towns: list[str]) -> None:
    for standin, gates in MODELS.items():
        for c in ("cross", "same"):
            for m in (standin, *gates):
                r = [json.loads((w / f"res_{m}_{t}_{c}.json").read_text())["recall"] for t in towns]
                per = "  ".join(f"{t}: {100 * x['1']:.0f}/{100 * x['5']:.0f}/{100 * x['10']:.0f}" for t, x in zip(towns, r))
                mean = "/".join(f"{100 * sum(x[k] for x in r) / len(r):.2f}" for k in ("1", "5", "10"))
                print(f"{c:5s} {m:12s} R@1/5/10 mean {mean}   ({per})")
                if m != standin:
                    p = json.loads((w / f"paired_{m}_{c}.json").read_text())
                    print("      queries only the imported / only the gated model finds, sign-test p:",
                          {k: (p[k]["only_a"], p[k]["only_b"], round(p[k]["sign_test_p"], 3)) for k in ("R@1", "R@5")})
        for m in gates:
            g = json.loads((w / f"{m}_report" / "gate_clutter.json").read_text())
            print(f"{m} mean mask:", json.dumps({k: round(v, 3) for k, v in g["mean_mask"].items()}),
                  "per label:", json.dumps({k: round(v, 3) for k, v in g["mean_mask_per_label"].items()}),
                  "same-cell clutter - structure:", round(g["position_matched_clutter_minus_structure"], 3))


def main(argv: list[str]) -> int:
    if len(argv) >= 4 and argv[0] == "choose":
        print(choose(Path(argv[1]), argv[2], argv[3:]))
    elif len(argv) >= 3 and argv[0] == "choose-epoch":
        print(choose_epoch(Path(argv[1]), [Path(a) for a in argv[2:]]))
    elif len(argv) >= 2 and argv[0] == "choose-run":
        print(choose_run([Path(a) for a in argv[1:]]))
    elif len(argv) >= 3 and argv[0] == "oracle":
        oracle(Path(argv[1]), argv[2:])
    elif len(argv) >= 3 and argv[0] == "table":
        table(Path(argv[1]), argv[2:])
    else:
        raise SystemExit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
