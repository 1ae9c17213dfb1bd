"""Offline datasets: scripted-expert (and random) episodes of meta-train tasks, stored as Minari datasets.

`generate_dataset` rolls Meta-World's scripted experts (with Gaussian action noise, one batch of
episodes per noise level) and optionally a uniform-random policy on every meta-train task of a
benchmark, over the benchmark's training goal variations, and stores one Minari dataset per task
under one folder, next to a manifest `cmrl_dataset.json`:

    out_dir/
        cmrl_dataset.json                       the manifest (written last: marks a complete dataset)
        cmrl/namespace_metadata.json            Minari's namespace marker
        cmrl/<benchmark>-<task>-v0/data/...     one Minari (HDF5) dataset per meta-train task

Held-out (meta-test) tasks are never generated, and `load_dataset` refuses a manifest that lists one.

The scripted experts act on the privileged observation (goal position visible: several of them
steer to it), while the dataset stores the goal-hidden observation the agent sees
(`experts.EXPERT_OBSERVATION`, recorded in the manifest). Each task's expert success rate per noise
level is measured on the episodes generated and recorded in the manifest (`expert_success`). A task
whose expert succeeds in fewer than `min_expert_success` of its episodes at some noise level is
warned about on stderr and listed under `weak_experts` in the manifest; with
`allow_weak_experts=False` (the command line's default) it stops the generation with
`WeakExpertError` instead, and nothing is written.

Where things are stored, per Minari dataset:
- per step: observations (T + 1 entries: the last is the final next observation), actions, rewards,
  terminations (always False: Meta-World episodes only end at the horizon), truncations (True at the
  last step) and `infos["success"]` (Meta-World's success flag of that step);
- per episode, in Minari's episode metadata (`MinariDataset.storage.get_episode_metadata`): `task`,
  `policy` (`expert` / `random`), `noise` (action-noise std; NaN for random episodes), `goal_text`
  (the task's canonical goal text), `job_seed`, `variation` (index of the goal variation among the
  task's training variations) and `goal` (its hidden goal position);
- per dataset: a `description` in words and a `cmrl` metadata entry (task, goal texts, benchmark,
  horizon, noise levels, random episodes).

Generation is split into (task, noise level, chunk) jobs of at most `CHUNK_EPISODES` episodes, each
with its own seed derived from (seed, task index, policy, noise index, chunk index), so the data does
not depend on how many worker processes ran the jobs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import BenchmarkConfig
from ..envs.experts import EXPERT_OBSERVATION
from ..envs.tasks import Benchmark, HeldOutTaskError, goal_texts, resolve_benchmark
from ..runs.checkpoint import atomic_write_json
from .format import (FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, NAMESPACE, WeakExpertError,
                     dataset_id, held_out_tasks, minari_root)

CHUNK_EPISODES = 10
"""Episodes per generation job. Part of the seeding scheme: changing it changes the data."""
MIN_EXPERT_SUCCESS = 0.5
"""Default floor of a scripted expert's success rate per task and noise level (see module doc)."""
_STAGING_PREFIX = ".cmrl-staging-"
_OLD_PREFIX = ".cmrl-old-"
_KIND_EXPERT, _KIND_RANDOM = 0, 1


def _cmrl_version() -> str | None:
    try:
        from .._version import __version__

        return str(__version__)
    except ImportError:
        return None


def _spaces(bench: Benchmark):
    import gymnasium as gym

    obs_space = gym.spaces.Box(-np.inf, np.inf, shape=(bench.obs_dim,), dtype=np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(bench.act_dim,), dtype=np.float32)
    return obs_space, action_space


# ----------------------------------------------------------------------------------------------
# Jobs (run in worker processes)


@dataclass(frozen=True)
class _Job:
    task_index: int
    task: str
    policy: str        # "expert" or "random"
    noise_index: int   # index into noise_levels; -1 for random episodes
    noise: float       # action-noise std; NaN for random episodes
    chunk: int
    episodes: int
    seed: int


def _job_seed(seed: int, task_index: int, kind: int, noise_index: int, chunk: int) -> int:
    entropy = [seed, task_index, kind, max(noise_index, 0), chunk]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


