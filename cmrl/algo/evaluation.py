"""Evaluation: the meta-test protocol, and a step-by-step rollout iterator for the app.

Protocol (Meta-World / PEARL meta-test): for each task and goal variation, start from the prior (the
goal text's factor for cmrl, N(0, I) for pearl), run `adaptation_episodes` episodes, each with a z
sampled from the posterior of all transitions so far (the posterior is updated after every
transition, z is redrawn per episode as in PEARL), then run `eval_episodes` episodes with the posterior
mean and deterministic actions. An episode is a success if `info["success"]` is 1 at any step.
Before all that, a zero-shot episode (deterministic, z at the prior's mean, its transitions not kept)
says what the goal text alone achieves, so zero-shot, adapted and the gain come from one evaluation
(`TaskResult.success_by_episode`).
Meta-train tasks are evaluated on *fresh* goal variations (a differently seeded Meta-World draw);
held-out tasks on their test variations. Results are deterministic for a seed.

`rollout` yields one `StepRecord` per env step (obs, action, reward, success, z posterior, routing,
and optionally the rendered frame), which is what the app streams.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from .agent import MetaAgent, TaskBelief
from ..envs.metaworld_env import TaskEnv, TaskPool
from ..nets.goal_text import embed_goals
from ..envs.tasks import canonical_goal_text


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
            stop: threading.Event | None = None,
            goal_probe: Callable[[np.ndarray], np.ndarray] | None = None) -> Iterator[StepRecord]:
    """Adapt to one goal variation step by step, yielding every step. `stop` ends it early.
    z and the actions are drawn from the rollout's own generator seeded with `seed`, so the same seed
    gives the same rollout whatever runs beside it, and torch's global RNG is left alone.
    `goal_probe` maps the posterior mean to where the agent believes the goal is; envs that can
    draw it (the point robot, Meta-World scenes) show it in the rendered frame."""
    gen = torch.Generator(device=agent.device).manual_seed(seed)
    # A refined posterior (`sac.z_refine_steps`) is shown refitted ten times an episode, fewer with
    # several starts (each fit costs as many); the z the agent acts on is always fitted to every
    # step it saw.
    starts = agent.config.sac.z_refine_starts
    belief = TaskBelief(agent, 1, goal=goal_embedding, task_ids=[task_id], generator=gen,
                        refine_every=max(1, env.horizon * starts // 10))
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
            mu, std = belief.posterior_numpy(exact=False)
            yield StepRecord(episode, phase, env.t, obs, action, reward, success, ep_success,
                             ep_return, done, mu[0], std[0], _routing_numpy(out.routing),
                             int(belief.num_transitions[0]),
                             _frame(env, goal_probe, mu[0]) if render else None)
            obs = next_obs


def _frame(env, goal_probe, z_mean: np.ndarray) -> np.ndarray:
    if goal_probe is None or z_mean.size == 0:
        return env.render()
    return env.render(belief=goal_probe(z_mean))


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
    zero_shot_success: float | None = None
    """Success rate of the zero-shot episode: before any interaction, z at the prior's mean (the
    goal text alone for cmrl; N(0, I)'s mean for pearl), deterministic actions; None if not run."""
    zero_shot_return: float | None = None
    adaptation_gain: float | None = None
    """success_rate - zero_shot_success: what the context added to the words (negative: it hurt)."""
    episode_phases: list[str] = field(default_factory=list)
    """The phase of each episode in order: `zero-shot`, then `adapt` x adaptation episodes, then
    `eval` x evaluation episodes."""
    success_by_episode: list[float] = field(default_factory=list)
    """Success rate of each episode, in the order of `episode_phases`."""
    return_by_episode: list[float] = field(default_factory=list)


ZERO_SHOT_RESET = 500
"""Offset of the zero-shot episode's reset seed (adaptation and evaluation episodes use 0, 1, ...)."""


