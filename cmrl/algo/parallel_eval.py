"""Evaluation on every core: (task, group of variations) units spread over worker processes.

`evaluation.evaluate` hands its tasks here. Each task's chosen goal variations are split into
groups so that there are at least as many units as workers (ML1, one task per split, splits too);
a worker runs a unit with `evaluation.run_variations`, the group's envs in lockstep with one
batched forward pass, and the parent puts each task's rows back together in variation order.
The numbers do not depend on the number of workers or the grouping: every variation draws from a
generator of its own (`evaluation.variation_generators`), every forward pass spans all of a task's
chosen variations whichever of them a unit steps, and every unit runs on CPU with one torch thread
(one worker or several, in this process or another).

Workers are started once per process (forkserver where the platform has it, else spawn; nothing
relies on fork) and kept for later evaluations (a trainer evaluates many times). Each call ships
the agent as its config and state dict (numpy arrays) and the task pool as it is, its goal
variations already drawn (rebuilding Meta-World's ML10 variations takes 15-60 s), and a worker
rebuilds the agent once per call. A progress bar per task (episodes of all its variations).

`bare_loop` runs the same units with random actions and no policy: what the bench compares with.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue as queue_module
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np
import torch

from ..config import RunConfig
from ..envs.metaworld_env import ACTION_DIM
from .agent import MetaAgent
from .evaluation import TaskResult, chosen_variations, run_variations, task_goal, task_result

START_METHOD = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
"""How workers start: a fork server that has imported this module once (cheap starts, no fork of
a threaded process such as the app or a trainer), else spawn."""


def default_workers() -> int:
    """torch's thread count: the cores, unless this process was given fewer (`train.threads`)."""
    return max(1, torch.get_num_threads())


@dataclass(frozen=True)
class Unit:
    split: str
    task: str
    rows: tuple[int, ...]
    """Indices among the task's chosen variations this unit steps."""


def plan_units(sizes: dict[tuple[str, str], int], workers: int) -> list[Unit]:
    """Split each (split, task)'s `sizes[...]` chosen variations into contiguous groups: one group
    per task, then the task with the largest groups split once more, until there are `workers`
    units or every group is one variation."""
    groups = {key: 1 for key, n in sizes.items() if n > 0}
    while sum(groups.values()) < workers:
        key = max(groups, key=lambda k: sizes[k] / groups[k])
        if sizes[key] <= groups[key]:
            break
        groups[key] += 1
    return [Unit(split, task, tuple(int(i) for i in part))
            for (split, task), g in groups.items()
            for part in np.array_split(np.arange(sizes[(split, task)]), g)]


@dataclass
class AgentSpec:
    """What a worker needs to rebuild an agent: its config, sizes and weights (no modules pickled)."""

    config: dict
    obs_dim: int
    act_dim: int
    text_dim: int
    train_tasks: tuple[str, ...]
    state: dict[str, np.ndarray]

    @classmethod
    def of(cls, agent: MetaAgent) -> "AgentSpec":
        return cls(agent.config.to_dict(), agent.obs_dim, agent.act_dim, agent.text_dim,
                   tuple(agent.train_tasks),
                   {k: v.detach().cpu().numpy() for k, v in agent.state_dict().items()})

    def build(self) -> MetaAgent:
        agent = MetaAgent(RunConfig.from_dict(self.config), self.obs_dim, self.act_dim,
                          self.text_dim, self.train_tasks)
        agent.load_state_dict({k: torch.from_numpy(v) for k, v in self.state.items()})
        return agent.eval()


@dataclass
class _Call:
    """One evaluation's shared part (the same for all its units)."""

    token: str
    agent: AgentSpec | None  # None: bare loop
    pool: object
    phases: list[str]
    num_variations: int
    seed: int


# -- worker side -----------------------------------------------------------------------------------
_PROGRESS = None  # the parent's queue, in a worker
_CACHE: dict = {}  # token -> (agent, pool): the last call's, rebuilt once per call


def _init_worker(progress) -> None:
    global _PROGRESS
    _PROGRESS = progress
    torch.set_num_threads(1)