def _plan_jobs(bench: Benchmark, episodes: int, noise_levels: Sequence[float],
               random_episodes: int, seed: int) -> list[_Job]:
    """Jobs in dataset order: per task, expert chunks per noise level, then random chunks."""
    forbidden = set(held_out_tasks(bench))
    jobs = []
    for ti, task in enumerate(bench.train_tasks):
        if task in forbidden or task not in bench.train_tasks:
            raise HeldOutTaskError(f"refusing to generate data for held-out task {task!r} "
                                   f"of benchmark {bench.name}")
        for ni, noise in enumerate(noise_levels):
            for ci, start in enumerate(range(0, episodes, CHUNK_EPISODES)):
                n = min(CHUNK_EPISODES, episodes - start)
                jobs.append(_Job(ti, task, "expert", ni, float(noise), ci, n,
                                 _job_seed(seed, ti, _KIND_EXPERT, ni, ci)))
        for ci, start in enumerate(range(0, random_episodes, CHUNK_EPISODES)):
            n = min(CHUNK_EPISODES, random_episodes - start)
            jobs.append(_Job(ti, task, "random", -1, math.nan, ci, n,
                             _job_seed(seed, ti, _KIND_RANDOM, 0, ci)))
    return jobs


_POOLS: dict = {}  # Benchmark -> TaskPool, per process (inherited by forked workers)


def _task_pool(bench: Benchmark):
    from ..envs.metaworld_env import TaskPool

    if bench not in _POOLS:
        while len(_POOLS) >= 4:
            _POOLS.pop(next(iter(_POOLS)))
        pool = TaskPool(bench)
        pool.variations(bench.train_tasks[0], "train")  # draws the split here, not per worker
        _POOLS[bench] = pool
    return _POOLS[bench]


def _init_worker(bench: Benchmark) -> None:
    warnings.filterwarnings("ignore", message=".*Constant\\(s\\) may be too high.*")
    _task_pool(bench)


def _run_job(args: tuple[Benchmark, _Job]):
    """Collect one job's episodes; returns (job, episodes)."""
    from ..envs.experts import collect_prior_episodes

    bench, job = args
    noise = 0.0 if job.policy == "random" else job.noise
    with warnings.catch_warnings():  # the scripted policies warn on every step
        warnings.filterwarnings("ignore", message=".*Constant\\(s\\) may be too high.*")
        episodes = collect_prior_episodes(_task_pool(bench), job.task, job.episodes, noise,
                                          job.seed, policy=job.policy)
    return job, episodes


# ----------------------------------------------------------------------------------------------
# Writing


def _episode_buffer(ep):
    from minari.data_collector.episode_buffer import EpisodeBuffer

    T = len(ep.rewards)
    if T == 0:
        raise RuntimeError(f"empty episode of {ep.task}")
    if T > 1 and not np.array_equal(ep.next_obs[:-1], ep.obs[1:]):
        raise RuntimeError(f"episode of {ep.task}: next_obs does not chain into obs")
    truncations = np.zeros(T, dtype=bool)
    truncations[-1] = True
    return EpisodeBuffer(
        observations=np.concatenate([ep.obs, ep.next_obs[-1:]]).astype(np.float32),
        actions=np.asarray(ep.actions, np.float32),
        rewards=np.asarray(ep.rewards, np.float32),
        terminations=np.zeros(T, dtype=bool),
        truncations=truncations,
        infos={"success": np.asarray(ep.successes, bool)},
    )


def _description(bench: Benchmark, task: str, episodes: int, noise_levels: Sequence[float],
                 random_episodes: int) -> str:
    texts = goal_texts(task)
    parts = []
    if episodes:
        parts.append(f"{episodes} scripted-expert episodes per action-noise std in "
                     f"{list(noise_levels)}")
    if random_episodes:
        parts.append(f"{random_episodes} uniform-random-policy episodes")
    held = ", ".join(held_out_tasks(bench)) or "none (held-out goal variations)"
    return (f"CMRL offline data for Meta-World task {task}, a meta-train task of benchmark "
            f"{bench.name} (held-out tasks, never included: {held}). {'; '.join(parts)} (the "
            "expert reads the goal position; the stored observations hide it, as the agent sees "
            f"them); "
            f"horizon {bench.horizon}; training goal variations (seed {bench.seed}). "
            f"Goal text: {texts[0]!r} (paraphrases: {list(texts[1:])}). Per-episode tags "
            "(task, policy, noise, goal_text) are in the episode metadata; infos['success'] "
            "is the per-step success flag. Episodes end by truncation at the horizon only.")


