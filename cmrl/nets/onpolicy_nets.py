"""Policies of the on-policy agents: rl2's GRU policy and maml's Gaussian MLP.

Both act with a diagonal Gaussian whose log-std is a learned, state-independent parameter; the
sampled action is stored as drawn (its log-probability is that of the draw) and clipped to [-1, 1]
only when it goes to the env.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """log N(action; mean, exp(log_std)^2), summed over the last (action) dimension."""
    z = (action - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """Entropy of the diagonal Gaussian (the same for every state)."""
    return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)


def _small_init(layer: nn.Linear, scale: float = 0.01) -> nn.Linear:
    """A last layer that starts near zero, so the first policy is centred on a zero action."""
    nn.init.uniform_(layer.weight, -scale, scale)
    nn.init.zeros_(layer.bias)
    return layer


class GaussianMLPPolicy(nn.Module):
    """tanh MLP -> action mean; `log_std` a parameter. Every parameter is adapted by MAML's inner
    step, so `forward_with(params, obs)` runs the net with any set of them (torch.func)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], init_std: float):
        super().__init__()
        layers: list[nn.Module] = []
        dims = [obs_dim, *hidden]
        for a, b in zip(dims, dims[1:]):
            layers += [nn.Linear(a, b), nn.Tanh()]
        layers.append(_small_init(nn.Linear(dims[-1], act_dim)))
        self.body = nn.Sequential(*layers)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean [..., A], log_std [A])."""
        return self.body(obs), self.log_std

    def forward_with(self, params: dict[str, torch.Tensor],
                     obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return functional_call(self, params, (obs,))


class RL2Policy(nn.Module):
    """RL2's recurrent policy: (obs, previous action, previous reward, done flag) -> tanh layer ->
    GRU -> action mean and value. The hidden state is the agent's memory of the trial."""

    def __init__(self, obs_dim: int, act_dim: int, embed: int, hidden: int, init_std: float):
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden_dim = obs_dim, act_dim, hidden
        self.in_dim = obs_dim + act_dim + 2
        self.embed = nn.Linear(self.in_dim, embed)
        self.gru = nn.GRU(embed, hidden, batch_first=True)
        self.mean = _small_init(nn.Linear(hidden, act_dim))
        self.value = nn.Linear(hidden, 1)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))
        # The value head predicts standardised returns: running mean and variance of the value
        # targets (ValueNorm), so the value loss stays near 1 whatever the reward scale and does
        # not drown the policy gradient in the shared GRU under the gradient-norm clip.
        self.register_buffer("ret_mean", torch.zeros(()))
        self.register_buffer("ret_var", torch.ones(()))
        self.register_buffer("ret_count", torch.full((), 1e-4))

    def update_return_stats(self, targets: torch.Tensor) -> None:
        """Fold a batch of value targets into the running mean and variance (parallel formula)."""
        n, mean, var = targets.numel(), targets.mean(), targets.var(unbiased=False)
        total = self.ret_count + n
        delta = mean - self.ret_mean
        self.ret_var.copy_((self.ret_var * self.ret_count + var * n
                            + delta ** 2 * self.ret_count * n / total) / total)
        self.ret_mean.add_(delta * n / total)
        self.ret_count.copy_(total)

    def normalize_returns(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.ret_mean) / self.ret_var.clamp_min(1e-8).sqrt()

    def initial_state(self, n: int, device=None) -> torch.Tensor:
        """The hidden state at the start of a trial: zeros [1, n, H]."""
        return torch.zeros(1, n, self.hidden_dim, device=device)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, in_dim], h [1, B, H] (None: a trial's start) -> mean [B, T, A], value [B, T]
        (standardised: `normalize_returns`' units), log_std [A], the hidden state after the last
        step [1, B, H]."""
        out, h = self.gru(torch.tanh(self.embed(x)), h)
        return self.mean(out), self.value(out).squeeze(-1), self.log_std, h

    def value_in_reward_units(self, value: torch.Tensor) -> torch.Tensor:
        return value * self.ret_var.clamp_min(1e-8).sqrt() + self.ret_mean
