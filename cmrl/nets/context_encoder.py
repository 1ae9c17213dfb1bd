"""PEARL's probabilistic context encoder, conditioned on the goal text (CMRL).

Each transition c_j = (s, a, r, s') -- concatenated with a projection of the goal embedding g --
maps to a Gaussian factor N(mu_j, var_j). The posterior over the context z is their product:

    var = 1 / sum_j (1 / var_j),     mu = var * sum_j (mu_j / var_j)

(PEARL, oyster `_product_of_gaussians`; variances clamped at 1e-7). CMRL departs from PEARL in one
place: the goal text gets a Gaussian factor of its own, N(mu_g, var_g) = f(g), multiplied in with the
transitions'. With no transitions yet, the posterior is that goal factor, so the words alone already
move z away from the N(0, I) prior, and every transition then sharpens it. PEARL has no text: its
posterior with no transitions is the prior N(0, I) itself.

The KL of the posterior to N(0, I) is the regulariser weighted by beta (`sac.kl_prior = "text"`
measures it against the goal factor instead). Optional: `task_contrastive_loss`, an InfoNCE term that
asks two disjoint contexts of one task for nearby posteriors, and a reward decoder r(s, a, s', z)
(VariBAD's decoder, without its transition half): z must predict the task's rewards on transitions
it was not inferred from, which only the goal explains, whoever collected them; at meta-test the
decoder can also refine the product's mean (`refine_mean`, `sac.z_refine_steps`). The encoder is
trained by the critic's Bellman loss, the KL and those options (the actor sees z detached); see
`sac.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import mlp
from .normalizer import ObsNormalizer

MIN_VAR = 1e-7


def product_of_gaussians(mu: torch.Tensor, var: torch.Tensor,
                         mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Product of the Gaussian factors along dim -2: mu, var [..., N, L] -> [..., L].

    `mask` [..., N] (1 keeps a factor, 0 drops it) lets contexts of different lengths share a batch.
    With no factor kept the result is N(0, I), the prior."""
    precision = 1.0 / var.clamp(min=MIN_VAR)
    if mask is not None:
        precision = precision * mask.unsqueeze(-1).to(precision.dtype)
    total = precision.sum(-2)
    weighted = (mu * precision).sum(-2)
    empty = total <= 0
    post_var = torch.where(empty, torch.ones_like(total), 1.0 / total.clamp(min=1e-30))
    post_mu = torch.where(empty, torch.zeros_like(weighted), post_var * weighted)
    return post_mu, post_var


def kl_to_standard_normal(mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag var) || N(0, I)), summed over the last dim."""
    return 0.5 * (var + mu.pow(2) - 1.0 - var.clamp(min=MIN_VAR).log()).sum(-1)


def kl_gaussians(mu: torch.Tensor, var: torch.Tensor, mu_p: torch.Tensor,
                 var_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag var) || N(mu_p, diag var_p)), summed over the last dim."""
    var, var_p = var.clamp(min=MIN_VAR), var_p.clamp(min=MIN_VAR)
    return 0.5 * (var / var_p + (mu - mu_p).pow(2) / var_p - 1.0 + var_p.log() - var.log()).sum(-1)


