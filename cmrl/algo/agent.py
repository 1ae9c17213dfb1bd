"""The meta-RL agent: networks plus PEARL's small vocabulary for beliefs about the task.

`MetaAgent` holds the context encoder, actor, twin critics (and their targets) and the entropy
temperatures of one of four kinds:

- `cmrl`:  PEARL context encoder conditioned on the goal text -> z -> soft-modular routing.
- `pearl`: PEARL context encoder (no text) -> z, concatenated to the input of MLP actor/critics.
- `sm`:    soft-modular nets routed by a one-hot task id: the multi-task oracle. It cannot adapt; on
           a task it was not trained on it gets the all-zeros id.
- `care`:  CARE: the goal-text embedding weights a mixture of state encoders, then MLP actor and
           critics. No context encoder: it cannot adapt, its condition is the words alone.

Code outside asks an agent what it can do (`uses_text`, `uses_context`, `has_routing`,
`uses_task_id`; the table is `agent_kinds.py`), never which kind it is.

`TaskBelief` is the per-environment state during interaction, in oyster's words: `clear_z` (back to
the prior: the goal text's own factor for cmrl, N(0, I) for pearl), `observe` (add transitions to the
context), `infer_posterior` (product of Gaussians over the context so far; with
`sac.z_refine_steps` its mean then fitted to the context's rewards by the reward decoder),
`sample_z`. It keeps running sums of the factors' precisions, so the posterior after every step
costs one small forward pass, not a pass over the whole history.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..agent_kinds import AgentKind, agent_kind
from ..config import RunConfig
from ..envs.tasks import goal_position_dim
from ..nets.context_encoder import MIN_VAR, ContextEncoder
from ..nets.goal_text import goal_dim
from ..nets.networks import Actor, ActorOutput, TwinCritic, standard_normal
from ..nets.normalizer import ObsNormalizer


class MetaAgent(nn.Module):
    def __init__(self, config: RunConfig, obs_dim: int, act_dim: int, text_dim: int,
                 train_tasks: list[str] | tuple[str, ...]):
        super().__init__()
        self.config = config
        self.kind = config.train.agent
        self.spec: AgentKind = agent_kind(self.kind)
        self.obs_dim, self.act_dim, self.text_dim = obs_dim, act_dim, text_dim
        self.train_tasks = tuple(train_tasks)
        self.id_tasks = tuple(config.net.task_id_names) or self.train_tasks
        net = config.net
        # Goal vectors: the text encoder's embedding, or [verb ; object] (`goal_text.py`).
        self.goal_dim = goal_dim(text_dim, net.goal_encoding) if self.uses_text else 0
        self.text_routing = self.uses_text and net.text_routing
        cond_parts = None
        if self.uses_context:
            self.encoder = ContextEncoder(obs_dim, act_dim, net.latent_dim, list(net.encoder_hidden),
                                          text_dim=self.goal_dim,
                                          goal_proj_dim=net.goal_proj_dim,
                                          goal_factor=net.goal_factor and self.uses_text,
                                          reward_decoder=config.sac.reward_decoder > 0,
                                          goal_head_dim=(goal_position_dim(config.benchmark.name)
                                                         if config.sac.goal_supervision > 0 else 0))
            # The condition of actor and critics: z, or [z ; goal vector] with text routing.
            self.cond_dim = net.latent_dim + (self.goal_dim if self.text_routing else 0)
            if self.text_routing and net.goal_encoding == "verb_object":
                z_cols, half = list(range(net.latent_dim)), self.goal_dim // 2
                verb = [net.latent_dim + i for i in range(half)]
                obj = [net.latent_dim + half + i for i in range(half)]
                cond_parts = (z_cols + obj, z_cols + verb)  # object -> first routing, verb -> later
        else:
            self.encoder = None
            # care reads the goal vector itself; sm a one-hot task id.
            self.cond_dim = self.goal_dim if self.uses_text else len(self.id_tasks)
        backbone = self.spec.backbone
        self.actor = Actor(backbone, obs_dim, act_dim, self.cond_dim, net, cond_parts)
        self.critic = TwinCritic(backbone, obs_dim, act_dim, self.cond_dim, net, cond_parts)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        num_alpha = len(self.train_tasks) if config.sac.per_task_alpha else 1
        self.log_alpha = nn.Parameter(torch.full((num_alpha,), float(np.log(config.sac.init_alpha))))

    # -- what this agent can do (agent_kinds.py) -------------------------------------------------
    @property
    def uses_text(self) -> bool:
        """It reads the goal-text embedding (cmrl, care)."""
        return self.spec.uses_text

    @property
    def uses_context(self) -> bool:
        """It infers z from transitions, so it can adapt (cmrl, pearl)."""
        return self.spec.uses_context

    @property
    def has_routing(self) -> bool:
        """Its actor returns soft-modular routing (cmrl, sm)."""
        return self.spec.has_routing

    @property
    def uses_task_id(self) -> bool:
        """It is conditioned on a one-hot id of the meta-train task (sm)."""
        return self.spec.uses_task_id

    def set_obs_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Freeze the observation standardisation of every network (see `normalizer.py`)."""
        for m in self.modules():
            if isinstance(m, ObsNormalizer):
                m.set(mean, std)

    @property
    def obs_normalized(self) -> bool:
        return not self.actor.obs_norm.is_identity

    @property
    def device(self) -> torch.device:
        return self.log_alpha.device

    # -- beliefs about the task ------------------------------------------------------------------
    def infer_posterior(self, context: torch.Tensor, goal: torch.Tensor | None = None,
                        mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """mu, var [T, L] of q(z | context [T, N, D], goal [T, text])."""
        return self.encoder.posterior(context, goal if self.uses_text else None, mask)

    @staticmethod
    def sample_z(mu: torch.Tensor, var: torch.Tensor, deterministic: bool = False,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        if deterministic:
            return mu
        return mu + var.sqrt() * standard_normal(mu, generator)

    def context_condition(self, z: torch.Tensor, goal: torch.Tensor | None) -> torch.Tensor:
        """What actor and critics read for a context agent: z, or [z ; goal] with text routing."""
        if not self.text_routing:
            return z
        if goal is None:
            raise ValueError("this agent routes on the goal text: pass the goal embedding")
        return torch.cat([z, goal.to(z.dtype)], dim=-1)

    def static_condition(self, task_ids: torch.Tensor, goal: torch.Tensor | None) -> torch.Tensor:
        """The condition of an agent without a context variable: the goal vectors [B, goal_dim]
        (care) or one-hot task ids [B, num_train_tasks] (sm)."""
        if self.uses_text:
            if goal is None:
                raise ValueError(f"a {self.kind} agent is conditioned on the goal text: pass its "
                                 "embedding")
            return goal.to(self.device, torch.float32)
        return self.task_condition(task_ids)

    def task_id(self, task: str) -> int:
        """The sm oracle's id of a task: its one-hot slot, or -1 (all zeros) for a task it lacks."""
        return self.id_tasks.index(task) if task in self.id_tasks else -1

    def task_condition(self, task_ids: torch.Tensor) -> torch.Tensor:
        """The sm oracle's condition: one-hot ids [B, num_train_tasks]; id -1 (unknown) -> zeros.
        Built by comparison, not by indexing with a mask, so it never waits for the device (a CUDA
        graph cannot)."""
        slots = torch.arange(self.cond_dim, device=task_ids.device)
        return (task_ids.unsqueeze(-1) == slots).to(device=self.device, dtype=torch.float32)

    # -- acting ----------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: np.ndarray | torch.Tensor, cond: torch.Tensor, deterministic: bool = False,
            generator: torch.Generator | None = None) -> ActorOutput:
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        return self.actor(obs_t, cond, deterministic=deterministic, with_log_prob=False,
                          generator=generator)


class TaskBelief:
    """Per-env belief state for E environments at once (E may be 1).

    `goal` [E, goal_dim] goal vectors (cmrl, care; `goal_text.embed_goals`), `task_ids` [E] (sm; -1
    for an unknown task).
    `generator` (on the agent's device) draws z and the actions' noise; torch's global RNG when None;
    a list of E generators: one per env (`networks.standard_normal`).
    `refine_every` (with `sac.z_refine_steps`): a posterior asked for only to be shown
    (`infer_posterior(exact=False)`) is refitted once per that many new transitions; the z drawn to
    act on is always fitted to every transition observed."""

    def __init__(self, agent: MetaAgent, num_envs: int, goal: np.ndarray | None = None,
                 task_ids: np.ndarray | list[int] | None = None,
                 generator: torch.Generator | None = None, refine_every: int = 1):
        self.agent = agent
        self.generator = generator
        self.refine_every = max(1, int(refine_every))
        self.E = num_envs
        dev = agent.device
        self.goal = (torch.as_tensor(goal, dtype=torch.float32, device=dev).reshape(num_envs, -1)
                     if goal is not None and agent.uses_text else None)
        self.task_ids = torch.as_tensor(
            task_ids if task_ids is not None else [-1] * num_envs, dtype=torch.long, device=dev)
        self.num_transitions = np.zeros(num_envs, dtype=np.int64)
        # With sac.z_refine_steps the raw context rows are kept for the decoder to check z against.
        self._refine_steps = (agent.config.sac.z_refine_steps if agent.uses_context
                              and agent.encoder.reward_net is not None else 0)
        self.clear_z()

    def clear_z(self, env_mask: np.ndarray | None = None) -> None:
        """Forget the context of the masked envs (all by default): back to the prior."""
        if not self.agent.uses_context:
            return
        mask = (torch.ones(self.E, dtype=torch.bool) if env_mask is None
                else torch.as_tensor(np.asarray(env_mask), dtype=torch.bool))
        mask = mask.to(self.agent.device)
        L = self.agent.cond_dim
        with torch.no_grad():
            if self.agent.uses_text and self.goal is not None and self.agent.encoder.goal_net is not None:
                g_mu, g_var = self.agent.encoder.goal_factor(self.goal)
                prec, wmu = 1.0 / g_var, g_mu / g_var
            else:
                prec = torch.zeros(self.E, L, device=self.agent.device)
                wmu = torch.zeros_like(prec)
        if not hasattr(self, "precision"):
            self.precision, self.weighted_mu = prec, wmu
        else:
            self.precision = torch.where(mask[:, None], prec, self.precision)
            self.weighted_mu = torch.where(mask[:, None], wmu, self.weighted_mu)
        self.num_transitions[mask.cpu().numpy()] = 0
        if self._refine_steps:  # the masked envs' rows are forgotten; steps nobody holds dropped
            rows, masks = getattr(self, "_rows", []), [m & ~mask for m in getattr(self, "_row_mask", [])]
            row_mu = getattr(self, "_row_mu", [])
            live = [i for i, m in enumerate(masks) if bool(m.any())]
            self._rows, self._row_mask = [rows[i] for i in live], [masks[i] for i in live]
            self._row_mu = [row_mu[i] for i in live]
            self._refined, self._refined_at = None, 0
        if not hasattr(self, "z"):
            self.z = None
        self.infer_posterior()
        self.sample_z(env_mask)

    @torch.no_grad()
    def observe(self, obs, action, reward, next_obs, env_mask: np.ndarray | None = None) -> None:
        """Add one transition per env (arrays with leading dim E); envs off the mask are skipped."""
        if not self.agent.uses_context:
            return
        dev = self.agent.device
        c = torch.as_tensor(np.concatenate([np.asarray(obs, np.float32), np.asarray(action, np.float32),
                                            np.asarray(reward, np.float32).reshape(self.E, 1),
                                            np.asarray(next_obs, np.float32)], axis=-1), device=dev)
        mu, var = self.agent.encoder.transition_factors(c.unsqueeze(1), self.goal)
        prec = 1.0 / var[:, 0].clamp(min=MIN_VAR)
        keep = (torch.ones(self.E, 1, device=dev) if env_mask is None
                else torch.as_tensor(env_mask, dtype=torch.float32, device=dev).reshape(self.E, 1))
        self.precision = self.precision + keep * prec
        self.weighted_mu = self.weighted_mu + keep * prec * mu[:, 0]
        if self._refine_steps:
            self._rows.append(c)
            self._row_mask.append(keep[:, 0] > 0)
            self._row_mu.append(mu[:, 0])
        self.num_transitions += (np.ones(self.E, bool) if env_mask is None
                                 else np.asarray(env_mask, bool)).astype(np.int64)

    def infer_posterior(self, exact: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and variance [E, L] from everything observed since `clear_z`. With
        `exact=False` a refined mean may lag up to `refine_every` - 1 transitions behind."""
        if not self.agent.uses_context:
            raise RuntimeError(f"a {self.agent.kind} agent has no context variable")
        empty = self.precision.sum(-1, keepdim=True) <= 0
        var = torch.where(empty, torch.ones_like(self.precision), 1.0 / self.precision.clamp(min=1e-30))
        mu = torch.where(empty, torch.zeros_like(self.weighted_mu), var * self.weighted_mu)
        if self._refine_steps and self._rows:
            new = len(self._rows) - self._refined_at
            if self._refined is None or (new and (exact or new >= self.refine_every)):
                self._refined_at = len(self._rows)  # once per new transition, however often asked
                sac = self.agent.config.sac
                row_mask = torch.stack(self._row_mask, 1)
                self._refined = self.agent.encoder.refine_mean(
                    mu, torch.stack(self._rows, 1), row_mask,
                    sac.z_refine_steps, sac.z_refine_lr, sac.z_refine_prior,
                    starts=self._extra_starts(row_mask, sac.z_refine_starts - 1),
                    pool=sac.z_refine_pool)
            mu = self._refined
        self.mu, self.var = mu, var
        return mu, var

    def _extra_starts(self, row_mask: torch.Tensor, k: int) -> torch.Tensor | None:
        """[E, k, L]: the factor means of k of each env's own rows, spread evenly over them (an env
        without rows gets zeros; `refine_mean` leaves it at mu anyway). None when k is 0."""
        if k <= 0:
            return None
        row_mu = torch.stack(self._row_mu, 1)  # [E, N, L]
        index = torch.zeros(self.E, k, dtype=torch.long, device=row_mu.device)
        for e in range(self.E):
            own = row_mask[e].nonzero().squeeze(-1)
            if len(own):
                index[e] = own[torch.linspace(0, len(own) - 1, k, device=own.device).round().long()]
        return row_mu.gather(1, index[..., None].expand(-1, -1, row_mu.shape[-1]))

    def sample_z(self, env_mask: np.ndarray | None = None, deterministic: bool = False) -> None:
        """Draw a new z for the masked envs (all by default) from the current posterior."""
        if not self.agent.uses_context:
            return
        mu, var = self.infer_posterior()
        z = self.agent.sample_z(mu, var, deterministic, generator=self.generator)
        if self.z is None or env_mask is None:
            self.z = z
        else:
            m = torch.as_tensor(env_mask, dtype=torch.bool, device=z.device)[:, None]
            self.z = torch.where(m, z, self.z)

    def condition(self) -> torch.Tensor:
        """What the actor and critics are conditioned on, [E, cond_dim]."""
        if self.agent.uses_context:
            return self.agent.context_condition(self.z, self.goal)
        return self.agent.static_condition(self.task_ids, self.goal)

    def act(self, obs: np.ndarray, deterministic: bool = False) -> ActorOutput:
        return self.agent.act(obs, self.condition(), deterministic=deterministic,
                              generator=self.generator)

    def posterior_numpy(self, exact: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) [E, L] as numpy; [E, 0] for agents without a context variable (sm, care)."""
        if not self.agent.uses_context:
            z = np.zeros((self.E, 0), np.float32)
            return z, z
        mu, var = self.infer_posterior(exact)
        return mu.cpu().numpy(), var.sqrt().cpu().numpy()
