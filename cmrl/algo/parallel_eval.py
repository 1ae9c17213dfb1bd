"""Evaluation on every core: (task, group of variations) units spread over worker processes.

`evaluation.evaluate` hands its tasks here, one split after the other, held-out tasks first. Each
task's chosen goal variations are split into groups only where a split has fewer tasks than its
share of the workers (ML1 with one split evaluated, for one); a worker runs a unit with
`evaluation.run_variations`, the group's envs in lockstep with one batched forward pass, and the
parent puts each task's rows back together in variation order. The numbers do not depend on the
number of workers or the grouping: every variation draws from a generator of its own
(`evaluation.variation_generators`), every forward pass spans all of a task's chosen variations
whichever of them a unit steps, and every unit runs on CPU with one torch thread (one worker or
several, in this process or another).

Workers are started once per process (forkserver where the platform has it, else spawn; nothing
relies on fork) and kept for later evaluations (a trainer evaluates many times). Each split's
batch ships the agent as its config and state dict (numpy arrays) and the task pool pickled with
the goal variations drawn so far (drawing Meta-World's ML10 variations costs ~10 s of CPU per split
and seed: workers never redraw them), and a worker rebuilds both once per batch. While the workers
run the held-out tasks, this process draws the meta-train tasks' fresh variations. A progress bar
per task (episodes of all its variations).

`bare_loop` runs the same units with random actions and no policy: what the bench compares with.
"""

from __future__ import annotations

import multiprocessing as mp
import itertools
import pickle
import queue as queue_module
import time
import uuid
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np
import torch

from ..config import RunConfig
from ..envs.metaworld_env import ACTION_DIM
from .agent import MetaAgent
from .speed_tuning import torch_threads
from .evaluation import TaskResult, chosen_variations, run_variations, task_goal, task_result

START_METHOD = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
"""How workers start: a fork server that has imported this module once (cheap starts, no fork of
a threaded process such as the app or a trainer), else spawn."""


MIN_PARALLEL_STEPS = 5_000
"""With the default worker count, an evaluation of fewer env steps than this runs in this process:
the first start of the workers (imports in the fork server) costs about as much as they would save."""


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
    while groups and sum(groups.values()) < workers:
        key = max(groups, key=lambda k: sizes[k] / groups[k])
        if sizes[key] <= groups[key]:
            break
        groups[key] += 1
    return [Unit(split, task, tuple(int(i) for i in part))
            for (split, task), g in groups.items()
            for part in np.array_split(np.arange(sizes[(split, task)]), g)]


