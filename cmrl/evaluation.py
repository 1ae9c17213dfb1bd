"""Evaluation: the meta-test protocol, and a step-by-step rollout iterator for the app.

Protocol (Meta-World / PEARL meta-test): for each task and goal variation, start from the prior (the
goal text's factor for cmrl, N(0, I) for pearl), run `adaptation_episodes` episodes, each with a z
sampled from the posterior of all transitions so far (the posterior is updated after every
transition, z is redrawn per episode as in PEARL), then run `eval_episodes` episodes with the posterior
mean and deterministic actions. An episode is a success if `info["success"]` is 1 at any step.
Meta-train tasks are evaluated on *fresh* goal variations (a differently seeded Meta-World draw);
held-out tasks on their test variations. Results are deterministic for a seed.

`rollout` yields one `StepRecord` per env step (obs, action, reward, success, z posterior, routing,
and optionally the rendered frame), which is what the app streams.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from .agent import MetaAgent, TaskBelief
from .envs import TaskEnv, TaskPool
from .tasks import canonical_goal_text


@dataclass
class StepRecord:
    episode: int
    """Episode index, adaptation episodes first."""
    phase: str
    """`adapt` (z sampled from the posterior, stochastic actions) or `eval` (posterior mean,
    deterministic actions)."""
    t: int
    obs: np.ndarray
    action: np.ndarray
    reward: float
    success: bool
    """Success at this step."""
    episode_success: bool
    """Success at any step of this episode so far."""
    episode_return: float
    done: bool
    z_mean: np.ndarray
    """Posterior mean after this step's transition [latent_dim] (empty for sm)."""
    z_std: np.ndarray
    routing: list[np.ndarray] | None
    """Actor routing at this step: L-1 arrays [n, n] (rows sum to 1) plus the final [n] mix last;
    None for the MLP (pearl) actor."""
    num_transitions: int
    """Transitions in the context so far."""
    frame: np.ndarray | None = None


def _routing_numpy(routing, index: int = 0) -> list[np.ndarray] | None:
    if routing is None:
        return None
    return [p[index].float().cpu().numpy() for p in routing.layers] + [
        routing.final[index].float().cpu().numpy()]


def rollout(agent: MetaAgent, env: TaskEnv, variation, goal_embedding: np.ndarray | None = None,
            task_id: int = -1, adaptation_episodes: int = 3, eval_episodes: int = 1,
            render: bool = False, seed: int = 0,
            stop: threading.Event | None = None) -> Iterator[StepRecord]:
    """Adapt to one goal variation step by step, yielding every step. `stop` ends it early.
    z and the actions are drawn from the rollout's own generator seeded with `seed`, so the same seed
    gives the same rollout whatever runs beside it, and torch's global RNG is left alone."""
    gen = torch.Generator(device=agent.device).manual_seed(seed)
    belief = TaskBelief(agent, 1, goal=goal_embedding, task_ids=[task_id], generator=gen)
    for episode in range(adaptation_episodes + eval_episodes):
        phase = "adapt" if episode < adaptation_episodes else "eval"
        deterministic = phase == "eval"
        belief.sample_z(deterministic=deterministic)
        obs = env.reset(variation, seed=seed + episode)
        ep_success, ep_return, done = False, 0.0, False
        while not done:
            if stop is not None and stop.is_set():
                return
            out = belief.act(obs[None], deterministic=deterministic)
            action = out.action[0].cpu().numpy()
            next_obs, reward, success, done = env.step(action)
            if phase == "adapt":
                belief.observe(obs[None], action[None], np.array([reward]), next_obs[None])
            ep_success |= success
            ep_return += reward
            mu, std = belief.posterior_numpy()
            yield StepRecord(episode, phase, env.t, obs, action, reward, success, ep_success,
                             ep_return, done, mu[0], std[0], _routing_numpy(out.routing),
                             int(belief.num_transitions[0]),
                             env.render() if render else None)
            obs = next_obs


