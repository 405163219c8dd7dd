"""SALAD aggregation (Izquierdo & Civera, CVPR 2024): optimal-transport soft assignment of local
features to clusters with a learned dustbin, plus an optional global token from the CLS token.

Output: L2-normalised (B, num_clusters*cluster_dim + token_dim), or (B, descriptor_dim) after an
optional final linear projection (as MegaLoc), re-normalised.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def log_sinkhorn(scores: torch.Tensor, dustbin: torch.Tensor, iters: int) -> torch.Tensor:
    """Log-domain Sinkhorn over clusters + a dustbin row.

    Marginals (before the common 1/(n+m) normalisation): 1 per cluster, n-m for the dustbin row,
    1 per local feature; so every feature is fully distributed and the dustbin absorbs the
    features no cluster wants.

    Args:
        scores: float (B, m, n) cluster-to-feature scores.
        dustbin: float scalar, the learned dustbin score.
        iters: Sinkhorn iterations (3 in SALAD).
    Returns:
        float (B, m+1, n) log transport plan scaled so each feature column sums to 1 (exp).
    """
    b, m, n = scores.shape
    dust = dustbin.to(scores.dtype).expand(b, 1, n)
    log_k = torch.cat((scores, dust), dim=1)  # (B, m+1, n)
    norm = -math.log(n + m)
    log_a = torch.tensor([norm] * m + [norm + math.log(n - m)], dtype=scores.dtype, device=scores.device)
    log_b = torch.full((n,), norm, dtype=scores.dtype, device=scores.device)
    u = torch.zeros(b, m + 1, dtype=scores.dtype, device=scores.device)
    v = torch.zeros(b, n, dtype=scores.dtype, device=scores.device)
    for _ in range(iters):
        u = log_a - torch.logsumexp(log_k + v.unsqueeze(1), dim=2)
        v = log_b - torch.logsumexp(log_k + u.unsqueeze(2), dim=1)
    return log_k + u.unsqueeze(2) + v.unsqueeze(1) - norm


class Salad(nn.Module):
    """SALAD aggregator.

    Args:
        in_channels: C of the local feature map.
        token_channels: size of the global (CLS) token input.
        num_clusters: m. cluster_dim: l. token_dim: g (0 = no global token).
        hidden_dim: width of the score / feature / token heads (512 in SALAD).
        dropout: dropout in the score and feature heads (0.3 in SALAD).
        sinkhorn_iters: 3 in SALAD.
        descriptor_dim: optional final linear projection size (None = m*l+g).
        layout: order of the cluster part: "cluster_major" (index k*l+d) or "channel_major"
            (index d*m+k, the SALAD authors' order, needed to reproduce their descriptors).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        token_channels: int,
        num_clusters: int = 64,
        cluster_dim: int = 128,
        token_dim: int = 256,
        hidden_dim: int = 512,
        dropout: float = 0.3,
        sinkhorn_iters: int = 3,
        descriptor_dim: int | None = None,
        layout: str = "cluster_major",
    ) -> None:
        super().__init__()
        if layout not in ("cluster_major", "channel_major"):
            raise ValueError(f"SALAD layout {layout!r} unknown; valid: cluster_major, channel_major")
        self.layout = layout
        self.num_clusters = num_clusters
        self.cluster_dim = cluster_dim
        self.token_dim = token_dim
        self.sinkhorn_iters = sinkhorn_iters
        self.score = _head(in_channels, hidden_dim, num_clusters, dropout)
        self.cluster_features = _head(in_channels, hidden_dim, cluster_dim, dropout)
        self.token_features = (
            nn.Sequential(nn.Linear(token_channels, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, token_dim))
            if token_dim > 0
            else None
        )
        self.dustbin = nn.Parameter(torch.tensor(1.0))
        aggregated = num_clusters * cluster_dim + token_dim
        self.projection = nn.Linear(aggregated, descriptor_dim) if descriptor_dim else None
        self.out_dim = descriptor_dim or aggregated

    def forward(self, features: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """Args: features float (B,C,h,w); token float (B,token_channels).

        Returns: descriptor float32 (B, out_dim), L2-normalised.
        """
        f = self.cluster_features(features).flatten(2)  # (B, l, n)
        p = self.score(features).flatten(2)  # (B, m, n)
        p = log_sinkhorn(p, self.dustbin, self.sinkhorn_iters).exp()[:, :-1]  # drop dustbin row
        # assignment-weighted sums of local features, no centroid subtraction: (B,m,n)@(B,n,l)
        agg = torch.matmul(p, f.transpose(1, 2))
        agg = F.normalize(agg, p=2, dim=-1)  # intra-normalisation per cluster: (B, m, l)
        if self.layout == "channel_major":
            agg = agg.transpose(1, 2)  # (B, l, m): flattened index d*m+k
        parts = [agg.flatten(1)]
        if self.token_features is not None:
            parts.insert(0, F.normalize(self.token_features(token), p=2, dim=-1))
        desc = F.normalize(torch.cat(parts, dim=-1), p=2, dim=-1)
        if self.projection is not None:
            desc = F.normalize(self.projection(desc), p=2, dim=-1)
        return desc


def _head(in_channels: int, hidden: int, out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, kernel_size=1),
        nn.Dropout(dropout),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out, kernel_size=1),
    )
