"""Scripted prior data: Meta-World's hand-written expert policies, with Gaussian action noise.

Only meta-train tasks may be scripted: asking for a held-out task raises `HeldOutTaskError`, so prior
data can never leak the test task into training.

The experts act on the *privileged* observation (`TaskEnv.privileged_obs`: the goal position that
the meta-RL benchmarks hide, filled in), because several of them (reach, push, pick-place, ...)
steer to the goal read from the observation and fail without it. Episodes record the goal-hidden
observation, the one the agent sees; only the expert's actions carry what it saw.
`expert_success` measures how often an expert succeeds within given horizons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .metaworld_env import TaskEnv, TaskPool
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
    variation: int = -1
    """Index of the goal variation among the task's training variations (-1: not recorded)."""
    goal: np.ndarray | None = None
    """The hidden goal position of that variation (for relabelling and goal probes)."""

    @property
    def success(self) -> bool:
        return bool(self.successes.any())

    def __len__(self) -> int:
        return len(self.rewards)


def scripted_policy(task: str):
    from . import point_robot

    if task == point_robot.TASK:
        return point_robot.PointExpert()
    from metaworld.policies import ENV_POLICY_MAP

    if task not in ENV_POLICY_MAP:
        raise KeyError(f"Meta-World has no scripted policy for {task!r}")
    return ENV_POLICY_MAP[task]()


EXPERT_OBSERVATION = ("privileged: the scripted expert reads the observation with the goal "
                      "position (obs[36:39]) filled in; the stored observations keep it hidden "
                      "(zeros), as the agent sees them")
"""What the scripted experts observe, in words (recorded in dataset manifests)."""


def run_episode(env: TaskEnv, variation, policy, noise: float, rng: np.random.Generator,
                policy_name: str, privileged: bool = True) -> Episode:
    """Roll `policy` (an object with get_action(obs), or None for uniform random actions). The
    policy reads the privileged observation (goal visible) unless `privileged` is False; the
    episode stores the goal-hidden one either way."""
    obs = env.reset(variation)
    rows: dict[str, list] = {k: [] for k in ("obs", "actions", "rewards", "next_obs", "successes")}
    done = False
    while not done:
        if policy is None:
            action = rng.uniform(-1.0, 1.0, size=env.act_dim)
        else:
            seen = env.privileged_obs(obs) if privileged else obs.astype(np.float64)
            action = np.asarray(policy.get_action(seen), dtype=np.float64)
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
                   successes=np.asarray(rows["successes"], bool), policy=policy_name,
                   goal=np.asarray(env.goal, np.float32))


def collect_prior_episodes(pool: TaskPool, task: str, episodes: int, noise: float,
                           seed: int, policy: str = "expert",
                           privileged: bool = True) -> list[Episode]:
    """`episodes` episodes of a meta-train task over its training goal variations.

    policy: `expert` (scripted, with N(0, noise) action noise, reading the privileged observation
    unless `privileged` is False) or `random` (uniform actions)."""
    if task not in pool.benchmark.train_tasks:
        raise HeldOutTaskError(f"{task!r} is not a meta-train task of {pool.benchmark.name}; "
                               "prior data is only ever collected for meta-train tasks")
    if policy not in ("expert", "random"):
        raise ValueError(f"policy must be 'expert' or 'random', not {policy!r}")
    rng = np.random.default_rng(seed)
    variations = pool.variations(task, "train")
    env = pool.make_env(task, "train")
    actor = scripted_policy(task) if policy == "expert" else None
    out = []
    try:
        for _ in range(episodes):
            v = int(rng.integers(len(variations)))
            ep = run_episode(env, variations[v], actor, noise, rng, policy, privileged)
            ep.variation = v
            out.append(ep)
    finally:
        env.close()
    return out


def first_success_steps(episodes: list[Episode]) -> list[int | None]:
    """Per episode, the 1-based step of its first success (None: never succeeded)."""
    return [int(np.argmax(ep.successes)) + 1 if ep.success else None for ep in episodes]


def expert_success(pool: TaskPool, task: str, noise: float, episodes: int, seed: int,
                   horizons: tuple[int, ...], privileged: bool = True) -> dict[int, float]:
    """{horizon: success rate} of the scripted expert on a meta-train task: `episodes` episodes of
    the pool's horizon (the longest one asked for), an episode counting as a success within `h`
    when it succeeds at any of its first h steps (what an episode of horizon h would record)."""
    if max(horizons) > pool.benchmark.horizon:
        raise ValueError(f"horizons {horizons} exceed the pool's horizon {pool.benchmark.horizon}")
    steps = first_success_steps(collect_prior_episodes(pool, task, episodes, noise, seed,
                                                       privileged=privileged))
    return {h: float(np.mean([s is not None and s <= h for s in steps])) for h in horizons}


def expert_success_table(pool: TaskPool, noise_levels: tuple[float, ...], episodes: int,
                         horizons: tuple[int, ...], seed: int = 0,
                         privileged: bool = True) -> dict[str, dict[str, dict[int, float]]]:
    """{task: {noise: {horizon: success rate}}} of every meta-train task's scripted expert
    (`expert_success`), each (task, noise level) with its own seed."""
    table: dict[str, dict[str, dict[int, float]]] = {}
    for ti, task in enumerate(pool.benchmark.train_tasks):
        for ni, noise in enumerate(noise_levels):
            job_seed = int(np.random.SeedSequence([seed, ti, ni]).generate_state(1)[0])
            table.setdefault(task, {})[f"{noise:g}"] = expert_success(
                pool, task, noise, episodes, job_seed, horizons, privileged)
    return table


def success_markdown(table: dict[str, dict[str, dict[int, float]]]) -> str:
    """A task x (noise, horizon) markdown table of `expert_success_table`'s result."""
    cols = [(n, h) for n, by_h in next(iter(table.values())).items() for h in by_h]
    head = "| task | " + " | ".join(f"noise {n}, H={h}" for n, h in cols) + " |"
    rows = [f"| {task} | " + " | ".join(f"{by_noise[n][h]:.0%}" for n, h in cols) + " |"
            for task, by_noise in table.items()]
    return "\n".join([head, "|---" * (len(cols) + 1) + "|", *rows])
