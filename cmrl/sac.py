"""One SAC + KL gradient step over a meta-batch of tasks, in one batched forward pass.

Losses, as in Algorithm 1 of the seed report and PEARL:

- context encoder phi and critics Q: sum over tasks of the Bellman error, plus beta * KL(q(z|c) || N(0,I))
  (the encoder gets gradients from the critic loss and the KL only);
- actor pi: sum over tasks of E[alpha_i log pi(a|s,z) - min Q(s,a,z)], z detached;
- temperatures alpha_i: one per task (Soft-Module's per-task entropy tuning) or one shared;
- `bc_only`: the actor's loss is the behaviour-cloning term alone;
- offline: a behaviour-regularisation term on the mean action with the Q term normalised by its mean
  magnitude (TD3+BC); `bc_form` picks this project's weighting or TD3+BC's own;
- options on the encoder: `kl_prior` (KL to the goal text's factor instead of N(0, I)) and
  `z_contrastive` (an InfoNCE task-discrimination term), see `context_encoder.py`.

Shapes: T tasks x B transitions, flattened to T*B rows with each task's z repeated B times.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .agent import MetaAgent
from .context_encoder import (kl_gaussians, kl_to_standard_normal, product_of_gaussians,
                              task_contrastive_loss)


class SACLearner:
    def __init__(self, agent: MetaAgent):
        self.agent = agent
        cfg = agent.config.sac
        self.cfg = cfg
        critic_params = list(agent.critic.parameters())
        if agent.encoder is not None:
            critic_params += list(agent.encoder.parameters())
        self.critic_opt = torch.optim.Adam(critic_params, lr=cfg.lr)
        self.actor_opt = torch.optim.Adam(agent.actor.parameters(), lr=cfg.lr)
        self.alpha_opt = torch.optim.Adam([agent.log_alpha], lr=cfg.lr)
        self.target_entropy = (cfg.target_entropy if cfg.target_entropy is not None
                               else -float(agent.act_dim))
        self._critic_params = list(agent.critic.parameters())
        self._target_params = list(agent.critic_target.parameters())
        self.updates = 0

    def _autocast(self):
        if self.cfg.precision == "bf16":
            return torch.autocast(self.agent.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def update(self, batch: dict[str, torch.Tensor], context: torch.Tensor | None,
               goal: torch.Tensor | None, task_ids: torch.Tensor,
               cond_ids: torch.Tensor | None = None, update_actor: bool = True,
               context_mask: torch.Tensor | None = None) -> dict[str, float]:
        """batch fields [T, B, ...]; context [T, N, D] (None for sm); goal [T, goal_dim] (cmrl);
        task_ids [T] indices of the batch's tasks among the agent's train tasks (their temperatures);
        cond_ids [T] the sm oracle's one-hot ids of those tasks (default: task_ids).
        `update_actor=False`: critics, encoder and targets only (the critic warm-up of fine-tuning).
        `context_mask` [T, N]: which context transitions each task's posterior may use (context
        dropout); None: all."""
        agent, cfg = self.agent, self.cfg
        T, B = batch["rewards"].shape
        flat = {k: v.reshape(T * B, *v.shape[2:]) for k, v in batch.items()}
        row_task = (task_ids if cond_ids is None else cond_ids).repeat_interleave(B)
        log_alpha = agent.log_alpha if agent.log_alpha.numel() == 1 else agent.log_alpha[task_ids]
        alpha = log_alpha.detach().exp()  # [T] or [1]
        alpha_rows = alpha.repeat_interleave(B) if alpha.numel() == T and T > 1 else alpha.expand(T * B)
        metrics: dict[str, float] = {}
        encoder_extra = 0.0

        with self._autocast():
            # ---- context ------------------------------------------------------------------------
            if agent.uses_context:
                mu, var = agent.infer_posterior(context, goal, context_mask)
                z = agent.sample_z(mu, var)
                kl = self._kl(mu, var, goal)  # [T]
                cond = agent.context_condition(z, goal).repeat_interleave(B, dim=0)
                metrics["kl"] = kl.mean().item()
                metrics["z_std"] = var.sqrt().mean().item()
                if cfg.z_contrastive > 0 and T > 1:
                    nce = self._contrastive(context, goal)
                    encoder_extra = cfg.z_contrastive * nce
                    metrics["z_contrastive"] = nce.item()
            else:
                kl = None
                cond = agent.task_condition(row_task)
            cond_detached = cond.detach()

            # ---- critics (and encoder) ----------------------------------------------------------
            with torch.no_grad():
                nxt = agent.actor(flat["next_obs"], cond_detached)
                q_next = agent.critic_target(flat["next_obs"], nxt.action, cond_detached).min(0).values
                target = cfg.reward_scale * flat["rewards"] + (1.0 - flat["dones"]) * cfg.gamma * (
                    q_next - alpha_rows * nxt.log_prob)
            q = agent.critic(flat["obs"], flat["actions"], cond)  # [2, T*B]
            per_task_td = (q - target.unsqueeze(0)).pow(2).view(2, T, B).mean(-1).sum(0)  # [T]
            critic_loss = per_task_td.sum()
            loss = critic_loss + (cfg.kl_weight * kl.sum() if kl is not None else 0.0) + encoder_extra
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self._clip(self.critic_opt)
        self.critic_opt.step()

        if update_actor:
            metrics.update(self._actor_step(flat, cond_detached, alpha_rows, log_alpha, T, B))

        # ---- targets ----------------------------------------------------------------------------
        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params, cfg.tau)
        self.updates += 1

        metrics.update(critic_loss=critic_loss.item() / T, q_mean=q.mean().item(),
                       alpha=agent.log_alpha.exp().mean().item())
        return metrics

    def _kl(self, mu: torch.Tensor, var: torch.Tensor, goal: torch.Tensor | None) -> torch.Tensor:
        """Per-task KL of the posterior to N(0, I), or (`kl_prior = "text"`) to the goal text's own
        factor p(z | g), plus that factor's KL to N(0, I)."""
        if self.cfg.kl_prior == "text" and goal is not None:
            g_mu, g_var = self.agent.encoder.goal_factor(goal)
            return kl_gaussians(mu, var, g_mu, g_var) + kl_to_standard_normal(g_mu, g_var)
        return kl_to_standard_normal(mu, var)

    def _contrastive(self, context: torch.Tensor, goal: torch.Tensor | None) -> torch.Tensor:
        """Task discrimination from the transitions alone (the goal factor left out, so the words
        cannot do it for them): the context split into two disjoint halves, one posterior each."""
        enc = self.agent.encoder
        g = goal if self.agent.uses_text else None
        half = context.shape[1] // 2
        mu_a, _ = product_of_gaussians(*enc.transition_factors(context[:, :half], g))
        mu_b, _ = product_of_gaussians(*enc.transition_factors(context[:, half:2 * half], g))
        return task_contrastive_loss(mu_a, mu_b)

    def _actor_step(self, flat: dict[str, torch.Tensor], cond_detached: torch.Tensor,
                    alpha_rows: torch.Tensor, log_alpha: torch.Tensor, T: int, B: int) -> dict:
        """One step of the actor and of the temperatures, the critics frozen."""
        agent, cfg = self.agent, self.cfg
        metrics: dict[str, float] = {}
        for p in self._critic_params:
            p.requires_grad_(False)
        with self._autocast():
            pi = agent.actor(flat["obs"], cond_detached)
            q_pi = agent.critic(flat["obs"], pi.action, cond_detached).min(0).values
            per_row = alpha_rows * pi.log_prob - q_pi
            if cfg.bc_only:
                bc = (pi.mean_action - flat["actions"]).pow(2).sum(-1)
                per_row = bc
                metrics["bc_mse"] = bc.mean().item()
            elif cfg.bc_weight > 0:
                # TD3+BC's normalisation of the Q term by its magnitude, floored at 1: at the start
                # Q is ~0 and 1/|Q| would blow the entropy and Q terms up over the BC term.
                scale = 1.0 / q_pi.abs().mean().detach().clamp(min=1.0)
                sq = (pi.mean_action - flat["actions"]).pow(2)
                if cfg.bc_form == "td3bc":  # lambda / |Q| on the RL term, mean over action dims
                    bc = sq.mean(-1)
                    per_row = cfg.bc_weight * scale * per_row + bc
                else:  # "sum": bc_weight on the summed squared error
                    bc = sq.sum(-1)
                    per_row = scale * per_row + cfg.bc_weight * bc
                metrics["bc_mse"] = sq.sum(-1).mean().item()
            actor_loss = per_row.view(T, B).mean(-1).sum()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self._clip(self.actor_opt)
        self.actor_opt.step()
        for p in self._critic_params:
            p.requires_grad_(True)

        # temperatures
        entropy_gap = (pi.log_prob.detach() + self.target_entropy).view(T, B).mean(-1)  # [T]
        if log_alpha.numel() == 1:
            alpha_loss = -(log_alpha * entropy_gap.mean()).sum()
        else:
            alpha_loss = -(log_alpha * entropy_gap).sum()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()
        metrics.update(actor_loss=actor_loss.item() / T, entropy=-pi.log_prob.mean().item())
        return metrics

    def _clip(self, opt: torch.optim.Optimizer) -> None:
        if self.cfg.grad_clip > 0:
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)

    def state_dict(self) -> dict:
        return {"critic_opt": self.critic_opt.state_dict(), "actor_opt": self.actor_opt.state_dict(),
                "alpha_opt": self.alpha_opt.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
        self.updates = int(state["updates"])
