"""Data collection in the meta-train envs (Algorithm 1, lines 2-12).

All envs of all meta-train tasks (`envs_per_task` each) step in lockstep, so the policy runs one
batched forward pass per env step instead of one per env. A round is one episode in every env, each
on a training goal variation, with z from either
- the prior (the goal text's factor for cmrl, N(0, I) for pearl), each env on a randomly drawn
  variation: data for the context buffer, or
- the posterior given that env's transitions of an earlier round, on the same variation (PEARL's
  task is the goal variation, so the context must come from it): data for RL only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .agent import MetaAgent, TaskBelief
from ..envs.metaworld_env import TaskPool
from .replay import MultiTaskReplay
from .speed_tuning import one_thread


@dataclass
class RoundResult:
    obs: np.ndarray          # [E, H, obs_dim]
    actions: np.ndarray      # [E, H, act_dim]
    rewards: np.ndarray      # [E, H]
    next_obs: np.ndarray     # [E, H, obs_dim]
    successes: np.ndarray    # [E] success at any step
    returns: np.ndarray      # [E]
    env_task: np.ndarray     # [E] task index
    variations: np.ndarray   # [E] goal variation index within the task's training variations
    goals: np.ndarray        # [E, g] the hidden goal positions

    @property
    def steps(self) -> int:
        return int(self.rewards.size)


class Collector:
    def __init__(self, agent: MetaAgent, pool: TaskPool, tasks: tuple[str, ...], envs_per_task: int,
                 goal_bank: torch.Tensor | None, rng: np.random.Generator):
        held_out = set(tasks) - set(pool.benchmark.train_tasks)
        assert not held_out, f"collector asked to collect from held-out tasks {held_out}"
        self.agent, self.pool, self.rng = agent, pool, rng
        self.env_task = np.repeat(np.arange(len(tasks)), envs_per_task)
        self.cond_ids = [agent.task_id(tasks[t]) for t in self.env_task]  # sm oracle's one-hot ids
        self.envs = [pool.make_env(tasks[t], "train") for t in self.env_task]
        self.variations = [pool.variations(t, "train") for t in tasks]
        self.goal_bank = goal_bank  # [T, P, text_dim] paraphrase embeddings (cmrl), else None

    def _goals(self) -> torch.Tensor | None:
        if self.goal_bank is None:
            return None
        pick = self.rng.integers(self.goal_bank.shape[1], size=len(self.env_task))
        return self.goal_bank[torch.as_tensor(self.env_task), torch.as_tensor(pick)]

    @one_thread
    def run_round(self, posterior_from: RoundResult | None = None,
                  context_size: int = 64) -> RoundResult:
        """One episode per env: z from the prior on freshly drawn variations, or, given an earlier
        round, from each env's posterior over `context_size` of its own transitions there, on the
        same variations."""
        agent = self.agent
        E = len(self.envs)
        goals = self._goals()
        belief = TaskBelief(agent, E, goal=goals.cpu().numpy() if goals is not None else None,
                            task_ids=self.cond_ids)
        if posterior_from is None:
            chosen = np.array([int(self.rng.integers(len(self.variations[t]))) for t in self.env_task])
        else:
            chosen = posterior_from.variations
            if agent.uses_context:
                with torch.no_grad():
                    context = torch.as_tensor(_own_context(posterior_from, context_size, self.rng),
                                              device=agent.device)
                    mu, var = agent.infer_posterior(context, goals.to(agent.device)
                                                    if goals is not None else None)
                    belief.z = agent.sample_z(mu, var)
        obs = np.stack([env.reset(self.variations[t][v])
                        for env, t, v in zip(self.envs, self.env_task, chosen)])
        env_goals = np.stack([np.asarray(env.goal, np.float32) for env in self.envs])
        rows_o, rows_a, rows_r, rows_n = [], [], [], []
        succ = np.zeros(E, bool)
        done = False
        while not done:
            actions = belief.act(obs).action.cpu().numpy()
            steps = [env.step(a) for env, a in zip(self.envs, actions)]
            next_obs = np.stack([s[0] for s in steps])
            rows_o.append(obs)
            rows_a.append(actions)
            rows_r.append([s[1] for s in steps])
            rows_n.append(next_obs)
            succ |= np.array([s[2] for s in steps])
            done = steps[0][3]
            obs = next_obs
        rewards = np.asarray(rows_r, np.float32).T
        return RoundResult(np.stack(rows_o, 1), np.stack(rows_a, 1).astype(np.float32), rewards,
                           np.stack(rows_n, 1), succ, rewards.sum(1), self.env_task,
                           np.asarray(chosen), env_goals)

    def close(self) -> None:
        for env in self.envs:
            env.close()


def add_round(buffer: MultiTaskReplay, result: RoundResult) -> None:
    for e, t in enumerate(result.env_task):
        buffer.add(int(t), result.obs[e], result.actions[e], result.rewards[e], result.next_obs[e],
                   groups=int(result.variations[e]), goal=result.goals[e])


def _own_context(result: RoundResult, size: int, rng: np.random.Generator) -> np.ndarray:
    """[E, size, 2*obs+act+1]: per env, `size` of its own transitions of `result`."""
    E, H = result.rewards.shape
    idx = rng.integers(H, size=(E, size))
    rows = np.arange(E)[:, None]
    return np.concatenate([result.obs[rows, idx], result.actions[rows, idx],
                           result.rewards[rows, idx][..., None], result.next_obs[rows, idx]],
                          axis=-1).astype(np.float32)