class _TaskWriter:
    """Appends job results to one task's Minari dataset and keeps its statistics."""

    def __init__(self, bench: Benchmark, task: str, episodes: int, noise_levels: Sequence[float],
                 random_episodes: int):
        self.bench, self.task = bench, task
        self.id = dataset_id(bench.name, task)
        self.desc = _description(bench, task, episodes, noise_levels, random_episodes)
        self.meta = {"task": task, "goal_texts": list(goal_texts(task)), "benchmark": bench.name,
                     "split": "train", "horizon": bench.horizon,
                     "expert_observation": EXPERT_OBSERVATION,
                     "noise_levels": [float(x) for x in noise_levels] if episodes else [],
                     "expert_episodes_per_noise_level": episodes,
                     "random_episodes": random_episodes, "format_version": FORMAT_VERSION}
        self.dataset = None
        self.episodes = 0
        self.transitions = 0
        self.success: dict[str, list[bool]] = {}

    def add(self, job: _Job, episodes: list) -> None:
        import minari

        for ep in episodes:
            if ep.task != self.task or ep.policy != job.policy:
                raise RuntimeError(f"job for {self.task}/{job.policy} returned {ep.task}/{ep.policy}")
        buffers = [_episode_buffer(ep) for ep in episodes]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Minari nags about unset author/permalink
            if self.dataset is None:
                obs_space, action_space = _spaces(self.bench)
                self.dataset = minari.create_dataset_from_buffers(
                    self.id, buffer=buffers, observation_space=obs_space,
                    action_space=action_space, algorithm_name=(
                        "Meta-World scripted expert + N(0, noise) action noise; uniform random"),
                    author="cmrl", description=self.desc, data_format="hdf5",
                    jpeg_encoding=False)
                self.dataset.storage.update_metadata({"cmrl": self.meta})
            else:
                self.dataset.update_dataset_from_buffer(buffers)
        goal = goal_texts(self.task)[0]
        first = self.episodes
        metas = [{"task": self.task, "policy": job.policy, "noise": float(job.noise),
                  "goal_text": goal, "job_seed": int(job.seed), "variation": int(ep.variation),
                  "goal": np.asarray(ep.goal, np.float32)} for ep in episodes]
        self.dataset.storage.update_episode_metadata(metas, range(first, first + len(episodes)))
        self.episodes += len(episodes)
        self.transitions += sum(len(ep.rewards) for ep in episodes)
        key = "random" if job.policy == "random" else f"expert@{job.noise:g}"
        self.success.setdefault(key, []).extend(ep.success for ep in episodes)

    def expert_success(self) -> dict[str, float]:
        """{noise level: success rate} of this task's expert episodes so far."""
        return {key.split("@", 1)[1]: float(np.mean(v)) for key, v in self.success.items()
                if key.startswith("expert@")}

    def summary(self) -> dict:
        every = [s for v in self.success.values() for s in v]
        return {"dataset_id": self.id, "episodes": self.episodes, "transitions": self.transitions,
                "success_rate": float(np.mean(every)) if every else 0.0,
                "success_rate_by_policy": {k: float(np.mean(v)) for k, v in self.success.items()},
                "noise_levels": self.meta["noise_levels"],
                "expert_episodes_per_noise_level": self.meta["expert_episodes_per_noise_level"],
                "random_episodes": self.meta["random_episodes"],
                "goal_texts": self.meta["goal_texts"]}


# ----------------------------------------------------------------------------------------------
# Output folder handling


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder that is not a CMRL dataset, and a CMRL dataset unless overwrite."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if not out_dir.is_dir():
        return
    entries = [e for e in out_dir.iterdir()
               if not e.name.startswith((_STAGING_PREFIX, _OLD_PREFIX))]
    if not entries:
        return
    if not (out_dir / MANIFEST_NAME).is_file():
        raise FileExistsError(f"{out_dir} is not empty and is not a CMRL dataset (no {MANIFEST_NAME});"
                              " refusing to write into it: choose an empty or new folder")
    if not overwrite:
        raise FileExistsError(f"{out_dir} already holds a CMRL dataset; pass overwrite=True "
                              "(`--overwrite` on the command line) to replace it")


# ----------------------------------------------------------------------------------------------
# Public API


