"""Synthetic keyframe descriptors with the structure of the shipped model's (for index benchmarks).

Random unit vectors are a different, harder problem for graph indexes than real descriptors. This
generator reproduces the statistics measured on the model's descriptors (reference facts,
"Keyframe index at scale"): about 90 % of the variance in ~160 of 512 dimensions, consecutive
keyframes cos ~0.75, revisits of a place cos ~0.5 (another lighting condition) to ~0.7 (same
condition), unrelated pairs ~0.07.

Model: a town is a line of places (one per 1.4 m); the appearance ``A[u]`` of place u follows an
AR(1) process along the line (neighbouring places look alike, places 50 keyframes apart do not).
A session drives a stretch of the line under a lighting condition; keyframe i of it is

    normalize( sqrt(w_mean) m + sqrt(w_place) P_i + sqrt(w_noise) e_i ),
    P_i = sqrt(1 - v - d) A[u_i] + sqrt(v) V_s[u_i] + sqrt(d) L_c[u_i]

with m a mean direction shared by all descriptors (the unrelated-pair similarity), ``V_s`` the
session's viewpoint change (v = 0.1), ``L_c`` the lighting condition's change of appearance (d = 0
for the reference condition, 0.35 for dusk), ``e_i`` per-keyframe noise. All random directions are drawn with an exponentially decaying spectrum
(``exp(-j / 70)``) so that 160 principal components hold ~90 % of the variance. Appearance and
condition vectors are drawn per place on demand from a seeded generator, so a 1M-keyframe town
costs no more memory than its descriptors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

W_MEAN, W_PLACE, W_NOISE = 0.07, 0.72, 0.21
AR_STEP = 0.94  # appearance correlation of neighbouring places
SPECTRUM_SCALE = 88.0
VIEWPOINT = 0.1  # share of place variance that changes with each session's viewpoint (lane, heading)


def spectrum(dim: int) -> np.ndarray:
    """float32 (dim,) per-axis standard deviations (unit total variance), decaying exponentially."""
    lam = np.exp(-np.arange(dim) / SPECTRUM_SCALE)
    return np.sqrt(lam / lam.sum()).astype(np.float32)


def _gauss(seed: int, n: int, dim: int, sd: np.ndarray) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32) * sd


@dataclass(frozen=True)
class Town:
    """A line of ``n_places`` places with AR(1) appearance, ``dim``-d descriptors, seeded."""

    n_places: int
    dim: int = 512
    seed: int = 0

    def appearance(self, a: int, b: int) -> np.ndarray:
        """float32 (b-a, dim) appearance of places [a, b). The line is cut into blocks of 4096 places,
        each an independent stationary AR(1) run seeded by its number (so any stretch is computed
        without the ones before it; one break in appearance every 4096 places is harmless)."""
        sd = spectrum(self.dim)
        block = 4096
        out = np.empty((b - a, self.dim), np.float32)
        for blk in range(a // block, (b - 1) // block + 1):
            z = _gauss(self.seed * 1_000_003 + blk + 2, block, self.dim, sd)
            z[0] /= np.sqrt(1 - AR_STEP**2)  # stationary start: unit variance from the first place
            states = lfilter([np.sqrt(1 - AR_STEP**2)], [1.0, -AR_STEP], z, axis=0).astype(np.float32)
            lo, hi = max(a, blk * block), min(b, (blk + 1) * block)
            out[lo - a : hi - a] = states[lo - blk * block : hi - blk * block]
        return out

    def mean_direction(self) -> np.ndarray:
        m = _gauss(self.seed * 31 + 5, 1, self.dim, spectrum(self.dim))[0]
        return m / np.linalg.norm(m)

    def condition_change(self, condition: int, a: int, b: int) -> np.ndarray:
        """float32 (b-a, dim) appearance change of places [a, b) under a lighting condition (smooth along the line)."""
        sd = spectrum(self.dim)
        anchors = _gauss(self.seed * 104_729 + condition * 7 + 3, (b - a) // 20 + 2, self.dim, sd)
        t = (np.arange(a, b) - (a // 20) * 20) / 20.0
        i = np.floor(t).astype(int)
        f = (t - i)[:, None].astype(np.float32)
        out = (1 - f) * anchors[i] + f * anchors[i + 1]
        return out / np.sqrt((1 - f) ** 2 + f**2)


def session(town: Town, start: int, n: int, condition: int, seed: int, dusk: float = 0.35) -> np.ndarray:
    """float32 (n, dim) L2-normalised descriptors of a session driving places [start, start+n).

    ``condition`` 0 is the reference lighting (revisits cos ~0.7); any other value differs by
    ``dusk`` of the place variance (revisits cos ~0.5). ``seed`` identifies the session (its
    viewpoint change and per-keyframe noise).
    """
    d_cond = 0.0 if condition == 0 else dusk
    place = np.sqrt(1 - VIEWPOINT - d_cond) * town.appearance(start, start + n)
    place += np.sqrt(VIEWPOINT) * town.condition_change(1_000_000 + seed, start, start + n)
    if d_cond:
        place += np.sqrt(d_cond) * town.condition_change(condition, start, start + n)
    noise = _gauss(seed * 9_176 + 11, n, town.dim, spectrum(town.dim))
    x = np.sqrt(W_MEAN) * town.mean_direction()[None, :] + np.sqrt(W_PLACE) * place + np.sqrt(W_NOISE) * noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32, copy=False)


def describe(x: np.ndarray, consecutive_pairs: np.ndarray, revisit_pairs: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Statistics to compare with the model's: PCA dimensions for 90 % variance, mean cos of consecutive,
    revisit and random pairs. ``*_pairs``: int (P,2) row pairs."""
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(len(x), min(len(x), 20_000), replace=False)]
    ev = np.linalg.eigvalsh(np.cov(sample.T.astype(np.float64)))[::-1]
    dims90 = int(np.searchsorted(np.cumsum(ev) / ev.sum(), 0.9) + 1)
    rand = rng.integers(0, len(x), (2000, 2))

    def cos(p: np.ndarray) -> float:
        return float(np.mean(np.sum(x[p[:, 0]] * x[p[:, 1]], axis=1))) if len(p) else float("nan")

    return {"pca_dims_90": dims90, "cos_consecutive": cos(consecutive_pairs), "cos_revisit": cos(revisit_pairs),
            "cos_random": cos(rand)}
