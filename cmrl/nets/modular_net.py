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

Two implementations of the same maths (issue 13, "training speed"): the fast one (default, for
batches large enough that it pays, `fast_kernels_pay`) avoids the copies the reference makes between the
routing's sample-major and the modules' module-major layouts and uses a softmax written for the tiny
n-way rows (torch's own is ~2.5x slower there on CPU); and, inside `grouped_rows`, task-level routing
is computed once per task instead of once per row (any batch size).
`reference_kernels(module, True)` switches a network back to the reference code (the update's
`eager` path; tests compare the two).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple

import torch
from torch import nn

from ..config import NetworkConfig
from .layers import EnsembleLinear, EnsembleMLP


FAST_KERNEL_ROWS = 384
"""Rows from which the fast kernels run with one intra-op thread, and on CUDA. Smaller batches
(acting: one row per env) run the reference kernels: the fast ones cost up to 1.3x below 64
rows, forward + backward."""

FAST_KERNEL_ROWS_PER_THREAD = 512
"""With several CPU threads: rows per thread from which the fast kernels run."""


def fast_kernels_pay(rows: int, device: torch.device) -> bool:
    """Whether a batch of `rows` rows runs the fast kernels. The reference kernels split across
    intra-op threads better, so with several CPU threads the bar is FAST_KERNEL_ROWS_PER_THREAD
    rows per thread. Measured inside whole fast cmrl and sm updates on the 2-core EPYC,
    interleaved in one process, time with the reference kernels over time with the fast ones:
    - two threads: 0.90-0.92 at 576 rows per thread (3 x 384);
    - two threads, 384 rows per thread (3 x 256): 1.04-1.11 in seven of eight probes of 24-60 s
      and 0.97 in the eighth;
    - two threads, 192 (3 x 128): 1.06-1.12;
    - one thread: 0.93 at 384 rows and 0.89 at 768.
    Before 2026-11-27 the bar was 384 rows per thread; before that, 384 rows whatever the threads.
    On CUDA: FAST_KERNEL_ROWS rows (what the GPU figures were measured with)."""
    if device.type == "cpu":
        threads = torch.get_num_threads()
        if threads > 1:
            return rows >= max(FAST_KERNEL_ROWS, FAST_KERNEL_ROWS_PER_THREAD * threads)
    return rows >= FAST_KERNEL_ROWS


class Routing(NamedTuple):
    layers: list[torch.Tensor]
    """L-1 tensors [E, B, n, n]: row j is the distribution over source modules feeding module j."""
    final: torch.Tensor
    """[E, B, n]: how the last layer's modules mix into the output head."""


class SoftModularNet(nn.Module):
    """L layers of n modules routed by a condition; sizes and routing options from `NetworkConfig`.

    `cond_parts` splits the condition's columns between the routing stages: (columns the first
    routing layer reads, columns every later stage reads). None: every stage reads all of it."""

    reference: bool = False
    """Run the reference implementation (set through `reference_kernels`)."""
    row_groups: int | None = None
    """Set by `grouped_rows`: the rows come in this many contiguous equal-sized groups that share
    one condition (one group per task in a SAC update). Task-level routing then runs per group."""

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

    def routing(self, obs_emb: torch.Tensor, cond: torch.Tensor) -> Routing:
        """Routing probabilities from the (pre-activation) observation embedding and the condition
        (the condition alone with task-level routing)."""
        if self.reference:
            return self._routing(obs_emb, cond, _torch_softmax)
        rows = self._group_size(cond)
        if rows is None:
            big = fast_kernels_pay(cond.shape[-2], cond.device)
            return self._routing(obs_emb, cond, small_softmax if big else _torch_softmax)
        # Task-level routing reads the condition alone, and every row of a group has the same
        # one: route the first row of each group and repeat (gradients sum back over the rows).
        grouped = self._routing(None, cond[:, ::rows], _torch_softmax)
        return Routing([p.repeat_interleave(rows, dim=1) for p in grouped.layers],
                       grouped.final.repeat_interleave(rows, dim=1))

    def _group_size(self, cond: torch.Tensor) -> int | None:
        """Rows per group when task-level routing may run once per group (see `grouped_rows`)."""
        G, B = self.row_groups, cond.shape[-2]
        if not self.task_level or not G or G >= B or B % G:
            return None
        return B // G

    def _routing(self, obs_emb: torch.Tensor | None, cond: torch.Tensor, softmax) -> Routing:
        if self.cond_first is None:
            h_first = h = self._gate(obs_emb, cond, self.cond_embed, self.gating)
        else:
            h_first = self._gate(obs_emb, cond.index_select(-1, self.cond_first), self.cond_embed,
                                 self.gating)
            h = self._gate(obs_emb, cond.index_select(-1, self.cond_later), self.cond_embed_later,
                           self.gating_later)
        E, B = h.shape[0], h.shape[1]
        n = self.n
        p = softmax(self.route_first(torch.relu(h_first)).view(E, B, n, n))
        probs, flat = [p], [p.reshape(E, B, n * n)]
        for cond_layer, out_layer in zip(self.route_cond, self.route_next):
            g = torch.relu(cond_layer(torch.cat(flat, -1)) * h)
            p = softmax(out_layer(g).view(E, B, n, n))
            probs.append(p)
            flat.append(p.reshape(E, B, n * n))
        g = torch.relu(self.route_last_cond(torch.cat(flat, -1)) * h)
        return Routing(probs, softmax(self.route_last(g)))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, Routing]:
        """x [E or 1, B, in_dim], cond [E or 1, B, cond_dim] -> out [E, B, out_dim], routing."""
        if self.reference or not fast_kernels_pay(x.shape[-2], x.device):
            return self._forward_reference(x, cond)
        E, n, w = self.E, self.n, self.w
        obs_emb = self.obs_out(torch.relu(self.obs_in(x)))
        routing = self.routing(obs_emb, cond)
        B = obs_emb.shape[1]
        out = self._first_layer(obs_emb).view(E, B, n, w)  # sample-major: [E, B, n, w]
        finals = []
        # Per member: the mix is a batched matmul over samples of [n, n] @ [n, w] (sample-major),
        # the modules a batched matmul over modules of [B, w] @ [w, w] (module-major). A strided
        # view of one is a valid matrix batch for the other, so no layout is ever copied; with E
        # members in one batch the strides would not merge, hence the loop over (at most 2) members.
        for e, h in enumerate(out.unbind(0)):
            for l in range(1, self.L):
                mixed = torch.bmm(routing.layers[l - 1][e].to(h.dtype), h)  # [B, n, w]
                W = self.module_weights[l][e * n:(e + 1) * n]
                b = self.module_biases[l][e * n:(e + 1) * n]
                hm = torch.baddbmm(b, torch.relu_(mixed).transpose(0, 1), W)  # [n, B, w]
                h = hm.transpose(0, 1)
            # final[b] = sum_i w[b, i] * h[b, i]: broadcast over the module-major memory (a
            # per-sample [1, n] @ [n, w] matmul is ~4x slower here, forward + backward)
            weights = routing.final[e].to(hm.dtype).t().unsqueeze(-1)  # [n, B, 1]
            finals.append((weights * hm).sum(0))
        final = torch.stack(finals) if E > 1 else finals[0].unsqueeze(0)
        return self.head(torch.relu_(final)), routing

    def _first_layer(self, obs_emb: torch.Tensor) -> torch.Tensor:
        """Layer 0: every module reads the same embedding, so all n modules are one wide matmul
        [E, B, D] @ [E, D, n * w]."""
        E, n, w = self.E, self.n, self.w
        W0 = self.module_weights[0].view(E, n, -1, w).transpose(1, 2).reshape(E, -1, n * w)
        b0 = self.module_biases[0].view(E, 1, n * w)
        return torch.baddbmm(b0, torch.relu(obs_emb), W0)

    def _forward_reference(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, Routing]:
        """The reference implementation: module-major activations, the mix through `_mix`."""
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
    """mixed[e, j, b] = sum_i p[e, b, j, i] * out[e, i, b]; p [E, B, n, n], out [E, n, B, w].

    One batched matmul over the sample-major view (measured ~3.5x faster on CPU than broadcasted
    multiply-adds or an einsum)."""
    return torch.matmul(p.to(out.dtype), out.transpose(1, 2)).transpose(1, 2)


