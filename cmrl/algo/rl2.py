"""RL2 (Duan et al. 2016): a GRU policy whose hidden state is the adaptation.

Input per step: (obs, previous action as executed, previous reward x `ppo_reward_scale`, done flag of
the previous step); all three "previous" parts are zeros at a trial's first step. The hidden state
is carried across the episodes of a trial and starts from zeros at the next trial. Training: a
meta-batch of `tasks_per_iteration` trials of `trial_episodes` episodes each (one goal variation per
trial), GAE over each whole trial (the discount runs across its episode boundaries; the value after
the trial's last step is 0), then PPO (clipped ratio, value loss, entropy bonus) over whole trials,
`ppo_minibatches` of them per step, the GRU unrolled over the full trial.
"""

from __future__ import annotations

import numpy as np
import torch

from ..nets.onpolicy_nets import gaussian_entropy, gaussian_log_prob
from .onpolicy import ActOut, env_actions, gae, run_episode, sample_actions


class RL2Trial:
    """The hidden state and previous-step inputs of n envs through one trial."""

    def __init__(self, agent, n: int, generators: list[torch.Generator] | None = None):
        self.policy = agent.policy
        self.device = agent.device
        self.scale = agent.config.onpolicy.ppo_reward_scale
        self.generators = generators
        self.h = self.policy.initial_state(n, self.device)
        self.prev_action = np.zeros((n, agent.act_dim), np.float32)
        self.prev_reward = np.zeros(n, np.float32)
        self.prev_done = np.zeros(n, np.float32)
        self.activity: list[float] = []
        """Per step: mean |change| of the hidden state (what the app shows instead of a posterior)."""

    def inputs(self, obs: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(obs, np.float32), self.prev_action,
                               self.prev_reward[:, None], self.prev_done[:, None]], 1)

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> ActOut:
        x = self.inputs(obs)
        mean, value, log_std, h = self.policy(torch.as_tensor(x, device=self.device)[:, None],
                                              self.h)
        change = (h - self.h).abs().mean(-1)[0]
        self.activity.append(float(change.mean()))
        self.step_signal = change.cpu().numpy()  # per env: what this step moved the memory
        self.h = h
        mean = mean[:, 0]
        action = sample_actions(mean, log_std, deterministic, self.generators)
        logp = gaussian_log_prob(mean, log_std, action)
        value = self.policy.value_in_reward_units(value[:, 0])
        return ActOut(action.cpu().numpy(), env_actions(action),
                      {"x": x, "logp": logp.cpu().numpy(), "value": value.cpu().numpy()})

    def observe(self, env_action: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None:
        self.prev_action = np.asarray(env_action, np.float32)
        self.prev_reward = np.asarray(rewards, np.float32) * self.scale
        self.prev_done = np.asarray(dones, np.float32)

    def adapt(self) -> None:
        """Nothing to do: the hidden state already holds what the trial taught it."""

    @property
    def hidden(self) -> np.ndarray:
        return self.h[0].cpu().numpy()


class RL2Learner:
    def __init__(self, agent):
        self.agent = agent
        self.cfg = agent.config.onpolicy
        self.optimizer = torch.optim.Adam(agent.policy.parameters(), lr=self.cfg.ppo_lr)

    def collect(self, envs, variations, trainer) -> tuple[dict, np.ndarray, np.ndarray]:
        """One trial per env: the per-step arrays over the whole trial [n, K*T, ...], success and
        return per (env, episode of the trial) [n, K]."""
        n, K = len(envs), self.cfg.trial_episodes
        trial = RL2Trial(self.agent, n)
        parts = []
        for _ in range(K):
            parts.append(run_episode(envs, variations, trial, False, trainer.reset_seeds(n)))
        cat = {"x": np.concatenate([p.extras["x"] for p in parts], 1),
               "logp": np.concatenate([p.extras["logp"] for p in parts], 1),
               "value": np.concatenate([p.extras["value"] for p in parts], 1),
               "actions": np.concatenate([p.actions for p in parts], 1),
               "rewards": np.concatenate([p.rewards for p in parts], 1)}
        return (cat, np.stack([p.success for p in parts], 1),
                np.stack([p.rewards.sum(1) for p in parts], 1))

    def iterate(self, envs, variations, names, trainer) -> tuple[int, dict]:
        cfg, policy, dev = self.cfg, self.agent.policy, self.agent.device
        data, success, returns = self.collect(envs, variations, trainer)
        rewards = data["rewards"] * cfg.ppo_reward_scale
        adv = gae(rewards, data["value"], cfg.discount, cfg.gae_lambda)
        targets = adv + data["value"]
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        x = torch.as_tensor(data["x"], device=dev)
        act = torch.as_tensor(data["actions"], device=dev)
        old_logp = torch.as_tensor(data["logp"], device=dev)
        adv_t = torch.as_tensor(adv, dtype=torch.float32, device=dev)
        tgt_t = torch.as_tensor(targets, dtype=torch.float32, device=dev)
        with torch.no_grad():
            policy.update_return_stats(tgt_t)
            tgt_t = policy.normalize_returns(tgt_t)
        n = x.shape[0]
        sums = {"policy_loss": 0.0, "value_loss": 0.0, "approx_kl": 0.0, "clip_frac": 0.0}
        steps = 0
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(n)
            for mb in torch.tensor_split(perm, min(cfg.ppo_minibatches, n)):
                mean, value, log_std, _ = policy(x[mb])
                logp = gaussian_log_prob(mean, log_std, act[mb])
                ratio = torch.exp(logp - old_logp[mb])
                a = adv_t[mb]
                pg = -torch.min(ratio * a, ratio.clamp(1 - cfg.ppo_clip, 1 + cfg.ppo_clip) * a).mean()
                vloss = (value - tgt_t[mb]).pow(2).mean()
                loss = pg + cfg.value_coef * vloss - cfg.entropy_coef * gaussian_entropy(log_std)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    sums["policy_loss"] += pg.item()
                    sums["value_loss"] += vloss.item()
                    sums["approx_kl"] += float((old_logp[mb] - logp).mean())
                    sums["clip_frac"] += float(((ratio - 1).abs() > cfg.ppo_clip).float().mean())
                steps += 1
        stats = {k: v / steps for k, v in sums.items()}
        stats.update(_trial_stats(names, success, returns))
        stats["action_std"] = float(policy.log_std.detach().exp().mean())
        stats["grad_steps"] = steps
        return int(success.size * envs[0].horizon), stats


def _trial_stats(names: list[str], success: np.ndarray, returns: np.ndarray) -> dict:
    """Training-rollout figures: per task, and the first vs the last episode of the trials (does
    the hidden state help within a trial)."""
    out = {}
    names_a = np.array(names)
    for task in dict.fromkeys(names):
        rows = names_a == task
        out[f"train_success/{task}"] = float(success[rows].mean())
        out[f"train_return/{task}"] = float(returns[rows].mean())
    out["success"] = float(success.mean())
    out["success_first_episode"] = float(success[:, 0].mean())
    out["success_last_episode"] = float(success[:, -1].mean())
    out["return_first_episode"] = float(returns[:, 0].mean())
    out["return_last_episode"] = float(returns[:, -1].mean())
    return out
