"""Reading a dataset made by `generation.py` back into one `TaskData` per meta-train task, refusing
held-out tasks and anything that disagrees with its manifest."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..config import BenchmarkConfig, ConfigError
from ..envs.tasks import UnknownTaskError, goal_texts, resolve_benchmark
from .format import DatasetError, TaskData, held_out_tasks, minari_root, read_manifest


def load_dataset(path: str | Path) -> tuple[dict[str, TaskData], dict]:
    """Read a dataset made by `generate_dataset`: ({task: TaskData}, manifest).

    Raises `DatasetError` (naming the path) when the folder or manifest is missing or corrupt, a
    task's Minari dataset is missing or unreadable or disagrees with the manifest, or the manifest
    lists a task that is held out by its benchmark (or is not one of its meta-train tasks).
    """
    path = Path(path).expanduser()
    manifest = read_manifest(path)
    try:
        bench = resolve_benchmark(BenchmarkConfig(**manifest["benchmark"]))
    except (TypeError, ConfigError, UnknownTaskError) as e:
        raise DatasetError(f"{path}: manifest has an invalid benchmark ({e})") from None
    held = set(held_out_tasks(bench)) | (set(manifest.get("excluded_test_tasks") or ()))
    for task in manifest["tasks"]:
        if task in held:
            raise DatasetError(f"{path}: manifest lists {task!r}, a held-out task of benchmark "
                               f"{bench.name}; refusing to load it")
        if task not in bench.train_tasks:
            raise DatasetError(f"{path}: manifest lists {task!r}, not a meta-train task of "
                               f"benchmark {bench.name}")
    data = {}
    with minari_root(path.resolve()):
        for task, info in manifest["tasks"].items():
            data[task] = _load_task(path, task, info, bench.obs_dim, bench.act_dim)
    return data, manifest


def _load_task(path: Path, task: str, info: dict, obs_dim: int, act_dim: int) -> TaskData:
    import minari

    if not isinstance(info, dict) or not isinstance(info.get("dataset_id"), str):
        raise DatasetError(f"{path}: manifest entry of {task!r} has no dataset_id")
    did = info["dataset_id"]
    try:
        ds = minari.load_dataset(did)
        metas = list(ds.storage.get_episode_metadata(ds.episode_indices))
        episodes = list(ds.iterate_episodes())
    except FileNotFoundError:
        raise DatasetError(f"{path}: Minari dataset {did} of task {task!r} is missing") from None
    except (OSError, KeyError, ValueError, AssertionError) as e:
        raise DatasetError(f"{path}: Minari dataset {did} of task {task!r} is unreadable "
                           f"({type(e).__name__}: {e})") from None
    if info.get("episodes") is not None and len(episodes) != info["episodes"]:
        raise DatasetError(f"{path}: dataset {did} holds {len(episodes)} episodes, the manifest "
                           f"says {info['episodes']}")
    if not episodes:
        raise DatasetError(f"{path}: dataset {did} of task {task!r} is empty")
    cols: dict[str, list] = {k: [] for k in ("obs", "actions", "rewards", "next_obs", "dones",
                                             "successes", "episode_ids")}
    policies, noise, variations, goals = [], [], [], []
    for i, (ep, meta) in enumerate(zip(episodes, metas)):
        if meta.get("task", task) != task:
            raise DatasetError(f"{path}: dataset {did} holds an episode of {meta.get('task')!r}")
        obs = np.asarray(ep.observations, np.float32)
        T = len(ep.rewards)
        if obs.shape != (T + 1, obs_dim) or np.shape(ep.actions) != (T, act_dim):
            raise DatasetError(f"{path}: dataset {did} episode {i} has malformed arrays")
        success = (ep.infos or {}).get("success")
        cols["obs"].append(obs[:-1])
        cols["next_obs"].append(obs[1:])
        cols["actions"].append(np.asarray(ep.actions, np.float32))
        cols["rewards"].append(np.asarray(ep.rewards, np.float32))
        cols["dones"].append(np.asarray(ep.truncations, bool) | np.asarray(ep.terminations, bool))
        cols["successes"].append(np.zeros(T, bool) if success is None else np.asarray(success, bool))
        cols["episode_ids"].append(np.full(T, i, np.int64))
        policies.append(str(meta.get("policy", "unknown")))
        noise.append(float(meta.get("noise", math.nan)))
        variations.append(int(meta.get("variation", -1)))
        goals.append(np.asarray(meta.get("goal", ()), np.float32).reshape(-1))
    arrays = {k: np.concatenate(v) for k, v in cols.items()}
    texts = tuple(info.get("goal_texts") or goal_texts(task))
    width = max(len(g) for g in goals)
    goal_rows = np.full((len(goals), width), np.nan, np.float32)
    for i, g in enumerate(goals):
        goal_rows[i, :len(g)] = g
    return TaskData(task=task, goal_texts=texts, policies=np.asarray(policies, dtype=object),
                    noise=np.asarray(noise, np.float32),
                    variations=np.asarray(variations, np.int64), goals=goal_rows, **arrays)
