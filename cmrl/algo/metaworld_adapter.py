"""Adapter to Meta-World's own meta-RL evaluation (`metaworld.evaluation.metalearning_evaluation`).

`MetaWorldAgent` implements the `MetaLearningAgent` protocol over a vector env of N sub-envs:
`init` resets every env's belief to the prior; `adapt_action` acts with a z sampled from the posterior;
`step` adds each transition to its env's context (and redraws z when an env's episode ends, as PEARL
does per trajectory); `adapt` fixes the posterior; `eval_action` acts deterministically with the
posterior mean; `reset(mask)` is a no-op for the belief (evaluation episodes keep the adapted posterior).
"""

from __future__ import annotations

import numpy as np

from .agent import TaskBelief
from ..envs.tasks import canonical_goal_text


class MetaWorldAgent:
    def __init__(self, trained, goal_texts: dict[str, str], env_tasks: list[str] | None):
        self.trained = trained
        self.goal_texts = dict(goal_texts)
        self.env_tasks = list(env_tasks) if env_tasks is not None else None
        self.belief: TaskBelief | None = None
        self._pending = None
        self._adapted = False

    def bind(self, envs) -> "MetaWorldAgent":
        """Read which task each sub-env runs from a Meta-World vector env."""
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        by_class = {cls.__name__: name for name, cls in ALL_V3_ENVIRONMENTS.items()}
        self.env_tasks = [by_class[n] for n in envs.get_attr("task_name")]
        return self

    def _tasks(self, n: int) -> list[str]:
        if self.env_tasks is not None:
            if len(self.env_tasks) != n:
                raise ValueError(f"adapter knows {len(self.env_tasks)} env tasks, got {n} envs")
            return self.env_tasks
        if len(self.goal_texts) == 1:
            return [next(iter(self.goal_texts))] * n
        raise ValueError("several tasks: call .bind(eval_envs) or pass env_tasks=[...] so the adapter "
                         "knows which goal text belongs to which sub-env")

    def init(self) -> None:
        self.belief = None  # built on the first observation batch, when the env count is known
        self._pending = None
        self._adapted = False

    def _ensure(self, n: int) -> TaskBelief:
        if self.belief is None or self.belief.E != n:
            tasks = self._tasks(n)
            agent = self.trained.agent
            goal = None
            if agent.uses_text:
                goal = np.stack([self.trained.encode_goal(
                    self.goal_texts.get(t, canonical_goal_text(t))) for t in tasks])
            ids = [agent.task_id(t) for t in tasks]
            self.belief = TaskBelief(agent, n, goal=goal, task_ids=ids)
            if self._adapted:  # no adaptation episodes (zero-shot): act with the prior's mean
                self.belief.sample_z(deterministic=True)
        return self.belief

    def adapt_action(self, observations: np.ndarray):
        belief = self._ensure(len(observations))
        out = belief.act(np.asarray(observations, np.float32))
        return out.action.cpu().numpy().astype(np.float64), {}

    def step(self, timestep) -> None:
        belief = self._ensure(len(timestep.observation))
        # Meta-World's Timestep carries no next observation; the next obs of a transition is taken
        # from the next call. We keep the previous step and complete it here.
        obs = np.asarray(timestep.observation, np.float32)
        if self._pending is not None:
            p_obs, p_act, p_rew, p_live = self._pending
            belief.observe(p_obs, p_act, p_rew, obs, env_mask=p_live)
        ended = np.logical_or(timestep.terminated, timestep.truncated)
        # A transition whose episode ended has no next obs in the next batch (autoreset); use obs
        # itself as s' (Meta-World's obs already holds the previous frame, so little is lost).
        if ended.any():
            belief.observe(obs, np.asarray(timestep.action, np.float32),
                           np.asarray(timestep.reward, np.float32), obs, env_mask=ended)
            belief.sample_z(env_mask=ended)
        self._pending = (obs, np.asarray(timestep.action, np.float32),
                         np.asarray(timestep.reward, np.float32), ~ended)

    def adapt(self) -> None:
        self._pending = None
        self._adapted = True
        if self.belief is not None:
            self.belief.sample_z(deterministic=True)

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        belief = self._ensure(len(observations))
        out = belief.act(np.asarray(observations, np.float32), deterministic=True)
        return out.action.cpu().numpy().astype(np.float64)

    def reset(self, env_mask: np.ndarray) -> None:
        pass