def _torch_softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, dim=-1)


class _SmallSoftmax(torch.autograd.Function):
    """Softmax over a short last dimension, forward and backward in a few whole-tensor ops.

    torch's CPU softmax kernel vectorises along the softmaxed dimension, which here has n = 2..8
    entries, and runs ~2.5x slower (forward + backward) than this on the routing's [E, B, n, n]."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        e = (x - x.amax(-1, keepdim=True)).exp_()
        y = e.div_(e.sum(-1, keepdim=True))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        gy = grad * y
        return gy.sub_(y * gy.sum(-1, keepdim=True))


def small_softmax(x: torch.Tensor) -> torch.Tensor:
    """softmax(x, dim=-1) in float32 (as torch.softmax under autocast), for short rows."""
    return _SmallSoftmax.apply(x.float())


def reference_kernels(module: nn.Module, on: bool = True) -> None:
    """Make every soft-modular network in `module` run the reference implementation (on) or the
    fast one (off). Same maths either way; the reference is what the eager update measures."""
    for m in module.modules():
        if isinstance(m, SoftModularNet):
            m.reference = on


@contextlib.contextmanager
def grouped_rows(module: nn.Module, groups: int) -> Iterator[None]:
    """Within the block, the soft-modular networks in `module` may assume that the rows of every
    batch come in `groups` contiguous equal-sized groups sharing one condition (a SAC update: T
    tasks x B rows, the task's z repeated B times), so task-level routing runs once per group.
    Only a caller that builds its batches that way may use it."""
    nets = [m for m in module.modules() if isinstance(m, SoftModularNet)]
    before = [m.row_groups for m in nets]
    for m in nets:
        m.row_groups = groups
    try:
        yield
    finally:
        for m, g in zip(nets, before):
            m.row_groups = g