def variation_generators(device, seed: int, count: int) -> list[torch.Generator]:
    """One torch generator per chosen variation (its index among the task's chosen ones), seeded
    from (seed, index): a variation's z and action noise do not depend on which variations are
    stepped beside it, so a task split over worker processes (`parallel_eval.py`) gives the same
    numbers as one process."""
    seeds = np.random.SeedSequence(seed).spawn(count)
    return [torch.Generator(device=device).manual_seed(int(s.generate_state(1)[0])) for s in seeds]


def episode_phases(adaptation_episodes: int, eval_episodes: int, zero_shot: bool) -> list[str]:
    return (["zero-shot"] if zero_shot else []) + ["adapt"] * adaptation_episodes + \
        ["eval"] * eval_episodes


def task_goal(agent: MetaAgent, task: str, encoder=None,
              goal_text: str | None = None) -> tuple[str | None, np.ndarray | None]:
    """(goal text, its embedding) for an agent that reads text; (goal_text, None) otherwise."""
    if not agent.uses_text:
        return goal_text, None
    goal_text = goal_text or canonical_goal_text(task)
    return goal_text, embed_goals(encoder, goal_text, agent.config.net.goal_encoding)


def chosen_variations(pool: TaskPool, task: str, split: str, num_variations: int, seed: int) -> list:
    """The goal variations a task is evaluated on: meta-train tasks on fresh ones (goals never
    trained on), held-out tasks on their test variations; a seeded draw of `num_variations`."""
    variations = pool.variations(task, split, fresh=split == "train")
    rng = np.random.default_rng(seed)
    return [variations[i] for i in rng.permutation(len(variations))[:num_variations]]


