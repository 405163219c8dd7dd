"""Helpers of scripts/gate_semantic_standin.sh (issue 11): pick a gate run on the validation town; print the figures.

    python scripts/gate_semantic_summary.py choose WORKDIR OUT LR...  # prints the chosen lr of OUT_<LR>
    python scripts/gate_semantic_summary.py table WORKDIR TOWN...  # recall, paired counts, gate mask figures
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
    elif len(argv) >= 3 and argv[0] == "table":
        table(Path(argv[1]), argv[2:])
    else:
        raise SystemExit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