def task_contrastive_loss(mu_a: torch.Tensor, mu_b: torch.Tensor,
                          temperature: float = 1.0) -> torch.Tensor:
    """InfoNCE over tasks: mu_a[i] and mu_b[i] (posterior means of two disjoint contexts of task i)
    must be nearer each other, in squared distance, than mu_a[i] is to any mu_b[j], j != i. [T, L]
    each, T >= 2; symmetric in a and b."""
    logits = -torch.cdist(mu_a, mu_b).pow(2) / temperature
    labels = torch.arange(len(mu_a), device=mu_a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


class ContextEncoder(nn.Module):
    """q(z | c_1..N, g): one Gaussian factor per transition (and one for the goal text)."""

    def __init__(self, obs_dim: int, act_dim: int, latent_dim: int, hidden: list[int],
                 text_dim: int = 0, goal_proj_dim: int = 32, goal_factor: bool = False,
                 reward_decoder: bool = False, goal_head_dim: int = 0):
        super().__init__()
        self.latent_dim = latent_dim
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.obs_norm = ObsNormalizer(obs_dim)
        self.transition_dim = 2 * obs_dim + act_dim + 1
        self.uses_text = text_dim > 0
        self.goal_proj = nn.Linear(text_dim, goal_proj_dim) if self.uses_text else None
        in_dim = self.transition_dim + (goal_proj_dim if self.uses_text else 0)
        self.transition_net = mlp(in_dim, hidden, 2 * latent_dim)
        self.goal_net = mlp(text_dim, hidden[:1], 2 * latent_dim) if goal_factor and self.uses_text else None
        self.reward_net = (mlp(2 * obs_dim + act_dim + latent_dim, hidden, 1) if reward_decoder
                           else None)
        # Belief supervision (`sac.goal_supervision`): posterior mean -> standardised goal position.
        self.goal_head = nn.Linear(latent_dim, goal_head_dim) if goal_head_dim else None
        if goal_head_dim:
            self.register_buffer("goal_mean", torch.zeros(goal_head_dim))
            self.register_buffer("goal_std", torch.ones(goal_head_dim))

    def _gaussian(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, raw = out.split(self.latent_dim, dim=-1)
        return mu, F.softplus(raw) + MIN_VAR

    def transition_factors(self, context: torch.Tensor, goal: torch.Tensor | None = None):
        """context [T, N, transition_dim] as raw (s, a, r, s') rows, goal [T, text_dim] -> mu, var [T, N, L]."""
        d = self.obs_dim
        x = context = torch.cat([self.obs_norm(context[..., :d]), context[..., d:-d],
                                 self.obs_norm(context[..., -d:])], dim=-1)
        if self.uses_text:
            if goal is None:
                raise ValueError("this context encoder is goal-conditioned: pass the goal embedding")
            g = self.goal_proj(goal).unsqueeze(-2).expand(*context.shape[:-1], -1)
            x = torch.cat([context, g], dim=-1)
        return self._gaussian(self.transition_net(x))

    def predict_reward(self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor,
                       z: torch.Tensor) -> torch.Tensor:
        """The reward decoder: r(s, a, s', z) for rows [..., D] -> [...]."""
        if self.reward_net is None:
            raise RuntimeError("this encoder was built without a reward decoder (sac.reward_decoder)")
        x = torch.cat([self._decoder_rows(obs, action, next_obs), z], dim=-1)
        return self.reward_net(x).squeeze(-1)

    def _decoder_rows(self, obs: torch.Tensor, action: torch.Tensor,
                      next_obs: torch.Tensor) -> torch.Tensor:
        """The decoder's input without z: (normalised s, a, normalised s')."""
        return torch.cat([self.obs_norm(obs), action, self.obs_norm(next_obs)], dim=-1)

    def reward_given_rows(self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor):
        """The reward decoder with its rows fixed: a function z [..., K, L] -> rewards [..., K, N]
        for rows [..., N, D], equal to `predict_reward` on every (row, z) pair. The rows' share of
        the first layer is computed once, so a fit that moves only z (`refine_mean`) pays for it once
        instead of once per start and step."""
        first, rest = self.reward_net[0], self.reward_net[1:]
        L = self.latent_dim
        rows = self._decoder_rows(obs, action, next_obs)
        row_part = F.linear(rows, first.weight[:, :-L], first.bias).unsqueeze(-3)  # [..., 1, N, H]
        w_z = first.weight[:, -L:]

        def rewards(z: torch.Tensor) -> torch.Tensor:
            return rest(row_part + F.linear(z, w_z).unsqueeze(-2)).squeeze(-1)
        return rewards

    def set_goal_stats(self, goals: torch.Tensor) -> None:
        """Standardise the goal head's targets by these goals [G, g] (the training data's)."""
        self.goal_mean.copy_(goals.mean(0))
        self.goal_std.copy_(goals.std(0, unbiased=False).clamp(min=1e-3))

    def goal_error(self, mu: torch.Tensor, goal_pos: torch.Tensor) -> torch.Tensor:
        """Standardised squared error of the goal head at posterior means mu [T, L] against goal
        positions [T, g] -> [T]; 0 where a goal is unknown (NaN)."""
        if self.goal_head is None:
            raise RuntimeError("this encoder was built without a goal head (sac.goal_supervision)")
        known = torch.isfinite(goal_pos).all(-1)
        target = (torch.nan_to_num(goal_pos) - self.goal_mean) / self.goal_std
        err = (self.goal_head(mu) - target).pow(2).sum(-1)
        return torch.where(known, err, torch.zeros_like(err))

    def predict_goal(self, mu: torch.Tensor) -> torch.Tensor:
        """Where the goal head puts the goal for posterior means mu [..., L] -> [..., g]."""
        if self.goal_head is None:
            raise RuntimeError("this encoder was built without a goal head (sac.goal_supervision)")
        return self.goal_head(mu) * self.goal_std + self.goal_mean

    def refine_mean(self, mu: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None,
                    steps: int, lr: float, prior: float,
                    starts: torch.Tensor | None = None, pool: float = 0.0) -> torch.Tensor:
        """Move the posterior mean toward the z whose decoded rewards fit the context's own.

        mu [E, L] (the product of Gaussians' mean: the start), context [E, N, D] raw (s, a, r, s')
        rows, mask [E, N] (1: a real row). `steps` Adam steps on sum_j (r_hat(c_j, z) - r_j)^2 +
        prior * |z|^2 / 2, each env's z on its own rows; envs without rows keep mu. `starts` [E, K,
        L]: more starts, fitted alongside mu's; each env keeps the fit with the lowest final loss,
        or with `pool` > 0 the mean of the fits whose loss is within that fraction of the lowest.
        The encoder's weights are not touched (`sac.z_refine_steps` says why)."""
        if self.reward_net is None:
            raise RuntimeError("refining z needs the reward decoder (sac.reward_decoder)")
        if steps <= 0 or context.shape[-2] == 0:
            return mu
        d, a = self.obs_dim, self.act_dim
        # One extra axis K for the starts: rewards [E, 1, N], z [E, K, L].
        rew = context[..., None, :, d + a]
        keep = (torch.ones(rew.shape, device=rew.device) if mask is None
                else mask[..., None, :].to(rew.dtype))
        has_rows = keep.sum((-2, -1)).unsqueeze(-1) > 0
        z0 = mu.unsqueeze(-2) if starts is None else torch.cat([mu.unsqueeze(-2), starts], -2)
        K = z0.shape[-2]
        with torch.no_grad():
            decoded = self.reward_given_rows(context[..., :d], context[..., d:d + a],
                                             context[..., -d:])

        def losses(z):  # [E, K]: each start's summed squared error plus its prior term
            return ((decoded(z) - rew).pow(2) * keep).sum(-1) + prior * 0.5 * z.pow(2).sum(-1)

        with torch.enable_grad():
            z = z0.detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=lr)
            for _ in range(steps):
                (grad,) = torch.autograd.grad(losses(z).sum(), z)
                z.grad = grad
                opt.step()
        z = z.detach()
        if K > 1:
            with torch.no_grad():
                final = losses(z)
            if pool > 0:  # a reward flat near its goal fits a region: its fits' centre, not an edge
                near = (final <= final.min(-1, keepdim=True).values * (1 + pool)).to(z.dtype)
                z = ((z * near[..., None]).sum(-2) / near.sum(-1, keepdim=True)).unsqueeze(-2)
            else:
                best = final.argmin(-1)
                z = z.gather(-2, best[..., None, None].expand(*best.shape, 1, z.shape[-1]))
        return torch.where(has_rows, z[..., 0, :], mu)

    def goal_factor(self, goal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """goal [T, text_dim] -> the goal's own factor mu, var [T, L] (None without one)."""
        if self.goal_net is None:
            return None
        return self._gaussian(self.goal_net(goal))

    def posterior(self, context: torch.Tensor | None, goal: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mu, var [T, L] from context [T, N, D] (N may be 0, or context None)."""
        mus, variances, masks = [], [], []
        gf = self.goal_factor(goal) if goal is not None else None
        if gf is not None:
            mus.append(gf[0].unsqueeze(-2))
            variances.append(gf[1].unsqueeze(-2))
            masks.append(torch.ones(gf[0].shape[:-1] + (1,), device=gf[0].device))
        if context is not None and context.shape[-2] > 0:
            mu, var = self.transition_factors(context, goal)
            mus.append(mu)
            variances.append(var)
            masks.append(mask.float() if mask is not None else
                         torch.ones(mu.shape[:-1], device=mu.device))
        if not mus:
            batch = goal.shape[:-1] if goal is not None else context.shape[:-2]
            zeros = torch.zeros(*batch, self.latent_dim, device=self._device())
            return zeros, torch.ones_like(zeros)
        return product_of_gaussians(torch.cat(mus, -2), torch.cat(variances, -2),
                                    torch.cat(masks, -1))

    def _device(self):
        return next(self.parameters()).device
