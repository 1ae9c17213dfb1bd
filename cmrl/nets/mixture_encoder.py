"""CARE's state encoder: a mixture of k state encoders weighted by attention over the goal text.

CARE (Sodhani, Zhang & Pineau 2021, "Multi-Task Reinforcement Learning with Context-based
Representations"; facebookresearch/mtrl) conditions a multi-task SAC agent on a language embedding
of the task's description. For a state s and a goal-text embedding g:

    task = f_task(g)                       the embedding projected by an MLP (the task encoding)
    w    = softmax(f_att(stop_grad(task)))  attention over the k state encoders, [k]
    h    = sum_j w_j f_j(s)                 the mixture of k MLP state encoders
    out  = [h ; task]                       what the actor's or critic's trunk reads

As in mtrl's CARE configuration: each state encoder is two layers of `width` (50) units; the task
encoder and the attention are MLPs with two hidden layers of `width`; the attention reads the task
encoding with its gradient stopped, so it trains only its own weights; soft attention at
temperature 1; the trunk also reads the task encoding. mtrl embeds descriptions with RoBERTa; here
the goal vectors come from the run's text encoder (`goal_text.embed_goals`).

Where this departs from mtrl: mtrl ties the actor's state encoders to the critic's and trains them
by the critic loss only; here each network (the actor, each of the twin critics) has its own mixture,
task encoder and attention, trained by its own loss, as every backbone in this project is.

All of it is ensembled (`layers.EnsembleMLP`): E networks x k encoders run as one batched op.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import EnsembleMLP


class MixtureEncoder(nn.Module):
    """E independent CARE encoders: (state [1 or E, B, state_dim], goal [1 or E, B, text_dim]) ->
    (features [E, B, out_dim], attention weights [E, B, k])."""

    def __init__(self, ensemble: int, state_dim: int, text_dim: int, experts: int, width: int):
        super().__init__()
        if experts < 1 or width < 1 or text_dim < 1:
            raise ValueError(f"a mixture encoder needs experts, width and text_dim >= 1, got "
                             f"{experts}, {width}, {text_dim}")
        self.ensemble, self.experts, self.width = ensemble, experts, width
        self.task_encoder = EnsembleMLP(ensemble, text_dim, [width, width], width)
        self.attention = EnsembleMLP(ensemble, width, [width, width], experts)
        self.encoders = EnsembleMLP(ensemble * experts, state_dim, [width], width)
        self.out_dim = 2 * width

    def attention_weights(self, goal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [E, B, k] summing to 1 over k, task encoding [E, B, width])."""
        task = self.task_encoder(goal)
        return torch.softmax(self.attention(task.detach()).float(), dim=-1), task

    def forward(self, state: torch.Tensor, goal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        E, k = self.ensemble, self.experts
        weights, task = self.attention_weights(goal)
        if state.shape[0] == E and E > 1:  # one state batch per member: k copies of each
            state = state.repeat_interleave(k, dim=0)
        h = self.encoders(state)  # [E * k, B, width], member-major
        h = h.view(E, k, *h.shape[1:])
        mixed = (weights.to(h.dtype).permute(0, 2, 1).unsqueeze(-1) * h).sum(1)  # [E, B, width]
        return torch.cat([mixed, task.to(mixed.dtype)], dim=-1), weights
