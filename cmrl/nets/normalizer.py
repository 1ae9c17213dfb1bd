"""Observation standardisation: x -> (x - mean) / std with per-dimension statistics frozen for a run.

Meta-World observations are positions in metres and quaternions with very different spreads; the
scripted experts are proportional controllers with large gains on small position differences. Fed
raw, the networks spend thousands of steps learning the scale (measured on ML4's expert data: action
MSE after 3,000 behaviour-cloning steps falls 2-3x with standardised inputs, for the MLP and the
soft-modular net alike). As in TD3+BC, the statistics come from the data the run first trains on
(the offline dataset, the scripted prior data, or the warm-up buffer), pooled over the meta-train
tasks, and are then fixed, so the held-out task is never looked at.

Every network keeps its own copy as buffers (saved with the weights). Identity statistics (mean 0,
std 1) are what runs without standardisation, and checkpoints older than this module, load as.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

STD_FLOOR = 1e-2
"""Lower bound on a dimension's std: dimensions constant in the data (padding, masked goal) stay
near their raw value instead of blowing up when they move at test time."""
CLIP = 10.0
"""Standardised values are clipped to [-CLIP, CLIP] (a state far outside the data)."""


class ObsNormalizer(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return ((obs - self.mean.to(obs.dtype)) / self.std.to(obs.dtype)).clamp(-CLIP, CLIP)

    @torch.no_grad()
    def set(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean.to(self.mean))
        self.std.copy_(std.to(self.std).clamp(min=STD_FLOOR))

    @property
    def is_identity(self) -> bool:
        return bool((self.mean == 0).all() and (self.std == 1).all())


def observation_stats(obs: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std (floored at STD_FLOOR) of observations [N, obs_dim]."""
    x = torch.as_tensor(np.asarray(obs, dtype=np.float64))
    if x.ndim != 2 or len(x) < 2:
        raise ValueError("observation statistics need at least 2 observations [N, obs_dim]")
    return x.mean(0).float(), x.std(0).clamp(min=STD_FLOOR).float()
