"""Channel adapter and semantic gate: CLIP image embedding -> spatial mask over the patch grid."""

from __future__ import annotations

import torch
from torch import nn


class ChannelAdapter(nn.Module):
    """1x1 conv C -> out_channels, BatchNorm, ReLU: (B,C,h,w) -> (B,out_channels,h,w)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        # no conv bias: BatchNorm's shift replaces it
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SemanticGate(nn.Module):
    """MLP embed_dim -> hidden_dim -> h*w, sigmoid, reshaped to a (B,1,h,w) mask in [0,1].

    The design card's "Linear(768->512), Sigmoid, reshape" cannot produce a 24x24 mask from 512
    values; the hidden layer reconciles the two (reference-facts.md).
    """

    def __init__(self, embed_dim: int, hidden_dim: int, grid_size: tuple[int, int]) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, grid_size[0] * grid_size[1]),
        )

    def open_(self, logit: float = 10.0) -> SemanticGate:
        """Start fully open: mask = sigmoid(``logit``) everywhere whatever the embedding (1 - 4.5e-5 at 10).

        The last layer's weights become zero, so a gate trained on top of a working model starts
        from that model's descriptors (within ~1e-5; at 6, a 0.25 % uniform damping already moved one
        validation query in 100). Adam's step does not shrink with the small sigmoid slope there
        (the gradients stay far above its epsilon), so the gate still learns.
        """
        last = self.mlp[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(logit)
        return self

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """Args: embedding float (B, embed_dim). Returns: mask float32 (B,1,h,w) in [0,1]."""
        logits = self.mlp(embedding.float())
        return torch.sigmoid(logits).reshape(-1, 1, *self.grid_size)
