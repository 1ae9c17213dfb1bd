"""The dataset format: the folder layout, the manifest and its checks, names and ids, the error types
and the in-memory `TaskData` of one task. Generation (`generation.py`) writes it; loading
(`loading.py`) reads it.

    out_dir/
        cmrl_dataset.json                       the manifest (written last: marks a complete dataset)
        cmrl/namespace_metadata.json            Minari's namespace marker
        cmrl/<benchmark>-<task>-v0/data/...     one Minari (HDF5) dataset per meta-train task
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..envs.tasks import Benchmark

FORMAT_NAME = "cmrl-dataset"
FORMAT_VERSION = 1
MANIFEST_NAME = "cmrl_dataset.json"
NAMESPACE = "cmrl"
DATASET_VERSION = 0


class DatasetError(ValueError):
    """A dataset folder is missing, incomplete, corrupt, or holds data it must not hold."""


class WeakExpertError(DatasetError):
    """A scripted expert fails its own task too often to fill a dataset with its episodes."""


@dataclass
class TaskData:
    """All transitions of one task, episodes concatenated in dataset order.

    `dones` marks the last transition of each episode: a truncation at the horizon, never a terminal
    state (bootstrap through it). `policies` and `noise` describe each episode (index with
    `episode_ids`); `noise` is NaN for random-policy episodes.
    """

    task: str
    obs: np.ndarray          # [N, 39] float32
    actions: np.ndarray      # [N, 4] float32
    rewards: np.ndarray      # [N] float32
    next_obs: np.ndarray     # [N, 39] float32
    dones: np.ndarray        # [N] bool: end of episode (truncation, not a terminal state)
    successes: np.ndarray    # [N] bool
    episode_ids: np.ndarray  # [N] int64 episode index within this task
    goal_texts: tuple[str, ...]
    policies: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))  # [E] str
    noise: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))       # [E] float32
    variations: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))    # [E] int64
    """Per episode, its goal variation's index among the training variations (-1: not recorded, as
    in datasets made before it was)."""
    goals: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # [E, g]
    """Per episode, the hidden goal position (NaN where not recorded)."""

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def num_episodes(self) -> int:
        return len(self.policies)


# ----------------------------------------------------------------------------------------------
# Names and small helpers


def sanitise_name(name: str) -> str:
    """A benchmark name as Minari accepts it inside a dataset id (ASCII letters, digits, `_`, `-`)."""
    clean = re.sub(r"[^A-Za-z0-9_-]", "_", name.lower()).strip("-")
    return clean or "benchmark"


def dataset_id(benchmark_name: str, task: str) -> str:
    """The Minari id of a task's dataset, e.g. `cmrl/ml4-drawer-open-v3-v0`,
    `cmrl/ml1_reach-v3-reach-v3-v0` for benchmark `ml1:reach-v3`."""
    return f"{NAMESPACE}/{sanitise_name(benchmark_name)}-{sanitise_name(task)}-v{DATASET_VERSION}"


def held_out_tasks(benchmark: Benchmark) -> tuple[str, ...]:
    """Tasks whose data may never appear in a dataset. ML1 holds out goal variations of its single
    task rather than a task, so it has none; every other benchmark holds out its test tasks."""
    if benchmark.holds_out_variations:
        return tuple(t for t in benchmark.test_tasks if t not in benchmark.train_tasks)
    return tuple(benchmark.test_tasks)


@contextlib.contextmanager
def minari_root(path: Path) -> Iterator[None]:
    """Point Minari at `path` (MINARI_DATASETS_PATH) for the duration of the block, then restore."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def read_manifest(path: str | Path) -> dict:
    """The manifest of a dataset folder, checked for format; `DatasetError` naming the path if not."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: no such dataset folder")
    mpath = path / MANIFEST_NAME
    if not mpath.is_file():
        raise DatasetError(f"{path}: not a CMRL dataset (no {MANIFEST_NAME})")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{mpath}: corrupt manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise DatasetError(f"{mpath}: not a CMRL dataset manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DatasetError(f"{mpath}: unsupported format version {version!r} "
                           f"(this cmrl reads up to {FORMAT_VERSION})")
    for key, kind in (("benchmark", dict), ("tasks", dict)):
        if not isinstance(manifest.get(key), kind):
            raise DatasetError(f"{mpath}: manifest lacks a valid {key!r} entry")
    return manifest