def _call_state(call: _Call):
    if _CACHE.get("token") != call.token:
        _CACHE.clear()
        _CACHE.update(token=call.token, pool=call.pool,
                      agent=call.agent.build() if call.agent is not None else None)
    return _CACHE["agent"], _CACHE["pool"]


def _run_unit(call: _Call, index: int, unit: Unit, goal: np.ndarray | None):
    """In a worker: (index, the unit's result)."""
    agent, pool = _call_state(call)

    def tick() -> None:
        _PROGRESS.put((call.token, index, len(unit.rows)))
    return index, _execute(agent, pool, call, unit, goal, tick)


def _execute(agent: MetaAgent | None, pool, call: _Call, unit: Unit, goal, on_episode):
    """One unit: `run_variations`' (success, return) arrays, or the env steps of `bare_unit`."""
    if agent is None:
        return bare_unit(pool, unit, call.num_variations, len(call.phases), call.seed, on_episode)
    return run_variations(agent, pool, unit.task, unit.split, goal, call.num_variations,
                          call.phases, call.seed, rows=list(unit.rows), on_episode=on_episode)


def bare_unit(pool, unit: Unit, num_variations: int, episodes: int, seed: int,
              on_episode=None) -> int:
    """The bench's reference for a unit: the same envs, variations, resets and episodes, stepped
    with uniform random actions, no policy. Returns the env steps taken."""
    chosen = chosen_variations(pool, unit.task, unit.split, num_variations, seed)
    envs = [pool.make_env(unit.task, unit.split) for _ in unit.rows]
    rng = np.random.default_rng(seed)
    act_dim = getattr(pool, "act_dim", ACTION_DIM)
    steps = 0
    try:
        for episode in range(episodes):
            for env, i in zip(envs, unit.rows):
                env.reset(chosen[i], seed=seed * 1000 + episode)
            done = False
            while not done:
                for env in envs:
                    done = env.step(rng.uniform(-1.0, 1.0, act_dim))[3]
                    steps += 1
            if on_episode is not None:
                on_episode()
    finally:
        for env in envs:
            env.close()
    return steps


# -- parent side -----------------------------------------------------------------------------------
_EXECUTOR: dict = {}  # workers -> (ProcessPoolExecutor, progress queue), kept for later calls


def _executor(workers: int):
    if workers not in _EXECUTOR:
        shutdown()  # one pool at a time
        ctx = mp.get_context(START_METHOD)
        if START_METHOD == "forkserver":
            ctx.set_forkserver_preload([__name__])
        progress = ctx.Queue()
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(progress,))
        _EXECUTOR[workers] = (pool, progress)
    return _EXECUTOR[workers]


def shutdown() -> None:
    """Stop the kept worker processes (they also stop when this process exits)."""
    for pool, progress in _EXECUTOR.values():
        pool.shutdown(wait=True, cancel_futures=True)
        progress.close()
    _EXECUTOR.clear()


