"""One SAC + KL gradient step over a meta-batch of tasks, in one batched forward pass.

Losses, as in Algorithm 1 of the seed report and PEARL:

- context encoder phi and critics Q: sum over tasks of the Bellman error, plus beta * KL(q(z|c) || N(0,I))
  (the encoder gets gradients from the critic loss and the KL only);
- actor pi: sum over tasks of E[alpha_i log pi(a|s,z) - min Q(s,a,z)], z detached;
- temperatures alpha_i: one per task (Soft-Module's per-task entropy tuning) or one shared;
- `bc_only`: the actor's loss is the behaviour-cloning term alone;
- offline: a behaviour-regularisation term on the mean action with the Q term normalised by its mean
  magnitude (TD3+BC); `bc_form` picks this project's weighting or TD3+BC's own;
- `encoder_from_critic = False`: z reaches the critics detached, so the encoder learns from the KL
  and the options below alone; `encoder_steps`: the encoder is frozen after that many updates;
- options on the encoder: `kl_prior` (KL to the goal text's factor instead of N(0, I)),
  `z_contrastive` (an InfoNCE task-discrimination term), `reward_decoder` (z predicts the RL
  rows' rewards) and `goal_supervision` (the posterior mean predicts the variation's recorded goal
  position), see `context_encoder.py`.

Shapes: T tasks x B transitions, flattened to T*B rows with each task's z repeated B times.

How the step runs (`sac.update_impl`; the losses are the same functions either way): `eager`, op
by op, on every device; `graphed` (CUDA), the whole update captured once as a CUDA graph and
replayed (`cuda_graphs.py`). `auto` picks graphed on CUDA. Why only these: `speed_tuning.py`.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from .agent import MetaAgent
from .cuda_graphs import GraphedUpdate
from .speed_tuning import adam_options, resolve_precision, resolve_update_impl, set_adam_options
from ..nets.context_encoder import (kl_gaussians, kl_to_standard_normal, product_of_gaussians,
                                    task_contrastive_loss)


class SACLearner:
    def __init__(self, agent: MetaAgent, update_impl: str | None = None,
                 graph_capture: bool | None = None):
        """`update_impl` overrides `sac.update_impl` (the bench runs both paths on one config).
        `graph_capture=False` runs the `graphed` path's plumbing without capturing (CPU tests);
        None: capture on CUDA."""
        self.agent = agent
        cfg = agent.config.sac
        self.cfg = cfg
        self.bc_weight = agent.config.resolved().sac.bc_weight  # None: by training mode
        self.impl = resolve_update_impl(update_impl or cfg.update_impl, agent.device)
        capture = agent.device.type == "cuda" if graph_capture is None else graph_capture
        if self.impl == "graphed" and graph_capture is not False and agent.device.type != "cuda":
            warnings.warn("sac.update_impl=graphed needs a CUDA device (CUDA graphs); running the "
                          "eager update on this CPU", RuntimeWarning, stacklevel=2)
            self.impl = "eager"
        self.capture = capture and self.impl == "graphed"
        self.precision = resolve_precision(cfg.precision, agent.device)
        critic_params = list(agent.critic.parameters())
        if agent.encoder is not None:
            critic_params += list(agent.encoder.parameters())
        adam = {"lr": cfg.lr, **adam_options(self.impl, self.capture)}
        self.critic_opt = torch.optim.Adam(critic_params, **adam)
        self.actor_opt = torch.optim.Adam(agent.actor.parameters(), **adam)
        self.alpha_opt = torch.optim.Adam([agent.log_alpha], **adam)
        self.target_entropy = (cfg.target_entropy if cfg.target_entropy is not None
                               else -float(agent.act_dim))
        self._critic_params = list(agent.critic.parameters())
        self._target_params = list(agent.critic_target.parameters())
        self.updates = 0
        self.encoder_frozen = False
        self._graphed = (GraphedUpdate(self._step_inputs, agent.device, capture=capture,
                                       on_failure=self._graph_failed)
                         if self.impl == "graphed" else None)

    @property
    def capture_seconds(self) -> float | None:
        """Seconds spent capturing CUDA graphs so far (`graphed`); None on the other paths."""
        return self._graphed.capture_seconds if self._graphed is not None else None

    def _graph_failed(self, exc: Exception) -> None:
        self.impl = "eager"

    def _autocast(self):
        if self.precision == "bf16":  # a graph must not keep autocast's cache of casts
            return torch.autocast(self.agent.device.type, dtype=torch.bfloat16,
                                  cache_enabled=self._graphed is None)
        return contextlib.nullcontext()

    def update(self, batch: dict[str, torch.Tensor], context: torch.Tensor | None,
               goal: torch.Tensor | None, task_ids: torch.Tensor,
               cond_ids: torch.Tensor | None = None, update_actor: bool = True,
               context_mask: torch.Tensor | None = None,
               read_metrics: bool = True) -> dict:
        """batch fields [T, B, ...]; context [T, N, D] (None for sm, care); goal [T, goal_dim]
        (cmrl, care);
        task_ids [T] indices of the batch's tasks among the agent's train tasks (their temperatures);
        cond_ids [T] the sm oracle's one-hot ids of those tasks (default: task_ids).
        `update_actor=False`: critics, encoder and targets only (the critic warm-up of fine-tuning).
        `context_mask` [T, N]: which context transitions each task's posterior may use (context
        dropout); None: all.
        Returns the metrics as floats; with `read_metrics=False` as 0-dim tensors (no wait for the
        device; `float()` them later)."""
        self._freeze_encoder_when_due()
        if self._graphed is not None and self.impl == "graphed":
            inputs = {"context": context, "goal": goal, "task_ids": task_ids, "cond_ids": cond_ids,
                      "context_mask": context_mask, **{f"batch.{k}": v for k, v in batch.items()}}
            metrics = self._graphed(inputs, update_actor)
        else:
            metrics = self._step(batch, context, goal, task_ids, cond_ids, update_actor,
                                 context_mask)
        self.updates += 1
        if read_metrics:
            return {k: float(v) for k, v in metrics.items()}
        return metrics

    def _freeze_encoder_when_due(self) -> None:
        """`sac.encoder_steps`: past that many updates the encoder stops learning, so the z the
        actor and critics read no longer moves under them."""
        steps, enc = self.cfg.encoder_steps, self.agent.encoder
        if not steps or enc is None or self.updates < steps or self.encoder_frozen:
            return
        enc.requires_grad_(False)
        self.encoder_frozen = True
        if self._graphed is not None:  # captured with the encoder's gradients
            self._graphed.reset()

    def _step_inputs(self, inputs: dict, update_actor: bool) -> dict[str, torch.Tensor]:
        batch = {k[6:]: v for k, v in inputs.items() if k.startswith("batch.")}
        return self._step(batch, inputs["context"], inputs["goal"], inputs["task_ids"],
                          inputs["cond_ids"], update_actor, inputs["context_mask"])

    def _step(self, batch: dict[str, torch.Tensor], context: torch.Tensor | None,
              goal: torch.Tensor | None, task_ids: torch.Tensor, cond_ids: torch.Tensor | None,
              update_actor: bool, context_mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The whole update (critic and encoder, actor, temperatures, targets); metrics as
        tensors. What `graphed` captures: it reads nothing but its arguments and the learner's
        modules and optimisers."""
        agent, cfg = self.agent, self.cfg
        T, B = batch["rewards"].shape
        flat = {k: v.reshape(T * B, *v.shape[2:]) for k, v in batch.items()}
        row_task = (task_ids if cond_ids is None else cond_ids).repeat_interleave(B)
        log_alpha = agent.log_alpha if agent.log_alpha.numel() == 1 else agent.log_alpha[task_ids]
        alpha = log_alpha.detach().exp()  # [T] or [1]
        alpha_rows = alpha.repeat_interleave(B) if alpha.numel() == T and T > 1 else alpha.expand(T * B)
        with self._autocast():
            loss, cond_detached, metrics = self._critic_losses(flat, context, goal, row_task,
                                                               context_mask, alpha_rows, T, B)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self._clip(self.critic_opt)
        self.critic_opt.step()

        if update_actor:
            metrics.update(self._actor_step_tensors(flat, cond_detached, alpha_rows, log_alpha,
                                                    T, B))

        # ---- targets ----------------------------------------------------------------------------
        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params, cfg.tau)
        metrics["alpha"] = agent.log_alpha.detach().exp().mean()
        return metrics

    # -- the losses ------------------------------------------------------------------------------
    def _critic_losses(self, flat: dict[str, torch.Tensor], context: torch.Tensor | None,
                       goal: torch.Tensor | None, row_task: torch.Tensor,
                       context_mask: torch.Tensor | None, alpha_rows: torch.Tensor, T: int,
                       B: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The critic and encoder loss, the condition the actor step reuses (detached), and the
        metrics of this half as detached 0-dim tensors."""
        agent, cfg = self.agent, self.cfg
        metrics: dict[str, torch.Tensor] = {}
        encoder_extra = 0.0
        # ---- context ----------------------------------------------------------------------------
        if agent.uses_context:
            mu, var = agent.infer_posterior(context, goal, context_mask)
            z = agent.sample_z(mu, var)
            kl = self._kl(mu, var, goal)  # [T]
            z_critic = z if cfg.encoder_from_critic else z.detach()
            cond = agent.context_condition(z_critic, goal).repeat_interleave(B, dim=0)
            metrics["kl"] = kl.detach().mean()
            metrics["z_std"] = var.detach().sqrt().mean()
            if cfg.z_contrastive > 0 and T > 1:
                nce = self._contrastive(context, goal)
                encoder_extra = cfg.z_contrastive * nce
                metrics["z_contrastive"] = nce.detach()
            if cfg.reward_decoder > 0:  # rows and context share a variation: same rewards
                # Its own rows (`decoder_*`, partly relabelled: sac.decoder_relabel) or the RL rows.
                key = "decoder_" if "decoder_rewards" in flat else ""
                pred = agent.encoder.predict_reward(flat[key + "obs"], flat[key + "actions"],
                                                    flat[key + "next_obs"],
                                                    z.repeat_interleave(B, dim=0))
                decoder_mse = (pred - flat[key + "rewards"]).pow(2).view(T, B).mean(-1)  # [T]
                encoder_extra = encoder_extra + cfg.reward_decoder * decoder_mse.sum()
                metrics["reward_decoder_mse"] = decoder_mse.detach().mean()
            if cfg.goal_supervision > 0 and "goal_pos" in flat:  # one goal per variation
                goal_err = agent.encoder.goal_error(mu, flat["goal_pos"].view(T, B, -1)[:, 0])
                encoder_extra = encoder_extra + cfg.goal_supervision * goal_err.sum()
                metrics["goal_error"] = goal_err.detach().mean()
        else:
            kl = None  # sm: one-hot task ids; care: the goal vectors, one per row
            rows_goal = goal.repeat_interleave(B, dim=0) if goal is not None else None
            cond = agent.static_condition(row_task, rows_goal)
        cond_detached = cond.detach()

        # ---- critics (and encoder) --------------------------------------------------------------
        with torch.no_grad():
            nxt = agent.actor(flat["next_obs"], cond_detached)
            q_next = agent.critic_target(flat["next_obs"], nxt.action, cond_detached).min(0).values
            target = cfg.reward_scale * flat["rewards"] + (1.0 - flat["dones"]) * cfg.gamma * (
                q_next - alpha_rows * nxt.log_prob)
        q = agent.critic(flat["obs"], flat["actions"], cond)  # [2, T*B]
        per_task_td = (q - target.unsqueeze(0)).pow(2).view(2, T, B).mean(-1).sum(0)  # [T]
        critic_loss = per_task_td.sum()
        loss = critic_loss + (cfg.kl_weight * kl.sum() if kl is not None else 0.0) + encoder_extra
        metrics["critic_loss"] = critic_loss.detach() / T
        metrics["q_mean"] = q.detach().mean()
        return loss, cond_detached, metrics

    def _actor_losses(self, flat: dict[str, torch.Tensor], cond_detached: torch.Tensor,
                      alpha_rows: torch.Tensor, T: int,
                      B: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The actor's loss (critics frozen by the caller), log pi of its actions (detached, for the
        temperatures) and its metrics."""
        agent, cfg = self.agent, self.cfg
        metrics: dict[str, torch.Tensor] = {}
        pi = agent.actor(flat["obs"], cond_detached)
        q_pi = agent.critic(flat["obs"], pi.action, cond_detached).min(0).values
        per_row = alpha_rows * pi.log_prob - q_pi
        if cfg.bc_only:
            bc = (pi.mean_action - flat["actions"]).pow(2).sum(-1)
            per_row = bc
            metrics["bc_mse"] = bc.detach().mean()
        elif self.bc_weight > 0:
            # TD3+BC's normalisation of the Q term by its magnitude, floored at 1: at the start
            # Q is ~0 and 1/|Q| would blow the entropy and Q terms up over the BC term.
            scale = 1.0 / q_pi.abs().mean().detach().clamp(min=1.0)
            sq = (pi.mean_action - flat["actions"]).pow(2)
            if cfg.bc_form == "td3bc":  # lambda / |Q| on the RL term, mean over action dims
                bc = sq.mean(-1)
                per_row = self.bc_weight * scale * per_row + bc
            else:  # "sum": bc_weight on the summed squared error
                bc = sq.sum(-1)
                per_row = scale * per_row + self.bc_weight * bc
            metrics["bc_mse"] = sq.detach().sum(-1).mean()
        actor_loss = per_row.view(T, B).mean(-1).sum()
        log_prob = pi.log_prob.detach()
        metrics["actor_loss"] = actor_loss.detach() / T
        metrics["entropy"] = -log_prob.mean()
        return actor_loss, log_prob, metrics

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

    # -- the steps -------------------------------------------------------------------------------
    def _actor_step(self, flat: dict[str, torch.Tensor], cond_detached: torch.Tensor,
                    alpha_rows: torch.Tensor, log_alpha: torch.Tensor, T: int, B: int) -> dict:
        """One step of the actor and of the temperatures, the critics frozen; metrics as floats."""
        metrics = self._actor_step_tensors(flat, cond_detached, alpha_rows, log_alpha, T, B)
        return {k: float(v) for k, v in metrics.items()}

    def _actor_step_tensors(self, flat: dict[str, torch.Tensor], cond_detached: torch.Tensor,
                            alpha_rows: torch.Tensor, log_alpha: torch.Tensor, T: int,
                            B: int) -> dict[str, torch.Tensor]:
        for p in self._critic_params:
            p.requires_grad_(False)
        try:
            with self._autocast():
                actor_loss, log_prob, metrics = self._actor_losses(flat, cond_detached, alpha_rows,
                                                                   T, B)
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            self._clip(self.actor_opt)
            self.actor_opt.step()
        finally:
            for p in self._critic_params:
                p.requires_grad_(True)

        # temperatures
        entropy_gap = (log_prob + self.target_entropy).view(T, B).mean(-1)  # [T]
        if log_alpha.numel() == 1:
            alpha_loss = -(log_alpha * entropy_gap.mean()).sum()
        else:
            alpha_loss = -(log_alpha * entropy_gap).sum()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()
        return metrics

    def _clip(self, opt: torch.optim.Optimizer) -> None:
        if self.cfg.grad_clip > 0:
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)  # no host sync: capturable

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"critic_opt": self.critic_opt.state_dict(), "actor_opt": self.actor_opt.state_dict(),
                "alpha_opt": self.alpha_opt.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Optimiser states saved by either path load into either (the flags are ours to pick)."""
        for opt, key in ((self.critic_opt, "critic_opt"), (self.actor_opt, "actor_opt"),
                         (self.alpha_opt, "alpha_opt")):
            opt.load_state_dict(state[key])
            set_adam_options(opt, self.impl, self.capture)
        self.updates = int(state["updates"])
        if self._graphed is not None:  # the graphs read the replaced optimiser state
            self._graphed.reset()
