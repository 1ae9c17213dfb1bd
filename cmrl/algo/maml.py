"""MAML for RL (Finn et al. 2017): meta-learned weights theta of a Gaussian MLP policy that one or a
few policy-gradient steps adapt to a task.

Inner loop (training and test alike, `adapt_params`): on a task's adaptation episodes, advantages
from a linear feature baseline fitted to those episodes (GAE, standardised), the vanilla
policy-gradient loss -mean(log pi_theta(a|s) A), and `inner_steps` plain gradient steps of size
`inner_lr` on all policy parameters (the log-std too): theta' = theta - inner_lr * grad.

Outer loop: PPO on the post-adaptation episodes, not TRPO. Each of `ppo_epochs` outer steps
recomputes theta'(theta) from the same adaptation episodes (so the outer gradient flows through the
inner step: second order, or first order with `first_order`), takes the clipped-ratio surrogate
against the adapted policy that collected the episodes, summed over the meta-batch, and one Adam
step on theta. Why PPO: TRPO needs Fisher-vector products through the inner step (a third-order
graph per conjugate-gradient iteration) and a line search with fresh adaptations, many times the
cost of a PPO step on these CPUs; ProMP (Rothfuss et al. 2019) found a clipped PPO-style outer
objective as good as TRPO's for MAML; and several Adam steps per batch reuse each costly env step
more. The pre-update sampling distribution's own gradient (ProMP's LVC / DiCE term) is left out,
as in the original MAML-TRPO.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.func import functional_call, vmap

from ..nets.onpolicy_nets import gaussian_entropy, gaussian_log_prob
from .onpolicy import ActOut, baseline_advantages, env_actions, run_episode, sample_actions


def adapt_params(policy, params: dict[str, torch.Tensor], obs: torch.Tensor, actions: torch.Tensor,
                 adv: torch.Tensor, inner_lr: float, inner_steps: int,
                 create_graph: bool) -> dict[str, torch.Tensor]:
    """theta' after `inner_steps` vanilla policy-gradient steps on (obs [N, D], actions [N, A],
    advantages [N]). `create_graph`: keep the graph, so theta' is differentiable in theta with
    second-order terms; otherwise the gradients are constants (first-order MAML, or test time)."""
    for _ in range(inner_steps):
        mean, log_std = policy.forward_with(params, obs)
        loss = -(gaussian_log_prob(mean, log_std, actions) * adv).mean()
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
        params = {k: p - inner_lr * g for (k, p), g in zip(params.items(), grads)}
    return params


def inner_advantages(obs: np.ndarray, rewards: np.ndarray, cfg) -> np.ndarray:
    """Advantages [K, T] of a task's adaptation episodes for the inner step."""
    return baseline_advantages(obs, rewards * cfg.ppo_reward_scale, cfg.discount, cfg.gae_lambda)


def adapt_to_episodes(agent, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                      create_graph: bool = False, params: dict | None = None) -> dict:
    """theta' from one task's episodes (obs [K, T, D], actions [K, T, A], rewards [K, T])."""
    cfg, dev = agent.config.onpolicy, agent.device
    policy = agent.policy
    if params is None:
        params = {k: v.detach().requires_grad_(True) for k, v in policy.named_parameters()}
    adv = inner_advantages(obs, rewards, cfg)
    D, A = obs.shape[-1], actions.shape[-1]
    with torch.enable_grad():
        out = adapt_params(policy, params, torch.as_tensor(obs.reshape(-1, D), device=dev),
                           torch.as_tensor(actions.reshape(-1, A), device=dev),
                           torch.as_tensor(adv.reshape(-1), dtype=torch.float32, device=dev),
                           cfg.inner_lr, cfg.inner_steps, create_graph)
    return out if create_graph else {k: v.detach() for k, v in out.items()}