@contextlib.contextmanager
def _one_thread():
    """Units in this process run with one torch thread, as in a worker (same kernels, same bits)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(call: _Call, local_agent: MetaAgent | None, units: list[Unit], goals: list,
         workers: int, bars: list) -> list:
    """Every unit's result, in order: in this process with `local_agent` (one worker) or in the
    kept workers, which rebuild the agent from `call.agent`."""
    if workers <= 1 or len(units) <= 1 or mp.current_process().daemon:
        with _one_thread():
            return [_execute(local_agent, call.pool, call, unit, goal,
                             lambda b=bar, n=len(unit.rows): b.update(n))
                    for unit, goal, bar in zip(units, goals, bars)]
    pool, progress = _executor(workers)
    futures = {pool.submit(_run_unit, call, i, u, g): i
               for i, (u, g) in enumerate(zip(units, goals))}
    out: list = [None] * len(units)
    try:
        while futures:
            done, _ = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(progress, call.token, bars)
            for f in done:
                index, res = f.result()
                out[index] = res
                del futures[f]
        _drain(progress, call.token, bars)
    except BrokenProcessPool as e:
        shutdown()
        raise RuntimeError(f"an evaluation worker process died ({e}); run with workers=1 "
                           "(--workers 1) to see the error in this process") from e
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    return out


def _drain(progress, token: str, bars: list) -> None:
    while True:
        try:
            tok, index, n = progress.get_nowait()
        except queue_module.Empty:
            return
        if tok == token:
            bars[index].update(n)


def _bars(units: list[Unit], sizes: dict, episodes: int, progress: bool) -> list:
    """One tqdm bar per (split, task), shared by its units; one entry per unit."""
    from tqdm import tqdm

    keys = list(sizes)
    by_key = {k: tqdm(total=sizes[k] * episodes, desc=f"{k[0]:5s} {k[1]}", unit="ep",
                      position=i, leave=True, disable=not progress, dynamic_ncols=True)
              for i, k in enumerate(keys)}
    return [by_key[(u.split, u.task)] for u in units]


def _cpu_agent(agent: MetaAgent) -> MetaAgent:
    if agent.device.type == "cpu":
        return agent
    return AgentSpec.of(agent).build()


def evaluate_tasks(agent: MetaAgent, pool, splits, encoder, goal_texts: dict[str, str],
                   num_variations: int, phases: list[str], seed: int,
                   workers: int | None = None,
                   progress: bool = False) -> tuple[dict[str, list[TaskResult]], int]:
    """({split: [TaskResult per task]}, workers used): `evaluation.evaluate`'s work."""
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    keys = [(split, task) for split in splits for task in pool.benchmark.tasks(split)]
    goals = {}
    sizes = {}
    for split, task in keys:
        goals[(split, task)] = task_goal(agent, task, encoder, goal_texts.get(task))
        # draws the variations here (fresh ones included), so the pool ships with them
        sizes[(split, task)] = len(chosen_variations(pool, task, split, num_variations, seed))
    units = plan_units(sizes, workers)
    workers = min(workers, len(units))
    local = _cpu_agent(agent) if workers <= 1 else None
    call = _Call(uuid.uuid4().hex, None if local else AgentSpec.of(agent), pool, list(phases),
                 num_variations, seed)
    bars = _bars(units, sizes, len(phases), progress)
    try:
        results = _run(call, local, units, [goals[(u.split, u.task)][1] for u in units], workers,
                       bars)
    finally:
        for bar in dict.fromkeys(bars):
            bar.close()
    rows: dict = {k: {} for k in keys}
    for unit, (succ, ret) in zip(units, results):
        for j, i in enumerate(unit.rows):
            rows[(unit.split, unit.task)][i] = (succ[j], ret[j])
    out: dict[str, list[TaskResult]] = {split: [] for split in splits}
    for (split, task), by_row in rows.items():
        ordered = [by_row[i] for i in range(sizes[(split, task)])]
        out[split].append(task_result(task, split, goals[(split, task)][0], list(phases),
                                      np.stack([s for s, _ in ordered]),
                                      np.stack([r for _, r in ordered])))
    return out, workers


def bare_loop(pool, splits, num_variations: int, episodes: int, seed: int,
              workers: int | None = None) -> dict:
    """The evaluation's units stepped with random actions, no policy, in as many processes as
    `evaluate_tasks` would use: {"env_steps", "seconds", "workers"}."""
    workers = default_workers() if workers is None else int(workers)
    keys = [(split, task) for split in splits for task in pool.benchmark.tasks(split)]
    sizes = {(s, t): len(chosen_variations(pool, t, s, num_variations, seed)) for s, t in keys}
    units = plan_units(sizes, workers)
    workers = min(workers, len(units))
    call = _Call(uuid.uuid4().hex, None, pool, ["bare"] * episodes, num_variations, seed)
    bars = _bars(units, sizes, episodes, False)
    start = time.perf_counter()
    steps = _run(call, None, units, [None] * len(units), workers, bars)
    return {"env_steps": int(sum(steps)), "seconds": time.perf_counter() - start,
            "workers": workers}