@dataclass
class TaskResult:
    task: str
    split: str
    goal_text: str | None
    success_rate: float
    """Fraction of evaluation episodes (over variations) with success at any step."""
    mean_return: float
    adaptation_success: list[float] = field(default_factory=list)
    """Success rate of each adaptation episode (the learning curve within a trial)."""
    adaptation_return: list[float] = field(default_factory=list)
    variations: int = 0


def evaluate_task(agent: MetaAgent, pool: TaskPool, task: str, split: str, encoder=None,
                  goal_text: str | None = None, num_variations: int = 5,
                  adaptation_episodes: int = 3, eval_episodes: int = 1,
                  seed: int = 0) -> TaskResult:
    """The meta-test protocol on one task, its variations stepped in lockstep (one forward pass)."""
    fresh = split == "train"  # meta-train tasks: goals never trained on
    variations = pool.variations(task, split, fresh=fresh)
    rng = np.random.default_rng(seed)
    chosen = [variations[i] for i in rng.permutation(len(variations))[:num_variations]]
    E = len(chosen)
    goal = None
    if agent.uses_text:
        goal_text = goal_text or canonical_goal_text(task)
        goal = np.repeat(encoder.encode(goal_text)[None], E, axis=0)
    task_id = agent.task_id(task) if split == "train" else -1
    envs = [pool.make_env(task, split) for _ in range(E)]
    adapt_succ, adapt_ret, eval_succ, eval_ret = [], [], [], []
    try:
        gen = torch.Generator(device=agent.device).manual_seed(seed)
        belief = TaskBelief(agent, E, goal=goal, task_ids=[task_id] * E, generator=gen)
        for episode in range(adaptation_episodes + eval_episodes):
            deterministic = episode >= adaptation_episodes
            belief.sample_z(deterministic=deterministic)
            obs = np.stack([env.reset(v, seed=seed * 1000 + episode)
                            for env, v in zip(envs, chosen)])
            succ, ret, done = np.zeros(E, bool), np.zeros(E), False
            while not done:
                actions = belief.act(obs, deterministic=deterministic).action.cpu().numpy()
                steps = [env.step(a) for env, a in zip(envs, actions)]
                next_obs = np.stack([s[0] for s in steps])
                rewards = np.array([s[1] for s in steps], np.float32)
                succ |= np.array([s[2] for s in steps])
                ret += rewards
                done = steps[0][3]
                if not deterministic:
                    belief.observe(obs, actions, rewards, next_obs)
                obs = next_obs
            (eval_succ if deterministic else adapt_succ).append(succ.mean())
            (eval_ret if deterministic else adapt_ret).append(ret.mean())
    finally:
        for env in envs:
            env.close()
    return TaskResult(task, split, goal_text, float(np.mean(eval_succ)) if eval_succ else float("nan"),
                      float(np.mean(eval_ret)) if eval_ret else float("nan"),
                      [float(x) for x in adapt_succ], [float(x) for x in adapt_ret], E)


def evaluate(agent: MetaAgent, pool: TaskPool, splits: tuple[str, ...] = ("train", "test"),
             encoder=None, num_variations: int = 5, adaptation_episodes: int = 3,
             eval_episodes: int = 1, seed: int = 0,
             goal_texts: dict[str, str] | None = None) -> dict:
    """Every task of the given splits; a JSON-ready dict with per-task and mean success."""
    start = time.time()
    out: dict = {"protocol": {"adaptation_episodes": adaptation_episodes,
                              "eval_episodes": eval_episodes, "variations_per_task": num_variations,
                              "horizon": pool.benchmark.horizon, "seed": seed,
                              "success": "info['success'] at any step of an evaluation episode",
                              "train_variations": "fresh (not the ones trained on)"},
                 "agent": agent.kind, "splits": {}}
    for split in splits:
        results = [evaluate_task(agent, pool, task, split, encoder,
                                 (goal_texts or {}).get(task), num_variations,
                                 adaptation_episodes, eval_episodes, seed)
                   for task in pool.benchmark.tasks(split)]
        out["splits"][split] = {
            "tasks": {r.task: r.__dict__ for r in results},
            "mean_success": float(np.mean([r.success_rate for r in results])) if results else None,
        }
    out["wall_time_s"] = round(time.time() - start, 2)
    return out
