"""Scripted prior data: Meta-World's hand-written expert policies, with Gaussian action noise.

Only meta-train tasks may be scripted: asking for a held-out task raises `HeldOutTaskError`, so prior
data can never leak the test task into training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .envs import TaskEnv, TaskPool
from .tasks import HeldOutTaskError


@dataclass
class Episode:
    """One episode as arrays of length T (obs/next_obs [T, 39], actions [T, 4])."""

    task: str
    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    successes: np.ndarray
    policy: str

    @property
    def success(self) -> bool:
        return bool(self.successes.any())

    def __len__(self) -> int:
        return len(self.rewards)


def scripted_policy(task: str):
    from metaworld.policies import ENV_POLICY_MAP

    if task not in ENV_POLICY_MAP:
        raise KeyError(f"Meta-World has no scripted policy for {task!r}")
    return ENV_POLICY_MAP[task]()


def run_episode(env: TaskEnv, variation, policy, noise: float, rng: np.random.Generator,
                policy_name: str) -> Episode:
    """Roll `policy` (an object with get_action(obs), or None for uniform random actions)."""
    obs = env.reset(variation)
    rows: dict[str, list] = {k: [] for k in ("obs", "actions", "rewards", "next_obs", "successes")}
    done = False
    while not done:
        if policy is None:
            action = rng.uniform(-1.0, 1.0, size=4)
        else:
            action = np.asarray(policy.get_action(obs.astype(np.float64)), dtype=np.float64)
            if noise > 0:
                action = action + rng.normal(0.0, noise, size=action.shape)
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        next_obs, reward, success, done = env.step(action)
        for key, value in zip(rows, (obs, action, reward, next_obs, success)):
            rows[key].append(value)
        obs = next_obs
    return Episode(task=env.task, obs=np.asarray(rows["obs"], np.float32),
                   actions=np.asarray(rows["actions"], np.float32),
                   rewards=np.asarray(rows["rewards"], np.float32),
                   next_obs=np.asarray(rows["next_obs"], np.float32),
                   successes=np.asarray(rows["successes"], bool), policy=policy_name)


def collect_prior_episodes(pool: TaskPool, task: str, episodes: int, noise: float,
                           seed: int, policy: str = "expert") -> list[Episode]:
    """`episodes` episodes of a meta-train task over its training goal variations.

    policy: `expert` (scripted, with N(0, noise) action noise) or `random` (uniform actions)."""
    if task not in pool.benchmark.train_tasks:
        raise HeldOutTaskError(f"{task!r} is not a meta-train task of {pool.benchmark.name}; "
                               "prior data is only ever collected for meta-train tasks")
    if policy not in ("expert", "random"):
        raise ValueError(f"policy must be 'expert' or 'random', not {policy!r}")
    rng = np.random.default_rng(seed)
    variations = pool.variations(task, "train")
    env = pool.make_env(task, "train")
    actor = scripted_policy(task) if policy == "expert" else None
    try:
        return [run_episode(env, variations[int(rng.integers(len(variations)))], actor, noise, rng,
                            policy) for _ in range(episodes)]
    finally:
        env.close()
