"""Routing analysis: which modules does an agent route through, per task, and how much do tasks share.

A soft-modular actor's routing at one step is a list of L-1 row-stochastic [n, n] matrices (row j: how
module j of the next layer mixes the modules of the layer below) followed by the final n-way output
mix (see `cmrl.algo.evaluation.StepRecord.routing`). This module averages routing over steps and episodes
and compares tasks:

- `RoutingMean`: a running mean of routing snapshots (the mean of row-stochastic matrices stays
  row-stochastic);
- `cosine_similarity`: cosine of the flattened routing (all layers and the final mix);
- `centered_cosine_similarity`: the same after subtracting uniform routing (1/n): near-uniform
  routings all have a plain cosine near 1, their deviations from uniform tell them apart;
- `js_similarity`: 1 - the mean Jensen-Shannon divergence (base 2, so in [0, 1]) between
  corresponding routing distributions (every row of every layer, and the final mix);
- `similarity_matrix`: task x task similarities under either measure;
- `task_routing` / `routing_profiles`: roll a `TrainedAgent` out (no rendering) and average;
- `context_map`: where each task lands, from its goal text alone and after adaptation: the
  meta-train task its z and its routing are nearest to (does window-close look like drawer-close?).

Pure functions over numpy arrays, plus the two rollout helpers over the public `TrainedAgent` API.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

Routing = Sequence[np.ndarray]
METRICS = ("cosine", "centered-cosine", "jensen-shannon")


class NoRoutingError(ValueError):
    """The agent's actor has no routing (pearl's actor is a plain MLP; care's a mixture of state
    encoders and an MLP)."""


def _as_routing(routing: Routing) -> list[np.ndarray]:
    if routing is None or len(routing) == 0:
        raise NoRoutingError("no routing given (a pearl agent's actor is a plain MLP)")
    return [np.asarray(p, dtype=np.float64) for p in routing]


def _check_same_shape(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise ValueError("routings have different shapes: "
                         f"{[x.shape for x in a]} vs {[y.shape for y in b]}")


class RoutingMean:
    """Running mean of routing snapshots (each a list of arrays of fixed shapes)."""

    def __init__(self):
        self._sum: list[np.ndarray] | None = None
        self.count = 0

    def add(self, routing: Routing) -> None:
        r = _as_routing(routing)
        if self._sum is None:
            self._sum = [x.copy() for x in r]
        else:
            _check_same_shape(self._sum, r)
            for s, x in zip(self._sum, r):
                s += x
        self.count += 1

    def mean(self) -> list[np.ndarray]:
        if self._sum is None:
            raise ValueError("no routing has been added yet")
        return [s / self.count for s in self._sum]


def mean_routing(routings: Iterable[Routing]) -> list[np.ndarray]:
    """Element-wise mean of routing snapshots."""
    acc = RoutingMean()
    for r in routings:
        acc.add(r)
    return acc.mean()


def flatten_routing(routing: Routing) -> np.ndarray:
    """All layers' matrices and the final mix as one vector."""
    return np.concatenate([x.ravel() for x in _as_routing(routing)])


def routing_distributions(routing: Routing) -> np.ndarray:
    """Every routing distribution as a row: the rows of each [n, n] layer, then the final mix.
    Shape [(L-1) * n + 1, n]."""
    rows = []
    for x in _as_routing(routing):
        rows.extend(np.atleast_2d(x))
    return np.stack(rows)


def cosine_similarity(a: Routing, b: Routing) -> float:
    """Cosine of the flattened routings (1: same pattern up to scale)."""
    ra, rb = _as_routing(a), _as_routing(b)
    _check_same_shape(ra, rb)
    u, v = flatten_routing(ra), flatten_routing(rb)
    denom = np.linalg.norm(u) * np.linalg.norm(v)
    return float(u @ v / denom) if denom > 0 else 0.0


def centered_cosine_similarity(a: Routing, b: Routing) -> float:
    """Cosine of the flattened deviations from uniform routing (each distribution minus 1/n):
    +1 when two tasks favour the same modules, -1 opposite ones, 0 when either is uniform."""
    ra, rb = _as_routing(a), _as_routing(b)
    _check_same_shape(ra, rb)
    u = flatten_routing([x - 1.0 / x.shape[-1] for x in ra])
    v = flatten_routing([x - 1.0 / x.shape[-1] for x in rb])
    denom = np.linalg.norm(u) * np.linalg.norm(v)
    return float(u @ v / denom) if denom > 1e-12 else 0.0


