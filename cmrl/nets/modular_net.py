"""Soft modularization (Yang et al. 2020) with the routing driven by a condition vector.

The base network is L layers of n modules each (Linear layers). Between layer l and l+1 a routing
matrix p_l (n x n, each row a softmax over the n source modules) decides how much of each module's
output feeds each module of the next layer; after the last layer an n-vector mixes the modules into
the output head. The routing network computes the p_l per sample from the observation embedding
times the condition embedding:

    e   = f_obs(x) * f_cond(c)                        (element-wise, width D)
          or f_cond(c) alone (`routing_input = "cond"`: task-level routing)
    h   = gating MLP(ReLU(e))
    p_1 = softmax_rows(W_1 ReLU(h))                   (n x n)
    p_l = softmax_rows(W_l ReLU(U_l [p_1..p_{l-1}] * h))   for later layers
    w   = softmax(W_last ReLU(U_last [p_1..p_{L-1}] * h))  (the final n-vector)

In Soft Modularization c is a one-hot task id (our `sm` oracle); in CMRL c is the context z inferred
by the PEARL encoder from transitions and the goal text, so the words and the interaction history
reconfigure which modules act. With `text_routing` the condition also holds the goal embedding; when
that is split into verb and object (`goal_text.py`), the object part drives the first routing layer and
the verb part the later ones, each through its own condition embedding and gating layers.

Every forward pass returns its routing (`Routing`), so callers such as the app can draw it. The
network is ensembled (E copies, see `layers.py`): twin critics are one E=2 module.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..config import NetworkConfig
from .layers import EnsembleLinear, EnsembleMLP


class Routing(NamedTuple):
    layers: list[torch.Tensor]
    """L-1 tensors [E, B, n, n]: row j is the distribution over source modules feeding module j."""
    final: torch.Tensor
    """[E, B, n]: how the last layer's modules mix into the output head."""