def generate_dataset(benchmark: BenchmarkConfig, out_dir: str | Path, episodes: int,
                     noise_levels: Sequence[float] = (0.1, 0.3, 0.5), random_episodes: int = 0,
                     seed: int = 0, workers: int | None = None, progress: bool = True,
                     command: str | None = None, overwrite: bool = False,
                     min_expert_success: float = MIN_EXPERT_SUCCESS,
                     allow_weak_experts: bool = True) -> Path:
    """Generate an offline dataset of a benchmark's meta-train tasks; returns the dataset folder.

    Per meta-train task: `episodes` scripted-expert episodes per action-noise std in `noise_levels`,
    plus `random_episodes` uniform-random-policy episodes, over the benchmark's training goal
    variations with its horizon. Held-out tasks are never generated (`HeldOutTaskError`).

    `workers` processes share the (task, noise level, chunk) jobs (None: the cores); the data is
    the same for any number of workers. `command` (the CLI line that produced the data) goes into the manifest.
    An existing non-empty `out_dir` is only replaced if it is a CMRL dataset and `overwrite` is set
    (else `FileExistsError`). Data is written into a staging folder inside `out_dir` and moved into
    place at the end; the manifest is written last. MINARI_DATASETS_PATH is set while writing and
    restored afterwards.

    A task whose expert succeeds in fewer than `min_expert_success` of its episodes at a noise level
    is warned about and listed under `weak_experts` in the manifest; with `allow_weak_experts=False`
    it raises `WeakExpertError` as soon as that noise level's episodes are in (nothing is
    installed). `python -m cmrl data` refuses by default (`--allow-weak-experts` keeps them).
    """
    bench = resolve_benchmark(benchmark)
    noise_levels = tuple(float(x) for x in noise_levels)
    if isinstance(episodes, bool) or int(episodes) != episodes or episodes < 0:
        raise ValueError(f"episodes must be a non-negative integer, got {episodes!r}")
    if isinstance(random_episodes, bool) or int(random_episodes) != random_episodes \
            or random_episodes < 0:
        raise ValueError(f"random_episodes must be a non-negative integer, got {random_episodes!r}")
    episodes, random_episodes = int(episodes), int(random_episodes)
    if episodes and not noise_levels:
        raise ValueError("noise_levels is empty: give at least one action-noise std (0 for none)")
    if any(not math.isfinite(x) or x < 0 for x in noise_levels):
        raise ValueError(f"noise levels must be finite and >= 0, got {list(noise_levels)}")
    if len(set(noise_levels)) != len(noise_levels):
        raise ValueError(f"noise levels must be distinct, got {list(noise_levels)}")
    if not episodes:
        noise_levels = ()
    if episodes * len(noise_levels) + random_episodes == 0:
        raise ValueError("nothing to generate: episodes and random_episodes are both 0")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not 0.0 <= min_expert_success <= 1.0:
        raise ValueError(f"min_expert_success must be in [0, 1], got {min_expert_success!r}")

    out_dir = Path(out_dir).expanduser().resolve()
    _check_out_dir(out_dir, overwrite)
    jobs = _plan_jobs(bench, episodes, noise_levels, random_episodes, int(seed))
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f"{_STAGING_PREFIX}{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        with minari_root(staging):
            writers = _collect(bench, jobs, episodes, noise_levels, random_episodes, workers,
                               progress, min_expert_success, allow_weak_experts)
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "cmrl_version": _cmrl_version(),
            "minari_version": _minari_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command,
            "seed": int(seed),
            "benchmark": dataclasses.asdict(benchmark),
            "benchmark_name": bench.name,
            "horizon": bench.horizon,
            "train_tasks": list(bench.train_tasks),
            "test_tasks": list(bench.test_tasks),
            "excluded_test_tasks": list(held_out_tasks(bench)),
            "episodes_per_noise_level": episodes,
            "noise_levels": list(noise_levels),
            "random_episodes": random_episodes,
            "chunk_episodes": CHUNK_EPISODES,
            "expert_observation": EXPERT_OBSERVATION,
            "expert_success": {task: writers[task].expert_success() for task in bench.train_tasks},
            "min_expert_success": float(min_expert_success),
            "weak_experts": _weak_experts(writers, min_expert_success),
            "minari_namespace": NAMESPACE,
            "tasks": {task: writers[task].summary() for task in bench.train_tasks},
        }
        _install(out_dir, staging, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _minari_version() -> str | None:
    try:
        import minari

        return str(minari.__version__)
    except ImportError:
        return None


def _weak_experts(writers: dict[str, _TaskWriter], floor: float) -> list[dict]:
    return [{"task": task, "noise": float(noise), "success_rate": rate}
            for task, w in writers.items() for noise, rate in w.expert_success().items()
            if rate < floor]


def _check_expert(writer: _TaskWriter, job: _Job, episodes: int, horizon: int, floor: float,
                  allow: bool) -> None:
    """Once all of a (task, noise level)'s expert episodes are in: refuse or flag a weak expert."""
    if job.policy != "expert":
        return
    done = writer.success.get(f"expert@{job.noise:g}", [])
    if len(done) < episodes:
        return
    rate = float(np.mean(done))
    if rate >= floor:
        return
    what = (f"the scripted expert of {job.task} succeeds in {rate:.0%} of its {episodes} "
            f"episodes at action noise {job.noise:g} (horizon {horizon}), below the floor of "
            f"{floor:.0%}")
    if not allow:
        raise WeakExpertError(f"{what}: refusing to fill the dataset with its failures. Try a "
                              "longer --horizon or less noise, or pass --allow-weak-experts to "
                              "keep them (they are then listed in the manifest)")
    print(f"[cmrl] WARNING: {what}; its episodes are kept and listed under weak_experts in the "
          "manifest", file=sys.stderr)


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def _in_workers(bench: Benchmark, fn, items: list, workers: int):
    """`fn` over `items` in `workers` processes (this one when 1): an iterator of the results in
    the items' order. The benchmark's task pool is built here first and inherited by the forked
    workers (fork where there is one: rebuilding Meta-World's variations in each worker would
    cost more than the jobs)."""
    _task_pool(bench)
    workers = min(workers, len(items))
    if workers <= 1:
        yield map(fn, items)
        return
    # ProcessPoolExecutor, not multiprocessing.Pool: a worker that dies raises BrokenProcessPool
    # here instead of being silently replaced while we wait forever.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context(method),
                               initializer=_init_worker, initargs=(bench,))
    try:
        yield pool.map(fn, items)  # in item order
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _collect(bench: Benchmark, jobs: list[_Job], episodes: int, noise_levels: Sequence[float],
             random_episodes: int, workers: int, progress: bool,
             min_expert_success: float = 0.0,
             allow_weak_experts: bool = True) -> dict[str, _TaskWriter]:
    """Run the jobs (in order of results = order of jobs) and append each to its task's dataset,
    checking each task's expert once a noise level is complete (`_check_expert`)."""
    from tqdm import tqdm

    writers = {task: _TaskWriter(bench, task, episodes, noise_levels, random_episodes)
               for task in bench.train_tasks}
    total = sum(job.episodes for job in jobs)
    with _in_workers(bench, _run_job, [(bench, job) for job in jobs], workers) as results, \
            tqdm(total=total, unit="ep", disable=not progress, desc=f"{bench.name} dataset") as bar:
        for job, eps in results:
            writers[job.task].add(job, eps)
            bar.update(len(eps))
            _check_expert(writers[job.task], job, episodes, bench.horizon, min_expert_success,
                          allow_weak_experts)
    return writers