def metaworld_protocol(trained, splits=("train", "test"), num_evals: int = 10,
                       meta_batch_size: int = 1, adaptation_episodes: int = 3,
                       evaluation_episodes: int = 1, seed: int = 0,
                       goal_texts: dict[str, str] | None = None) -> dict:
    """Meta-World's own `metalearning_evaluation` on each task of the agent's benchmark.

    One vector env per task, so each task's success is the function's overall mean: Meta-World's
    per-task breakdown pairs names from a `set` with results in env order, which can mislabel tasks
    when several share one vector env. Keep `meta_batch_size` at 1: Meta-World's `evaluation` counts
    the first `evaluation_episodes` episodes that *end* per task name, and with terminate-on-success
    the first to end are the successes, so several envs of one task inflate success (measured here:
    5 envs, 1 episode -> 100% where one env per variation gives 40%). `num_evals` goal variations.
    Meta-train tasks use Meta-World's train split (the goal variations trained on), held-out tasks its
    test split. Success is Meta-World's: `info["success"]` at any step of an evaluation episode."""
    import time

    import gymnasium as gym
    from metaworld.evaluation import metalearning_evaluation

    from ..envs.tasks import resolve_benchmark

    bench = resolve_benchmark(trained.config.benchmark)
    horizon = bench.horizon
    start = time.time()
    out: dict = {"protocol": {"name": "metaworld.evaluation.metalearning_evaluation",
                              "num_evals": num_evals, "meta_batch_size": meta_batch_size,
                              "goal_variations_per_task": num_evals * meta_batch_size,
                              "adaptation_episodes": adaptation_episodes,
                              "evaluation_episodes": evaluation_episodes, "horizon": horizon,
                              "seed": seed,
                              "train_variations": "Meta-World's train split (trained on)"},
                 "agent": trained.kind, "splits": {}}
    if bench.is_point:
        raise ValueError("the point robot is not a Meta-World env: use the project's evaluator")
    for split in splits:
        tasks = bench.tasks(split)
        results = {}
        for task in tasks:
            if bench.holds_out_variations:  # ML1: Meta-World's own train / test goal split
                envs = gym.make_vec(f"Meta-World/ML1-{split}", env_name=task,
                                    meta_batch_size=meta_batch_size, seed=seed,
                                    max_episode_steps=horizon, vector_strategy="sync")
            else:
                train_envs = [task] if split == "train" else list(bench.train_tasks)
                test_envs = [task] if split == "test" else list(bench.test_tasks) or [task]
                envs = gym.make_vec("Meta-World/custom-ml-envs", train_envs=train_envs,
                                    test_envs=test_envs, meta_batch_size=meta_batch_size,
                                    split=split, seed=seed, max_episode_steps=horizon,
                                    vector_strategy="sync")
            try:
                mw = trained.as_metaworld_agent(goal_texts=goal_texts,
                                                env_tasks=[task] * meta_batch_size)
                if hasattr(mw, "wrap_envs"):  # rl2 reads each evaluation step's reward
                    envs = mw.wrap_envs(envs)
                success, ret, _ = metalearning_evaluation(
                    mw, envs, num_evals=num_evals, adaptation_steps=1,
                    adaptation_episodes=adaptation_episodes, evaluation_episodes=evaluation_episodes)
            finally:
                envs.close()
            results[task] = {"success_rate": float(success), "mean_return": float(ret)}
        out["splits"][split] = {"tasks": results, "mean_success": float(np.mean(
            [r["success_rate"] for r in results.values()])) if results else None}
    out["wall_time_s"] = round(time.time() - start, 2)
    return out