def js_divergence(p: np.ndarray, q: np.ndarray, axis: int = -1) -> np.ndarray:
    """Jensen-Shannon divergence in bits (in [0, 1]) between distributions along `axis`."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p = p / p.sum(axis=axis, keepdims=True)
    q = q / q.sum(axis=axis, keepdims=True)
    m = 0.5 * (p + q)

    def kl(x, y):
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(x > 0, x * np.log2(x / y), 0.0)
        return terms.sum(axis=axis)

    return np.clip(0.5 * kl(p, m) + 0.5 * kl(q, m), 0.0, 1.0)


def js_similarity(a: Routing, b: Routing) -> float:
    """1 - mean Jensen-Shannon divergence over corresponding routing distributions (1: identical)."""
    ra, rb = _as_routing(a), _as_routing(b)
    _check_same_shape(ra, rb)
    return float(1.0 - js_divergence(routing_distributions(ra), routing_distributions(rb)).mean())


def similarity(a: Routing, b: Routing, metric: str = "cosine") -> float:
    if metric == "cosine":
        return cosine_similarity(a, b)
    if metric in ("centered-cosine", "centered"):
        return centered_cosine_similarity(a, b)
    if metric in ("jensen-shannon", "js"):
        return js_similarity(a, b)
    raise ValueError(f"unknown similarity {metric!r}; choose one of {', '.join(METRICS)}")


def similarity_matrix(profiles: dict[str, Routing], metric: str = "cosine"
                      ) -> tuple[list[str], np.ndarray]:
    """Names and the symmetric [T, T] matrix of pairwise routing similarities (diagonal 1)."""
    names = list(profiles)
    T = len(names)
    out = np.ones((T, T))
    for i in range(T):
        for j in range(i + 1, T):
            out[i, j] = out[j, i] = similarity(profiles[names[i]], profiles[names[j]], metric)
    return names, out


@dataclass
class TaskRouting:
    """Mean actor routing of one task, averaged over every step of every episode rolled out."""

    task: str
    goal_text: str | None
    mean: list[np.ndarray]
    steps: int
    episodes: int
    episode_success: list[bool] = field(default_factory=list)
    variations: list[int] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.episode_success)) if self.episode_success else float("nan")


def _records(gen):
    """The rollout's records; the rollout is closed however the loop ends."""
    try:
        yield from gen
    finally:
        gen.close()


def task_routing(agent, task: str, goal_text: str | None = None, episodes: int = 2,
                 variations: Sequence[int] = (0,), horizon: int | None = None, seed: int = 0,
                 eval_episodes: int = 0, stop: threading.Event | None = None) -> TaskRouting:
    """Roll `agent` (a `cmrl.TrainedAgent`) out on `task` for each goal variation (no rendering):
    `episodes` adaptation episodes then `eval_episodes`, and average the actor's routing over every
    step. Raises NoRoutingError for an agent without routing. Safe in threads: building a scene is
    locked in `cmrl.envs.metaworld_env.make_scene`."""
    if not agent.has_routing:
        body = {"mlp": "a plain MLP", "care": "CARE's attention-weighted mixture of state encoders "
                "and an MLP"}.get(agent.agent.spec.backbone, "not soft-modular")
        raise NoRoutingError(f"a {agent.kind} agent's actor is {body}: it has no routing to "
                             "inspect; pick a cmrl or sm checkpoint")
    acc = RoutingMean()
    successes: list[bool] = []
    n_episodes = 0
    for v in variations:
        gen = agent.rollout(task, goal_text, variation=int(v), adaptation_episodes=episodes,
                            eval_episodes=eval_episodes, render=False, seed=seed, horizon=horizon,
                            stop=stop)
        for rec in _records(gen):
            if rec.routing is None:
                raise NoRoutingError(f"a {agent.kind} agent returned no routing")
            acc.add(rec.routing)
            if rec.done:
                successes.append(bool(rec.episode_success))
                n_episodes += 1
        if stop is not None and stop.is_set():
            break
    if acc.count == 0:
        raise ValueError(f"no steps were rolled out on {task}")
    return TaskRouting(task, goal_text, acc.mean(), acc.count, n_episodes, successes,
                       [int(v) for v in variations])


def routing_profiles(agent, tasks: Sequence[str], goal_texts: dict[str, str] | None = None,
                     episodes: int = 2, variations: Sequence[int] = (0,),
                     horizon: int | None = None, seed: int = 0, eval_episodes: int = 0,
                     stop: threading.Event | None = None,
                     on_task: Callable[[TaskRouting], None] | None = None) -> dict[str, TaskRouting]:
    """`task_routing` for each task (goal text: `goal_texts[task]`, else the task's canonical one)."""
    out: dict[str, TaskRouting] = {}
    for task in tasks:
        if stop is not None and stop.is_set():
            break
        res = task_routing(agent, task, (goal_texts or {}).get(task), episodes, variations,
                           horizon, seed, eval_episodes, stop)
        out[task] = res
        if on_task is not None:
            on_task(res)
    return out


