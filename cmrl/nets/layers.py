"""Ensembled dense layers: E independent copies of a layer applied in one batched matmul.

Twin critics are an ensemble of E=2 networks; the actor is E=1. Running both critics through one
`baddbmm` instead of two networks halves the number of small ops in every SAC update.
Inputs are laid out [E, B, features]; an input of [1, B, features] is shared by all members.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class EnsembleLinear(nn.Module):
    def __init__(self, ensemble: int, in_dim: int, out_dim: int, init_scale: float | None = None):
        super().__init__()
        self.ensemble, self.in_dim, self.out_dim = ensemble, in_dim, out_dim
        self.weight = nn.Parameter(torch.empty(ensemble, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(ensemble, 1, out_dim))
        bound = init_scale if init_scale is not None else 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        if init_scale is not None:
            nn.init.uniform_(self.bias, -init_scale, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.ensemble:
            x = x.expand(self.ensemble, *x.shape[1:])
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Module):
    """ReLU MLP, E copies. `hidden` may be empty (then it is one linear layer)."""

    def __init__(self, ensemble: int, in_dim: int, hidden: list[int], out_dim: int,
                 last_init: float | None = None):
        super().__init__()
        dims = [in_dim, *hidden]
        self.hidden = nn.ModuleList(EnsembleLinear(ensemble, a, b) for a, b in zip(dims, dims[1:]))
        self.last = EnsembleLinear(ensemble, dims[-1], out_dim, init_scale=last_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.last(x)


def mlp(in_dim: int, hidden: list[int], out_dim: int) -> nn.Sequential:
    """Plain ReLU MLP for single networks (context encoder)."""
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden]
    for a, b in zip(dims, dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*layers)