def _share(workers: int, tasks: int, total: int) -> int:
    """The units a split's `tasks` (of `total` tasks in all splits) should make: its share of the
    workers. Splitting a task's variations only when there are fewer tasks than workers keeps the
    groups large (every forward pass spans all of a task's variations, stepped or not)."""
    return max(1, -(-workers * tasks // max(total, 1)))


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
    """One batch of units' shared part: pickled once here (the pool may gain variations while
    earlier batches are still being sent), unpickled once per worker."""

    token: str
    agent: bytes | None  # a pickled AgentSpec; None: bare loop (or run in this process)
    pool: bytes | None  # the pickled pool; None: run in this process
    phases: list[str]
    num_variations: int
    seed: int


@dataclass
class _Batch:
    """The units of one split, ready to run (their variations drawn)."""

    call: _Call
    pool: object
    units: list[Unit]
    goals: list
    bars: list


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
        spec = pickle.loads(call.agent) if call.agent is not None else None
        _CACHE.update(token=call.token, pool=pickle.loads(call.pool),
                      agent=spec.build() if spec is not None else None)
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


_STARTED: set[int] = set()  # worker counts whose kept workers have finished a unit


def _run(batches, local_agent, workers: int, parallel: bool) -> list[tuple[_Batch, list]]:
    """(batch, its units' results in order) for every batch. In this process (`parallel` False):
    one batch after the other, with `local_agent()` (None: the bare loop). In the kept workers
    (which rebuild the agent from each batch's call): each batch's units go out as soon as the
    batch is ready, so this process draws the next split's variations while they run the first.
    Workers that die before any of them finished a unit (a script without an
    `if __name__ == "__main__":` guard, which spawned processes re-run) fall back to this process."""
    if not parallel:
        agent = local_agent()
        out = []
        with torch_threads(1):  # as in a worker: the same kernels, the same bits
            for b in batches:
                out.append((b, [_execute(agent, b.pool, b.call, unit, goal,
                                         lambda bar=bar, n=len(unit.rows): bar.update(n))
                                for unit, goal, bar in zip(b.units, b.goals, b.bars)]))
        return out
    executor, progress = _executor(workers)
    futures: dict = {}
    done_batches: list[_Batch] = []
    out: list[tuple[_Batch, list]] = []
    try:
        for b in batches:
            out.append((b, [None] * len(b.units)))
            done_batches.append(b)
            for i, (u, g) in enumerate(zip(b.units, b.goals)):
                futures[executor.submit(_run_unit, b.call, i, u, g)] = (len(out) - 1, i)
            _drain(progress, done_batches)
        while futures:
            finished, _ = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(progress, done_batches)
            for f in finished:
                k, i = futures.pop(f)
                out[k][1][i] = f.result()[1]
                _STARTED.add(workers)
        _drain(progress, done_batches)
    except BrokenProcessPool as e:
        shutdown()
        if workers in _STARTED:
            raise RuntimeError(f"an evaluation worker process died ({e}); run with workers=1 "
                               "(--workers 1) to see the error in this process") from e
        warnings.warn("evaluation worker processes could not start (a script that evaluates must "
                      "guard its entry point with `if __name__ == \"__main__\":`, as "
                      "multiprocessing asks); evaluating in this process instead",
                      RuntimeWarning, stacklevel=4)
        for b in done_batches:
            for bar in b.bars:
                bar.reset()
        return _run(itertools.chain(done_batches, batches), local_agent, 1, False)
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    return out


def _drain(progress, batches: list[_Batch]) -> None:
    """Move the workers' episode counts onto the bars."""
    bars = {b.call.token: b.bars for b in batches}
    while True:
        try:
            token, index, n = progress.get_nowait()
        except queue_module.Empty:
            return
        if token in bars:
            bars[token][index].update(n)


class _Bars:
    """One tqdm bar per (split, task), shared by its units; stacked in the order tasks come."""

    def __init__(self, episodes: int, progress: bool):
        self.episodes, self.progress, self.bars = episodes, progress, {}

    def for_units(self, units: list[Unit], sizes: dict) -> list:
        from tqdm import tqdm

        for key in sizes:
            if key not in self.bars:
                self.bars[key] = tqdm(total=sizes[key] * self.episodes, unit="ep",
                                      desc=f"{key[0]:5s} {key[1]}", position=len(self.bars),
                                      leave=True, disable=not self.progress, dynamic_ncols=True)
        return [self.bars[(u.split, u.task)] for u in units]

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _parallel(workers: int) -> bool:
    """Whether to use worker processes (a daemonic process may not start any)."""
    return workers > 1 and not mp.current_process().daemon


def _cpu_agent(agent: MetaAgent) -> MetaAgent:
    if agent.device.type == "cpu":
        return agent
    return AgentSpec.of(agent).build()


def _split_order(splits) -> list[str]:
    """Held-out tasks first: their variations come with the pool, while the meta-train tasks'
    fresh ones are drawn (in this process) as the workers run the first batch."""
    return sorted(splits, key=lambda split: split != "test")


def evaluate_tasks(agent: MetaAgent, pool, splits, encoder, goal_texts: dict[str, str],
                   num_variations: int, phases: list[str], seed: int,
                   workers: int | None = None,
                   progress: bool = False) -> tuple[dict[str, list[TaskResult]], int]:
    """({split: [TaskResult per task]}, workers used): `evaluation.evaluate`'s work. `workers`
    None: the cores, or this process alone under MIN_PARALLEL_STEPS env steps (a trainer's small
    in-training evaluations)."""
    if workers is None:
        steps = (sum(len(pool.benchmark.tasks(s)) for s in splits) * num_variations * len(phases)
                 * pool.benchmark.horizon)
        workers = default_workers() if steps >= MIN_PARALLEL_STEPS else 1
    workers = int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    parallel = _parallel(workers)
    spec = pickle.dumps(AgentSpec.of(agent)) if parallel else None
    goals: dict = {}
    sizes: dict = {}
    bars = _Bars(len(phases), progress)

    total = sum(len(pool.benchmark.tasks(split)) for split in splits)

    def batches():
        for split in _split_order(splits):
            part = {}
            for task in pool.benchmark.tasks(split):
                goals[(split, task)] = task_goal(agent, task, encoder, goal_texts.get(task))
                part[(split, task)] = len(chosen_variations(pool, task, split, num_variations,
                                                            seed))
            sizes.update(part)
            units = plan_units(part, _share(workers, len(part), total))
            if not units:  # a split with no tasks (a finetune's meta-train split)
                continue
            call = _Call(uuid.uuid4().hex, spec, pickle.dumps(pool) if parallel else None,
                         list(phases), num_variations, seed)
            yield _Batch(call, pool, units, [goals[(u.split, u.task)][1] for u in units],
                         bars.for_units(units, part))

    try:
        done = _run(batches(), lambda: _cpu_agent(agent), workers, parallel)
    finally:
        bars.close()
    rows: dict = {key: {} for key in sizes}
    for batch, results in done:
        for unit, (succ, ret) in zip(batch.units, results):
            for j, i in enumerate(unit.rows):
                rows[(unit.split, unit.task)][i] = (succ[j], ret[j])
    out: dict[str, list[TaskResult]] = {split: [] for split in splits}
    for split in splits:
        for task in pool.benchmark.tasks(split):
            ordered = [rows[(split, task)][i] for i in range(sizes[(split, task)])]
            out[split].append(task_result(task, split, goals[(split, task)][0], list(phases),
                                          np.stack([s for s, _ in ordered]),
                                          np.stack([r for _, r in ordered])))
    return out, workers if parallel else 1


def bare_loop(pool, splits, num_variations: int, episodes: int, seed: int,
              workers: int | None = None) -> dict:
    """The evaluation's units stepped with random actions, no policy, in as many processes as
    `evaluate_tasks` would use: {"env_steps", "seconds", "workers"}."""
    workers = default_workers() if workers is None else int(workers)
    parallel = _parallel(workers)
    bars = _Bars(episodes, False)
    total = sum(len(pool.benchmark.tasks(split)) for split in splits)

    def batches():
        for split in _split_order(splits):
            part = {(split, t): len(chosen_variations(pool, t, split, num_variations, seed))
                    for t in pool.benchmark.tasks(split)}
            units = plan_units(part, _share(workers, len(part), total))
            call = _Call(uuid.uuid4().hex, None, pickle.dumps(pool) if parallel else None,
                         ["bare"] * episodes, num_variations, seed)
            yield _Batch(call, pool, units, [None] * len(units), bars.for_units(units, part))

    start = time.perf_counter()
    done = _run(batches(), lambda: None, workers, parallel)
    return {"env_steps": int(sum(sum(r) for _, r in done)),
            "seconds": time.perf_counter() - start, "workers": workers}
