"""Paired comparison of two models on the same downloader-format sets: which queries each one gets right.

Recall@K differences of a few points on a few hundred queries may be chance. Both models answer the
same queries, so the honest test is paired: count the queries only A finds (top-K within the radius)
and those only B finds, and give the exact two-sided sign-test p-value of that split (ties dropped).

    python scripts/paired_recall.py A.onnx B.onnx --data SET [SET ...] [--k 1 5] [--out paired.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from clino_vpr_ros.datasets import read_downloader_set
from clino_vpr_ros.evaluate import encode_paths, retrieve, write_json_atomic
from clino_vpr_ros.runtime import RuntimeEncoder


def hits(model: RuntimeEncoder, root: Path, k: int, radius_m: float) -> np.ndarray:
    """bool (M',) per answerable query: a database image within ``radius_m`` among the top ``k``."""
    data = read_downloader_set(root)
    db = encode_paths(model, data.database_paths, progress=False)
    q = encode_paths(model, data.query_paths, progress=False)
    ranking = retrieve(db, q, k)
    d2 = ((data.query_xy[:, None] - data.database_xy[None]) ** 2).sum(-1)
    positives = d2 <= radius_m**2
    return np.take_along_axis(positives, ranking, axis=1).any(1)[positives.any(1)]


def sign_test(a_only: int, b_only: int) -> float:
    """Exact two-sided binomial p-value of a split a_only : b_only under p = 1/2."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1)) / 2**n
    return min(1.0, 2 * tail)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--data", type=Path, nargs="+", required=True)
    p.add_argument("--k", type=int, nargs="+", default=[1, 5])
    p.add_argument("--radius", type=float, default=25.0)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    models = [RuntimeEncoder(m, providers=["CPUExecutionProvider"]) for m in (a.a, a.b)]
    res = {"a": str(a.a), "b": str(a.b), "sets": [str(d) for d in a.data], "radius_m": a.radius}
    for k in a.k:
        ha = np.concatenate([hits(models[0], d, k, a.radius) for d in a.data])
        hb = np.concatenate([hits(models[1], d, k, a.radius) for d in a.data])
        a_only, b_only = int((ha & ~hb).sum()), int((hb & ~ha).sum())
        res[f"R@{k}"] = {"queries": int(len(ha)), "a": float(ha.mean()), "b": float(hb.mean()),
                         "only_a": a_only, "only_b": b_only, "sign_test_p": sign_test(a_only, b_only)}
        print(f"R@{k}: A {100 * ha.mean():.2f} %, B {100 * hb.mean():.2f} % over {len(ha)} queries; "
              f"only A {a_only}, only B {b_only}, sign test p = {sign_test(a_only, b_only):.3f}")
    if a.out is not None:
        write_json_atomic(res, a.out)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