def run_variations(agent: MetaAgent, pool: TaskPool, task: str, split: str,
                   goal: np.ndarray | None, num_variations: int, phases: list[str], seed: int,
                   rows: list[int] | None = None,
                   on_episode=None, variations: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The meta-test protocol on one task: success (any step) and return of every episode of
    `phases`, arrays [variations, episodes], for the chosen variations `rows` (default: all).
    `variations` replaces the seeded draw of `num_variations` (`chosen_variations`).

    The belief always spans all chosen variations and only `rows` are stepped (the others see
    zeros and are never observed): every forward pass then has the same shape whatever `rows`
    is, and a row's numbers do not depend on the rows run beside it (batched matmuls are not
    bitwise the same across batch sizes). `on_episode()` is called after each episode."""
    chosen = (chosen_variations(pool, task, split, num_variations, seed) if variations is None
              else list(variations))
    E = len(chosen)
    live = list(range(E)) if rows is None else sorted(rows)
    mask = np.isin(np.arange(E), live)
    goals = None if goal is None else np.repeat(np.asarray(goal)[None], E, axis=0)
    task_id = agent.task_id(task) if split == "train" else -1
    envs = [pool.make_env(task, split) for _ in live]
    succ = np.zeros((len(live), len(phases)), bool)
    ret = np.zeros((len(live), len(phases)))
    try:
        belief = TaskBelief(agent, E, goal=goals, task_ids=[task_id] * E,
                            generator=variation_generators(agent.device, seed, E))
        episode = 0
        for k, phase in enumerate(phases):
            deterministic = phase != "adapt"
            belief.sample_z(deterministic=deterministic)
            reset_seed = seed * 1000 + (ZERO_SHOT_RESET if phase == "zero-shot" else episode)
            first = [env.reset(chosen[i], seed=reset_seed) for env, i in zip(envs, live)]
            obs = np.zeros((E,) + first[0].shape, np.float32)
            obs[live] = first
            next_obs = obs.copy()
            rewards = np.zeros(E, np.float32)
            done = False
            while not done:
                actions = belief.act(obs, deterministic=deterministic).action.cpu().numpy()
                steps = [env.step(actions[i]) for env, i in zip(envs, live)]
                next_obs[live] = [s[0] for s in steps]
                rewards[live] = [s[1] for s in steps]
                succ[:, k] |= np.array([s[2] for s in steps])
                ret[:, k] += rewards[live]
                done = steps[0][3]
                if phase == "adapt":
                    belief.observe(obs, actions, rewards, next_obs, env_mask=mask)
                obs, next_obs = next_obs, obs
            episode += phase != "zero-shot"
            if on_episode is not None:
                on_episode()
    finally:
        for env in envs:
            env.close()
    return succ, ret


def task_result(task: str, split: str, goal_text: str | None, phases: list[str],
                succ: np.ndarray, ret: np.ndarray) -> TaskResult:
    """A task's `TaskResult` from `run_variations`' arrays (all its variations, in order)."""
    succ_by_ep = [float(x) for x in succ.mean(0)]
    ret_by_ep = [float(x) for x in ret.mean(0)]

    def of(phase: str, values: list[float]) -> list[float]:
        return [v for p, v in zip(phases, values) if p == phase]

    evals = of("eval", succ_by_ep)
    success = float(np.mean(evals)) if evals else float("nan")
    zero_shot = "zero-shot" in phases
    zs_succ = of("zero-shot", succ_by_ep)[0] if zero_shot else None
    return TaskResult(task, split, goal_text, success,
                      float(np.mean(of("eval", ret_by_ep))) if evals else float("nan"),
                      of("adapt", succ_by_ep), of("adapt", ret_by_ep), len(succ),
                      zero_shot_success=zs_succ,
                      zero_shot_return=of("zero-shot", ret_by_ep)[0] if zero_shot else None,
                      adaptation_gain=None if zs_succ is None else round(success - zs_succ, 6),
                      episode_phases=phases, success_by_episode=succ_by_ep,
                      return_by_episode=ret_by_ep)


def evaluate_task(agent: MetaAgent, pool: TaskPool, task: str, split: str, encoder=None,
                  goal_text: str | None = None, num_variations: int = 5,
                  adaptation_episodes: int = 3, eval_episodes: int = 1,
                  seed: int = 0, zero_shot: bool = True) -> TaskResult:
    """The meta-test protocol on one task, its variations stepped in lockstep (one forward pass).
    `zero_shot`: first run one deterministic episode at the prior's mean whose transitions are not
    kept (it consumes no randomness, so the other episodes are the same with or without it)."""
    goal_text, goal = task_goal(agent, task, encoder, goal_text)
    phases = episode_phases(adaptation_episodes, eval_episodes, zero_shot)
    succ, ret = run_variations(agent, pool, task, split, goal, num_variations, phases, seed)
    return task_result(task, split, goal_text, phases, succ, ret)


def evaluate(agent: MetaAgent, pool: TaskPool, splits: tuple[str, ...] = ("train", "test"),
             encoder=None, num_variations: int = 5, adaptation_episodes: int = 3,
             eval_episodes: int = 1, seed: int = 0,
             goal_texts: dict[str, str] | None = None, zero_shot: bool = True,
             workers: int | None = None, progress: bool = False) -> dict:
    """Every task of the given splits; a JSON-ready dict with per-task and mean success.
    `workers` processes share the work, (task, group of variations) units (`parallel_eval.py`;
    None: torch's thread count, i.e. the cores unless this process was given fewer); the numbers
    are the same for any number. `progress`: a bar per task on stderr."""
    from .parallel_eval import evaluate_tasks

    start = time.time()
    out: dict = {"protocol": {"adaptation_episodes": adaptation_episodes,
                              "eval_episodes": eval_episodes, "variations_per_task": num_variations,
                              "zero_shot_episode": zero_shot,
                              "horizon": pool.benchmark.horizon, "seed": seed,
                              "success": "info['success'] at any step of an evaluation episode",
                              "train_variations": "fresh (not the ones trained on)"},
                 "agent": agent.kind, "splits": {}}
    by_split, out["workers"] = evaluate_tasks(
        agent, pool, splits, encoder, goal_texts or {}, num_variations,
        episode_phases(adaptation_episodes, eval_episodes, zero_shot), seed, workers, progress)
    for split, results in by_split.items():
        out["splits"][split] = {
            "tasks": {r.task: r.__dict__ for r in results},
            "mean_success": float(np.mean([r.success_rate for r in results])) if results else None,
            "mean_zero_shot_success": (float(np.mean([r.zero_shot_success for r in results]))
                                       if results and zero_shot else None),
        }
    out["wall_time_s"] = round(time.time() - start, 2)
    return out