def _run_bare_job(args: tuple[Benchmark, _Job]) -> int:
    """A job's episodes with uniform random actions, nothing recorded: env steps taken."""
    bench, job = args
    pool = _task_pool(bench)
    rng = np.random.default_rng(job.seed)
    variations = pool.variations(job.task, "train")
    env = pool.make_env(job.task, "train")
    steps = 0
    try:
        for _ in range(job.episodes):
            env.reset(variations[int(rng.integers(len(variations)))])
            done = False
            while not done:
                done = env.step(rng.uniform(-1.0, 1.0, bench.act_dim))[3]
                steps += 1
    finally:
        env.close()
    return steps


def bare_loop(benchmark: BenchmarkConfig, episodes: int, noise_levels: Sequence[float],
              random_episodes: int, seed: int = 0, workers: int | None = None) -> dict:
    """What `generate_dataset` with these arguments would step, in as many processes (the same
    jobs), with random actions, no policy and nothing recorded: {"env_steps", "seconds"}.
    The task pool is built before the clock starts (as `generate_dataset` reuses a built one)."""
    bench = resolve_benchmark(benchmark)
    jobs = _plan_jobs(bench, episodes, tuple(noise_levels) if episodes else (), random_episodes,
                      seed)
    _task_pool(bench)
    start = time.perf_counter()
    with _in_workers(bench, _run_bare_job, [(bench, job) for job in jobs],
                     workers or default_workers()) as results:
        steps = sum(results)
    return {"env_steps": int(steps), "seconds": time.perf_counter() - start}


def _install(out_dir: Path, staging: Path, manifest: dict) -> None:
    """Move the staged Minari namespace into out_dir (replacing an old one) and write the manifest."""
    new_ns = staging / NAMESPACE
    old_ns = out_dir / NAMESPACE
    trash = out_dir / f"{_OLD_PREFIX}{os.getpid()}"
    if old_ns.exists():
        if trash.exists():
            shutil.rmtree(trash)
        os.replace(old_ns, trash)
    os.replace(new_ns, old_ns)
    atomic_write_json(out_dir / MANIFEST_NAME, manifest)
    shutil.rmtree(trash, ignore_errors=True)
