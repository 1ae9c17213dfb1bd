"""SAC's actor (tanh-Gaussian) and twin critics, on a soft-modular, a plain MLP or a CARE backbone.

Both take an observation batch and a condition batch (z for cmrl/pearl, a one-hot task id for sm,
the goal-text embedding for care). The backbone kind comes from the agent kind (`agent_kinds.py`):
- `modular`: modules routed by the condition (`modular_net.py`);
- `mlp` (PEARL's): an MLP on concat(obs, condition);
- `care`: the state through a mixture of encoders weighted by attention over the condition
  (`mixture_encoder.py`), then an MLP on [mixture ; task encoding ; the rest of the input (the
  critic's action)].
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ..config import NetworkConfig
from .layers import EnsembleMLP
from .mixture_encoder import MixtureEncoder
from .modular_net import Routing, SoftModularNet
from .normalizer import ObsNormalizer

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
BACKBONES = ("modular", "mlp", "care")


class Backbone(nn.Module):
    """E copies of f(x, cond) -> out, returning (out [E, B, out_dim], routing or None).

    `kind` is one of BACKBONES. The first `state_dim` columns of x are the state (care encodes only
    those; the rest, the critic's action, joins its trunk); default: all of x."""

    def __init__(self, kind: str, in_dim: int, cond_dim: int, out_dim: int,
                 cfg: NetworkConfig, ensemble: int,
                 cond_parts: tuple[list[int], list[int]] | None = None,
                 state_dim: int | None = None):
        super().__init__()
        if kind not in BACKBONES:
            raise ValueError(f"unknown backbone {kind!r}; use one of {', '.join(BACKBONES)}")
        self.kind = kind
        self.modular = kind == "modular"
        self.state_dim = in_dim if state_dim is None else state_dim
        self.concat_cond = kind == "mlp" or (self.modular and cfg.obs_takes_context)
        x_dim = in_dim + (cond_dim if self.concat_cond else 0)
        self.mixture = None
        if self.modular:
            self.net = SoftModularNet(x_dim, cond_dim, out_dim, cfg, ensemble=ensemble,
                                      cond_parts=cond_parts)
        elif kind == "care":
            self.mixture = MixtureEncoder(ensemble, self.state_dim, cond_dim, cfg.care_experts,
                                          cfg.care_width)
            self.net = EnsembleMLP(ensemble, self.mixture.out_dim + in_dim - self.state_dim,
                                   list(cfg.mlp_hidden), out_dim, last_init=3e-3)
        else:
            self.net = EnsembleMLP(ensemble, x_dim, list(cfg.mlp_hidden), out_dim, last_init=3e-3)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, Routing | None]:
        x, cond = x.unsqueeze(0), cond.unsqueeze(0)
        if self.concat_cond:
            x = torch.cat([x, cond], dim=-1)
        if self.modular:
            return self.net(x, cond)
        if self.mixture is not None:
            feats, _ = self.mixture(x[..., :self.state_dim], cond)
            rest = x[..., self.state_dim:]
            if rest.shape[-1]:
                feats = torch.cat([feats, rest.expand(feats.shape[0], *rest.shape[1:])], dim=-1)
            return self.net(feats), None
        return self.net(x), None


def standard_normal(like: torch.Tensor, generator=None) -> torch.Tensor:
    """N(0, 1) draws shaped like `like`: from `generator` (torch's global RNG when None), or, given
    a list of generators, row i (dim 0) from generator i alone, so a row's draws do not depend on
    the rows beside it (the evaluator's per-variation generators)."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.randn(like.shape[1:], generator=g, dtype=like.dtype,
                                        device=like.device) for g in generator])
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)


class ActorOutput(NamedTuple):
    action: torch.Tensor
    """[B, act_dim] in [-1, 1]: sampled, or tanh(mean) when deterministic."""
    log_prob: torch.Tensor | None
    """[B] log-density of `action` (tanh-corrected), when asked for."""
    mean_action: torch.Tensor
    """[B, act_dim] tanh(mean): the deterministic action."""
    routing: Routing | None
    """Routing of this pass, members axis squeezed ([B, n, n] per layer, [B, n] final)."""


class Actor(nn.Module):
    def __init__(self, backbone: str, obs_dim: int, act_dim: int, cond_dim: int, cfg: NetworkConfig,
                 cond_parts: tuple[list[int], list[int]] | None = None):
        super().__init__()
        self.act_dim = act_dim
        self.obs_norm = ObsNormalizer(obs_dim)
        self.body = Backbone(backbone, obs_dim, cond_dim, 2 * act_dim, cfg, ensemble=1,
                             cond_parts=cond_parts)

    def forward(self, obs: torch.Tensor, cond: torch.Tensor, deterministic: bool = False,
                with_log_prob: bool = True,
                generator: torch.Generator | None = None) -> ActorOutput:
        """`generator` draws the action noise (`standard_normal`: one, a list of one per row, or
        None for torch's global RNG)."""
        out, routing = self.body(self.obs_norm(obs), cond)
        mean, log_std = out[0].float().split(self.act_dim, dim=-1)
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        mean_action = torch.tanh(mean)
        if deterministic:
            pre_tanh = mean
        else:
            pre_tanh = mean + log_std.exp() * standard_normal(mean, generator)
        action = torch.tanh(pre_tanh)
        log_prob = None
        if with_log_prob:
            # Gaussian log-density of pre_tanh, minus log|d tanh/dx| = 2(log 2 - x - softplus(-2x)).
            noise = (pre_tanh - mean) / log_std.exp()
            log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
            log_prob = log_prob - (2 * (math.log(2) - pre_tanh - nn.functional.softplus(-2 * pre_tanh))).sum(-1)
        if routing is not None:
            routing = Routing([p[0] for p in routing.layers], routing.final[0])
        return ActorOutput(action, log_prob, mean_action, routing)


class TwinCritic(nn.Module):
    """Two Q-functions as one ensemble of E=2: forward returns q [2, B]."""

    def __init__(self, backbone: str, obs_dim: int, act_dim: int, cond_dim: int, cfg: NetworkConfig,
                 cond_parts: tuple[list[int], list[int]] | None = None):
        super().__init__()
        self.obs_norm = ObsNormalizer(obs_dim)
        self.body = Backbone(backbone, obs_dim + act_dim, cond_dim, 1, cfg, ensemble=2,
                             cond_parts=cond_parts, state_dim=obs_dim)

    def forward(self, obs: torch.Tensor, action: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        q, _ = self.body(torch.cat([self.obs_norm(obs), action], dim=-1), cond)
        return q[..., 0].float()