# -- where a task lands: nearest meta-train task by z and by routing ---------------------------------
@dataclass
class TaskContext:
    """Where an agent puts one task, from the goal text alone and after adaptation: the mean
    posterior z and the mean actor routing of a deterministic episode at the prior's mean (text
    only) and of one at the posterior's mean after the adaptation episodes; plus the mean routing
    over the adaptation episodes themselves."""

    task: str
    goal_text: str | None
    z_text: np.ndarray | None
    """Mean z of the text-only episode (the prior's mean); None for an agent without context."""
    z_adapted: np.ndarray | None
    routing_text: list[np.ndarray] | None
    routing_adapted: list[np.ndarray] | None
    routing_adaptation: list[np.ndarray] | None
    """Mean routing over every step of the adaptation episodes (z sampled per episode)."""
    success_text: float
    success_adapted: float
    adaptation_steps: int = 0
    adaptation_episodes: int = 0


def task_context(agent, task: str, goal_text: str | None = None, episodes: int = 2,
                 variations: Sequence[int] = (0,), horizon: int | None = None, seed: int = 0,
                 stop: threading.Event | None = None) -> TaskContext:
    """Per variation: one deterministic episode at the prior (text only); then `episodes`
    adaptation episodes and one deterministic episode at the posterior mean. z and routing are
    averaged over each phase's steps and over variations. `stop` ends it early (with what was
    rolled out so far)."""
    parts = {key: {"z": [], "routing": RoutingMean(), "succ": []}
             for key in ("text", "adaptation", "adapted")}
    for v in variations:
        for adapt in (0, episodes):
            gen = agent.rollout(task, goal_text, variation=int(v), adaptation_episodes=adapt,
                                eval_episodes=1, render=False, seed=seed, horizon=horizon,
                                stop=stop)
            for rec in _records(gen):
                key = "adaptation" if rec.phase == "adapt" else ("adapted" if adapt else "text")
                part = parts[key]
                if rec.z_mean.size and key != "adaptation":
                    part["z"].append(rec.z_mean)
                if rec.routing is not None:
                    part["routing"].add(rec.routing)
                if rec.done:
                    part["succ"].append(float(rec.episode_success))
            if stop is not None and stop.is_set():
                break
        if stop is not None and stop.is_set():
            break

    def z(key):
        return np.mean(parts[key]["z"], axis=0) if parts[key]["z"] else None

    def routing(key):
        return parts[key]["routing"].mean() if parts[key]["routing"].count else None

    def success(key):
        return float(np.mean(parts[key]["succ"])) if parts[key]["succ"] else float("nan")

    return TaskContext(task, goal_text, z("text"), z("adapted"), routing("text"),
                       routing("adapted"), routing("adaptation"), success("text"),
                       success("adapted"), parts["adaptation"]["routing"].count,
                       len(parts["adaptation"]["succ"]))


def nearest_tasks(contexts: dict[str, TaskContext], reference: Sequence[str],
                  metric: str = "centered-cosine") -> dict[str, dict]:
    """For every task: which `reference` task (the meta-train tasks) its z and its routing are
    nearest to, from the text alone and after adaptation. Reference points are the reference
    tasks' own adapted z and routing. z: Euclidean distance; routing: `metric` similarity."""
    out: dict[str, dict] = {}
    refs = [r for r in reference if r in contexts]
    for task, c in contexts.items():
        entry: dict = {"success_text": c.success_text, "success_adapted": c.success_adapted}
        for key, z, routing in (("text", c.z_text, c.routing_text),
                                ("adapted", c.z_adapted, c.routing_adapted)):
            others = [r for r in refs if r != task or key == "text"]
            if z is not None and others:
                dist = {r: float(np.linalg.norm(z - contexts[r].z_adapted)) for r in others
                        if contexts[r].z_adapted is not None}
                entry[f"z_{key}"] = {"nearest": min(dist, key=dist.get), "distance": dist}
            if routing is not None and others:
                sim = {r: similarity(routing, contexts[r].routing_adapted, metric) for r in others
                       if contexts[r].routing_adapted is not None}
                entry[f"routing_{key}"] = {"nearest": max(sim, key=sim.get), "similarity": sim}
        out[task] = entry
    return out


def context_map(agent, tasks: Sequence[str] | None = None, goal_texts: dict[str, str] | None = None,
                episodes: int = 2, variations: Sequence[int] = (0, 1), horizon: int | None = None,
                seed: int = 0, metric: str = "centered-cosine") -> dict:
    """`task_context` for every task of the agent's benchmark (or `tasks`), and `nearest_tasks`
    against its meta-train tasks: a JSON-ready dict."""
    train = list(agent.info.get("train_tasks", []))
    tasks = list(tasks) if tasks else train + list(agent.info.get("test_tasks", []))
    contexts = {t: task_context(agent, t, (goal_texts or {}).get(t), episodes, variations,
                                horizon, seed) for t in tasks}
    return {"agent": agent.kind, "episodes": episodes, "variations": list(variations),
            "metric": metric, "meta_train": train,
            "z": {t: {"text": None if c.z_text is None else c.z_text.tolist(),
                      "adapted": None if c.z_adapted is None else c.z_adapted.tolist()}
                  for t, c in contexts.items()},
            "nearest": nearest_tasks(contexts, train, metric)}