def _stacked_forward(policy, stacked: dict[str, torch.Tensor], obs: torch.Tensor):
    """Each row of obs [n, D] through its own parameter set (stacked [n, ...])."""
    def one(p, o):
        return functional_call(policy, p, (o,))
    return vmap(one)(stacked, obs)


class MAMLTrial:
    """n envs' adaptation: their episodes so far with the meta-learned weights, then after
    `adapt()` each env's own adapted weights."""

    def __init__(self, agent, n: int, generators: list[torch.Generator] | None = None):
        self.agent, self.n, self.generators = agent, n, generators
        self.adapted: dict[str, torch.Tensor] | None = None  # stacked [n, ...] after adapt()
        self._current: list[list] = [[] for _ in range(n)]   # per env: (obs, action) this episode
        self._rewards: list[list] = [[] for _ in range(n)]
        self.episodes: list[list[tuple]] = [[] for _ in range(n)]  # per env: (obs, act, rew) arrays
        self._last_obs: np.ndarray | None = None
        self.action_change: float | None = None
        """Mean |adapted mean action - meta mean action| over the adaptation episodes' states
        (what the app shows instead of a posterior); None before `adapt()`."""

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> ActOut:
        policy, dev = self.agent.policy, self.agent.device
        o = torch.as_tensor(np.asarray(obs, np.float32), device=dev)
        meta_mean, log_std = policy(o)
        if self.adapted is None:
            mean, std_rows = meta_mean, log_std.expand_as(meta_mean)
        else:
            mean, std_rows = _stacked_forward(policy, self.adapted, o)
        # per env: how far the inner steps moved the mean action at this state
        self.step_signal = (mean - meta_mean).abs().mean(-1).cpu().numpy()
        action = sample_actions(mean, std_rows, deterministic, self.generators)
        logp = gaussian_log_prob(mean, std_rows, action)
        self._last_obs = np.asarray(obs, np.float32)
        self._last_action = action.cpu().numpy()
        return ActOut(self._last_action, env_actions(action), {"logp": logp.cpu().numpy()})

    def observe(self, env_action: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None:
        if self.adapted is not None:
            return  # episodes after adaptation are not adapted on again
        for i in range(self.n):
            self._current[i].append((self._last_obs[i], self._last_action[i]))
            self._rewards[i].append(float(rewards[i]))
            if dones[i]:
                obs, act = (np.stack(x) for x in zip(*self._current[i]))
                self.episodes[i].append((obs, act, np.asarray(self._rewards[i], np.float32)))
                self._current[i], self._rewards[i] = [], []

    def adapt(self) -> None:
        """Each env's inner steps on its finished episodes (none: the meta-learned weights)."""
        agent = self.agent
        base = {k: v.detach() for k, v in agent.policy.named_parameters()}
        per_env, changes = [], []
        for eps in self.episodes:
            if not eps:
                per_env.append(base)
                continue
            T = min(len(e[2]) for e in eps)  # whole episodes of one horizon
            obs = np.stack([e[0][:T] for e in eps])
            act = np.stack([e[1][:T] for e in eps])
            rew = np.stack([e[2][:T] for e in eps])
            params = adapt_to_episodes(agent, obs, act, rew)
            per_env.append(params)
            with torch.no_grad():
                o = torch.as_tensor(obs.reshape(-1, obs.shape[-1]), device=agent.device)
                changes.append(float((agent.policy.forward_with(params, o)[0]
                                      - agent.policy(o)[0]).abs().mean()))
        self.adapted = {k: torch.stack([p[k] for p in per_env]) for k in base}
        self.action_change = float(np.mean(changes)) if changes else 0.0


class MAMLLearner:
    def __init__(self, agent):
        self.agent = agent
        self.cfg = agent.config.onpolicy
        self.optimizer = torch.optim.Adam(agent.policy.parameters(), lr=self.cfg.ppo_lr)

    def _episodes(self, envs, variations, trial, rounds: int, trainer):
        """`rounds` episodes in each env: obs [n, K, T, D], actions, rewards [n, K, T], logp,
        success [n, K]."""
        parts = [run_episode(envs, variations, trial, False, trainer.reset_seeds(len(envs)))
                 for _ in range(rounds)]
        return (np.stack([p.obs for p in parts], 1), np.stack([p.actions for p in parts], 1),
                np.stack([p.rewards for p in parts], 1),
                np.stack([p.extras["logp"] for p in parts], 1),
                np.stack([p.success for p in parts], 1))

    def iterate(self, envs, variations, names, trainer) -> tuple[int, dict]:
        cfg, agent, dev = self.cfg, self.agent, self.agent.device
        policy = agent.policy
        n = len(envs)
        trial = MAMLTrial(agent, n)
        pre_obs, pre_act, pre_rew, _, pre_succ = self._episodes(envs, variations, trial,
                                                                cfg.adapt_episodes, trainer)
        trial.adapt()
        post_obs, post_act, post_rew, post_logp, post_succ = self._episodes(
            envs, variations, trial, cfg.post_episodes, trainer)
        D, A = pre_obs.shape[-1], pre_act.shape[-1]

        def flat(x, last=None):
            x = x.reshape(n, -1, *([last] if last else []))
            return torch.as_tensor(x, dtype=torch.float32, device=dev)

        pre_adv = flat(np.stack([inner_advantages(pre_obs[i], pre_rew[i], cfg) for i in range(n)]))
        post_adv = flat(np.stack([baseline_advantages(post_obs[i], post_rew[i] * cfg.ppo_reward_scale,
                                                      cfg.discount, cfg.gae_lambda)
                                  for i in range(n)]))
        pre_o, pre_a = flat(pre_obs, D), flat(pre_act, A)
        post_o, post_a, old_logp = flat(post_obs, D), flat(post_act, A), flat(post_logp)
        sums = {"policy_loss": 0.0, "approx_kl": 0.0, "clip_frac": 0.0}
        for _ in range(cfg.ppo_epochs):
            params = dict(policy.named_parameters())
            loss = 0.0
            kl = clip = 0.0
            for i in range(n):
                adapted = adapt_params(policy, params, pre_o[i], pre_a[i], pre_adv[i],
                                       cfg.inner_lr, cfg.inner_steps,
                                       create_graph=not cfg.first_order)
                mean, log_std = policy.forward_with(adapted, post_o[i])
                logp = gaussian_log_prob(mean, log_std, post_a[i])
                ratio = torch.exp(logp - old_logp[i])
                a = post_adv[i]
                surr = torch.min(ratio * a, ratio.clamp(1 - cfg.ppo_clip, 1 + cfg.ppo_clip) * a)
                loss = loss - (surr.mean() + cfg.entropy_coef * gaussian_entropy(log_std)) / n
                with torch.no_grad():
                    kl += float((old_logp[i] - logp).mean()) / n
                    clip += float(((ratio - 1).abs() > cfg.ppo_clip).float().mean()) / n
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            sums["policy_loss"] += float(loss.detach())
            sums["approx_kl"] += kl
            sums["clip_frac"] += clip
        stats = {k: v / cfg.ppo_epochs for k, v in sums.items()}
        names_a = np.array(names)
        for task in dict.fromkeys(names):
            rows = names_a == task
            stats[f"train_success/{task}"] = float(post_succ[rows].mean())
            stats[f"train_return/{task}"] = float(post_rew[rows].sum(-1).mean())
        stats["success"] = float(post_succ.mean())
        stats["success_pre_update"] = float(pre_succ.mean())
        stats["return_pre_update"] = float(pre_rew.sum(-1).mean())
        stats["return_post_update"] = float(post_rew.sum(-1).mean())
        stats["action_change"] = trial.action_change
        stats["action_std"] = float(policy.log_std.detach().exp().mean())
        stats["grad_steps"] = cfg.ppo_epochs
        return int(pre_rew.size + post_rew.size), stats