class SoftModularNet(nn.Module):
    """L layers of n modules routed by a condition; sizes and routing options from `NetworkConfig`.

    `cond_parts` splits the condition's columns between the routing stages: (columns the first
    routing layer reads, columns every later stage reads). None: every stage reads all of it."""

    def __init__(self, in_dim: int, cond_dim: int, out_dim: int, cfg: NetworkConfig,
                 ensemble: int = 1, last_init: float | None = 3e-3,
                 cond_parts: tuple[list[int], list[int]] | None = None):
        super().__init__()
        if cfg.num_layers < 2:
            raise ValueError("a soft-modular network needs at least 2 module layers")
        E, n, w, D = ensemble, cfg.num_modules, cfg.module_width, cfg.embed_dim
        L = cfg.num_layers
        self.E, self.n, self.L, self.w = E, n, L, w
        self.task_level = cfg.routing_input == "cond"
        self.obs_in = EnsembleLinear(E, in_dim, D)
        self.obs_out = EnsembleLinear(E, D, D)
        if cond_parts is None:
            self.cond_first = self.cond_later = None
            first_dim = later_dim = cond_dim
        else:
            self.register_buffer("cond_first", torch.as_tensor(cond_parts[0]), persistent=False)
            self.register_buffer("cond_later", torch.as_tensor(cond_parts[1]), persistent=False)
            first_dim, later_dim = len(cond_parts[0]), len(cond_parts[1])
        gate_dims = [D] + [cfg.gating_hidden] * cfg.gating_layers
        self.cond_embed = _cond_embedding(cfg.cond_embed, E, first_dim, D)
        self.gating = nn.ModuleList(EnsembleLinear(E, a, b) for a, b in zip(gate_dims, gate_dims[1:]))
        if cond_parts is not None:  # the later stages' own condition embedding and gating
            self.cond_embed_later = _cond_embedding(cfg.cond_embed, E, later_dim, D)
            self.gating_later = nn.ModuleList(EnsembleLinear(E, a, b)
                                              for a, b in zip(gate_dims, gate_dims[1:]))
        G = gate_dims[-1]
        self.route_first = EnsembleLinear(E, G, n * n)
        self.route_cond = nn.ModuleList(EnsembleLinear(E, (l + 1) * n * n, G) for l in range(L - 2))
        self.route_next = nn.ModuleList(EnsembleLinear(E, G, n * n) for _ in range(L - 2))
        self.route_last_cond = EnsembleLinear(E, (L - 1) * n * n, G)
        self.route_last = EnsembleLinear(E, G, n)
        # Module weights of layer l: [E * n, in, w], so all n modules of all E members run in one bmm.
        self.module_weights = nn.ParameterList()
        self.module_biases = nn.ParameterList()
        for l in range(L):
            fan_in = D if l == 0 else w
            bound = fan_in ** -0.5
            self.module_weights.append(nn.Parameter(torch.empty(E * n, fan_in, w).uniform_(-bound, bound)))
            self.module_biases.append(nn.Parameter(torch.zeros(E * n, 1, w)))
        self.head = EnsembleLinear(E, w, out_dim, init_scale=last_init)

    def _gate(self, obs_emb: torch.Tensor, cond: torch.Tensor, embed: nn.Module,
              gating: nn.ModuleList) -> torch.Tensor:
        """The routing network's shared state h for one condition part."""
        c = embed(cond)
        h = torch.relu(c if self.task_level or obs_emb is None else obs_emb * c)
        for i, layer in enumerate(gating):
            h = layer(h)
            if i < len(gating) - 1:
                h = torch.relu(h)
        return h

    def routing(self, obs_emb: torch.Tensor | None, cond: torch.Tensor) -> Routing:
        """Routing probabilities from the (pre-activation) observation embedding and the condition
        (the condition alone with task-level routing)."""
        if self.cond_first is None:
            h_first = h = self._gate(obs_emb, cond, self.cond_embed, self.gating)
        else:
            h_first = self._gate(obs_emb, cond.index_select(-1, self.cond_first), self.cond_embed,
                                 self.gating)
            h = self._gate(obs_emb, cond.index_select(-1, self.cond_later), self.cond_embed_later,
                           self.gating_later)
        E, B = h.shape[0], h.shape[1]
        n = self.n
        p = torch.softmax(self.route_first(torch.relu(h_first)).view(E, B, n, n), dim=-1)
        probs, flat = [p], [p.reshape(E, B, n * n)]
        for cond_layer, out_layer in zip(self.route_cond, self.route_next):
            g = torch.relu(cond_layer(torch.cat(flat, -1)) * h)
            p = torch.softmax(out_layer(g).view(E, B, n, n), dim=-1)
            probs.append(p)
            flat.append(p.reshape(E, B, n * n))
        g = torch.relu(self.route_last_cond(torch.cat(flat, -1)) * h)
        return Routing(probs, torch.softmax(self.route_last(g), dim=-1))

    def _first_layer(self, obs_emb: torch.Tensor) -> torch.Tensor:
        """Layer 0: every module reads the same embedding, so all n modules are one wide matmul
        [E, B, D] @ [E, D, n * w]."""
        E, n, w = self.E, self.n, self.w
        W0 = self.module_weights[0].view(E, n, -1, w).transpose(1, 2).reshape(E, -1, n * w)
        b0 = self.module_biases[0].view(E, 1, n * w)
        return torch.baddbmm(b0, torch.relu(obs_emb), W0)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, Routing]:
        """x [E or 1, B, in_dim], cond [E or 1, B, cond_dim] -> out [E, B, out_dim], routing."""
        E, n, w = self.E, self.n, self.w
        obs_emb = self.obs_out(torch.relu(self.obs_in(x)))
        routing = self.routing(obs_emb, cond)
        B = obs_emb.shape[1]
        out = self._first_layer(obs_emb).view(E, B, n, w).transpose(1, 2)
        for l in range(1, self.L):
            inp = torch.relu(_mix(routing.layers[l - 1], out)).reshape(E * n, B, w)
            out = torch.baddbmm(self.module_biases[l], inp, self.module_weights[l]).view(E, n, B, w)
        # final[e, b] = sum_i w[e, b, i] * out[e, i, b]
        weights = routing.final.to(out.dtype).permute(0, 2, 1).unsqueeze(-1)  # [E, n, B, 1]
        final = (weights * out).sum(1)
        return self.head(torch.relu(final)), routing


def _cond_embedding(kind: str, E: int, cond_dim: int, D: int) -> nn.Module:
    """`linear`: one layer (its parameters keep the name older checkpoints use); `mlp`: two."""
    if kind == "mlp":
        return EnsembleMLP(E, cond_dim, [D], D)
    return EnsembleLinear(E, cond_dim, D)


def _mix(p: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """mixed[e, j, b] = sum_i p[e, b, j, i] * out[e, i, b]; p [E, B, n, n], out [E, n, B, w]: one
    batched matmul over the sample-major view."""
    return torch.matmul(p.to(out.dtype), out.transpose(1, 2)).transpose(1, 2)
